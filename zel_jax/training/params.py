"""Parameters on the mesh: their shardings under the config's rules, their shapes with those
shardings, and restoring them from a workdir's checkpoint."""

from __future__ import annotations

import os

from absl import logging
import flax.linen as nn
import jax

from zel_jax import checkpoint as checkpoint_lib
from zel_jax import sharding


def param_shardings(config, abstract, mesh, log: bool = False):
  """NamedShardings of boxed parameter shapes under config.sharding's rules."""
  specs = sharding.param_specs(abstract, mesh, config.sharding.logical_rules,
                               config.sharding.param_rules)
  if log:
    logging.info("parameter shardings on mesh %s:\n%s", dict(mesh.shape),
                 sharding.spec_table(abstract, specs))
  return sharding.to_shardings(specs, mesh)


def abstract_sharded_params(abstract, shardings):
  """ShapeDtypeStructs of the parameters, with their shardings (to restore or init into)."""
  return jax.tree_util.tree_map(
      lambda box, s: jax.ShapeDtypeStruct(box.value.shape, box.value.dtype, sharding=s),
      abstract, shardings, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def restore_params(workdir: str, abstract, shardings, step: int | None = None):
  """The parameters of a workdir's newest intact (or given, or pinned: evaluate --step)
  checkpoint, in `shardings`; checkpoint.Checkpointer.restore verifies and falls back."""
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to evaluate")
    items, meta = ckpt.restore({"params": abstract_sharded_params(abstract, shardings)},
                               step=step)
  finally:
    ckpt.close()
  return items["params"], meta["step"]


def init_params(model, shardings, rng, *example_inputs):
  """model.init's parameters (unboxed), created straight into their shardings (jit with
  out_shardings): no full copy is ever materialized on one device."""
  init = lambda r: nn.unbox(model.init(r, *example_inputs)["params"])
  return jax.jit(init, out_shardings=shardings)(rng)
