"""Fingerprints of what produced a cache, so that a cache is reused only for the same inputs:
the checkpoint (its step and a digest of its parameters), the encoder settings that change
embeddings, and the entities' contents.

Every entity store kept under W/stores/ (written by `zel_jax.evaluate`, read and written by
the linker) carries its fingerprint in `fingerprint.json` inside the store's folder; a store
whose fingerprint is missing or differs is rebuilt, with one log line saying what changed.
BLINK's distillation keys its cached teacher scores with `params_digest` too.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import index as index_lib

FILE = "fingerprint.json"

# What each part of a store's fingerprint stands for, in the log line of a rebuild.
_PARTS = {"step": "checkpoint step", "params": "checkpoint parameters",
          "encoder": "encoder settings", "entities": "entities (ids, titles, texts)"}


def params_digest(params: Any) -> str:
  """A digest of a parameter tree: each leaf's path, shape and dtype, and two sums of its
  bits modulo 2**32 (plain, and weighted by position), computed where the parameters live
  (jit over sharded, even multi-host, arrays; only two integers per leaf reach the host).
  Integer sums wrap exactly in any order, so the digest does not depend on the mesh or
  the reduction order, and any changed value changes it."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  sums = np.asarray(jax.device_get(_bit_sums([x for _, x in leaves]))) if leaves else []
  h = hashlib.sha256()
  for (path, leaf), pair in zip(leaves, sums):
    h.update(json.dumps([jax.tree_util.keystr(path), list(np.shape(leaf)),
                         str(leaf.dtype), [int(v) for v in pair]]).encode())
  return h.hexdigest()


@jax.jit
def _bit_sums(leaves):
  out = []
  for x in leaves:
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
      bits = x.astype(jnp.uint32)
    else:
      # 8-bit and 16-bit leaves widen; a 64-bit one becomes [..., 2] 32-bit words.
      unsigned = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
      bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    position = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
    weight = position * jnp.uint32(0x9E3779B1) + jnp.uint32(1)  # Odd: no position drops out.
    out.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32),
                          jnp.sum(bits * weight, dtype=jnp.uint32)]))
  return jnp.stack(out)


def texts_digest(*columns: Sequence[Any]) -> str:
  """A digest of parallel columns of strings (ids, titles, texts): their order included."""
  h = hashlib.sha256()
  for row in zip(*columns):
    h.update(json.dumps([str(x) for x in row]).encode("utf-8"))
  return h.hexdigest()


def encoder_settings(config, views: str) -> dict[str, Any]:
  """The config fields besides the parameters that change an entity's vectors: the model
  section (its weights' name decides the tokenizer; pooling, dtype, ...), the entity input
  length and marker tokens, the views and, with local views, how they are cut."""
  settings = {"model": config.model.to_dict(),
              "entity_length": config.data.get("entity_length"),
              "use_unused_markers": config.data.get("use_unused_markers"), "views": views}
  if views != "global":
    settings["mvd"] = {k: config.mvd.get(k) for k in ("view_length", "min_view_tokens")}
  # Through JSON, so that a config read back from W/config.json (lists for tuples) compares
  # equal to the one it was saved from.
  return json.loads(json.dumps(settings, sort_keys=True, default=str))


def store_fingerprint(step: Any, params: str, config, views: str, ids: Sequence[str],
                      titles: Sequence[str], texts: Sequence[str]) -> dict[str, Any]:
  """What a world's store depends on. params: params_digest of the checkpoint's parameters
  (computed once per checkpoint by the caller); step may be "untrained"."""
  return {"step": str(step), "params": params, "encoder": encoder_settings(config, views),
          "entities": texts_digest(ids, titles, texts)}


def stale(directory: str, wanted: dict[str, Any]) -> str | None:
  """Why the store in `directory` is not the one `wanted` describes (None: it is)."""
  path = os.path.join(directory, FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    return f"it has no {FILE} (written before stores had one, or its writing was cut short)"
  except (ValueError, OSError) as e:
    return f"{path} is unreadable ({e})"
  changed = [_PARTS.get(key, key) for key in sorted(set(saved) | set(wanted))
             if saved.get(key) != wanted.get(key)]
  return f"its {', '.join(changed)} differ from this run's" if changed else None


def load_store(directory: str, wanted: dict[str, Any], **kwargs):
  """The store cached in `directory` when its fingerprint is `wanted`, else None (logging
  why it is rebuilt); kwargs go to index.load_store."""
  if not os.path.isdir(directory):
    return None
  why = stale(directory, wanted)
  if why is not None:
    logging.warning("%s: %s: rebuilding it", directory, why)
    return None
  return index_lib.load_store(directory, **kwargs)


def save_store(store, directory: str, fingerprint: dict[str, Any]) -> None:
  """Saves the store (which atomically replaces the folder, old fingerprint included), then
  its fingerprint (a temporary file renamed into place): an interrupted save leaves a store
  without a fingerprint, which is rebuilt, never a store with another store's fingerprint.
  A device store's save is collective: every process calls this."""
  store.save(directory)
  if jax.process_index() == 0:
    tmp = os.path.join(directory, FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(fingerprint, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, FILE))
