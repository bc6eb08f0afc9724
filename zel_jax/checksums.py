"""Integrity of checkpoints: the size and SHA-256 of every file of a step folder, written
once its save has finished and verified before a restore, and the check that restored (or
about to be saved) arrays hold no NaN or inf."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

CHECKSUMS = "zel_checksums.json"  # In each step folder, written once its save has finished.


def _step_files(step_dir: str) -> list[str]:
  out = []
  for root, _, files in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, f), step_dir) for f in files]
  return sorted(f for f in out if not f.startswith(CHECKSUMS))


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes, read in 4 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def write_checksums(step_dir: str) -> None:
  """CHECKSUMS in `step_dir`: the size and SHA-256 of every file there, atomically."""
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                 file_sha256(os.path.join(step_dir, rel))] for rel in _step_files(step_dir)}
  tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"sha256": files}, f)
  os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


_VERIFIED: set[tuple[str, int]] = set()  # (step folder, checksum file mtime) seen intact.


def verify_checksums(step_dir: str) -> str | None:
  """What is wrong with a step folder's files, or None when they match the checksums written
  at save. A step without CHECKSUMS (saved by an older zel_jax, or stopped between its save
  and its checksums) is accepted unverified; its values are still checked on restore."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.isdir(step_dir):
    return "its folder is missing"
  if not os.path.exists(path):
    return None
  key = (step_dir, os.stat(path).st_mtime_ns)
  if key in _VERIFIED:  # An evaluation looks up the config, then restores: hash once.
    return None
  try:
    with open(path) as f:
      expected = dict(json.load(f)["sha256"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{CHECKSUMS} is unreadable ({e})"
  for rel, (size, digest) in sorted(expected.items()):
    file = os.path.join(step_dir, rel)
    if not os.path.isfile(file):
      return f"{rel} is missing"
    if os.path.getsize(file) != size:
      return f"{rel} holds {os.path.getsize(file)} bytes where {size} were saved"
    if file_sha256(file) != digest:
      return f"{rel} differs from what was saved (SHA-256 mismatch)"
  _VERIFIED.add(key)
  return None


@jax.jit
def _finite(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def first_nonfinite(tree: Any) -> str | None:
  """The path ("params/w") of the first float leaf holding NaN or inf, or None."""
  floats = [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  # One program per set of devices the leaves live on (jit takes one set), not one per
  # leaf: many small programs with collectives in flight at once deadlock XLA's CPU client.
  groups: dict[Any, list[int]] = {}
  for i, (_, x) in enumerate(floats):
    groups.setdefault(frozenset(x.sharding.device_set), []).append(i)
  finite = [True] * len(floats)
  for members in groups.values():
    for i, ok in zip(members, jax.device_get(_finite([floats[i][1] for i in members]))):
      finite[i] = bool(ok)
  for (path, _), ok in zip(floats, finite):
    if not ok:
      return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return None
