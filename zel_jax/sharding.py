"""Device mesh, parameter sharding rules, sharded init and global batches.

Rules are data in the config (big_vision style), first match wins:

  config.sharding.param_rules   = [(regex over "a/b/kernel", (mesh axes per dim)), ...]
  config.sharding.logical_rules = [(logical axis name, mesh axis | (mesh axes) | None), ...]

A parameter whose path matches a regex rule takes that spec. Otherwise each dimension takes
the first logical rule for its axis name whose mesh axes are not yet used by another dimension
of the same parameter and divide the dimension's size; a dimension that no rule fits is
replicated. The divisibility check is why a 30522-row vocabulary still shards its embed
dimension on an 8-way fsdp mesh instead of failing.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MeshAxes = Any  # None | str | tuple[str, ...]


CPU_DEVICES_ENV = "ZEL_CPU_DEVICES"


def use_cpu_cores_as_devices(count: int | None = None) -> int:
  """Asks XLA's CPU platform for one device per core, so a CPU-only run shards its batch
  over cores like over accelerators. Returns the device count set (0: left alone).

  XLA runs the ops of one CPU device one after another, each split over the cores; the
  small ops (softmax, LayerNorm, GELU, attention on short rows) split poorly, and with one
  device per core they run side by side instead: a 128-token MiniLM forward runs 1.2x
  faster on 2 cores. The count is a power of two (batch sizes divide it), at most 8, or
  $ZEL_CPU_DEVICES (0 or 1 turns this off). A count already chosen (jax_num_cpu_devices or
  --xla_force_host_platform_device_count in XLA_FLAGS) wins. Call it before JAX creates its
  CPU client (the first device query); on GPU/TPU hosts it only touches the unused CPU
  platform.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices not in (-1, None)):
    return 0
  if count is None:
    if os.environ.get(CPU_DEVICES_ENV, "").strip():
      count = int(os.environ[CPU_DEVICES_ENV])
    else:
      cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
          os.cpu_count() or 1)
      count = min(8, 1 << (max(cores, 1).bit_length() - 1))
  if count <= 1:
    return 0
  jax.config.update("jax_num_cpu_devices", count)
  return count


def make_mesh(axes: Iterable[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
  """Mesh from [(name, size), ...]; one size may be -1 to take the remaining devices."""
  axes = [(str(name), int(size)) for name, size in axes]
  devices = list(jax.devices() if devices is None else devices)
  names = [n for n, _ in axes]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axis names repeat: {names}")
  sizes = [s for _, s in axes]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh {axes}: at most one axis may have size -1")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {axes}: sizes must be positive or -1")
  if fill:
    if len(devices) % known:
      raise ValueError(f"mesh {axes}: {len(devices)} devices are not a multiple of {known}")
    sizes[fill[0]] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                     f"there are {len(devices)}")
  # Auto axes: the compiler propagates shardings from the inputs and parameters (GSPMD);
  # explicit axes would demand an out_sharding on every ambiguous gather.
  return jax.make_mesh(tuple(sizes), tuple(names), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _as_tuple(mesh_axes: MeshAxes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  if isinstance(mesh_axes, str):
    return (mesh_axes,)
  return tuple(mesh_axes)


def _spec_entry(axes: tuple[str, ...]) -> MeshAxes:
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else axes


def logical_spec(names: Sequence[str | None], shape: Sequence[int],
                 logical_rules: Sequence[tuple[str, MeshAxes]], mesh: Mesh) -> P:
  """PartitionSpec for one array from its logical axis names (see module docstring)."""
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    chosen: tuple[str, ...] = ()
    for rule_name, mesh_axes in logical_rules:
      if rule_name != name:
        continue
      axes = _as_tuple(mesh_axes)
      if not axes:  # An explicit "replicate" rule ends the search.
        break
      if any(a in used or a not in mesh.shape for a in axes):
        continue
      if size % math.prod(mesh.shape[a] for a in axes):
        continue
      chosen = axes
      break
    used.update(chosen)
    spec.append(_spec_entry(chosen))
  return P(*spec)


def _check_divisible(path: str, spec: P, shape: Sequence[int], mesh: Mesh, rule: str) -> None:
  if len(spec) > len(shape):
    raise ValueError(f"param rule {rule!r} gives {spec} to {path} of rank {len(shape)}")
  for dim, entry in zip(shape, spec):
    axes = _as_tuple(entry)
    unknown = [a for a in axes if a not in mesh.shape]
    if unknown:
      raise ValueError(f"param rule {rule!r}: mesh has no axis {unknown} (mesh axes: "
                       f"{list(mesh.shape)})")
    n = math.prod(mesh.shape[a] for a in axes)
    if dim % n:
      raise ValueError(f"param rule {rule!r} splits {path} {tuple(shape)} by {spec}, but "
                       f"{dim} is not divisible by {n}")


def path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def param_specs(boxed_params: Any, mesh: Mesh, logical_rules=(), param_rules=()) -> Any:
  """PartitionSpec tree for a parameter tree whose leaves are nn.LogicallyPartitioned boxes
  (e.g. from jax.eval_shape(model.init, ...)); unboxed leaves are treated as axis-less."""
  compiled = [(re.compile(rx), P(*spec), rx) for rx, spec in param_rules]

  def one(path, leaf):
    names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else ()
    value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
    shape = tuple(value.shape)
    name = path_str(path)
    for rx, spec, raw in compiled:
      if rx.search(name):
        _check_divisible(name, spec, shape, mesh, raw)
        return spec
    if not names:
      names = (None,) * len(shape)
    return logical_spec(names, shape, logical_rules, mesh)

  return jax.tree_util.tree_map_with_path(
      one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def spec_table(boxed_params: Any, specs: Any) -> str:
  """One line per parameter: path, shape, logical axes, mesh spec."""
  lines = []
  boxes = jax.tree_util.tree_leaves_with_path(
      boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), spec in zip(boxes, spec_leaves):
    value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
    names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else ()
    lines.append(f"{path_str(path):55s} {str(tuple(value.shape)):14s} "
                 f"{str(tuple(names)):28s} {spec}")
  return "\n".join(lines)


def to_shardings(specs: Any, mesh: Mesh) -> Any:
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, P))


def sharded_init(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                 logical_rules=(), param_rules=(), log: bool = True) -> tuple[Any, Any]:
  """Initializes parameters directly into their shardings: nothing is built on one host.

  init_fn(rng) returns a (possibly boxed) parameter tree. Returns (unboxed params, shardings).
  """
  abstract = jax.eval_shape(init_fn, rng)
  specs = param_specs(abstract, mesh, logical_rules, param_rules)
  if log:
    logging.info("parameter shardings on mesh %s:\n%s", dict(mesh.shape),
                 spec_table(abstract, specs))
  shardings = to_shardings(specs, mesh)
  params = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return params, shardings


def batch_sharding(mesh: Mesh, batch_axes: MeshAxes = ("data", "fsdp")) -> NamedSharding:
  """Sharding of a [global_batch, ...] array: the leading dimension over `batch_axes`
  (those present in the mesh)."""
  axes = tuple(a for a in _as_tuple(batch_axes) if a in mesh.shape)
  return NamedSharding(mesh, P(_spec_entry(axes)))


def activation_sharding(mesh: Mesh, batch_axes: MeshAxes = ("data", "fsdp")) -> NamedSharding:
  """Sharding of [batch, length, hidden] activations: batch split, features whole."""
  return NamedSharding(mesh, P(batch_sharding(mesh, batch_axes).spec[0], None, None))


def global_batch(local: Any, mesh: Mesh, batch_axes: MeshAxes = ("data", "fsdp")) -> Any:
  """Assembles each process's slice of a batch (a tree of numpy arrays) into global arrays."""
  sharding = batch_sharding(mesh, batch_axes)
  n = math.prod(mesh.shape[a] for a in _as_tuple(sharding.spec[0]))
  local_devices = len(mesh.local_devices)

  def one(x):
    x = np.asarray(x)
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % n:
      raise ValueError(f"global batch of {global_rows} rows does not divide over {n} "
                       f"batch shards (local rows {x.shape[0]}, {local_devices} local devices)")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map(one, local)
