"""A trained retriever and its knowledge base as one self-contained folder (an export), and
reading it back without the training workdir.

  export.json          format, recipe, checkpoint step, pooling, towers, views, counts
  config.json          the recipe's config (what trained the model; lengths, markers)
  mention_encoder/     Hugging Face checkpoint folders: model.safetensors, config.json,
  entity_encoder/      tokenizer files (one `encoder/` when the towers are shared); transformers
                       loads each as a BertModel / MPNetModel
  kb/                  the knowledge base (index/entity_kb.py): entities, vectors, store
  reader/ ...          what links raw documents, when the recipe has it (EntQA's reader); the
                       manifest's "documents" entry names the module that reads it

The folder is written to a temporary sibling and renamed into place, so a failed export
never leaves a partial folder where a good one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections

from zel_jax import sharding, workdir_io
from zel_jax.data import features as features_lib
from zel_jax.index import base as index_base
from zel_jax.index.entity_kb import EntityKB
from zel_jax.models import bert, bert_io, biencoder, hf_export

MANIFEST = "export.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ExportedRetriever:
  """What an export holds besides its knowledge base."""
  config: Any
  mesh: Any
  model: biencoder.BiEncoder
  featurizer: features_lib.Featurizer
  params: Any
  step: int | str
  views: str
  manifest: dict[str, Any]


def write_export(out: str | os.PathLike, config, model: biencoder.BiEncoder, featurizer,
                 params: Any, step: int | str, kb: EntityKB, source: dict[str, Any],
                 documents: Callable[[pathlib.Path], dict[str, Any] | None] | None = None
                 ) -> dict:
  """Writes the export folder `out`; source: where it came from (workdir, world), kept in
  the manifest. documents: writes the recipe's document linker into the folder being
  written (recipes.documents_exporter), its manifest entry returned. Returns the
  manifest."""
  if type(model) is not biencoder.BiEncoder:
    raise ValueError(f"only plain bi-encoders export ({type(model).__name__} has layers "
                     "beyond its BERT towers, which a Hugging Face BertModel cannot hold): "
                     "BLINK's bi-encoder, its distilled student and MVD's student export")
  towers = biencoder.tower_names(model)
  extra = set(params) - set(towers)
  if extra:
    raise ValueError(f"the retriever has parameters beyond its towers: {sorted(extra)}")
  pretrained_dir = bert_io.resolve_pretrained(config.model.pretrained)
  folders = {tower: f"{tower}_encoder" if tower != "encoder" else "encoder"
             for tower in towers}
  manifest = {
      "format": FORMAT_VERSION, "recipe": config.get("recipe"),
      "trainer": config.get("trainer"), "step": step, "pooling": model.pooling,
      "share_towers": model.share_towers, "towers": folders, "views": kb.views,
      "entities": len(kb), "vectors": int(len(kb.vectors)), "dim": int(kb.vectors.shape[1]),
      "store": kb.store_kind, "pretrained": config.model.pretrained, **source}
  with index_base.atomic_directory(out) as tmp:
    for tower, folder in folders.items():
      (tmp / folder).mkdir()
      hf_export.save_encoder(tmp / folder, params[tower], model.config, pretrained_dir,
                             featurizer.tokenizer)
    with open(tmp / workdir_io.CONFIG_FILE, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    (tmp / "kb").mkdir()
    kb.write_into(tmp / "kb")
    entry = documents(tmp) if documents is not None else None
    if entry is not None:
      manifest["documents"] = entry
    with open(tmp / MANIFEST, "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
      f.write("\n")
  return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
  manifest_path = pathlib.Path(path) / MANIFEST
  if not manifest_path.is_file():
    raise FileNotFoundError(f"{path} is not a zel_jax export: {MANIFEST} is missing (write "
                            "one with python -m zel_jax.export --workdir=W --out=DIR)")
  with open(manifest_path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}; this zel_jax "
                     f"reads format {FORMAT_VERSION}")
  return manifest


def read_retriever(path: str | os.PathLike) -> ExportedRetriever:
  """The export's bi-encoder on a mesh of this machine's devices, parameters replicated."""
  path = pathlib.Path(path)
  manifest = read_manifest(path)
  with open(path / workdir_io.CONFIG_FILE) as f:
    config = ml_collections.ConfigDict(json.load(f))
  first = str(path / next(iter(manifest["towers"].values())))
  featurizer = features_lib.Featurizer(bert_io.load_tokenizer(first),
                                       use_unused_markers=config.data.use_unused_markers)
  bert_config = bert_io.load_config(first).replace(pair_separators=featurizer.pair_separators)
  model = biencoder.BiEncoder(bert_config, pooling=manifest["pooling"],
                              share_towers=manifest["share_towers"])
  tower = bert.BertModel(bert_config)
  # Inference only: every device of this machine takes a share of each batch, whatever
  # mesh trained the model (the parameters are replicated).
  mesh = sharding.make_mesh([(axis, -1 if i == 0 else 1)
                             for i, axis in enumerate(config.sharding.batch_axes)])
  replicated = NamedSharding(mesh, PartitionSpec())
  params = {name: jax.device_put(bert_io.load_params(str(path / folder), tower), replicated)
            for name, folder in manifest["towers"].items()}
  return ExportedRetriever(config, mesh, model, featurizer, params, manifest["step"],
                           manifest["views"], manifest)


def read_kb(path: str | os.PathLike, store: str | None = None, mesh: Any = None) -> EntityKB:
  return EntityKB.load(pathlib.Path(path) / "kb", store_kind=store, mesh=mesh)


def directory_bytes(path: str | os.PathLike) -> int:
  return index_base.directory_bytes(path)
