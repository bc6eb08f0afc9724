"""Inference on the mesh: rows in global batches sorted longest first, cut to bucketed widths,
and the jitted encoders of a bi-encoder."""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from zel_jax import sharding
from zel_jax.models import biencoder


def sorted_batches(lengths: np.ndarray, max_length: int, batch_size: int, mesh,
                   batch_axes=("data", "fsdp"), bucket: int = 8, desc: str = ""):
  """Global batches over rows sorted longest first, for inference on the mesh.

  Yields (rows, local_rows, width): the batch's rows (at most batch_size, in the output's
  numbering), this process's slice of them padded to a full global batch (the last row
  repeated), and the batch's width: its longest row rounded up to `bucket` tokens, so
  padding is not computed and only max_length / bucket shapes ever compile. batch_size is
  rounded up to a multiple of the batch shards and processes. A progress bar runs on
  process 0 when there are many batches.
  """
  n = len(lengths)
  shards = int(np.prod([mesh.shape[a] for a in batch_axes if a in mesh.shape]))
  per_process = jax.process_count()
  unit = int(np.lcm(shards, per_process))
  batch_size = max(unit, -(-batch_size // unit) * unit)
  local = batch_size // per_process
  first = jax.process_index() * local
  order = np.argsort(-np.asarray(lengths), kind="stable")  # The first compile is the widest.
  bar = None
  if jax.process_index() == 0 and n > 20 * batch_size:
    bar = tqdm(total=n, desc=desc or "batches", unit="row", mininterval=2.0, leave=False)
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    longest = int(np.max(lengths[rows]))
    width = int(min(max_length, max(bucket, -(-longest // bucket) * bucket)))
    take = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    yield rows, take[first:first + local], width
    if bar is not None:
      bar.update(len(rows))
  if bar is not None:
    bar.close()


def gather(x: jax.Array) -> np.ndarray:
  """A global array's values on every process (a sharded batch's results)."""
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def embed_rows(encode: Callable, params: Any, feats: dict[str, np.ndarray], mesh,
               batch_size: int, batch_axes=("data", "fsdp"), bucket: int = 8,
               desc: str = "") -> np.ndarray:
  """Embeds every row of feats (input_ids, attention_mask) in global batches on the mesh,
  longest first and cut to `bucket`-token widths (sorted_batches). encode(params, ids,
  mask) -> [B, D] must be jitted. Returns [N, D] float32 in row order."""
  ids, mask = feats["input_ids"], feats["attention_mask"]
  out = None
  for rows, local_rows, width in sorted_batches(mask.sum(1), ids.shape[1], batch_size, mesh,
                                                batch_axes, bucket, desc or "embed"):
    batch = sharding.global_batch({"ids": ids[local_rows, :width],
                                   "mask": mask[local_rows, :width]}, mesh, batch_axes)
    emb = gather(encode(params, batch["ids"], batch["mask"])).astype(np.float32)
    if out is None:
      out = np.zeros((len(ids), emb.shape[1]), np.float32)
    out[rows] = emb[:len(rows)]
  return out if out is not None else np.zeros((0, 0), np.float32)


def encoders(model: biencoder.BiEncoder) -> tuple[Callable, Callable]:
  """Jitted (params, ids, mask) -> float32 embeddings for mentions and for entities (the
  model's own encode methods: subclasses such as the type-aware bi-encoder override them)."""
  def mentions(params, ids, mask):
    return model.apply({"params": params}, ids, mask,
                       method=type(model).encode_mentions).astype(jnp.float32)

  def entities(params, ids, mask):
    return model.apply({"params": params}, ids, mask,
                       method=type(model).encode_entities).astype(jnp.float32)

  return jax.jit(mentions), jax.jit(entities)
