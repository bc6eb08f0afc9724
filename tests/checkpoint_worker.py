"""A small sharded training loop for the kill/resume and preemption tests of checkpoint.py.

  python tests/checkpoint_worker.py WORKDIR STEPS [--kill-at N]

Trains a linear model with Adam on data derived from the step number (so any run, however
interrupted, sees the same batches), checkpointing every 2 steps; prints "step N" each step,
writes WORKDIR/final.npy at the end. --kill-at N: SIGKILL itself at step N right after the
pending save is on disk. A SIGTERM saves at the current step and exits with status 0.
"""

import argparse
import os
import signal
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from zel_jax import checkpoint, sharding


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("steps", type=int)
  parser.add_argument("--kill-at", type=int, default=-1)
  parser.add_argument("--sleep", type=float, default=0.0)
  args = parser.parse_args()

  mesh = sharding.make_mesh([("fsdp", -1)])
  w_sharding = NamedSharding(mesh, P("fsdp", None))
  optimizer = optax.adam(1e-2)

  def initialize():
    w = jax.jit(lambda: jnp.zeros((16, 4)), out_shardings=w_sharding)()
    # Everything on the mesh, as a trainer's sharded init leaves it: replicated scalars too.
    opt_state = optimizer.init({"w": w})
    opt_state = jax.device_put(opt_state, jax.tree_util.tree_map(
        lambda x: w_sharding if x.ndim else NamedSharding(mesh, P()), opt_state))
    return {"params": {"w": w}, "opt_state": opt_state}

  ckpt = checkpoint.Checkpointer(os.path.join(args.workdir, "checkpoints"), save_every=2, keep=2)
  ckpt.install_preemption_handler()
  fresh = initialize()
  abstract = {k: checkpoint.abstract_like(v, mesh=mesh) for k, v in fresh.items()}
  restored = checkpoint.restore_or_initialize(ckpt, abstract, lambda: fresh)
  params, opt_state = restored.items["params"], restored.items["opt_state"]
  start = restored.meta["step"]
  print(f"start {start} from {restored.source}", flush=True)

  true_w = np.arange(64, dtype=np.float32).reshape(16, 4) / 64

  @jax.jit
  def update(params, opt_state, step):
    x = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), step), (32, 16))
    def loss(p):
      return jnp.mean((x @ p["w"] - x @ true_w) ** 2)
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  for step in range(start, args.steps):
    params, opt_state, loss = update(params, opt_state, step)
    done = step + 1
    print(f"step {done} loss {float(loss):.6f}", flush=True)
    ckpt.save(done, {"params": params, "opt_state": opt_state})
    if ckpt.reached_preemption(done):
      ckpt.save(done, {"params": params, "opt_state": opt_state}, force=True)
      ckpt.close()
      print(f"preempted at {done}", flush=True)
      return 0
    if done == args.kill_at:
      ckpt.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(args.sleep)
  ckpt.close()
  np.save(os.path.join(args.workdir, "final.npy"), np.asarray(params["w"]))
  print("finished", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
