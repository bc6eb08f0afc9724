"""Texts -> pooled, L2-normalized embeddings with a BERT encoder sharded over the mesh.

  python -m zel_jax.encode --config=configs/encode.py:runlocal --text="..." --text="..."

prints the cosine-similarity matrix of the texts and, as its last stdout line, one JSON object.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Sequence

from absl import app, flags, logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from zel_jax import configs, sharding
from zel_jax.models import bert, bert_io
from zel_jax.models.biencoder import pool


def load_encoder(config, mesh):
  """(model, params placed on the mesh, tokenizer) from config.model."""
  cfg = config.model
  path = bert_io.resolve_pretrained(cfg.pretrained)
  model = bert.BertModel(
      bert_io.load_config(path).replace(hidden_dropout=cfg.hidden_dropout,
                                     attention_dropout=cfg.attention_dropout),
      dtype=jnp.dtype(cfg.dtype), remat=cfg.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  specs = sharding.param_specs(bert.abstract_params(model), mesh,
                               config.sharding.logical_rules, config.sharding.param_rules)
  params = bert_io.load_params(path, model, shardings=sharding.to_shardings(specs, mesh))
  return model, params, bert_io.load_tokenizer(path)


def embed_texts(texts: Sequence[str], model, params, tokenizer, mesh, config) -> np.ndarray:
  """Embeds `texts` in global batches of config.batch_size; returns [len(texts), hidden]."""
  batch_axes = config.sharding.batch_axes
  shards = math.prod(mesh.shape[a] for a in batch_axes if a in mesh.shape)
  batch_size = -(-config.batch_size // shards) * shards  # Round up so it splits evenly.
  if batch_size % jax.process_count():
    raise ValueError(f"batch size {batch_size} does not split over {jax.process_count()} "
                     "processes")
  local = batch_size // jax.process_count()
  first = jax.process_index() * local

  @jax.jit
  def forward(params, ids, mask):
    hidden = model.apply({"params": params}, ids, mask)
    pooled = pool(hidden, mask, config.pooling).astype(jnp.float32)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  out = []
  for start in range(0, len(texts), batch_size):
    chunk = list(texts[start:start + batch_size])
    enc = tokenizer(chunk + [""] * (batch_size - len(chunk)), padding="max_length",
                    truncation=True, max_length=config.max_length, return_tensors="np")
    batch = sharding.global_batch(
        {"ids": enc["input_ids"][first:first + local].astype(np.int32),
         "mask": enc["attention_mask"][first:first + local].astype(np.int32)},
        mesh, batch_axes)
    emb = forward(params, batch["ids"], batch["mask"])
    if jax.process_count() > 1:
      emb = multihost_utils.process_allgather(emb, tiled=True)
    out.append(np.asarray(emb)[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/encode.py).",
                                          lock_config=True)
_TEXT = flags.DEFINE_multi_string("text", [], "A text to embed (repeat the flag).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  del argv
  config = _CONFIG.value
  texts = _TEXT.value or ["Baibars besieged Antioch in 1268.",
                          "The Mamluk sultan captured the city of Antioch.",
                          "FOLDOC is a free online dictionary of computing."]
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
  t0 = time.time()
  model, params, tokenizer = load_encoder(config, mesh)
  t1 = time.time()
  emb = embed_texts(texts, model, params, tokenizer, mesh, config)
  t2 = time.time()
  sims = emb @ emb.T
  for i, text in enumerate(texts):
    print(" ".join(f"{s:+.3f}" for s in sims[i]), " ", text)
  print(json.dumps({"texts": len(texts), "dim": int(emb.shape[1]), "mesh": dict(mesh.shape),
                    "load_s": round(t1 - t0, 2), "encode_s": round(t2 - t1, 2),
                    "cosine": [[round(float(x), 4) for x in row] for row in sims]}))
  sys.stdout.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=configs.parse_flags)
