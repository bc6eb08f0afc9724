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
  """write(step, {"loss": ..., ...}) appends to WORKDIR/metrics.jsonl and to TensorBoard."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def quiet_library_logs() -> None:
  """Drops Orbax's per-save INFO lines (dozens per checkpoint) from the console; its
  warnings and errors still show."""

  class _Filter(pylogging.Filter):
    def filter(self, record):
      return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname

  absl_logging.get_absl_handler().addFilter(_Filter())
