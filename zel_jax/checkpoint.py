"""Orbax checkpoints behind a small wrapper: async saves, keep N, save on preemption, restore
into abstract state with shardings, and the resume order every trainer follows.

A checkpoint holds named items: pytrees of arrays (e.g. "params", "opt_state") saved with
Orbax's StandardSave, plus "meta", a JSON dict (step, data-pipeline position, the config the
step was trained with, ...). Keeping "params" an item of its own lets `config.init_from` take
another run's parameters without its optimizer state.

Nothing lost, nothing stale: a finished save gets a checksum file (zel_jax/checksums.py)
beside its files; a restore verifies it (a checkpoint written before checksums existed is accepted
unverified) and checks that every restored float is finite, and falls back to the newest
intact step, with a warning naming the bad one. Old steps are rotated out only after a newer
save finished and was checksummed, so the last verified step is never deleted. A failed
asynchronous save raises SaveFailed, one line naming the step and the path, at the next
`check()` (the training loop calls it every step).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import signal
import threading
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
import orbax.checkpoint as ocp

from zel_jax.checksums import first_nonfinite, verify_checksums, write_checksums

META = "meta"


class SaveFailed(RuntimeError):
  """A checkpoint that did not reach the disk; its message is the one line to show."""


class CorruptCheckpoint(ValueError):
  """A step that cannot be restored as saved (files, metadata or values)."""


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


# ------------------------------------------------------------------------------------------
# Which step a restore takes when none is named.

_PINNED: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "zel_jax_pinned_step", default=None)


@contextlib.contextmanager
def pinned_step(directory: str, step: int | None) -> Iterator[None]:
  """Within it, restores and config look-ups in `directory` that name no step take `step`
  (None: no pin). `evaluate --step` and `link --step` pick a checkpoint this way, deep
  inside a recipe's evaluation, without threading the step through every call."""
  if step is None:
    yield
    return
  token = _PINNED.set((os.path.abspath(directory), int(step)))
  try:
    yield
  finally:
    _PINNED.reset(token)


def _pinned(directory: str) -> int | None:
  pin = _PINNED.get()
  return pin[1] if pin is not None and pin[0] == directory else None


# ------------------------------------------------------------------------------------------
# The checkpointer.


class Checkpointer:
  """Saves and restores named items under `directory` (one sub-folder per step).

  save_every: steps between saves (save(force=True) ignores it); keep: how many to keep.
  """

  def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    if int(keep) < 1:
      raise ValueError(f"keep={keep}: at least 1 checkpoint must be kept")
    self.directory = os.path.abspath(directory)
    self.save_every = max(1, int(save_every))
    self.keep = int(keep)
    self.read_only = read_only
    self._async = async_save
    # The interval is decided here (steps that are multiples of save_every), not by Orbax,
    # whose policy would also save the first step of every run. So is the rotation
    # (_rotate): Orbax's max_to_keep deletes old steps even when the new save failed.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._preempted = threading.Event()
    self._previous_handler = None
    self._last_saved = self._manager.latest_step()
    self._pending: int | None = None   # The step of a save started and not yet collected.
    self._rotate_due = False
    self._failed: SaveFailed | None = None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  # -- saving -----------------------------------------------------------------------------

  def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
           *, force: bool = False) -> bool:
    """Starts saving (asynchronously); returns whether a save was started at this step.
    Parameters holding NaN or inf are refused (FloatingPointError): rotation would otherwise
    delete the good steps in favour of a step no restore accepts."""
    if self._failed is not None:
      raise self._failed
    if META in items:
      raise ValueError(f"item name {META!r} is reserved for the JSON metadata")
    if step == self._last_saved:
      return False  # Already saved (e.g. a preemption save right after a periodic one).
    if not force and step % self.save_every:
      return False
    bad = first_nonfinite(items)
    if bad is not None:
      raise FloatingPointError(
          f"step {step}: {bad} holds NaN or inf, so it was not checkpointed; the last "
          f"checkpoint ({self._last_saved}) in {self.directory} is kept")
    self._collect()
    self._rotate()
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args[META] = ocp.args.JsonSave(dict(meta or {}, step=int(step)))
    started = self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)
    if started:
      self._last_saved, self._pending = step, int(step)
      if not self._async:
        self.wait()  # On disk already: checksum and rotate now.
    return started

  def check(self) -> None:
    """Raises SaveFailed once a save in flight has failed. The training loop calls this
    every step, so a full disk is reported at the step it happened, not at the next save."""
    if self._failed is not None:
      raise self._failed
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self._collect()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk (and checksummed)."""
    self._collect()
    self._rotate()

  def close(self) -> None:
    if self._failed is None:
      self.wait()
      self._manager.close()
    # After a failed save Orbax raises its error again at every wait (its close too): it
    # has been reported once, as SaveFailed, which is enough.
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _collect(self) -> None:
    """Waits for the save in flight, checksums it (process 0), and raises SaveFailed when
    it did not reach the disk."""
    if self._pending is None:
      return
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        write_checksums(self.step_dir(step))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax re-raises what its background threads hit (OSError, ...), after logging it.
      logging.debug("checkpoint of step %d failed", step, exc_info=e)
      good = [s for s in self._manager.all_steps() if s != step]
      kept = (f"the last good checkpoint, step {max(good)}, is kept and a new start "
              "resumes from it" if good else "no earlier checkpoint exists")
      self._failed = SaveFailed(
          f"checkpoint of step {step} failed writing {self.step_dir(step)}: "
          f"{type(e).__name__}: {_first_line(e)}; training stopped, {kept}")
      logging.error("%s", self._failed)
      raise self._failed from None
    self._rotate_due = True

  def _rotate(self) -> None:
    """Keeps the newest `keep` steps. Runs only once a newer save has been collected
    (finished and checksummed), so the last verified step is never the one deleted; and at
    save() and wait() only, where every process is, since Orbax's delete syncs them."""
    if not self._rotate_due:
      return
    self._rotate_due = False
    for step in sorted(self._manager.all_steps())[:-self.keep]:
      self._manager.delete(step)

  # -- restoring --------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON metadata of a step (its checksums verified first)."""
    problem = verify_checksums(self.step_dir(step))
    if problem is not None:
      raise CorruptCheckpoint(f"{self.step_dir(step)}: {problem}")
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          **{META: ocp.args.JsonRestore()}))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpoint(f"{self.step_dir(step)}: unreadable metadata: "
                              f"{type(e).__name__}: {_first_line(e)}") from e
    return dict(restored[META])

  def restore(self, abstract_items: Mapping[str, Any], step: int | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores the named items (a subset of what was saved is fine) into the shapes, dtypes
    and shardings of `abstract_items` (trees of jax.ShapeDtypeStruct). Returns (items, meta).

    step: that step (an error if it is absent or unusable); None: the pinned step
    (pinned_step), else the newest intact step. A step whose files fail their checksums,
    which Orbax cannot read, or which holds NaN or inf is skipped with a warning naming it;
    a writable checkpointer (training) moves such steps aside to <step>.corrupt, so that the
    resumed run saves those steps again.
    """
    step = _pinned(self.directory) if step is None else step
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"{self.directory}: no checkpoint of step {step}; steps "
                                f"present: {', '.join(map(str, steps)) or 'none'}")
      return self._restore_step(int(step), abstract_items)
    if not steps:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    bad = []
    for s in reversed(steps):
      try:
        items, meta = self._restore_step(s, abstract_items)
      except CorruptCheckpoint as e:
        logging.warning("checkpoint %s is unusable (%s)%s", self.step_dir(s), e,
                        "; trying the previous step" if s != steps[0] else "")
        bad.append((s, str(e)))
        continue
      if bad:
        logging.warning("restored step %d of %s instead of the unusable step(s) %s", s,
                        self.directory, ", ".join(str(b) for b, _ in bad))
        self._set_aside([b for b, _ in bad])
      return items, meta
    raise CorruptCheckpoint(f"{self.directory}: no step can be restored: " + "; ".join(
        f"step {s}: {why}" for s, why in bad))

  def _restore_step(self, step: int, abstract_items: Mapping[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    problem = verify_checksums(self.step_dir(step))
    if problem is not None:
      raise CorruptCheckpoint(f"step {step}: {problem}")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    args[META] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for truncated or missing files.
      raise CorruptCheckpoint(f"step {step}: unreadable: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
    items = {name: restored[name] for name in abstract_items}
    bad = first_nonfinite(items)
    if bad is not None:
      raise CorruptCheckpoint(f"step {step}: {bad} holds NaN or inf")
    return items, dict(restored[META])

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unusable steps <step>.corrupt (kept for a look, ignored by Orbax) so that a
    resumed run can save those steps again."""
    if self.read_only:
      return
    if jax.process_index() == 0:
      for step in steps:
        target = self.step_dir(step) + ".corrupt"
        n = 1
        while os.path.exists(target):
          n += 1
          target = f"{self.step_dir(step)}.corrupt{n}"
        os.rename(self.step_dir(step), target)
        logging.warning("moved the unusable checkpoint %s to %s", self.step_dir(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"{self.directory}: unusable steps set aside")
    self._manager.reload()
    self._last_saved = self._manager.latest_step()

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


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""


def checkpoint_config(directory: str) -> tuple[int, dict[str, Any] | None] | None:
  """(step, the config saved in its metadata, None for checkpoints older than that) of the
  step a restore in `directory` takes: the pinned step, else the newest whose checksums and
  metadata read. None when there is no checkpoint."""
  if not os.path.isdir(directory):
    if _pinned(os.path.abspath(directory)) is not None:
      raise FileNotFoundError(f"{directory}: no checkpoints, so no step "
                              f"{_pinned(os.path.abspath(directory))}")
    return None
  ckpt = Checkpointer(directory, read_only=True)
  try:
    steps = ckpt.all_steps()
    pinned = _pinned(ckpt.directory)
    if pinned is not None:
      if pinned not in steps:
        raise FileNotFoundError(f"{ckpt.directory}: no checkpoint of step {pinned}; steps "
                                f"present: {', '.join(map(str, steps)) or 'none'}")
      return pinned, ckpt.read_meta(pinned).get("config")
    for step in reversed(steps):
      try:
        return step, ckpt.read_meta(step).get("config")
      except Exception:  # pylint: disable=broad-except
        continue  # The restore that follows names the unusable step.
    return (steps[-1], None) if steps else None
  finally:
    ckpt.close()


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
  """The resume order: this run's own newest intact checkpoint, else `init_from` (another
  run's workdir or checkpoint folder: its "params" only, fresh optimizer), else pretrained
  weights, else random.

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
