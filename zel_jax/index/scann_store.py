"""Host-side approximate store on ScaNN 1.4 (x86 CPU with AVX2).

Below `brute_force_below` entities (20k by default) an exact float32 brute-force scan is both
fast and exact, so the store is exact. Above, ScaNN's tree + asymmetric hashing + reordering:
k-means partitions the table into `num_leaves` leaves, a query scans the
`num_leaves_to_search` leaves whose centres score highest with 4-bit product-quantized codes
(anisotropic loss, residuals to the leaf centre), and the best `reorder_num_neighbors` of
those are rescored exactly in float32.

Defaults by size (override any of them through `config`):
  num_leaves            ~ 2 sqrt(N), at least 16 and at most N / 50
  num_leaves_to_search  ~ 5% of the leaves, at least 8
  reorder_num_neighbors 512 (raised to k when a query asks for more)
  training_sample_size  min(N, max(100k, 50 * num_leaves))
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from zel_jax.index import base

_SCANN_DIR = "scann"

# Every key a config may set; anything else is a typo and an error.
_KEYS = (
    "mode",  # "auto" | "brute_force" | "tree_ah"
    "brute_force_below",
    "num_leaves",
    "num_leaves_to_search",
    "reorder_num_neighbors",
    "training_sample_size",
    "dimensions_per_block",
    "anisotropic_quantization_threshold",
    "spherical",
    "training_iterations",
    "search_batch_size",
)


def default_config(n: int) -> dict[str, Any]:
  """Parameters for a store of n entities (see the module docstring)."""
  num_leaves = int(np.clip(round(2 * math.sqrt(n)), 16, max(16, n // 50)))
  return {
      "mode": "auto",
      "brute_force_below": 20_000,
      "num_leaves": num_leaves,
      "num_leaves_to_search": max(8, round(num_leaves * 0.05)),
      "reorder_num_neighbors": 512,
      "training_sample_size": min(n, max(100_000, 50 * num_leaves)),
      "dimensions_per_block": 2,
      # ScaNN's recommended anisotropic weight for maximum inner product search.
      "anisotropic_quantization_threshold": 0.2,
      "spherical": False,
      "training_iterations": 12,
      "search_batch_size": 256,
  }


def resolve_config(n: int, config: Mapping[str, Any] | None) -> dict[str, Any]:
  """Defaults for n entities updated by `config`; checks keys and picks the mode."""
  params = default_config(n)
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  config = dict(config or {})
  unknown = sorted(set(config) - set(_KEYS))
  if unknown:
    raise ValueError(f"unknown ScannStore config keys {unknown}; known: {sorted(_KEYS)}")
  if "num_leaves" in config and "training_sample_size" not in config:
    params["training_sample_size"] = min(n, max(100_000, 50 * int(config["num_leaves"])))
  if "num_leaves" in config and "num_leaves_to_search" not in config:
    params["num_leaves_to_search"] = max(8, round(int(config["num_leaves"]) * 0.05))
  params.update(config)
  mode = params["mode"]
  if mode == "auto":
    mode = "brute_force" if n < params["brute_force_below"] else "tree_ah"
  if mode not in ("brute_force", "tree_ah"):
    raise ValueError(f"ScannStore mode must be 'auto', 'brute_force' or 'tree_ah', got {mode!r}")
  params["mode"] = mode
  if mode == "tree_ah":
    leaves = int(params["num_leaves"])
    if not 1 <= params["num_leaves_to_search"] <= leaves:
      raise ValueError(f"num_leaves_to_search={params['num_leaves_to_search']} must be in "
                       f"[1, num_leaves={leaves}]")
    if leaves > n:
      raise ValueError(f"num_leaves={leaves} exceeds the number of entities ({n})")
    params["training_sample_size"] = int(min(n, max(params["training_sample_size"], leaves)))
  return params


def _scann():
  try:
    from scann.scann_ops.py import scann_ops_pybind  # lazy: optional
  except ImportError as e:  # The wheel exists for x86-64 Linux only.
    raise ImportError("ScannStore needs the `scann` package (pip install scann; x86-64 "
                      "Linux with AVX2)") from e
  return scann_ops_pybind


def available() -> bool:
  """Whether ScaNN imports here: callers that can fall back to another store ask first."""
  try:
    _scann()
  except ImportError:
    return False
  return True


class ScannStore(base.CandidateStore):
  """ScaNN searcher + our ids; see the module docstring for the modes."""

  kind = "scann"

  def __init__(self, searcher: Any, ids: np.ndarray, dim: int, params: dict[str, Any]):
    super().__init__(ids, dim)
    self._searcher = searcher
    self._params = params

  @property
  def params(self) -> dict[str, Any]:
    return dict(self._params)

  @classmethod
  def build(cls, embeddings: np.ndarray, ids: np.ndarray | None = None,
            config: Mapping[str, Any] | None = None,
            training_threads: int = 0) -> "ScannStore":
    """Builds from embeddings [N, D] and ids (None: row numbers). training_threads=0 uses all
    cores."""
    table = base.check_embeddings(embeddings)
    ids = base.normalize_ids(ids, len(table))
    params = resolve_config(len(table), config)
    scann = _scann()
    builder = scann.builder(table, 10, "dot_product")
    if params["mode"] == "brute_force":
      builder = builder.score_brute_force()
    else:
      builder = builder.tree(
          num_leaves=int(params["num_leaves"]),
          num_leaves_to_search=int(params["num_leaves_to_search"]),
          training_sample_size=int(params["training_sample_size"]),
          spherical=bool(params["spherical"]),
          training_iterations=int(params["training_iterations"]),
      ).score_ah(
          int(params["dimensions_per_block"]),
          anisotropic_quantization_threshold=float(
              params["anisotropic_quantization_threshold"]),
          training_sample_size=int(params["training_sample_size"]),
      ).reorder(int(params["reorder_num_neighbors"]))
    searcher = builder.set_n_training_threads(training_threads).build()
    return cls(searcher, ids, table.shape[1], params)

  def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
             reorder_num_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product. leaves_to_search / reorder_num_neighbors override the built
    parameters for this call (tree mode only): more of either trades speed for recall."""
    queries = base.check_queries(queries, k, self.dim, len(self))
    if not len(queries):
      return np.zeros((0, k), np.float32), self._ids[:0].reshape(0, k)
    if self._params["mode"] == "brute_force":
      leaves, pre = None, None
    else:
      leaves = int(leaves_to_search or self._params["num_leaves_to_search"])
      pre = max(int(reorder_num_neighbors or self._params["reorder_num_neighbors"]), k)
    rows, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
        leaves_to_search=leaves, batch_size=int(self._params["search_batch_size"]))
    rows = np.asarray(rows, np.int64)
    scores = np.asarray(scores, np.float32)
    # ScaNN pads with row 0 and NaN distance when the searched leaves hold fewer than k rows.
    valid = ~np.isnan(scores)
    if valid.all():
      return scores, self._ids[rows]
    return np.where(valid, scores, -np.inf).astype(np.float32), base.take_ids(
        self._ids, rows, valid)

  def save(self, directory: str | os.PathLike) -> None:
    with base.atomic_directory(directory) as tmp:
      (tmp / _SCANN_DIR).mkdir()
      # Relative asset paths keep the store valid after the rename (and any later move).
      self._searcher.serialize(str(tmp / _SCANN_DIR), relative_path=True)
      base.write_ids(tmp, self._ids)
      base.write_manifest(tmp, self.kind, n=len(self), dim=self.dim, params=self._params)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ScannStore":
    manifest = base.read_manifest(directory, cls.kind)
    searcher = _scann().load_searcher(str(pathlib.Path(directory) / _SCANN_DIR))
    ids = base.read_ids(directory)
    if len(ids) != manifest["n"] or searcher.size() != manifest["n"]:
      raise ValueError(f"{directory}: manifest says {manifest['n']} entities, ids.npy has "
                       f"{len(ids)} and the ScaNN searcher {searcher.size()}")
    return cls(searcher, ids, manifest["dim"], manifest["params"])

  @property
  def size_bytes(self) -> int:
    """Estimated from the configuration: the float32 table (brute force, or the reordering
    copy), and for tree mode the 4-bit codes, each row's leaf and the leaf centres."""
    n, d = len(self), self.dim
    total = n * d * 4 + self._ids.nbytes
    if self._params["mode"] == "tree_ah":
      blocks = math.ceil(d / int(self._params["dimensions_per_block"]))
      total += n * math.ceil(blocks / 2) + n * 4 + int(self._params["num_leaves"]) * d * 4
      total += blocks * 16 * int(self._params["dimensions_per_block"]) * 4  # codebooks
    return int(total)
