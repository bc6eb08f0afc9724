"""A TFDS builder over a directory in ZESHEL layout, written as array_record, no TensorFlow.

tensorflow_datasets prepares and reads `array_record` datasets without TensorFlow installed:
`download_and_prepare` encodes the features with numpy, and `as_data_source(split)` gives
random access (len, __getitem__), the form Grain reads. `as_dataset` (tf.data) is the one
path that needs TensorFlow, so it is never used here.

Three configs, because mentions and entities have different fields:
  zeshel/mentions   one split per mentions file:   mentions_<split>   (mentions/<split>.json)
  zeshel/entities   one split per documents file:  entities_<world>   (documents/<world>.json)
  zeshel/linking    one split per mentions file:   linking_<split>: each mention with its
                    context words on both sides and its gold entity's title and text, so a
                    split reads alone (the zero-shot benchmark of zel_jax.data.worlds as
                    linking_train / linking_val / linking_test, each world in one of them)
Records keep file order (shuffling is the input pipeline's job, and the i-th record of a
split stays the i-th line of its file). Build both with

    build(manual_dir="data/zeshel", data_dir="data/tfds")
    source = data_source("data/tfds", "mentions_train")   # source[i] -> dict of bytes / ints
    to_mention(source[0])                                 # -> zeshel.Mention

Preparing validates every mention against the documents exactly as zeshel.py does. This
module needs the tfds extra: pip install "zel_jax[tfds]".
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from etils import epath
import numpy as np

from zel_jax.data import zeshel

# Only this module needs TFDS, so only importing it asks for the extra.
try:
  import array_record  # pylint: disable=unused-import  # tfds writes and reads through it
  import tensorflow_datasets as tfds
except ImportError as e:
  raise ImportError(f"zel_jax.data.tfds_zeshel needs TensorFlow Datasets and array_record "
                    f"({e}); install them with: pip install \"zel_jax[tfds]\"") from e

MENTIONS = "mentions"
ENTITIES = "entities"
LINKING = "linking"
KINDS = (MENTIONS, ENTITIES, LINKING)

_MENTION_TEXT_FIELDS = ("mention_id", "context_document_id", "label_document_id", "text",
                        "corpus", "category")
_MENTION_INT_FIELDS = ("start_index", "end_index")
_ENTITY_FIELDS = ("document_id", "title", "text", "world")
_LINKING_FIELDS = ("mention_id", "mention", "context_left", "context_right", "world",
                   "category", "label_document_id", "label_title", "label_text")


def split_name(kind: str, name: str) -> str:
  """TFDS split names are identifiers; a file name like "pro-wrestling" becomes one."""
  return f"{kind}_{re.sub(r'[^0-9A-Za-z_]', '_', name)}"


class Zeshel(tfds.core.GeneratorBasedBuilder):
  """ZESHEL mentions or entities from a manual directory (documents/, mentions/)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Mentions per split and entities per world, in file order."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=MENTIONS, description="one split per mentions/<split>.json"),
      tfds.core.BuilderConfig(name=ENTITIES, description="one split per documents/<world>.json"),
      tfds.core.BuilderConfig(name=LINKING, description="one split per mentions/<split>.json, "
                              "each mention with its context and its gold entity"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass download_config=tfds.download.DownloadConfig(manual_dir=DIR) where DIR is a "
      "ZESHEL directory: DIR/documents/<world>.json and DIR/mentions/<split>.json (the "
      "released dataset, or a world built by `python -m zel_jax.data.dictd`).")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.x finds a builder that lives in a package through `importlib_resources`, a
    # backport it declares only for Python < 3.9, so preparing fails where it is absent.
    # This file is what that lookup returns when it works.
    return epath.Path(__file__)

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    # array_record is the format that needs no TensorFlow, so it is the default here.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == MENTIONS:
      fields = {name: tfds.features.Text() for name in _MENTION_TEXT_FIELDS}
      fields.update({name: tfds.features.Scalar(dtype=np.int64)
                     for name in _MENTION_INT_FIELDS})
    elif self.builder_config.name == LINKING:
      fields = {name: tfds.features.Text() for name in _LINKING_FIELDS}
    else:
      fields = {name: tfds.features.Text() for name in _ENTITY_FIELDS}
    return tfds.core.DatasetInfo(
        builder=self,
        description="Zero-shot entity linking data in the ZESHEL layout "
                    "(Logeswaran et al., 2019).",
        features=tfds.features.FeaturesDict(fields),
        homepage="https://github.com/lajanugen/zeshel",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    dataset = zeshel.ZeshelDataset(dl_manager.manual_dir)
    kind = self.builder_config.name
    names = dataset.worlds() if kind == ENTITIES else [
        # A split with no mentions (a benchmark built from some worlds only) has no records.
        split for split in dataset.splits()
        if next(dataset.iter_mentions(split, validate=False), None) is not None]
    generators = {}
    for name in names:
      split = split_name(kind, name)
      if split in generators:
        raise ValueError(f"{dl_manager.manual_dir}: {name!r} and another {kind} file both "
                         f"map to TFDS split {split!r}")
      generators[split] = self._generate_examples(dataset, kind, name)
    if not generators:
      raise ValueError(f"{dl_manager.manual_dir}: no {kind} files")
    return generators

  def _generate_examples(self, dataset: zeshel.ZeshelDataset, kind: str,
                         name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if kind == MENTIONS:
      for i, m in enumerate(dataset.iter_mentions(name)):
        yield i, {"mention_id": m.mention_id, "context_document_id": m.context_document_id,
                  "label_document_id": m.label_document_id, "start_index": m.start_index,
                  "end_index": m.end_index, "text": m.text, "corpus": m.corpus,
                  # Text features have no None; an absent category is "".
                  "category": m.category or ""}
    elif kind == LINKING:
      for i, m in enumerate(dataset.iter_mentions(name)):
        left, span, right = dataset.mention_tokens(m)
        gold = dataset.document(m.label_document_id)
        yield i, {"mention_id": m.mention_id, "mention": " ".join(span),
                  "context_left": " ".join(left), "context_right": " ".join(right),
                  "world": m.corpus, "category": m.category or "",
                  "label_document_id": gold.document_id, "label_title": gold.title,
                  "label_text": gold.text}
    else:
      for i, e in enumerate(dataset.iter_entities(name)):
        yield i, {"document_id": e.document_id, "title": e.title, "text": e.text,
                  "world": e.world}


def build(manual_dir: os.PathLike | str, data_dir: os.PathLike | str,
          kinds: tuple[str, ...] = (MENTIONS, ENTITIES)) -> dict[str, Zeshel]:
  """Prepares the configs `kinds` from a ZESHEL directory; returns {kind: builder}."""
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  builders = {}
  for kind in kinds:
    builder = Zeshel(config=kind, data_dir=os.fspath(data_dir))
    builder.download_and_prepare(download_config=config)
    builders[kind] = builder
  return builders


def data_source(data_dir: os.PathLike | str, split: str):
  """Random-access source of a prepared split ("mentions_train", "entities_starwars",
  "linking_test")."""
  kind = split.split("_", 1)[0]
  if kind not in KINDS:
    raise ValueError(f"split {split!r} is neither mentions_*, entities_* nor linking_*")
  return Zeshel(config=kind, data_dir=os.fspath(data_dir)).as_data_source(split)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_mention(record: dict[str, Any]) -> zeshel.Mention:
  return zeshel.Mention(
      mention_id=_text(record["mention_id"]),
      context_document_id=_text(record["context_document_id"]),
      label_document_id=_text(record["label_document_id"]),
      start_index=int(record["start_index"]), end_index=int(record["end_index"]),
      text=_text(record["text"]), corpus=_text(record["corpus"]),
      category=_text(record["category"]) or None)


def to_entity(record: dict[str, Any]) -> zeshel.Entity:
  return zeshel.Entity(**{name: _text(record[name]) for name in _ENTITY_FIELDS})
