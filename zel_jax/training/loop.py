"""The training loop every recipe shares: sharded init or restore, one jitted and donated
update per step, gradient accumulation, metrics, progress with ETA, NaN guard, checkpoints
with the data position, preemption.

A recipe's trainer (zel_jax/recipes/<name>/) builds a `TrainSpec` (its model's parameter
shapes, how to initialize them, its loss, its per-example arrays and any host-side batch
preparation) and calls `run(config, workdir, spec, mesh, evaluator)`. The loop knows no model
family: parameters are built and restored through zel_jax.training.params.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from zel_jax import checkpoint as checkpoint_lib
from zel_jax import metric_writer, optim, sharding, workdir_io
from zel_jax.data import pipeline
from zel_jax.evals import base as evals_base
from zel_jax.training import checks
from zel_jax.training import params as params_lib

@dataclasses.dataclass
class TrainSpec:
  """What a recipe hands the loop.

  abstract_params: boxed parameter shapes with logical axes (jax.eval_shape of model.init).
  random_params(shardings, rng) / pretrained_params(shardings, rng): parameters placed in
    their shardings; pretrained_params is None when there is nothing to start from.
  loss_fn(params, batch, rng) -> scalar loss, batch being the global batch arrays.
  features, groups: the BatchIterator's per-example arrays (and optional world of each).
  prepare(local, params, epoch) -> local: host-side additions to a process's batch before
    it goes to the devices (the tokens of negatives or candidates; mining when an epoch
    starts), epoch being the batch's.
  checkpoint_meta() -> JSON-able dict saved beside each checkpoint; restore_meta(meta,
    source) reads it back on resume (source is checkpoint_lib's: "workdir", ...).
  """
  abstract_params: Any
  random_params: Callable[[Any, jax.Array], Any]
  pretrained_params: Callable[[Any, jax.Array], Any] | None
  loss_fn: Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array]
  features: dict[str, np.ndarray]
  groups: np.ndarray | None = None
  prepare: Callable[[dict[str, np.ndarray], Any, int], dict[str, np.ndarray]] | None = None
  checkpoint_meta: Callable[[], dict[str, Any]] | None = None
  restore_meta: Callable[[dict[str, Any], str], None] | None = None


# ------------------------------------------------------------------------------------------
# The update.


def _microbatches(x: jax.Array, steps: int) -> jax.Array:
  """[B, ...] -> [steps, B/steps, ...] taking every steps-th row, so each microbatch keeps
  rows from every batch shard (a contiguous split would leave devices idle)."""
  b = x.shape[0]
  if b % steps:
    raise ValueError(f"batch {b} does not split into {steps} microbatches")
  return jnp.swapaxes(x.reshape((b // steps, steps) + x.shape[1:]), 0, 1)


def make_update(loss_fn, optimizer, schedule, config):
  """update(params, opt_state, step, batch, rng) -> (params, opt_state, measurements)."""
  accum = int(config.grad_accum_steps)

  def update(params, opt_state, step, batch, rng):
    rng = jax.random.fold_in(rng, step)
    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    else:
      micro = jax.tree_util.tree_map(lambda x: _microbatches(x, accum), batch)

      def one(carry, inputs):
        i, mb = inputs
        value, g = jax.value_and_grad(loss_fn)(params, mb, jax.random.fold_in(rng, i))
        return (carry[0] + value, jax.tree_util.tree_map(jnp.add, carry[1], g)), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
      (loss, grads), _ = jax.lax.scan(one, (jnp.zeros((), jnp.float32), zeros),
                                      (jnp.arange(accum), micro))
      loss, grads = loss / accum, jax.tree_util.tree_map(lambda g: g / accum, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    measurements = {"loss": loss, "learning_rate": schedule(step),
                    "grad_norm": optax.tree.norm(grads),
                    "param_norm": optax.tree.norm(params),
                    "update_norm": optax.tree.norm(updates)}
    return params, opt_state, measurements

  return update


def opt_shardings(abstract_opt_state, abstract_params, p_shardings, mesh):
  """Shardings for an optax state: subtrees shaped like the parameter tree (Adam's mu and
  nu) take the parameter shardings; every other leaf (step counts) is replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_struct = jax.tree_util.tree_structure(abstract_params)

  def assign(tree):
    if jax.tree_util.tree_structure(tree) == param_struct:
      return p_shardings
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple states.
      return type(tree)(*(assign(t) for t in tree))
    if isinstance(tree, (tuple, list)):
      return type(tree)(assign(t) for t in tree)
    if isinstance(tree, dict):
      return {k: assign(v) for k, v in tree.items()}
    return jax.tree_util.tree_map(lambda _: replicated, tree)

  return assign(abstract_opt_state)


# ------------------------------------------------------------------------------------------
# The loop.


def total_steps(config, batches_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * batches_per_epoch)


class _Progress:
  """A tqdm bar with ETA on process 0; quiet elsewhere."""

  def __init__(self, total: int, initial: int):
    self._bar = None
    if jax.process_index() == 0:
      self._bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                       dynamic_ncols=True, mininterval=2.0)

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class Outcome:
  params: Any
  step: int
  last: dict[str, Any]     # the last logged measurements
  preempted: bool


def run(config, workdir: str, recipe: TrainSpec, mesh,
        evaluator: evals_base.Evaluator | None = None) -> Outcome:
  """Trains config.num_train_steps (or num_epochs) steps, resuming from the workdir. With an
  evaluator and config.evals.every > 0, evaluates every that many steps before the last
  (its numbers go to the metric writer as "<split>/<metric>"); the evaluation after the last
  step is the recipe's."""
  checks.validate(config)  # Before anything is written (recipes call prepare_workdir too).
  eval_every = int(config.evals.get("every", 0)) if "evals" in config else 0
  batches = pipeline.BatchIterator(recipe.features, config.batch_size, seed=config.seed,
                                   groups=recipe.groups)
  steps = total_steps(config, batches.batches_per_epoch)
  optimizer, schedule = optim.make_optimizer(config.optimizer, steps)
  p_shardings = params_lib.param_shardings(config, recipe.abstract_params, mesh, log=True)
  rng = jax.random.PRNGKey(config.seed)

  abstract_params = params_lib.abstract_sharded_params(recipe.abstract_params, p_shardings)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  o_shardings = opt_shardings(abstract_opt, abstract_params, p_shardings, mesh)
  abstract = {"params": abstract_params,
              "opt_state": checkpoint_lib.abstract_like(abstract_opt, o_shardings)}

  def initialize():
    params = recipe.random_params(p_shardings, jax.random.fold_in(rng, 1))
    opt_state = jax.jit(optimizer.init, out_shardings=o_shardings)(params)
    return {"params": params, "opt_state": opt_state}

  def load_pretrained(items):
    return dict(items, params=recipe.pretrained_params(p_shardings, jax.random.fold_in(rng, 2)))

  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     save_every=config.checkpoint_every,
                                     keep=config.keep_checkpoints)
  ckpt.install_preemption_handler()
  restored = checkpoint_lib.restore_or_initialize(
      ckpt, abstract, initialize, init_from=config.init_from or None,
      load_pretrained=load_pretrained if recipe.pretrained_params is not None else None)
  params, opt_state = restored.items["params"], restored.items["opt_state"]
  step = int(restored.meta.get("step", 0))
  if "pipeline" in restored.meta:
    batches.restore(restored.meta["pipeline"])
  if recipe.restore_meta is not None:
    recipe.restore_meta(restored.meta, restored.source)
  logging.info("starting at step %d of %d (%s)", step, steps, restored.source)

  batch_sharding = sharding.batch_sharding(mesh, config.sharding.batch_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  update = jax.jit(
      make_update(recipe.loss_fn, optimizer, schedule, config),
      in_shardings=(p_shardings, o_shardings, replicated, batch_sharding, replicated),
      out_shardings=(p_shardings, o_shardings, replicated),
      donate_argnums=(0, 1))

  writer = metric_writer.MetricWriter(workdir, resume_step=step)
  # Each checkpoint carries the config it was trained with: evaluate and link build the
  # model of the step they restore from it, whatever a later start wrote to config.json.
  trained_with = workdir_io.as_json_dict(config)
  best = BestKeeper(workdir, config)
  progress = _Progress(steps, step)
  started, first_step = time.time(), step
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last: dict[str, Any] = {}
  tick, tick_step = time.time(), step
  try:
    while step < steps:
      epoch = batches.epoch  # Before next(): the last batch of an epoch moves it on.
      local = next(batches)
      if recipe.prepare is not None:
        local = recipe.prepare(local, params, epoch)
      batch = sharding.global_batch(local, mesh, config.sharding.batch_axes)
      params, opt_state, measured = update(params, opt_state, jnp.int32(step), batch, rng)
      step += 1
      pending.append((step, measured))
      at_save = step % config.checkpoint_every == 0 or step == steps
      preempted = ckpt.reached_preemption(step)
      if step % config.log_every == 0 or at_save or preempted:
        last = _flush(pending, writer, step, tick, tick_step, config.batch_size)
        tick, tick_step = time.time(), step
        pending = []
        progress.update(0, loss=f"{last['loss']:.4f}")
        _log_line(step, steps, last, started, first_step)
      progress.update(1)
      ckpt.check()  # A save that failed in the background stops the run here, named.
      if at_save or preempted:
        meta = {"pipeline": batches.state(), "config": trained_with}
        if recipe.checkpoint_meta is not None:
          meta.update(recipe.checkpoint_meta())
        ckpt.save(step, {"params": params, "opt_state": opt_state}, meta=meta, force=True)
      if evaluator is not None and eval_every > 0 and step % eval_every == 0 and step < steps:
        measured_evals = evals_base.scalars(evaluator.run(params, step))
        writer.write(step, measured_evals)
        best.offer(step, measured_evals, params)
      if preempted:
        ckpt.wait()
        logging.warning("preempted: saved step %d; the next start resumes from it", step)
        return Outcome(params, step, last, preempted=True)
  finally:
    progress.close()
    writer.close()
    best.close()
    ckpt.close()  # Last: it raises SaveFailed when the final save did not reach the disk.
  return Outcome(params, step, last, preempted=False)


def _log_line(step: int, steps: int, last: dict[str, Any], started: float,
              first_step: int) -> None:
  """One plain line per log interval (process 0), so that a SLURM or TPU log without a
  terminal shows progress: step, loss, examples/s and the ETA at this run's mean rate."""
  if jax.process_index() != 0:
    return
  rate = (step - first_step) / max(time.time() - started, 1e-9)
  eta = (steps - step) / rate if rate > 0 else float("inf")
  logging.info("step %d/%d  loss %.4f  %.1f examples/s  ETA %s", step, steps, last["loss"],
               last["examples_per_s"], _duration(eta))


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class BestKeeper:
  """Keeps the parameters of the best-scoring evaluated step in W/best/ (an Orbax checkpoint
  with the "params" item, as W/checkpoints/ steps hold) and W/best.json ({metric, value,
  step}); config.evals.best_metric names the metric ("" turns it off). Survives resumption:
  the best so far is read back from W/best.json."""

  def __init__(self, workdir: str, config):
    self.metric = str(config.evals.get("best_metric", "")) if "evals" in config else ""
    self._path = os.path.join(workdir, "best.json")
    self._directory = os.path.join(workdir, "best")
    self._ckpt = None
    self.value = None
    splits = tuple(config.evals.get("splits", ())) if "evals" in config else ()
    if self.metric and self.metric.split("/")[0] not in splits:
      raise ValueError(f"config.evals.best_metric={self.metric!r}: its split is not among "
                       f"config.evals.splits {splits} (give \"<split>/<metric>\", e.g. "
                       "\"val/recall@64\")")
    if self.metric and os.path.exists(self._path):
      with open(self._path) as f:
        self.value = float(json.load(f)["value"])

  def offer(self, step: int, measured: dict[str, float], params: Any) -> bool:
    """Saves `params` when measured[metric] beats the best so far; returns whether it did."""
    if not self.metric:
      return False
    if self.metric not in measured:
      raise KeyError(f"config.evals.best_metric={self.metric!r} is not among the evaluated "
                     f"metrics {sorted(measured)}")
    value = float(measured[self.metric])
    if self.value is not None and value <= self.value:
      return False
    if self._ckpt is None:
      self._ckpt = checkpoint_lib.Checkpointer(self._directory, keep=1)
    self._ckpt.save(step, {"params": params}, meta={self.metric: value}, force=True)
    self._ckpt.wait()  # best.json must never name a step that is not on disk.
    self.value = value
    if jax.process_index() == 0:
      tmp = self._path + ".tmp"
      with open(tmp, "w") as f:
        json.dump({"metric": self.metric, "value": value, "step": int(step)}, f)
      os.replace(tmp, self._path)
    logging.info("best %s so far: %.4f at step %d (kept in %s)", self.metric, value, step,
                 self._directory)
    return True

  def close(self) -> None:
    if self._ckpt is not None:
      self._ckpt.close()
      self._ckpt = None


def _flush(pending, writer, step, tick, tick_step, batch_size) -> dict[str, Any]:
  """Fetches the measurements of the steps since the last log (one transfer), writes them,
  and stops the run on a non-finite loss before anything bad is checkpointed."""
  host = jax.device_get([m for _, m in pending])
  elapsed = max(time.time() - tick, 1e-9)
  for (s, _), values in zip(pending, host):
    if not math.isfinite(float(values["loss"])):
      raise FloatingPointError(
          f"loss is {float(values['loss'])} at step {s}: training stopped before saving it. "
          "Lower config.optimizer.learning_rate, raise warm-up, or compute in float32 "
          "(--config.model.dtype=float32); the last good checkpoint is kept.")
  record = {k: float(v) for k, v in host[-1].items()}
  record["examples_per_s"] = (step - tick_step) * batch_size / elapsed
  record["steps_per_s"] = (step - tick_step) / elapsed
  writer.write(step, record)
  return record


def run_and_evaluate(config, workdir: str, spec: TrainSpec, mesh,
                     evaluator: evals_base.Evaluator) -> tuple[Outcome, dict[str, Any]]:
  """run(), then the evaluator on the last step's parameters with each split's report
  written to the workdir. Returns (outcome, what the trainer returns: the last
  measurements and {"evals": reports}, or {"preempted_at": step, ...} when preempted, in
  which case nothing is evaluated)."""
  outcome = run(config, workdir, spec, mesh, evaluator)
  if outcome.preempted:
    return outcome, {"preempted_at": outcome.step, **outcome.last}
  reports = evals_base.evaluate_and_write(evaluator, outcome.params, outcome.step, workdir)
  best = BestKeeper(workdir, config)
  try:
    best.offer(outcome.step, evals_base.scalars(reports), outcome.params)
  finally:
    best.close()
  return outcome, {**outcome.last, "evals": reports}
