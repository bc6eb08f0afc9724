"""Exact brute-force search on the host: BLAS matmul + argpartition.

The reference every approximate store is measured against (recall 1.0 by construction) and
the queries/s baseline of the index benchmark.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from zel_jax.index import base

# Scores of one query block are materialized as [block, N] float32; this bounds them.
_SCORE_BUFFER_ELEMENTS = 1 << 27  # 512 MB: 128 queries per block at 1M rows


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-k columns of each row of scores [Q, N], best first, equal scores in column order (as
  lax.top_k). Which of several columns tied at the k-th score make the cut is unspecified."""
  n = scores.shape[1]
  if k < n:
    part = np.argpartition(scores, n - k, axis=1)[:, n - k:]
  else:
    part = np.broadcast_to(np.arange(n), scores.shape).copy()
  part_scores = np.take_along_axis(scores, part, axis=1)
  # lexsort's last key is primary: score descending, then column ascending.
  order = np.lexsort((part, -part_scores), axis=1)
  rows = np.take_along_axis(part, order, axis=1)
  return np.take_along_axis(part_scores, order, axis=1), rows


def exact_search(table: np.ndarray, queries: np.ndarray, k: int,
                 block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k rows of `table` [N, D] by inner product with `queries` [Q, D].

  Returns (scores [Q, k] float32, row numbers [Q, k] int64).
  """
  n = table.shape[0]
  if block is None:
    block = int(np.clip(_SCORE_BUFFER_ELEMENTS // max(n, 1), 1, 1024))
  scores_out = np.empty((len(queries), k), np.float32)
  rows_out = np.empty((len(queries), k), np.int64)
  for start in range(0, len(queries), block):
    stop = min(start + block, len(queries))
    s, r = top_k_rows(queries[start:stop] @ table.T, k)
    scores_out[start:stop] = s
    rows_out[start:stop] = r
  return scores_out, rows_out


class NumpyStore(base.CandidateStore):
  """Exact store: the float32 table in host memory, searched by brute force."""

  kind = "numpy"

  def __init__(self, table: np.ndarray, ids: np.ndarray):
    super().__init__(ids, table.shape[1])
    self._table = table

  @classmethod
  def build(cls, embeddings: np.ndarray, ids: np.ndarray | None = None) -> "NumpyStore":
    table = base.check_embeddings(embeddings)
    return cls(table, base.normalize_ids(ids, len(table)))

  @property
  def table(self) -> np.ndarray:
    return self._table

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = base.check_queries(queries, k, self.dim, len(self))
    scores, rows = exact_search(self._table, queries, k)
    return scores, self._ids[rows]

  def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Like search, but returns row numbers instead of ids."""
    queries = base.check_queries(queries, k, self.dim, len(self))
    return exact_search(self._table, queries, k)

  def save(self, directory: str | os.PathLike) -> None:
    with base.atomic_directory(directory) as tmp:
      np.save(tmp / "table.npy", self._table, allow_pickle=False)
      base.write_ids(tmp, self._ids)
      base.write_manifest(tmp, self.kind, n=len(self), dim=self.dim)

  @classmethod
  def load(cls, directory: str | os.PathLike, mmap: bool = False) -> "NumpyStore":
    manifest = base.read_manifest(directory, cls.kind)
    table = np.load(pathlib.Path(directory) / "table.npy", mmap_mode="r" if mmap else None,
                    allow_pickle=False)
    if table.shape != (manifest["n"], manifest["dim"]):
      raise ValueError(f"{directory}: table.npy has shape {table.shape}, the manifest says "
                       f"{(manifest['n'], manifest['dim'])}")
    return cls(table, base.read_ids(directory))

  @property
  def size_bytes(self) -> int:
    return int(self._table.nbytes + self._ids.nbytes)
