"""Candidate stores: exactness against numpy brute force, recall of the approximate modes,
save/load round trips, ids of any dtype, and the errors users hit."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zel_jax import sharding
from zel_jax.index import base
from zel_jax.index import load_store
from zel_jax.index.device_store import DeviceStore
from zel_jax.index.numpy_store import NumpyStore, exact_search
from zel_jax.index.scann_store import ScannStore


def _random(n, d, seed=0):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _clustered(n, d, clusters, seed=0):
  """Unit vectors around random centres, and queries near random rows."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((clusters, d)).astype(np.float32)
  x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, d)).astype(
      np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x


def _recall(found, exact):
  return np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)])


def _brute(table, queries, k):
  """Reference without argpartition: a full stable sort of every score row."""
  scores = queries @ table.T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def mesh8():
  assert jax.device_count() == 8
  return sharding.make_mesh([("data", 2), ("model", -1)])


# ----------------------------------------------------------------------------- numpy


def test_exact_search_matches_full_sort():
  table, queries = _random(1001, 24), _random(70, 24, seed=1)
  scores, rows = exact_search(table, queries, 33, block=16)
  ref_scores, ref_rows = _brute(table, queries, 33)
  np.testing.assert_array_equal(rows, ref_rows)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)


def test_exact_search_orders_equal_scores_by_row():
  table = np.array([[1.0], [3.0], [3.0], [0.0], [3.0], [2.0]], np.float32)
  scores, rows = exact_search(table, np.ones((2, 1), np.float32), 4)
  np.testing.assert_array_equal(rows, [[1, 2, 4, 5]] * 2)
  np.testing.assert_array_equal(scores, [[3, 3, 3, 2]] * 2)


# ----------------------------------------------------------------------------- device


def test_device_exact_equals_numpy_on_8_devices(mesh8):
  n = 1003  # not a multiple of 8: the last shard is padded
  table, queries = _random(n, 32), _random(45, 32, seed=1)
  ids = np.arange(n) * 7 + 5
  store = DeviceStore.build(table, ids, mesh=mesh8, query_batch=16)  # 3 batches, last padded
  assert store.table.shape == (1008, 32)
  assert store.table.sharding.spec == jax.sharding.PartitionSpec(("data", "model"), None)
  scores, found = store.search(queries, 17)
  ref_scores, ref_rows = _brute(table, queries, 17)
  np.testing.assert_array_equal(found, ids[ref_rows])
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
  assert scores.dtype == np.float32


def test_device_never_returns_padding_rows(mesh8):
  # All real scores are negative, so zero-filled padding rows would outscore every real row
  # unless masked; k = N forces every shard's padding into contention.
  n = 13
  table = -np.abs(_random(n, 8)) - 0.1
  queries = np.abs(_random(5, 8, seed=2))
  store = DeviceStore.build(table, mesh=mesh8, query_batch=4)
  scores, rows = store.search(queries, n)
  assert np.isfinite(scores).all()
  assert (rows < n).all()
  for r in rows:
    assert sorted(r) == list(range(n))
  np.testing.assert_allclose(scores, _brute(table, queries, n)[0], rtol=1e-5)


def test_device_approximate_recall(mesh8):
  table, queries = _clustered(4000, 32, 40), _clustered(64, 32, 40, seed=3)
  store = DeviceStore.build(table, mesh=mesh8, approximate=True, recall_target=0.95)
  _, found = store.search(queries, 20)
  _, exact = _brute(table, queries, 20)
  assert _recall(found, exact) >= 0.95
  _, exact_mode = store.search(queries, 20, approximate=False)
  np.testing.assert_array_equal(exact_mode, exact)


def test_device_bf16_close_to_exact(mesh8):
  table, queries = _clustered(3000, 64, 30), _clustered(50, 64, 30, seed=4)
  store = DeviceStore.build(table, mesh=mesh8, dtype=jnp.bfloat16)
  assert store.dtype == jnp.bfloat16
  assert store.size_bytes == 3000 * 64 * 2 + 3000 * 8
  scores, found = store.search(queries, 10)
  assert scores.dtype == np.float32
  ref_scores, exact = _brute(table, queries, 10)
  assert _recall(found, exact) >= 0.9
  np.testing.assert_allclose(scores, ref_scores, atol=0.02)  # unit vectors: |score| <= 1


def test_device_from_rows_reads_each_row_once_per_device(mesh8):
  n, d = 21, 4
  table = _random(n, d)
  calls = []

  def fetch(start, stop):
    calls.append((start, stop))
    return table[start:stop]

  store = DeviceStore.from_rows(n, d, fetch, mesh8)
  assert sorted(calls) == [(i * 3, i * 3 + 3) for i in range(7)]  # 8th shard: padding only
  np.testing.assert_array_equal(np.asarray(store.table)[:n], table)


def test_device_from_rows_names_bad_rows(mesh8):
  table = _random(40, 4)
  table[27, 1] = np.nan
  with pytest.raises(ValueError, match=r"NaN in 1 row\(s\): 27"):
    DeviceStore.from_rows(40, 4, lambda a, b: table[a:b], mesh8)
  with pytest.raises(ValueError, match=r"returned shape \(5, 3\), expected \(5, 4\)"):
    DeviceStore.from_rows(40, 4, lambda a, b: table[a:b, :3], mesh8)


def test_device_from_device_array(mesh8):
  n = 301
  table, queries = _random(n, 16), _random(7, 16, seed=12)
  on_devices = jax.device_put(table[:296], jax.sharding.NamedSharding(
      mesh8, jax.sharding.PartitionSpec("data")))  # sharded otherwise than the store wants
  store = DeviceStore.from_device_array(on_devices, mesh=mesh8)
  assert store.table.shape == (296, 16) and len(store) == 296
  np.testing.assert_array_equal(store.search(queries, 9)[1], _brute(table[:296], queries, 9)[1])
  store = DeviceStore.from_device_array(jnp.asarray(table), mesh=mesh8, dtype=jnp.bfloat16)
  assert store.table.shape == (304, 16)
  assert _recall(store.search(queries, 9)[1], _brute(table, queries, 9)[1]) >= 0.85
  with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\): 5"):
    DeviceStore.from_device_array(jnp.asarray(table).at[5, 2].set(jnp.nan), mesh=mesh8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_device_save_load_round_trip_onto_other_meshes(tmp_path, mesh8, dtype):
  table, queries = _random(203, 16), _random(9, 16, seed=5)
  ids = np.array([f"Q{i}" for i in range(203)])
  store = DeviceStore.build(table, ids, mesh=mesh8, dtype=dtype)
  scores, found = store.search(queries, 12)
  assert found.dtype.kind == "U" and found[0, 0].startswith("Q")
  store.save(tmp_path / "s")
  one_device = sharding.make_mesh([("rows", 1)], devices=jax.devices()[:1])
  for mesh in (mesh8, one_device, sharding.make_mesh([("x", 3)], devices=jax.devices()[:3])):
    loaded = load_store(tmp_path / "s", mesh=mesh)
    assert isinstance(loaded, DeviceStore) and loaded.dtype == dtype
    np.testing.assert_array_equal(loaded.ids, ids)
    s2, f2 = loaded.search(queries, 12)
    np.testing.assert_array_equal(f2, found)
    np.testing.assert_allclose(s2, scores, rtol=1e-6, atol=1e-6)


def test_device_errors(mesh8):
  store = DeviceStore.build(_random(50, 8), mesh=mesh8)
  with pytest.raises(ValueError, match="query dimension 9 does not match .* dimension 8"):
    store.search(_random(2, 9), 3)
  with pytest.raises(ValueError, match=r"k=51 exceeds the number of entities in the store \(50\)"):
    store.search(_random(2, 8), 51)
  with pytest.raises(ValueError, match="0 embeddings"):
    DeviceStore.build(np.zeros((0, 8), np.float32), mesh=mesh8)
  bad = _random(50, 8)
  bad[[3, 9]] = np.inf
  with pytest.raises(ValueError, match=r"inf in 2 row\(s\): 3, 9"):
    DeviceStore.build(bad, mesh=mesh8)
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    DeviceStore.build(_random(50, 8), mesh=mesh8, dtype=jnp.float16)


# ----------------------------------------------------------------------------- scann


def test_scann_brute_force_equals_exact():
  table, queries = _random(3000, 32), _random(40, 32, seed=6)
  store = ScannStore.build(table)
  assert store.params["mode"] == "brute_force"
  scores, rows = store.search(queries, 25)
  ref_scores, ref_rows = _brute(table, queries, 25)
  np.testing.assert_array_equal(rows, ref_rows)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tree_store():
  table = _clustered(30_000, 32, 300, seed=7)
  store = ScannStore.build(table)
  return table, store


def test_scann_tree_ah_recall_on_clustered_data(tree_store):
  table, store = tree_store
  params = store.params
  assert params["mode"] == "tree_ah"
  assert params["num_leaves"] == 346  # ~2 sqrt(30k)
  queries = table[::300] + 0.05 * _random(100, 32, seed=8)
  _, found = store.search(queries, 64)
  _, exact = _brute(table, queries, 64)
  assert _recall(found, exact) >= 0.97
  # Fewer leaves and candidates cost recall: the knobs reach the searcher.
  _, coarse = store.search(queries, 64, leaves_to_search=1, reorder_num_neighbors=64)
  assert _recall(coarse, exact) < _recall(found, exact)


def test_scann_pads_when_leaves_hold_fewer_than_k(tree_store):
  table, store = tree_store
  scores, found = store.search(table[:4], 2000, leaves_to_search=1)
  missing = np.isneginf(scores)
  assert missing.any() and (found[missing] == -1).all() and (found[~missing] >= 0).all()
  for s, m in zip(scores, missing):  # real results first, best first
    assert not m[:np.argmax(m)].any() and (np.diff(s[~m]) <= 1e-6).all()


def test_scann_save_load_round_trip(tmp_path, tree_store):
  table, store = tree_store
  queries = _random(30, 32, seed=9)
  scores, found = store.search(queries, 10)
  store.save(tmp_path / "tree")
  loaded = load_store(tmp_path / "tree")
  assert isinstance(loaded, ScannStore) and loaded.params == store.params
  s2, f2 = loaded.search(queries, 10)
  np.testing.assert_array_equal(f2, found)
  np.testing.assert_array_equal(s2, scores)
  on_disk = base.directory_bytes(tmp_path / "tree")
  assert 0.7 < store.size_bytes / on_disk < 1.3


def test_scann_string_ids_and_overwrite(tmp_path):
  table, queries = _random(500, 16), _random(6, 16, seed=10)
  ids = np.array([f"entity/{i}" for i in range(500)], dtype=object)  # object -> str
  store = ScannStore.build(table, ids)
  scores, found = store.search(queries, 5)
  _, rows = _brute(table, queries, 5)
  np.testing.assert_array_equal(found, np.array([f"entity/{i}" for i in range(500)])[rows])
  target = tmp_path / "s"
  ScannStore.build(_random(100, 16)).save(target)
  store.save(target)  # replaces the smaller store
  s2, f2 = ScannStore.load(target).search(queries, 5)
  np.testing.assert_array_equal(f2, found)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary left behind


def test_failed_save_keeps_the_old_store(tmp_path, monkeypatch):
  table, queries = _random(300, 8), _random(3, 8, seed=11)
  old = NumpyStore.build(table)
  old.save(tmp_path / "s")

  def crash(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(base, "write_manifest", crash)
  with pytest.raises(OSError, match="disk full"):
    NumpyStore.build(_random(10, 8)).save(tmp_path / "s")
  monkeypatch.undo()
  np.testing.assert_array_equal(load_store(tmp_path / "s").search(queries, 4)[1],
                                old.search(queries, 4)[1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_scann_errors():
  table = _random(100, 8)
  with pytest.raises(ValueError, match=r"unknown ScannStore config keys \['num_leafs'\]"):
    ScannStore.build(table, config={"num_leafs": 10})
  with pytest.raises(ValueError, match="100 ids for 99 embeddings"):
    ScannStore.build(table[:99], ids=np.arange(100))
  bad = table.copy()
  bad[42, 0] = np.nan
  with pytest.raises(ValueError, match=r"embeddings contain NaN in 1 row\(s\): 42"):
    ScannStore.build(bad)
  store = ScannStore.build(table)
  with pytest.raises(ValueError, match="query dimension 4 does not match"):
    store.search(_random(1, 4), 1)
  with pytest.raises(ValueError, match=r"k=101 exceeds"):
    store.search(_random(1, 8), 101)
  with pytest.raises(ValueError, match=r"queries contain NaN in 1 row\(s\): 0"):
    store.search(np.full((1, 8), np.nan, np.float32), 1)
  with pytest.raises(FileNotFoundError, match="store.json is missing"):
    ScannStore.load(pathlib.Path("/nonexistent-store"))


# ----------------------------------------------------------------------------- multi-host

_WORKER = r'''
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import numpy as np
from zel_jax import sharding
from zel_jax.index.device_store import DeviceStore
rng = np.random.default_rng(0)
table = rng.standard_normal((203, 16)).astype(np.float32)
queries = rng.standard_normal((9, 16)).astype(np.float32)
calls = []
def fetch(start, stop):
  calls.append((start, stop))
  return table[start:stop]
store = DeviceStore.from_rows(203, 16, fetch, sharding.make_mesh([("rows", -1)]),
                              ids=[f"e{i}" for i in range(203)], query_batch=4)
scores, ids = store.search(queries, 11)
store.save(f"{out}/store")
with open(f"{out}/p{pid}.json", "w") as f:
  json.dump({"calls": calls, "ids": ids.tolist(), "scores": scores.tolist()}, f)
'''


def test_device_store_two_processes(tmp_path, mesh8):
  """Two processes x 4 CPU devices: each fetches only its own rows, search and the shared
  save work across processes, and the saved store loads in one process."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(i), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-3000:]
  results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
  calls = [sorted(map(tuple, r["calls"])) for r in results]
  # 203 rows over 8 devices: 26 per device, the last device holds 21 real rows.
  assert len(calls[0]) == len(calls[1]) == 4
  assert sorted(calls[0] + calls[1]) == [(i * 26, min(i * 26 + 26, 203)) for i in range(8)]
  rng = np.random.default_rng(0)
  table = rng.standard_normal((203, 16)).astype(np.float32)
  queries = rng.standard_normal((9, 16)).astype(np.float32)
  ref_scores, ref_rows = _brute(table, queries, 11)
  for r in results:
    np.testing.assert_array_equal(r["ids"], [[f"e{i}" for i in row] for row in ref_rows])
    np.testing.assert_allclose(r["scores"], ref_scores, rtol=1e-5, atol=1e-5)
  loaded = DeviceStore.load(tmp_path / "store", mesh=mesh8)
  np.testing.assert_array_equal(loaded.search(queries, 11)[1], results[0]["ids"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.json", "p1.json", "store"]


def test_no_queries_give_empty_results(mesh8):
  table = _random(40, 8)
  ids = np.array([f"e{i}" for i in range(40)])
  for store in (NumpyStore.build(table, ids), ScannStore.build(table, ids),
                DeviceStore.build(table, ids, mesh=mesh8)):
    scores, found = store.search(np.zeros((0, 8), np.float32), 5)
    assert scores.shape == found.shape == (0, 5), type(store)
    assert scores.dtype == np.float32 and found.dtype == ids.dtype
