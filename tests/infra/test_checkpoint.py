"""Checkpoint round trips with shardings, kill/resume, preemption and the resume order."""

import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from zel_jax import checkpoint, sharding

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "checkpoint_worker.py")


def _state(mesh):
  w = jax.device_put(np.arange(64 * 8, dtype=np.float32).reshape(64, 8),
                     NamedSharding(mesh, P("fsdp", None)))
  b = jax.device_put(np.linspace(0, 1, 8, dtype=np.float32), NamedSharding(mesh, P()))
  return {"params": {"w": w, "b": b}, "opt_state": {"mu": w * 0.5, "count": jnp.int32(7)}}


def test_round_trip_preserves_values_and_shardings(tmp_path):
  mesh = sharding.make_mesh([("fsdp", -1)])
  state = _state(mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.save(3, state, meta={"pipeline": {"epoch": 1, "index": 40}})
  ckpt.wait()
  abstract = {k: checkpoint.abstract_like(v) for k, v in state.items()}
  restored, meta = ckpt.restore(abstract)
  assert meta == {"pipeline": {"epoch": 1, "index": 40}, "step": 3}
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
  assert restored["params"]["w"].addressable_shards[0].data.shape == (8, 8)

  # Restoring onto another mesh reshards: a run may resume on a different topology.
  other = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  target = NamedSharding(other, P(("data", "fsdp"), None))
  abstract_params = {"w": jax.ShapeDtypeStruct((64, 8), jnp.float32, sharding=target),
                     "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(
                         other, P()))}
  only_params, _ = ckpt.restore({"params": abstract_params})
  assert only_params["params"]["w"].sharding == target
  np.testing.assert_array_equal(only_params["params"]["w"], state["params"]["w"])
  ckpt.close()


def test_keep_and_interval(tmp_path):
  mesh = sharding.make_mesh([("fsdp", -1)])
  state = _state(mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=2, keep=2, async_save=False)
  started = [ckpt.save(step, state) for step in range(1, 8)]
  assert started == [False, True, False, True, False, True, False]
  assert ckpt.save(7, state, force=True)
  assert not ckpt.save(7, state, force=True)  # Same step twice is a no-op, not an error.
  assert ckpt.all_steps() == [6, 7]
  with pytest.raises(ValueError, match="reserved"):
    ckpt.save(8, {"meta": state["params"]})
  ckpt.close()


def _run(workdir, *args, **kwargs):
  return subprocess.run([sys.executable, WORKER, str(workdir), *map(str, args)],
                        capture_output=True, text=True, timeout=300, **kwargs)


def test_killed_run_resumes_from_last_save_and_matches_uninterrupted(tmp_path):
  straight = _run(tmp_path / "straight", 12)
  assert straight.returncode == 0, straight.stderr

  killed = _run(tmp_path / "killed", 12, "--kill-at", 7)
  assert killed.returncode == -signal.SIGKILL
  assert "step 7 " in killed.stdout and "step 8 " not in killed.stdout
  resumed = _run(tmp_path / "killed", 12)
  assert resumed.returncode == 0, resumed.stderr
  assert "start 6 from workdir" in resumed.stdout  # Saves every 2 steps: 6 is the last.
  np.testing.assert_array_equal(np.load(tmp_path / "straight" / "final.npy"),
                                np.load(tmp_path / "killed" / "final.npy"))


def test_sigterm_saves_and_the_next_start_resumes(tmp_path):
  proc = subprocess.Popen([sys.executable, WORKER, str(tmp_path), "200", "--sleep", "0.05"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("step 5 "):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  stopped = int(out.split("preempted at ")[1].split()[0])
  assert stopped >= 5
  assert os.path.isdir(tmp_path / "checkpoints" / str(stopped))
  resumed = _run(tmp_path, stopped + 3)
  assert f"start {stopped} from workdir" in resumed.stdout, resumed.stderr


def test_resume_order(tmp_path):
  mesh = sharding.make_mesh([("fsdp", -1)])
  state = _state(mesh)
  abstract = {k: checkpoint.abstract_like(v) for k, v in state.items()}
  zeros = jax.tree_util.tree_map(jnp.zeros_like, state)

  def pretrained(items):
    return dict(items, params={"w": items["params"]["w"] + 1, "b": items["params"]["b"]})

  # Nothing anywhere: random (here: the initializer's zeros), or pretrained when given.
  empty = checkpoint.Checkpointer(str(tmp_path / "a"))
  assert checkpoint.restore_or_initialize(empty, abstract, lambda: zeros).source == "random"
  got = checkpoint.restore_or_initialize(empty, abstract, lambda: zeros,
                                         load_pretrained=pretrained)
  assert got.source == "pretrained" and float(got.items["params"]["w"][0, 0]) == 1.0

  # Another run's checkpoint via init_from: its params, a fresh optimizer state.
  other = checkpoint.Checkpointer(str(tmp_path / "other" / "checkpoints"))
  other.save(9, state, force=True)
  other.close()
  got = checkpoint.restore_or_initialize(empty, abstract, lambda: zeros,
                                         init_from=str(tmp_path / "other"),
                                         load_pretrained=pretrained)
  assert got.source == "init_from"
  np.testing.assert_array_equal(got.items["params"]["w"], state["params"]["w"])
  assert float(got.items["opt_state"]["mu"].sum()) == 0.0 and got.meta["step"] == 0

  # This run's own checkpoint wins over everything.
  empty.save(4, zeros, force=True)
  empty.wait()
  got = checkpoint.restore_or_initialize(empty, abstract, lambda: state,
                                         init_from=str(tmp_path / "other"))
  assert got.source == "workdir" and got.meta["step"] == 4
  assert float(got.items["params"]["w"].sum()) == 0.0

  with pytest.raises(FileNotFoundError, match="no checkpoint there"):
    checkpoint.restore_or_initialize(checkpoint.Checkpointer(str(tmp_path / "b")), abstract,
                                     lambda: zeros, init_from=str(tmp_path / "nowhere"))
  empty.close()
