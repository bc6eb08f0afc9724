"""Train a recipe: `python -m zel_jax.train --config=configs/<exp>.py[:variant] --workdir=W`
(or a packaged config by name: `--config=blink_biencoder:runlocal`, from any directory).

Thin on purpose (flax examples style): flags, multi-host init, then the recipe the config
names (`config.recipe`: zel_jax/recipes/<name>/, or a module of one's own) trains the stage
`config.trainer`.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from zel_jax import checkpoint, configs, metric_writer, recipes, sharding, workdir_io
from zel_jax.training import checks

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


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  recipe = recipes.for_config(config)
  recipe.stage(config)  # An unknown stage fails before anything is written.
  checks.validate(config)  # So does a value that cannot run (config.keep_checkpoints=0).
  if "batch_size" in config:
    logging.info("global batch %d: %.4g per device, %.4g per process", config.batch_size,
                 config.batch_size / jax.device_count(),
                 config.batch_size / jax.process_count())
  workdir_io.check_workdir(_WORKDIR.value)
  try:
    recipe.train(config, _WORKDIR.value)
  except checkpoint.SaveFailed:
    # Logged where it happened, one line naming the step and the path; a traceback of
    # Orbax's background threads would only bury it.
    raise SystemExit(1) from None


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=configs.parse_flags)
