"""Candidate stores behind one interface (see base.CandidateStore).

  NumpyStore   exact brute force on the host (the reference)
  ScannStore   ScaNN on the host: exact below 20k entities, tree + AH + reordering above
  DeviceStore  the table sharded over a jax Mesh, exact or approx top-k on the devices

Imports of the concrete stores are lazy so that `import zel_jax.index` pulls in neither ScaNN
nor JAX.
"""

from __future__ import annotations

import os
from typing import Any

from zel_jax.index.base import CandidateStore, read_manifest

__all__ = ["CandidateStore", "NumpyStore", "ScannStore", "DeviceStore", "load_store",
           "store_class"]


def store_class(kind: str) -> type[CandidateStore]:
  """The store class for a kind name: "numpy", "scann" or "device"."""
  if kind == "numpy":
    from zel_jax.index.numpy_store import NumpyStore  # lazy: no JAX/ScaNN on import
    return NumpyStore
  if kind == "scann":
    from zel_jax.index.scann_store import ScannStore  # lazy: no JAX/ScaNN on import
    return ScannStore
  if kind == "device":
    from zel_jax.index.device_store import DeviceStore  # lazy: no JAX/ScaNN on import
    return DeviceStore
  raise ValueError(f"unknown candidate store kind {kind!r}; known: numpy, scann, device")


def load_store(directory: str | os.PathLike, **kwargs: Any) -> CandidateStore:
  """Loads whichever store `directory` holds; kwargs go to its load (e.g. mesh= for a
  DeviceStore)."""
  return store_class(read_manifest(directory)["kind"]).load(directory, **kwargs)


def __getattr__(name: str) -> Any:
  kinds = {"NumpyStore": "numpy", "ScannStore": "scann", "DeviceStore": "device"}
  if name in kinds:
    return store_class(kinds[name])
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
