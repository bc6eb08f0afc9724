"""Training metrics to TensorBoard event files (tensorboardX: no TensorFlow) and to a JSONL
file in the workdir, one object per logged step; only process 0 writes."""

from __future__ import annotations

import json
import logging as pylogging
import math
import os
from typing import Any, Mapping

from absl import logging as absl_logging
import jax
import numpy as np
from tensorboardX import SummaryWriter


def _plain(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricWriter:
  """write(step, {"loss": ..., ...}) appends to WORKDIR/metrics.jsonl and to TensorBoard.

  resume_step: the step a run starts from; what an earlier start logged past it (steps
  after its last checkpoint, which the run is about to repeat) is dropped from both, so that
  no step has two records.
  """

  def __init__(self, workdir: str, filename: str = "metrics.jsonl",
               resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        _drop_records_after(self.path, resume_step)
      # TensorBoard discards the events at or after purge_step of the earlier start.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(name, value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites a metrics file without its records past `step` (nor a last line cut short by
  a crash), atomically."""
  if not os.path.exists(path):
    return

  def keep(line: str) -> bool:
    try:
      return json.loads(line).get("step", 0) <= step
    except ValueError:
      return False

  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line.rstrip("\n") + "\n" for line in lines if keep(line)]
  if kept == lines:
    return
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def quiet_library_logs() -> None:
  """Drops Orbax's per-save INFO lines (dozens per checkpoint) from the console; its
  warnings and errors still show, without tracebacks."""

  class _Filter(pylogging.Filter):
    def filter(self, record):
      if "/orbax/" not in record.pathname:
        return True
      # Orbax logs a failure of its background save threads with a full asyncio traceback,
      # several times over; zel_jax reports it in one line naming the step and the path
      # (checkpoint.SaveFailed), so Orbax's own lines are kept without the tracebacks.
      record.exc_info, record.exc_text = None, None
      return record.levelno >= pylogging.WARNING

  absl_logging.get_absl_handler().addFilter(_Filter())
