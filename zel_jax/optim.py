"""Optimizers from config: AdamW with linear warm-up and decay, clipping, and weight decay
that skips biases and LayerNorm parameters (as BERT and BLINK train)."""

from __future__ import annotations

from typing import Any

import jax
import optax


def warmup_steps(config, total_steps: int) -> int:
  """config.warmup_steps, or config.warmup_fraction of the run (BLINK: 0.1)."""
  if config.get("warmup_steps", 0):
    return int(config.warmup_steps)
  return int(round(config.get("warmup_fraction", 0.0) * total_steps))


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """0 -> lr linearly over the warm-up, then linearly down to 0 at total_steps."""
  warmup = min(warmup_steps(config, total_steps), total_steps)
  peak = float(config.learning_rate)
  decay = optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
  """True for weights that take weight decay: not biases, not LayerNorm scales."""
  def one(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation,
                                                      optax.Schedule]:
  """(optimizer, learning-rate schedule) from an optimizer config section."""
  schedule = learning_rate_schedule(config, total_steps)
  parts = []
  if config.get("max_grad_norm", 0):
    parts.append(optax.clip_by_global_norm(float(config.max_grad_norm)))
  parts.append(optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                           eps=config.get("eps", 1e-8),
                           weight_decay=float(config.get("weight_decay", 0.0)),
                           mask=decay_mask))
  frozen = tuple(config.get("frozen", ()))
  if frozen:
    # After AdamW, so that weight decay leaves frozen parameters alone too.
    parts.append(optax.masked(optax.set_to_zero(), lambda params: frozen_mask(params, frozen)))
  return optax.chain(*parts), schedule


def frozen_mask(params: Any, frozen: tuple[str, ...]) -> Any:
  """True for the leaves under any of the top-level keys `frozen`."""
  missing = [k for k in frozen if k not in params]
  if missing:
    raise ValueError(f"optimizer.frozen names {missing}, not among the parameters "
                     f"{sorted(params)}")
  return {k: jax.tree_util.tree_map(lambda _: k in frozen, v) for k, v in params.items()}
