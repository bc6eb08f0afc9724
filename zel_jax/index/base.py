"""The interface every candidate store implements, and the checks and file layout they share.

A store maps entity embeddings [N, D] to entity ids and answers maximum-inner-product queries:
the bi-encoder scores a mention against an entity by a dot product, so every store ranks by
`query @ entity`, highest first.

On disk a store is a directory holding `store.json` (its kind, sizes and parameters), `ids.npy`
and whatever the store needs besides. `save` writes everything into a sibling temporary
directory and renames it into place, so a crash leaves either the old store or the new one,
never a mixture.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

MANIFEST = "store.json"
IDS_FILE = "ids.npy"


class CandidateStore(abc.ABC):
  """Top-k maximum-inner-product search over a fixed set of entity embeddings."""

  kind: str  # Written to store.json; load_store() dispatches on it.

  def __init__(self, ids: np.ndarray, dim: int):
    self._ids = ids
    self._dim = int(dim)

  @property
  def ids(self) -> np.ndarray:
    """Entity id of every row, in row order."""
    return self._ids

  @property
  def dim(self) -> int:
    return self._dim

  def __len__(self) -> int:
    return len(self._ids)

  @abc.abstractmethod
  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k entities of each query by inner product, best first.

    Args:
      queries: [Q, D] float.
      k: 1 <= k <= len(self).

    Returns:
      scores [Q, k] float32 and ids [Q, k] (the dtype of `self.ids`). An approximate store that
      finds fewer than k candidates for a query fills the rest with score -inf and
      `missing_id(ids.dtype)`.
    """

  @abc.abstractmethod
  def save(self, directory: str | os.PathLike) -> None:
    """Writes the store to `directory`, atomically replacing any store already there."""

  @classmethod
  @abc.abstractmethod
  def load(cls, directory: str | os.PathLike, **kwargs: Any) -> "CandidateStore":
    """Reads a store written by `save`."""

  @property
  @abc.abstractmethod
  def size_bytes(self) -> int:
    """Memory the store holds for its entities (table, codes, index structure and ids)."""


# ----------------------------------------------------------------------------- checks


def check_embeddings(embeddings: np.ndarray, *, first_row: int = 0) -> np.ndarray:
  """Float32 [N, D] with N >= 1 and no NaN/inf; errors name the offending rows."""
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
  if embeddings.shape[0] == 0:
    raise ValueError("cannot build a candidate store from 0 embeddings (the store would be "
                     "empty)")
  if embeddings.shape[1] == 0:
    raise ValueError(f"embeddings have dimension 0 (shape {embeddings.shape})")
  if not np.issubdtype(embeddings.dtype, np.floating):
    raise ValueError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
  check_finite(embeddings, "embeddings", first_row=first_row)
  return np.ascontiguousarray(embeddings, dtype=np.float32)


def check_finite(x: np.ndarray, what: str, *, first_row: int = 0) -> None:
  finite = np.isfinite(x)
  if not finite.all():
    bad_rows = np.flatnonzero(~finite.all(axis=tuple(range(1, x.ndim))))
    kind = "NaN" if np.isnan(x).any() else "inf"
    shown = ", ".join(str(r + first_row) for r in bad_rows[:5])
    more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
    raise ValueError(f"{what} contain {kind} in {len(bad_rows)} row(s): {shown}{more}")


def check_queries(queries: np.ndarray, k: int, dim: int, size: int) -> np.ndarray:
  """Float32 [Q, D] queries, checked against the store's dimension and size."""
  queries = np.asarray(queries)
  if queries.ndim != 2:
    raise ValueError(f"queries must be [Q, D], got shape {queries.shape}")
  if queries.shape[1] != dim:
    raise ValueError(f"query dimension {queries.shape[1]} does not match the store's "
                     f"embedding dimension {dim}")
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"k must be an int, got {type(k).__name__}")
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if k > size:
    raise ValueError(f"k={k} exceeds the number of entities in the store ({size})")
  check_finite(queries, "queries")
  return np.ascontiguousarray(queries, dtype=np.float32)


def normalize_ids(ids: Any, n: int) -> np.ndarray:
  """1-D id array of length n; None means row numbers. Object arrays of str become str arrays
  so that ids.npy loads without pickle."""
  if ids is None:
    return np.arange(n, dtype=np.int64)
  ids = np.asarray(ids)
  if ids.dtype == object:
    converted = np.asarray(ids.tolist())
    if converted.dtype == object or converted.dtype.kind not in "iuUS":
      raise ValueError("ids of object dtype must all be str, bytes or int, got "
                       f"{sorted({type(x).__name__ for x in ids.tolist()})}")
    ids = converted
  if ids.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
  if len(ids) != n:
    raise ValueError(f"{len(ids)} ids for {n} embeddings")
  if ids.dtype.kind not in "iuUSf":
    raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")
  return ids


def missing_id(dtype: np.dtype) -> Any:
  """Filler id where an approximate store returns fewer than k candidates."""
  dtype = np.dtype(dtype)
  if dtype.kind in "iu":
    return -1 if dtype.kind == "i" else np.iinfo(dtype).max
  if dtype.kind == "f":
    return np.nan
  return dtype.type()  # "" or b""


def take_ids(ids: np.ndarray, rows: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """ids[rows], with `missing_id` where `valid` is False."""
  if valid is None:
    return ids[rows]
  out = ids[np.where(valid, rows, 0)]
  out[~valid] = missing_id(ids.dtype)
  return out


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory beside `directory` and renames it onto `directory`
  when the block succeeds; on error the temporary directory is removed and `directory` is
  untouched."""
  target = pathlib.Path(directory).absolute()
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  try:
    yield tmp
    _replace_directory(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _replace_directory(tmp: pathlib.Path, target: pathlib.Path) -> None:
  # os.replace cannot put a directory over a non-empty one, so the old store steps aside
  # first; between the two renames a crash leaves the old store complete under `old`.
  if target.exists() or target.is_symlink():
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "store")
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, target)
  _fsync_dir(target.parent)


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_manifest(directory: pathlib.Path, kind: str, **fields: Any) -> None:
  with open(directory / MANIFEST, "w") as f:
    json.dump({"kind": kind, **fields}, f, indent=2, sort_keys=True)
    f.write("\n")


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f"{directory} is not a candidate store: {MANIFEST} is missing")
  with open(path) as f:
    manifest = json.load(f)
  if kind is not None and manifest.get("kind") != kind:
    raise ValueError(f"{directory} holds a {manifest.get('kind')!r} store, not {kind!r}")
  return manifest


def write_ids(directory: pathlib.Path, ids: np.ndarray) -> None:
  np.save(directory / IDS_FILE, ids, allow_pickle=False)


def read_ids(directory: str | os.PathLike) -> np.ndarray:
  return np.load(pathlib.Path(directory) / IDS_FILE, allow_pickle=False)


def directory_bytes(directory: str | os.PathLike) -> int:
  return sum(p.stat().st_size for p in pathlib.Path(directory).rglob("*") if p.is_file())
