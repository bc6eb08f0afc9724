"""One evaluator interface (big_vision's style): an evaluator is named in the config
(`config.evals.type`), built by its recipe, and run on parameters — by the training loop every
`config.evals.every` steps and after the last step, and by `python -m zel_jax.evaluate` on a
workdir's checkpoint alike. `run(params, step)` returns one dict: {split: report}.

`EvalRequest` carries what `zel_jax.evaluate`'s flags ask for; training builds its evaluator
from the config alone (`EvalRequest()`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from absl import logging

from zel_jax import workdir_io
from zel_jax.data import guards


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """zel_jax.evaluate's flags (None / False / defaults: the config's own choice)."""
  split: str = "test"
  split_given: bool = False
  data: str | None = None
  store: str = "exact"
  world: str | None = None
  baseline: str | None = None
  top_k: int = 100
  top_k_given: bool = False
  bm25_context_words: int = 0
  candidates: str | None = None
  views: str | None = None
  end_to_end: bool = False
  input: str | None = None
  threshold: float | None = None
  calibrate: bool = False
  documents: str | None = None
  max_documents: int = -1
  step: int | None = None   # The checkpoint to restore (None: the newest intact one).

  def __post_init__(self):
    # Both become file names (mentions/<split>.json, candidates/<split>.<world>.jsonl):
    # refused here, before any recipe builds a path from them.
    guards.plain_name(self.split, "--split")
    if self.world is not None:
      guards.plain_name(self.world, "--world")


class Evaluator:
  """Evaluates parameters on splits: `evaluate_split(params, split) -> report` on each split
  the data has (a split it lacks is skipped with a warning); with_step: each report also
  names the step it measured. An evaluator whose splits depend on each other (thresholds
  picked on one, applied to the others) overrides `run` instead."""

  def __init__(self, name: str, splits: Sequence[str],
               evaluate_split: Callable[[Any, str], dict[str, Any]] | None,
               available: Sequence[str] | None = None, with_step: bool = False):
    self.name = name
    self.splits = tuple(splits)
    self.evaluate_split = evaluate_split
    self.available = None if available is None else set(available)
    self.with_step = with_step

  def run(self, params: Any, step: int) -> dict[str, dict[str, Any]]:
    reports = {}
    for split in self.splits:
      if self.available is not None and split not in self.available:
        logging.warning("%s evaluator: no split %r in the data; not evaluated", self.name,
                        split)
        continue
      reports[split] = self.evaluate_split(params, split)
      if self.with_step:
        reports[split]["step"] = int(step)
    logging.info("%s evaluator at step %d: %s", self.name, step, sorted(reports))
    return reports


def write_reports(workdir: str, reports: dict[str, dict[str, Any]]) -> None:
  """Each split's report as workdir/eval_<split>.json (process 0, atomically)."""
  for split, report in reports.items():
    workdir_io.write_report(workdir, f"eval_{split}", report)


def evaluate_and_write(evaluator: Evaluator, params: Any, step: int, workdir: str
                       ) -> dict[str, dict[str, Any]]:
  """The evaluation after training: run, and each report written to the workdir."""
  reports = evaluator.run(params, step)
  write_reports(workdir, reports)
  return reports


def scalars(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
  """The top-level numbers of each split's report, as "<split>/<name>" (the metric writer's
  records during training)."""
  out = {}
  for split, report in reports.items():
    for key, value in report.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        out[f"{split}/{key}"] = float(value)
  return out


def check_type(config, known: Sequence[str], recipe: str, default: str | None = None) -> str:
  """config.evals.type (or `default`, the stage's evaluator, for workdirs written before
  configs named one), checked against the recipe's evaluators before anything runs."""
  name = (config.evals.get("type") if "evals" in config else None) or default
  if name not in known:
    raise ValueError(f"config.evals.type={name!r}: recipe {recipe!r} has evaluators "
                     f"{sorted(known)}")
  return name
