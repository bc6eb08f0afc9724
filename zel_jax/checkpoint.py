"""Orbax checkpoints behind a small wrapper: async saves, keep N, save on preemption, restore
into abstract state with shardings, and the resume order every trainer follows.

A checkpoint holds named items: pytrees of arrays (e.g. "params", "opt_state") saved with
Orbax's StandardSave, plus "meta", a JSON dict (step, data-pipeline position, ...). Keeping
"params" an item of its own lets `config.init_from` take another run's parameters without
its optimizer state.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from typing import Any, Callable, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
import orbax.checkpoint as ocp

META = "meta"


def abstract_like(tree: Any, shardings: Any = None, mesh: Any = None) -> Any:
  """ShapeDtypeStructs to restore into: with `shardings` when given, else each leaf's own.

  With `mesh`, leaves not already placed on it (e.g. an optimizer's step counter, created
  on one device) restore replicated over it, so they mix with mesh-sharded arrays in jit.
  """

  def one(x, s=None):
    s = s if s is not None else getattr(x, "sharding", None)
    if mesh is not None and not (isinstance(s, NamedSharding) and s.mesh == mesh):
      s = NamedSharding(mesh, PartitionSpec())
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

  if shardings is None:
    return jax.tree_util.tree_map(one, tree)
  return jax.tree_util.tree_map(one, tree, shardings)


class Checkpointer:
  """Saves and restores named items under `directory` (one sub-folder per step).

  save_every: steps between saves (save(force=True) ignores it); keep: how many to keep.
  """

  def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.save_every = max(1, int(save_every))
    # The interval is decided here (steps that are multiples of save_every), not by Orbax,
    # whose policy would also save the first step of every run.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._preempted = threading.Event()
    self._previous_handler = None
    self._last_saved = self._manager.latest_step()

  # -- saving -----------------------------------------------------------------------------

  def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
           *, force: bool = False) -> bool:
    """Starts saving (asynchronously); returns whether a save was started at this step."""
    if META in items:
      raise ValueError(f"item name {META!r} is reserved for the JSON metadata")
    if step == self._last_saved:
      return False  # Already saved (e.g. a preemption save right after a periodic one).
    if not force and step % self.save_every:
      return False
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args[META] = ocp.args.JsonSave(dict(meta or {}, step=int(step)))
    started = self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)
    if started:
      self._last_saved = step
    return started

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  # -- restoring --------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, abstract_items: Mapping[str, Any], step: int | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores the named items (a subset of what was saved is fine) into the shapes, dtypes
    and shardings of `abstract_items` (trees of jax.ShapeDtypeStruct). Returns (items, meta).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    args[META] = ocp.args.JsonRestore()
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**args))
    items = {name: restored[name] for name in abstract_items}
    return items, dict(restored[META])

  # -- preemption -------------------------------------------------------------------------

  def install_preemption_handler(self) -> None:
    """On SIGTERM (what TPU VMs, SLURM and Kubernetes send before taking a machine) mark the
    run preempted; the train loop then saves and exits at the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
      return  # Signal handlers can only be set from the main thread (e.g. not under Colab).

    def handler(signum, frame):
      del signum, frame
      logging.warning("SIGTERM received: saving a checkpoint at the next step and stopping")
      self._preempted.set()

    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def reached_preemption(self, step: int) -> bool:
    """Whether to save and stop now. With several processes all of them must agree on the
    step, so JAX's preemption sync point is used (it is the one that catches SIGTERM there)."""
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step) or self._preempted.is_set()
      except RuntimeError:  # No preemption sync manager (distributed init without it).
        pass
    return self._preempted.is_set()


@dataclasses.dataclass
class Restored:
  items: dict[str, Any]
  meta: dict[str, Any]
  source: str  # "workdir", "init_from", "pretrained" or "random"


def restore_or_initialize(
    checkpointer: Checkpointer,
    abstract_items: Mapping[str, Any],
    initialize: Callable[[], dict[str, Any]],
    *,
    init_from: str | None = None,
    load_pretrained: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Restored:
  """The resume order: this run's own latest checkpoint, else `init_from` (another run's
  workdir or checkpoint folder: its "params" only, fresh optimizer), else pretrained weights,
  else random.

  initialize() builds all items from scratch (sharded, e.g. with sharding.sharded_init);
  load_pretrained(items) returns items with pretrained weights put into the params.
  """
  if checkpointer.latest_step() is not None:
    items, meta = checkpointer.restore(abstract_items)
    logging.info("resuming from %s step %d", checkpointer.directory, meta["step"])
    return Restored(items, meta, "workdir")
  items = initialize()
  if init_from:
    directory = init_from
    if os.path.isdir(os.path.join(init_from, "checkpoints")):
      directory = os.path.join(init_from, "checkpoints")
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"config.init_from={init_from!r}: no checkpoint there")
    source = Checkpointer(directory, async_save=False, read_only=True)
    try:
      if source.latest_step() is None:
        raise FileNotFoundError(f"config.init_from={init_from!r}: no checkpoint there")
      params, meta = source.restore({"params": abstract_items["params"]})
    finally:
      source.close()
    items = dict(items, params=params["params"])
    logging.info("initialized params from %s step %d", directory, meta["step"])
    return Restored(items, {"step": 0}, "init_from")
  if load_pretrained is not None:
    return Restored(load_pretrained(items), {"step": 0}, "pretrained")
  return Restored(items, {"step": 0}, "random")
