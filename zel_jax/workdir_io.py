"""What a workdir holds besides checkpoints: its config (config.json), its evaluation reports
(<name>.json), and the check that every process sees the same folder. Written from process 0,
atomically (a temporary file, then a rename)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from zel_jax import checkpoint as checkpoint_lib

CONFIG_FILE = "config.json"


def save_config(config, workdir: str) -> None:
  """W/config.json, atomically. Training writes it through training.checks.prepare_workdir,
  which validates the config and refuses one the workdir's checkpoints do not match first."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def as_json_dict(config) -> dict[str, Any]:
  """The config as config.json holds it (tuples as lists), e.g. for a checkpoint's meta."""
  return json.loads(config.to_json_best_effort())


# What defines the model a checkpoint's parameters are: evaluation takes these from the
# checkpoint's own config. Of config.model, only compute, memory and dropout settings may
# change when a run resumes (training.checks refuses any other change).
MODEL_FIELDS = ("recipe", "trainer", "model")
RESUMABLE_MODEL_FIELDS = ("dtype", "remat", "hidden_dropout", "attention_dropout")


def checkpoint_config(workdir: str) -> dict[str, Any] | None:
  """The config the checkpoint a restore takes (checkpoint.Checkpointer.restore: the pinned
  step, else the newest intact one) was trained with: from its metadata, or config.json for
  checkpoints saved before configs went into it. None when the workdir has no checkpoint."""
  found = checkpoint_lib.checkpoint_config(os.path.join(workdir, "checkpoints"))
  if found is None:
    return None
  return found[1] if found[1] is not None else _read_config_file(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """A workdir's config for evaluation and linking: W/config.json, with the model (recipe,
  trainer, model) of the checkpoint they restore (checkpoint_config), so that a config.json
  rewritten since, or edited by hand, cannot build another model for these parameters.
  Paths and evaluation settings stay config.json's, to be edited when a workdir moves."""
  trained = checkpoint_config(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if trained is not None and not os.path.exists(path):
    config = trained
  else:
    config = _read_config_file(workdir)
    if trained is not None:
      config.update({k: trained[k] for k in MODEL_FIELDS if k in trained})
  # JSON turns tuples into lists; the mesh and rules are read as sequences either way.
  return ml_collections.ConfigDict(config)


def _read_config_file(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found; is {workdir!r} a zel_jax training workdir?")
  with open(path) as f:
    return json.load(f)


def check_workdir(workdir: str, wait_s: float = 10.0) -> None:
  """Fails before training where checkpoints would scatter instead of meeting in one place.

  A URL (gs://bucket/run) would be taken by the file system for a relative folder named
  "gs:", so every host would write its own partial checkpoint under its working directory.
  With several processes, each writes its Orbax shards under `workdir`, so all must see one
  shared folder: process 0 writes a probe file there and every process looks for it (for up
  to `wait_s` seconds, for network file systems' attribute caches). Every process raises the
  same error, so none is left waiting in a collective.
  """
  if "://" in workdir:
    raise ValueError(
        f"--workdir={workdir}: a URL; zel_jax reads and writes workdirs through the file "
        "system. Mount the storage at the same path on every host (README, 'Multi-host') "
        "and pass that path.")
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(
      np.array(np.random.default_rng().integers(2**31 - 1), np.int32)))
  probe = os.path.join(workdir, f".shared_probe_{token}")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("written by process 0 to check that every process sees this workdir\n")
  multihost_utils.sync_global_devices(f"check_workdir {token}: probe written")
  deadline = time.monotonic() + wait_s
  while not os.path.exists(probe) and time.monotonic() < deadline:
    time.sleep(0.5)
  seen = multihost_utils.process_allgather(np.array(os.path.exists(probe), np.int32))
  if jax.process_index() == 0:
    os.remove(probe)
  missing = [i for i, ok in enumerate(np.asarray(seen).reshape(-1)) if not ok]
  if missing:
    raise ValueError(
        f"--workdir={workdir}: not one folder shared by all {jax.process_count()} processes "
        f"(processes {missing} do not see the file process 0 wrote there), so checkpoint "
        "shards would scatter over the hosts. Put the workdir on storage every host mounts "
        "at the same path (NFS, Filestore, Lustre, ...).")


def write_report(workdir: str, name: str, report: dict[str, Any]) -> None:
  """workdir/<name>.json, atomically, from process 0."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
      json.dump(report, f, indent=1)
    os.replace(path + ".tmp", path)
