"""EntQA's reader inside an export (`python -m zel_jax.export --workdir=<reader workdir>`):
what the export writes for it, and the document linker that `Linker.from_pretrained` builds
from it, so that `linker.link("raw text")` finds mentions and links them with no workdir.

The export's retriever towers and knowledge base are the reader's retriever (its
config.data.candidates workdir) and one world's entities; `reader/` holds the reader:

  reader/model.safetensors, config.json,   its BERT, a Hugging Face checkpoint folder
         tokenizer files
  reader/heads.safetensors                  the span and rank heads ("span/kernel", ...)
  reader/reader_config.json                 the reader's config (lengths, top_k, top_p)

Inference is EndToEnd.predict's (Sec. 2.3) with the linker's pieces: passages are embedded
by the retriever's mention tower and searched in the linker's store, so entities added to or
removed from the export are candidates at once; the reader reads each passage's top K.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import ml_collections
import numpy as np
from safetensors.numpy import load_file, save_file

from zel_jax import sharding
from zel_jax.data import documents as documents_lib
from zel_jax.evals import inference
from zel_jax.models import bert, bert_io, hf_export
from zel_jax.recipes.entqa import end_to_end, passage_retrieval, reader
from zel_jax.recipes.entqa import model as entqa

FOLDER = "reader"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "reader_config.json"


def write_reader(workdir: str, config, out: pathlib.Path) -> dict[str, Any] | None:
  """Writes a reader workdir's reader into the export folder `out` (being written); returns
  the manifest's "documents" entry. None for a retriever workdir (nothing to add)."""
  if config.get("trainer") != "entqa_reader":
    return None
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = reader.build_model(config, mesh)
  params, step = reader.restore_params(workdir, config, model, mesh)
  folder = out / FOLDER
  folder.mkdir()
  hf_export.save_encoder(folder, params["encoder"], model.config,
                         bert_io.resolve_pretrained(config.model.pretrained),
                         featurizer.tokenizer)
  heads = {"/".join(path): np.asarray(jax.device_get(leaf), np.float32)
           for path, leaf in traverse_util.flatten_dict(
               {k: v for k, v in params.items() if k != "encoder"}).items()}
  save_file(heads, str(folder / HEADS_FILE))
  with open(folder / CONFIG_FILE, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  return {"module": __name__, "folder": FOLDER, "step": int(step),
          "threshold": end_to_end.workdir_threshold(workdir, config)}


def open_exported(path: str, spec: dict[str, Any], linker) -> "ExportedReader":
  """The document linker of an export whose manifest's "documents" entry is `spec`."""
  return ExportedReader(os.path.join(path, spec["folder"]), float(spec["threshold"]),
                        spec["step"], linker)


class ExportedReader:
  """A reader and the linker it reads for (its retriever, store and entities): links raw
  documents as EndToEnd does (evals.linking.DocumentLinker)."""

  def __init__(self, folder: str, threshold: float, step: int, linker):
    with open(os.path.join(folder, CONFIG_FILE)) as f:
      config = ml_collections.ConfigDict(json.load(f))
    # The reader's BERT and tokenizer are the export's; it runs on the linker's mesh.
    config.model.pretrained = folder
    config.sharding.batch_axes = tuple(linker.config.sharding.batch_axes)
    self.config, self.rconfig, self.linker = config, linker.config, linker
    self.step, self.gamma = step, threshold
    self.model, self.featurizer = reader.build_model(config, linker.mesh)
    reader.check_same_tokenizer(self.featurizer, linker.featurizer)
    encoder = bert_io.load_params(folder, bert.BertModel(self.model.config))
    heads = traverse_util.unflatten_dict(
        {tuple(name.split("/")): value
         for name, value in load_file(os.path.join(folder, HEADS_FILE)).items()})
    shapes = lambda tree: {path: tuple(leaf.shape)
                           for path, leaf in traverse_util.flatten_dict(tree).items()}
    if shapes({**heads, "encoder": encoder}) != shapes(
        nn.unbox(entqa.abstract_params(self.model))):
      raise ValueError(f"{folder}: the reader's weights do not fit its config "
                       f"({CONFIG_FILE})")
    self.params = jax.device_put({**heads, "encoder": encoder},
                                 reader.param_shardings(config, self.model, linker.mesh))
    self.read_fn = reader.reader_fn(self.model, int(self.rconfig.data.passage_length),
                                    int(config.reader.max_span_tokens),
                                    4 * int(config.reader.top_p))
    self._table: tuple[tuple, passage_retrieval.EntityTable] | None = None

  def threshold(self, override: float | None = None) -> float:
    return float(self.gamma if override is None else override)

  def title_of(self, world: str, entity_id: str) -> str:
    del world  # An export holds one world.
    return self.linker.kb.titles[self.linker.kb.ids.index(entity_id)]

  def _entity_table(self) -> passage_retrieval.EntityTable:
    """The knowledge base in the reader's features, rows in the store's order; rebuilt
    after entities were added or removed."""
    kb = self.linker.kb
    key = (len(kb.ids), hash(tuple(kb.ids)))
    if self._table is None or self._table[0] != key:
      feats = self.featurizer.entity_features(kb.titles, kb.texts,
                                              int(self.config.data.entity_length))
      table = passage_retrieval.EntityTable(
          {k: feats[k] for k in ("input_ids", "attention_mask")},
          np.asarray([self.linker.world] * len(kb.ids), dtype=str),
          np.asarray(kb.ids, dtype=str))
      self._table = (key, table)
    return self._table[1]

  def predict(self, docs: Sequence[documents_lib.Document], worlds: Sequence[str],
              top_k: int | None = None, floor: float = 0.0) -> tuple[list[tuple], dict]:
    """As EndToEnd.predict: [(doc_id, c0, c1, entity_id, score)] above `floor`, timings."""
    del worlds  # The export's one world.
    t0 = time.time()
    linker, rconfig = self.linker, self.rconfig
    table = self._entity_table()
    pset = passage_retrieval.passage_set(rconfig, None, linker.featurizer, docs, table,
                                         [linker.world] * len(docs))
    k = int(top_k or self.config.reader.top_k)
    passages = {"input_ids": pset.passages.input_ids,
                "attention_mask": pset.passages.attention_mask}
    emb = inference.embed_rows(linker.encode_mentions, linker.params, passages, linker.mesh,
                               rconfig.eval_batch_size, rconfig.sharding.batch_axes,
                               desc="passages")
    _, rows = linker.kb.search(emb, k)
    rows = np.asarray(rows, np.int64)
    t1 = time.time()
    merged = end_to_end.read_and_merge(self.model, self.params,
                                       reader.ReaderSet(pset, table, rows), self.config,
                                       rconfig, linker.mesh, self.read_fn, floor)
    t2 = time.time()
    return merged, {"documents": len(docs), "passages": len(pset),
                    "candidates_per_passage": rows.shape[1],
                    "retrieve_seconds": round(t1 - t0, 1), "read_seconds": round(t2 - t1, 1),
                    "documents_per_s": round(len(docs) / max(t2 - t0, 1e-9), 2)}
