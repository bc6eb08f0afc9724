"""Batches of feature arrays for training and evaluation, sliced per process.

Training: `BatchIterator` visits the N examples in an order that is a pure function of
(seed, epoch), so its position {epoch, batch} (`state()`, a small JSON-able dict saved with
the checkpoint) is all it takes to resume: `BatchIterator(..., state=saved)` yields exactly the
batches an uninterrupted run would have yielded next.

With `groups` (e.g. each mention's world), every batch holds examples of one group only, so
in-batch negatives are in-domain as in ZESHEL training (Logeswaran et al., 2019; Wu et al.,
2020). Each group is shuffled and cut into batches on its own, then the batches of all groups
are shuffled together.

Remainders (a group's, or the whole set's, last partial batch), `remainder=`:
  "drop": left out of this epoch. The shuffle changes which examples are left out from one
          epoch to the next; with groups, up to B - 1 examples per group per epoch.
  "pad":  kept, and filled up to the batch size with other examples of the same group from
          the same epoch marked invalid (`valid` False) so that losses and metrics skip them.
Every other example is used exactly once per epoch.

Evaluation: `eval_batches` goes in index order and pads the last batch to the full global
batch size with invalid rows, so every batch has the same shape and nothing recompiles.

Every batch is a dict of numpy arrays: each feature array indexed by the chosen examples, plus
`example_index` (int32, the example ids) and `valid` (bool). Multi-host: process p of P gets
rows [p * B/P, (p + 1) * B/P) of each global batch of B rows; concatenating the slices of all
processes in process order gives the global batch, which is how
`sharding.global_batch` (`jax.make_array_from_process_local_data`) lays them out when the
mesh orders devices by process, as `jax.make_mesh` does.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

RESERVED_KEYS = ("example_index", "valid")
_REMAINDERS = ("drop", "pad")


def _check_features(features: Mapping[str, Any]) -> int:
  if not features:
    raise ValueError("no feature arrays")
  clash = [k for k in RESERVED_KEYS if k in features]
  if clash:
    raise ValueError(f"feature names {clash} are reserved for the pipeline's own outputs")
  sizes = {k: len(v) for k, v in features.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"feature arrays disagree on the number of examples: {sizes}")
  return next(iter(sizes.values()))


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} outside [0, {count})")
  return index, count


def _local_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} does not split over "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _cut(order: np.ndarray, batch_size: int, remainder: str) -> tuple[np.ndarray, np.ndarray]:
  """Cuts an ordering of examples into [num_batches, batch_size] rows and their validity."""
  full = len(order) // batch_size
  idx = order[:full * batch_size].reshape(full, batch_size)
  valid = np.ones_like(idx, bool)
  rest = len(order) - full * batch_size
  if rest and remainder == "pad":
    # Fillers are real examples of the same ordering (same group), so every row's features
    # are well formed; `valid` keeps them out of losses and metrics.
    last = np.concatenate([order[full * batch_size:], np.resize(order, batch_size - rest)])
    idx = np.concatenate([idx, last[None]])
    valid = np.concatenate([valid, (np.arange(batch_size) < rest)[None]])
  return idx, valid


def epoch_plan(num_examples: int, global_batch_size: int, *, seed: int, epoch: int,
               groups: Sequence[Any] | np.ndarray | None = None, shuffle: bool = True,
               remainder: str = "drop") -> tuple[np.ndarray, np.ndarray]:
  """The global batches of one epoch: example ids [num_batches, B] and validity [.., B].

  A pure function of its arguments (for a given numpy version): this is what makes the
  iterator resumable from {epoch, batch} alone.
  """
  if remainder not in _REMAINDERS:
    raise ValueError(f"remainder must be one of {_REMAINDERS}, not {remainder!r}")
  rng = np.random.default_rng([int(seed), int(epoch)])
  if groups is None:
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    return _cut(order, global_batch_size, remainder)
  groups = np.asarray(groups)
  if len(groups) != num_examples:
    raise ValueError(f"{len(groups)} group keys for {num_examples} examples")
  _, codes = np.unique(groups, return_inverse=True)
  by_group = np.argsort(codes, kind="stable")
  bounds = np.cumsum(np.bincount(codes.reshape(-1)))[:-1]
  parts = [_cut(rng.permutation(m) if shuffle else m, global_batch_size, remainder)
           for m in np.split(by_group, bounds)]
  idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, global_batch_size), int)
  valid = np.concatenate([p[1] for p in parts]) if parts else np.zeros(idx.shape, bool)
  if shuffle:
    mix = rng.permutation(len(idx))
    idx, valid = idx[mix], valid[mix]
  return idx, valid


def _take(features: Mapping[str, np.ndarray], idx: np.ndarray, valid: np.ndarray
          ) -> dict[str, np.ndarray]:
  batch = {k: np.asarray(v)[idx] for k, v in features.items()}
  batch["example_index"] = idx.astype(np.int32)
  batch["valid"] = valid.astype(bool)
  return batch


class BatchIterator:
  """Shuffled, epoch-aware, resumable training batches (this process's slice of each).

  Args:
    features: name -> array with N examples along axis 0 (e.g. from features.py).
    global_batch_size: rows of each global batch B, a multiple of process_count.
    seed: with the epoch number, fixes the order of every epoch.
    groups: optional per-example keys (e.g. world names): each batch from one group only.
    shuffle: False visits examples (and groups) in index order, for debugging.
    remainder: "drop" or "pad" (see the module docstring).
    num_epochs: stop after this many epochs; None: never stop.
    process_index, process_count: default to jax's.
    state: a `state()` saved earlier: resume from there.
  """

  def __init__(self, features: Mapping[str, np.ndarray], global_batch_size: int, *,
               seed: int = 0, groups: Sequence[Any] | np.ndarray | None = None,
               shuffle: bool = True, remainder: str = "drop", num_epochs: int | None = None,
               process_index: int | None = None, process_count: int | None = None,
               state: Mapping[str, Any] | None = None):
    self.features = dict(features)
    self.num_examples = _check_features(self.features)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = _process(process_index, process_count)
    self._rows = _local_rows(self.global_batch_size, self.process_index, self.process_count)
    self.seed = int(seed)
    self.groups = None if groups is None else np.asarray(groups)
    self.shuffle = bool(shuffle)
    if remainder not in _REMAINDERS:
      raise ValueError(f"remainder must be one of {_REMAINDERS}, not {remainder!r}")
    self.remainder = remainder
    self.num_epochs = num_epochs
    self.epoch = 0
    self.batch = 0
    self._plan_epoch = -1
    self._plan: tuple[np.ndarray, np.ndarray] | None = None
    if self.groups is not None and len(self.groups) != self.num_examples:
      raise ValueError(f"{len(self.groups)} group keys for {self.num_examples} examples")
    sizes = (np.unique(self.groups, return_counts=True)[1] if self.groups is not None
             else np.array([self.num_examples]))
    per_group = (sizes // self.global_batch_size if remainder == "drop"
                 else -(-sizes // self.global_batch_size))
    self.batches_per_epoch = int(per_group.sum())
    if self.batches_per_epoch == 0:
      raise ValueError(f"no batch of {self.global_batch_size} fits in an epoch of "
                       f"{self.num_examples} examples"
                       + (" (each group alone is smaller)" if self.groups is not None else "")
                       + " with remainder='drop'; use a smaller batch or remainder='pad'")
    if state is not None:
      self.restore(state)

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    if self._plan_epoch != epoch:
      self._plan = epoch_plan(self.num_examples, self.global_batch_size, seed=self.seed,
                              epoch=epoch, groups=self.groups, shuffle=self.shuffle,
                              remainder=self.remainder)
      self._plan_epoch = epoch
    return self._plan

  def state(self) -> dict[str, Any]:
    """The position after the batches handed out so far, plus what it is only valid for.
    With prefetching, save the state of the last batch the train step consumed."""
    return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed,
            "num_examples": self.num_examples, "global_batch_size": self.global_batch_size,
            "grouped": self.groups is not None, "shuffle": self.shuffle,
            "remainder": self.remainder}

  def restore(self, state: Mapping[str, Any]) -> None:
    mine = self.state()
    differ = {k: (state[k], mine[k]) for k in mine
              if k not in ("epoch", "batch") and k in state and state[k] != mine[k]}
    if differ:
      raise ValueError("the saved pipeline state belongs to a different pipeline "
                       f"(saved, now): {differ}")
    epoch, batch = int(state["epoch"]), int(state["batch"])
    if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
      raise ValueError(f"saved position epoch {epoch} batch {batch} is outside an epoch of "
                       f"{self.batches_per_epoch} batches")
    self.epoch, self.batch = epoch, batch
    self._normalize()

  def _normalize(self) -> None:
    if self.batch >= self.batches_per_epoch:
      self.epoch, self.batch = self.epoch + 1, 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_epochs is not None and self.epoch >= self.num_epochs:
      raise StopIteration
    idx, valid = self._epoch(self.epoch)
    out = _take(self.features, idx[self.batch, self._rows], valid[self.batch, self._rows])
    self.batch += 1
    self._normalize()
    return out


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(features: Mapping[str, np.ndarray], global_batch_size: int, *,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """All examples once, in index order; the last batch is padded to global_batch_size with
  rows marked invalid (copies of the last example), so every batch has one shape."""
  n = _check_features(features)
  index, count = _process(process_index, process_count)
  rows = _local_rows(global_batch_size, index, count)
  for b in range(num_eval_batches(n, global_batch_size)):
    ids = np.arange(b * global_batch_size, (b + 1) * global_batch_size)[rows]
    valid = ids < n
    yield _take(features, np.minimum(ids, n - 1), valid)
