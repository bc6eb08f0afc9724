"""Batching: resumption, per-epoch shuffles, per-process slices, single-world batches, eval."""

import json

import numpy as np
import pytest

from zel_jax.data import pipeline


def _features(n, length=4):
  ids = np.arange(n * length, dtype=np.int32).reshape(n, length)
  return {"input_ids": ids, "label": np.arange(n, dtype=np.int32) * 10}


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_index_the_features():
  feats = _features(20)
  batch = next(pipeline.BatchIterator(feats, 8, seed=3, process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["input_ids"], feats["input_ids"][batch["example_index"]])
  np.testing.assert_array_equal(batch["label"], batch["example_index"] * 10)
  assert batch["valid"].dtype == bool and batch["valid"].all()
  assert batch["example_index"].dtype == np.int32 and batch["input_ids"].shape == (8, 4)


@pytest.mark.parametrize("groups", [None, "worlds"])
@pytest.mark.parametrize("stop", [3, 5, 7, 12])
def test_resume_gives_identical_batches(groups, stop):
  n = 37
  keys = np.array(["a", "b", "c"])[np.arange(n) % 3] if groups else None
  kwargs = dict(seed=11, groups=keys, remainder="pad", process_index=0, process_count=1)
  reference = _take(pipeline.BatchIterator(_features(n), 4, **kwargs), 25)
  it = pipeline.BatchIterator(_features(n), 4, **kwargs)
  _take(it, stop)
  saved = json.loads(json.dumps(it.state()))  # Saved with the checkpoint as JSON.
  resumed = pipeline.BatchIterator(_features(n), 4, state=saved, **kwargs)
  assert resumed.state() == it.state()
  for a, b in zip(reference[stop:], _take(resumed, 25 - stop)):
    _same(a, b)


def test_state_across_epoch_boundary():
  it = pipeline.BatchIterator(_features(12), 4, seed=0, process_index=0, process_count=1)
  assert it.batches_per_epoch == 3
  _take(it, 3)
  assert (it.state()["epoch"], it.state()["batch"]) == (1, 0)
  _take(it, 1)
  assert (it.state()["epoch"], it.state()["batch"]) == (1, 1)
  # A state saved at the end of an epoch as {epoch, batches_per_epoch} resumes at the next.
  raw = dict(it.state(), epoch=0, batch=3)
  resumed = pipeline.BatchIterator(_features(12), 4, seed=0, state=raw, process_index=0,
                                   process_count=1)
  fresh = pipeline.BatchIterator(_features(12), 4, seed=0, process_index=0, process_count=1)
  _take(fresh, 3)
  _same(next(resumed), next(fresh))


def test_restore_rejects_another_pipeline():
  it = pipeline.BatchIterator(_features(12), 4, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="different pipeline"):
    pipeline.BatchIterator(_features(12), 4, seed=1, state=it.state(), process_index=0,
                           process_count=1)
  with pytest.raises(ValueError, match="outside an epoch"):
    it.restore(dict(it.state(), batch=9))


def test_each_epoch_covers_every_example_once_and_shuffles_differently():
  n, b = 40, 8
  it = pipeline.BatchIterator(_features(n), b, seed=5, process_index=0, process_count=1)
  epochs = [np.concatenate([x["example_index"] for x in _take(it, 5)]) for _ in range(3)]
  for order in epochs:
    assert sorted(order.tolist()) == list(range(n))
  assert len({tuple(o) for o in epochs}) == 3
  other = pipeline.BatchIterator(_features(n), b, seed=6, process_index=0, process_count=1)
  assert not np.array_equal(np.concatenate([x["example_index"] for x in _take(other, 5)]),
                            epochs[0])
  plain = pipeline.BatchIterator(_features(n), b, shuffle=False, process_index=0,
                                 process_count=1)
  np.testing.assert_array_equal(
      np.concatenate([x["example_index"] for x in _take(plain, 5)]), np.arange(n))


def test_remainder_drop_and_pad():
  n, b = 23, 5
  drop = pipeline.BatchIterator(_features(n), b, seed=1, process_index=0, process_count=1)
  assert drop.batches_per_epoch == 4
  seen = np.concatenate([x["example_index"] for x in _take(drop, 4)])
  assert len(set(seen.tolist())) == 20
  pad = pipeline.BatchIterator(_features(n), b, seed=1, remainder="pad", process_index=0,
                               process_count=1)
  assert pad.batches_per_epoch == 5
  batches = _take(pad, 5)
  valid_ids = np.concatenate([x["example_index"][x["valid"]] for x in batches])
  assert sorted(valid_ids.tolist()) == list(range(n))
  assert sum((~x["valid"]).sum() for x in batches) == 2


def test_per_process_slices_concatenate_to_the_global_batch():
  n, b, procs = 50, 8, 4
  keys = np.arange(n) % 2
  global_it = pipeline.BatchIterator(_features(n), b, seed=2, groups=keys, remainder="pad",
                                     process_index=0, process_count=1)
  local_its = [pipeline.BatchIterator(_features(n), b, seed=2, groups=keys, remainder="pad",
                                      process_index=p, process_count=procs)
               for p in range(procs)]
  for _ in range(10):
    whole = next(global_it)
    parts = [next(it) for it in local_its]
    assert all(p["input_ids"].shape == (b // procs, 4) for p in parts)
    _same(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})
  with pytest.raises(ValueError, match="does not split"):
    pipeline.BatchIterator(_features(n), 6, process_index=0, process_count=4)
  evals = [list(pipeline.eval_batches(_features(n), b, process_index=p, process_count=procs))
           for p in range(procs)]
  whole = list(pipeline.eval_batches(_features(n), b, process_index=0, process_count=1))
  for i, w in enumerate(whole):
    _same(w, {k: np.concatenate([e[i][k] for e in evals]) for k in w})


def test_single_world_batches():
  rng = np.random.default_rng(0)
  worlds = np.array(["doctor_who", "military", "starwars", "lego"])[rng.integers(0, 4, 200)]
  b = 8
  for remainder in ("drop", "pad"):
    it = pipeline.BatchIterator(_features(200), b, seed=4, groups=worlds, remainder=remainder,
                                process_index=0, process_count=1)
    for _ in range(2):  # Two epochs.
      batches = _take(it, it.batches_per_epoch)
      seen = []
      for x in batches:
        assert len(set(worlds[x["example_index"]].tolist())) == 1
        seen.extend(x["example_index"][x["valid"]].tolist())
      assert len(seen) == len(set(seen))
      if remainder == "pad":
        assert sorted(seen) == list(range(200))
      else:
        # Only each world's remainder is dropped.
        _, sizes = np.unique(worlds, return_counts=True)
        assert len(seen) == (sizes // b * b).sum()
    # Worlds are interleaved, not visited one after another.
    firsts = [worlds[x["example_index"][0]] for x in batches]
    assert len(set(firsts[:6])) > 1


def test_groups_too_small_for_a_batch():
  with pytest.raises(ValueError, match="no batch of 8"):
    pipeline.BatchIterator(_features(12), 8, groups=np.arange(12) % 2, process_index=0,
                           process_count=1)


def test_num_epochs_stops():
  it = pipeline.BatchIterator(_features(10), 5, num_epochs=2, process_index=0, process_count=1)
  assert len(list(it)) == 4


def test_eval_batches_pad_with_mask():
  n, b = 11, 4
  batches = list(pipeline.eval_batches(_features(n), b, process_index=0, process_count=1))
  assert len(batches) == pipeline.num_eval_batches(n, b) == 3
  assert all(x["input_ids"].shape == (4, 4) for x in batches)
  np.testing.assert_array_equal(np.concatenate([x["example_index"] for x in batches]),
                                list(range(11)) + [10])
  np.testing.assert_array_equal(batches[-1]["valid"], [True, True, True, False])
  assert all(x["valid"].all() for x in batches[:-1])
  assert list(pipeline.eval_batches(_features(8), 4, process_index=0, process_count=1))[-1][
      "valid"].all()


def test_feeds_sharding_global_batch():
  import jax  # pylint: disable=g-import-not-at-top
  from zel_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh([("data", -1)])
  it = pipeline.BatchIterator(_features(40), 16, seed=0)  # jax's process index and count.
  local = next(it)
  arrays = sharding.global_batch(local, mesh, ("data",))
  assert arrays["input_ids"].shape == (16, 4)
  np.testing.assert_array_equal(jax.device_get(arrays["example_index"]), local["example_index"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="disagree"):
    pipeline.BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, 1, process_index=0,
                           process_count=1)
  with pytest.raises(ValueError, match="reserved"):
    pipeline.BatchIterator({"valid": np.zeros(3)}, 1, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="remainder"):
    pipeline.BatchIterator(_features(4), 2, remainder="wrap", process_index=0, process_count=1)
