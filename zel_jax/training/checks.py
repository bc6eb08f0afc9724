"""What a training run checks before it writes anything: the config's values (one clear
error per bad field, "config.<field>=<value>: <what is allowed>"), and that a workdir's
checkpoints were trained with the same model, so that a refused run leaves the workdir as it
was and W/config.json keeps describing its checkpoints."""

from __future__ import annotations

import math
from typing import Any

from zel_jax import workdir_io
from zel_jax.evals import retrieval



def _at_least(minimum):
  return lambda v: v >= minimum, f"an integer >= {minimum}"


# field -> (is the value allowed, what is allowed); fields a config lacks are skipped.
_RULES = {
    "seed": _at_least(0),
    "batch_size": _at_least(1),
    "grad_accum_steps": _at_least(1),
    "num_epochs": (lambda v: v >= 0, "a number >= 0 (config.num_train_steps > 0 "
                   "overrides it)"),
    "log_every": _at_least(1),
    "checkpoint_every": _at_least(1),
    "keep_checkpoints": (lambda v: v >= 1, "an integer >= 1 (a run must keep its last "
                         "checkpoint)"),
    "optimizer.learning_rate": (lambda v: v >= 0, "a number >= 0"),
    "optimizer.warmup_fraction": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "optimizer.warmup_steps": _at_least(0),
    "evals.every": _at_least(0),
}


def validate(config) -> None:
  """Raises ValueError naming the first field whose value cannot run."""
  for field, (ok, allowed) in _RULES.items():
    value = _get(config, field)
    if value is None:
      continue
    if isinstance(value, str) or (isinstance(value, float) and math.isnan(value)) or not ok(
        value):
      raise ValueError(f"config.{field}={value!r}: {allowed}")
  accum = _get(config, "grad_accum_steps")
  if accum and config.batch_size % accum:
    raise ValueError(f"config.grad_accum_steps={accum}: must divide config.batch_size="
                     f"{config.batch_size} (each step splits its batch into that many "
                     "microbatches)")
  for field, value in _stores(config):
    if value not in retrieval.STORES:
      raise ValueError(f"config.{field}={value!r}: one of {', '.join(retrieval.STORES)}")


def prepare_workdir(config, workdir: str) -> None:
  """What every trainer does first: validate the config, refuse one that the workdir's
  checkpoints were not trained with, and only then write W/config.json (atomically)."""
  validate(config)
  trained = workdir_io.checkpoint_config(workdir)
  if trained is not None:
    differences = _model_differences(workdir_io.as_json_dict(config), trained)
    if differences:
      raise ValueError(
          f"--workdir={workdir} holds checkpoints of another model: " + "; ".join(
              f"config.{f}={new!r} where they were trained with {old!r}"
              for f, new, old in differences) +
          ". Nothing in the workdir was changed. Resume with those settings, or train in a "
          f"new workdir (--config.init_from={workdir} starts from these parameters).")
  workdir_io.save_config(config, workdir)


def _get(config, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def _stores(config, prefix: str = "") -> list[tuple[str, str]]:
  """(field, value) of every `store` naming a candidate store (config.evals.store, ...)."""
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += _stores(value, f"{prefix}{key}.")
    elif key == "store" and isinstance(value, str):
      out.append((f"{prefix}{key}", value))
  return out


def _model_differences(new: dict[str, Any], trained: dict[str, Any]
                       ) -> list[tuple[str, Any, Any]]:
  """(field, new, trained) where the model differs. Fields only one side has (a config
  from an older zel_jax) are not compared."""
  # A different pooling, tower sharing or encoder would read these parameters as another
  # model (workdir_io.MODEL_FIELDS).
  pairs = [(f, new.get(f), trained.get(f)) for f in ("recipe", "trainer")
           if f in new and f in trained]
  new_model, old_model = new.get("model") or {}, trained.get("model") or {}
  pairs += [(f"model.{k}", new_model[k], old_model[k]) for k in sorted(new_model)
            if k in old_model and k not in workdir_io.RESUMABLE_MODEL_FIELDS]
  return [(f, a, b) for f, a, b in pairs if a != b]
