"""On-accelerator store: the entity table sharded by rows over every axis of a mesh.

Search runs inside `jax.shard_map`: each device scores the (replicated) query batch against its
rows with one matmul, keeps its own top k (`lax.top_k`, or `lax.approx_max_k` in approximate
mode, which is approximate on TPU and exact elsewhere), and the shards' candidates are
gathered and reduced by a second top k. The table is padded to a multiple of the device
count; padded rows score -inf and can never be returned because k <= N.

Queries go through in fixed-size batches (the last one padded), so one compiled program per k
serves every call. Per device, one batch materializes [query_batch, rows_per_device] float32
scores.

The table is built from a row callback (`from_rows`) with `jax.make_array_from_callback`, so in
a multi-host job each process reads only the rows of its own devices; `save` writes one .npy
chunk per shard and `load` reads them back through the same callback, onto any mesh.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zel_jax import sharding as zel_sharding
from zel_jax.index import base

FetchRows = Callable[[int, int], np.ndarray]  # (start, stop) -> rows [stop - start, D]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype_name(dtype: Any) -> str:
  name = jnp.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f"DeviceStore tables are float32 or bfloat16, got {name}")
  return name


def _default_mesh() -> Mesh:
  return zel_sharding.make_mesh([("rows", -1)])


class DeviceStore(base.CandidateStore):
  """Entity table [N, D] sharded by rows over all axes of `mesh`; exact or approximate top-k."""

  kind = "device"

  def __init__(self, table: jax.Array, n: int, ids: np.ndarray, mesh: Mesh, *,
               approximate: bool = False, recall_target: float = 0.95,
               query_batch: int = 256):
    super().__init__(ids, table.shape[1])
    if query_batch < 1:
      raise ValueError(f"query_batch must be positive, got {query_batch}")
    self._table = table
    self._n = int(n)
    self._mesh = mesh
    self._axes = tuple(mesh.axis_names)
    self._rows_per_shard = table.shape[0] // mesh.size
    self.approximate = bool(approximate)
    self.recall_target = float(recall_target)
    self.query_batch = int(query_batch)
    self._query_sharding = NamedSharding(mesh, P())
    self._compiled: dict[tuple[int, bool], Callable[..., Any]] = {}

  # --------------------------------------------------------------------------- building

  @classmethod
  def table_sharding(cls, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(tuple(mesh.axis_names), None))

  @classmethod
  def from_rows(cls, n: int, dim: int, fetch: FetchRows, mesh: Mesh | None = None,
                ids: np.ndarray | None = None, dtype: Any = jnp.float32,
                **options: Any) -> "DeviceStore":
    """Builds the table shard by shard: `fetch(start, stop)` is called only for rows of this
    process's devices (each row once per device holding it) and must return float rows
    [stop - start, dim]. options: approximate, recall_target, query_batch."""
    if n < 1:
      raise ValueError("cannot build a candidate store from 0 embeddings (the store would be "
                       "empty)")
    if dim < 1:
      raise ValueError(f"embedding dimension must be positive, got {dim}")
    mesh = _default_mesh() if mesh is None else mesh
    dtype = _DTYPES[_dtype_name(dtype)]
    ids = base.normalize_ids(ids, n)
    shards = mesh.size
    rows_per_shard = math.ceil(n / shards)
    if rows_per_shard * shards > np.iinfo(np.int32).max:
      raise ValueError(f"{n} rows exceed the int32 row numbers of lax.top_k; split the store")
    sharding = cls.table_sharding(mesh)

    def one_shard(index: tuple[slice, ...]) -> np.ndarray:
      start, stop, _ = index[0].indices(rows_per_shard * shards)
      out = np.zeros((stop - start, dim), dtype)
      real_stop = min(stop, n)
      if start < real_stop:
        rows = np.asarray(fetch(start, real_stop))
        if rows.shape != (real_stop - start, dim):
          raise ValueError(f"fetch({start}, {real_stop}) returned shape {rows.shape}, "
                           f"expected {(real_stop - start, dim)}")
        if not jnp.issubdtype(rows.dtype, jnp.floating):
          raise ValueError(f"fetch({start}, {real_stop}) returned dtype {rows.dtype}, "
                           "expected floats")
        base.check_finite(rows, "embeddings", first_row=start)
        out[:real_stop - start] = rows.astype(dtype)
      return out

    table = jax.make_array_from_callback((rows_per_shard * shards, dim), sharding, one_shard)
    return cls(table, n, ids, mesh, **options)

  @classmethod
  def build(cls, embeddings: np.ndarray, ids: np.ndarray | None = None,
            mesh: Mesh | None = None, dtype: Any = jnp.float32,
            **options: Any) -> "DeviceStore":
    """From a full [N, D] host array (every process passing the same array)."""
    table = base.check_embeddings(embeddings)
    return cls.from_rows(len(table), table.shape[1], lambda a, b: table[a:b], mesh, ids,
                         dtype, **options)

  @classmethod
  def from_device_array(cls, embeddings: jax.Array, ids: np.ndarray | None = None,
                        mesh: Mesh | None = None, dtype: Any = jnp.float32,
                        **options: Any) -> "DeviceStore":
    """From embeddings already on the devices (e.g. the encoder's sharded output): padded and
    resharded by one jitted program, never gathered onto one host."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(f"embeddings must be [N >= 1, D], got shape {embeddings.shape}")
    mesh = _default_mesh() if mesh is None else mesh
    dtype = _DTYPES[_dtype_name(dtype)]
    n, dim = embeddings.shape
    padded = math.ceil(n / mesh.size) * mesh.size
    # Only a [N] bool vector comes to the host, to name the bad rows.
    bad = jax.jit(lambda x: ~jnp.isfinite(x).all(axis=1),
                  out_shardings=NamedSharding(mesh, P()))(embeddings)
    bad_rows = np.flatnonzero(_local(bad))
    if len(bad_rows):
      shown = ", ".join(map(str, bad_rows[:5]))
      raise ValueError(f"embeddings contain NaN or inf in {len(bad_rows)} row(s): {shown}")
    table = jax.jit(lambda x: jnp.pad(x.astype(dtype), ((0, padded - n), (0, 0))),
                    out_shardings=cls.table_sharding(mesh))(embeddings)
    return cls(table, n, base.normalize_ids(ids, n), mesh, **options)

  # --------------------------------------------------------------------------- properties

  @property
  def mesh(self) -> Mesh:
    return self._mesh

  @property
  def table(self) -> jax.Array:
    """The padded, sharded table [rows_per_shard * devices, D]."""
    return self._table

  @property
  def dtype(self) -> jnp.dtype:
    return self._table.dtype

  @property
  def size_bytes(self) -> int:
    return int(self._table.size * self._table.dtype.itemsize + self._ids.nbytes)

  # --------------------------------------------------------------------------- search

  def _search_fn(self, k: int, approximate: bool) -> Callable[[jax.Array, jax.Array], Any]:
    if (k, approximate) not in self._compiled:
      self._compiled[k, approximate] = self._make_search_fn(k, approximate)
    return self._compiled[k, approximate]

  def _make_search_fn(self, k: int, approximate: bool) -> Callable[[jax.Array, jax.Array], Any]:
    axes, n, rows_per_shard = self._axes, self._n, self._rows_per_shard
    # A shard may hold fewer than k rows; the merge still sees >= k real rows since k <= N.
    k_local = min(k, rows_per_shard)
    recall_target = self.recall_target

    def per_shard(queries, shard):
      scores = jax.lax.dot_general(queries.astype(shard.dtype), shard,
                                   (((1,), (1,)), ((), ())),
                                   preferred_element_type=jnp.float32)
      offset = jax.lax.axis_index(axes) * rows_per_shard
      rows = offset + jnp.arange(rows_per_shard)
      scores = jnp.where(rows[None, :] < n, scores, -jnp.inf)
      if approximate:
        top, idx = jax.lax.approx_max_k(scores, k_local, recall_target=recall_target)
      else:
        top, idx = jax.lax.top_k(scores, k_local)
      return top, idx + offset

    # Each shard's candidates land side by side in shard order, [B, shards * k_local]; the
    # compiler gathers them for the merge, which on equal scores prefers the lower row.
    local_top = jax.shard_map(per_shard, mesh=self._mesh, in_specs=(P(), P(axes, None)),
                              out_specs=(P(None, axes), P(None, axes)))

    def merged(queries, table):
      top, rows = local_top(queries, table)
      best, pos = jax.lax.top_k(top, k)
      return best, jnp.take_along_axis(rows, pos, axis=1)

    return jax.jit(merged, out_shardings=(self._query_sharding, self._query_sharding))

  def search_rows(self, queries: np.ndarray, k: int,
                  approximate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like search, but returns row numbers [Q, k] int32 instead of ids."""
    queries = base.check_queries(queries, k, self.dim, len(self))
    approximate = self.approximate if approximate is None else bool(approximate)
    fn = self._search_fn(int(k), approximate)
    if not len(queries):
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    b = self.query_batch
    pending = []
    # Dispatch every batch before fetching any: the device works while the host pads.
    for start in range(0, len(queries), b):
      batch = queries[start:start + b]
      if len(batch) < b:
        batch = np.concatenate([batch, np.zeros((b - len(batch), self.dim), np.float32)])
      batch = jax.make_array_from_process_local_data(self._query_sharding, batch)
      pending.append(fn(batch, self._table))
    scores = np.concatenate([_local(s) for s, _ in pending])[:len(queries)]
    rows = np.concatenate([_local(r) for _, r in pending])[:len(queries)]
    return scores, rows

  def search(self, queries: np.ndarray, k: int,
             approximate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product; approximate=None takes the store's mode."""
    scores, rows = self.search_rows(queries, k, approximate)
    return scores, self._ids[rows]

  # --------------------------------------------------------------------------- files

  def _chunk_ranges(self) -> list[tuple[int, int]]:
    r = self._rows_per_shard
    return [(i * r, min((i + 1) * r, self._n)) for i in range(self._mesh.size) if i * r < self._n]

  def _write_chunks(self, directory: pathlib.Path) -> None:
    for shard in self._table.addressable_shards:
      if shard.replica_id != 0:
        continue
      start, stop, _ = shard.index[0].indices(self._table.shape[0])
      stop = min(stop, self._n)
      if start >= stop:
        continue
      rows = np.asarray(shard.data)[:stop - start]
      if rows.dtype == jnp.bfloat16:  # .npy has no bfloat16; the manifest records the dtype.
        rows = rows.view(np.uint16)
      np.save(directory / f"table-{start:012d}-{stop:012d}.npy", rows, allow_pickle=False)

  def _write_metadata(self, directory: pathlib.Path) -> None:
    base.write_ids(directory, self._ids)
    base.write_manifest(directory, self.kind, n=self._n, dim=self.dim,
                        dtype=_dtype_name(self.dtype), chunks=self._chunk_ranges())

  def save(self, directory: str | os.PathLike) -> None:
    """Writes one .npy per shard (padding excluded), ids.npy and store.json. With several
    processes, `directory` must be on a file system they share; each writes its own shards."""
    if jax.process_count() == 1:
      with base.atomic_directory(directory) as tmp:
        self._write_chunks(tmp)
        self._write_metadata(tmp)
      return
    # Processes cannot share a random temporary name, so the staging directory is fixed and
    # cleared by process 0 before anyone writes into it.
    target = pathlib.Path(directory).absolute()
    tmp = target.parent / f".{target.name}.tmp-multihost"
    lead = jax.process_index() == 0
    if lead:
      shutil.rmtree(tmp, ignore_errors=True)
      tmp.mkdir(parents=True)
    multihost_utils.sync_global_devices(f"DeviceStore.save {target}: staging ready")
    self._write_chunks(tmp)
    multihost_utils.sync_global_devices(f"DeviceStore.save {target}: chunks written")
    if lead:
      self._write_metadata(tmp)
      base._replace_directory(tmp, target)  # pylint: disable=protected-access
    multihost_utils.sync_global_devices(f"DeviceStore.save {target}: done")

  @classmethod
  def load(cls, directory: str | os.PathLike, mesh: Mesh | None = None,
           **options: Any) -> "DeviceStore":
    """Reads a saved store onto `mesh` (any device count); each process reads only the rows
    of its own devices. options: dtype (default: as saved), approximate, recall_target,
    query_batch."""
    directory = pathlib.Path(directory)
    manifest = base.read_manifest(directory, cls.kind)
    n, dim, saved_dtype = manifest["n"], manifest["dim"], _DTYPES[manifest["dtype"]]
    chunks = sorted(tuple(c) for c in manifest["chunks"])
    if chunks[0][0] != 0 or chunks[-1][1] != n or any(
        a[1] != b[0] for a, b in zip(chunks, chunks[1:])):
      raise ValueError(f"{directory}: chunks {chunks} do not cover rows [0, {n})")
    starts = [c[0] for c in chunks]

    @functools.lru_cache(maxsize=None)
    def open_chunk(i: int) -> np.ndarray:
      start, stop = chunks[i]
      path = directory / f"table-{start:012d}-{stop:012d}.npy"
      rows = np.load(path, mmap_mode="r", allow_pickle=False)
      if rows.shape != (stop - start, dim):
        raise ValueError(f"{path} has shape {rows.shape}, expected {(stop - start, dim)}")
      return rows.view(jnp.bfloat16) if saved_dtype == jnp.bfloat16 else rows

    def fetch(start: int, stop: int) -> np.ndarray:
      parts = []
      i = int(np.searchsorted(starts, start, side="right")) - 1
      while start < stop:
        c_start, c_stop = chunks[i]
        take = min(stop, c_stop)
        parts.append(np.asarray(open_chunk(i)[start - c_start:take - c_start]))
        start, i = take, i + 1
      return np.concatenate(parts)

    options.setdefault("dtype", saved_dtype)
    return cls.from_rows(n, dim, fetch, mesh, base.read_ids(directory), **options)


def _local(x: jax.Array) -> np.ndarray:
  """A replicated result as numpy, also where other processes hold copies of it."""
  return np.asarray(x.addressable_shards[0].data)

