"""Train a recipe: `python -m zel_jax.train --config=configs/<exp>.py[:variant] --workdir=W`.

Thin on purpose (flax examples style): flags, multi-host init, then the trainer module named
by `config.trainer` (zel_jax/trainers/<name>.py) runs `train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from zel_jax import metrics, sharding
from zel_jax.trainers import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/blink_biencoder.py:runlocal.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs; TPU pods and "
    "SLURM are detected without it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

# Where JAX finds its peers by itself: SLURM (task count), TPU pod slices (worker list), or
# wherever a launcher says so (launch/tpu_vm.sh sets ZEL_DISTRIBUTED=auto on every worker).
def _cluster_processes() -> int:
  if os.environ.get("ZEL_DISTRIBUTED", "") == "auto":
    return 2  # Several: let jax.distributed.initialize() find out how many.
  tasks = os.environ.get("SLURM_NTASKS", "")
  if tasks.isdigit():
    return int(tasks)
  workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len(workers.split(",")) if workers else 1


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed when this is one process of several; a no-op otherwise."""
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    # CPU processes (local multi-host tests) need a collectives backend; GPUs/TPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _cluster_processes() > 1:
    jax.distributed.initialize()
  logging.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())


def trainer_module(name: str):
  try:
    return importlib.import_module(f"zel_jax.trainers.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"zel_jax.trainers.{name}":
      raise
    here = os.path.join(os.path.dirname(__file__), "trainers")
    known = sorted(f[:-3] for f in os.listdir(here) if f.endswith(".py") and f[0] != "_")
    raise ValueError(f"config.trainer={name!r}: no module zel_jax/trainers/{name}.py "
                     f"(trainers: {known})") from None


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metrics.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  if "trainer" not in config:
    raise ValueError("the config has no 'trainer' field naming zel_jax/trainers/<name>.py")
  if "batch_size" in config:
    logging.info("global batch %d: %.4g per device, %.4g per process", config.batch_size,
                 config.batch_size / jax.device_count(),
                 config.batch_size / jax.process_count())
  loop.check_workdir(_WORKDIR.value)
  trainer_module(config.trainer).train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
