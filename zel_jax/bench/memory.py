"""Per-device bytes of a compiled train step from shapes alone (python -m zel_jax.bench
memory)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from zel_jax import checkpoint as checkpoint_lib
from zel_jax import optim, recipes, sharding
from zel_jax.training import loop
from zel_jax.training import params as params_lib


def step_memory(config, mesh, batch_size: int) -> dict[str, Any]:
  """Per-device bytes XLA plans for the recipe's jitted update at this global batch (the
  recipe's step_shapes: BLINK's bi-encoder step, MVD's joint step): compiled from shapes and
  shardings alone (jax.ShapeDtypeStruct), so nothing is allocated and a step far larger than
  this machine's memory can be measured."""
  step = recipes.for_config(config).hook("step_shapes", "measure a train step's memory")
  loss_fn, abstract, shapes = step(config, mesh, batch_size)
  p_shardings = params_lib.param_shardings(config, abstract, mesh)
  params = params_lib.abstract_sharded_params(abstract, p_shardings)
  optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
  opt = jax.eval_shape(optimizer.init, params)
  o_shardings = loop.opt_shardings(opt, params, p_shardings, mesh)
  opt = checkpoint_lib.abstract_like(opt, o_shardings)
  rows = sharding.batch_sharding(mesh, config.sharding.batch_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
           for name, (shape, dtype) in shapes.items()}
  update = jax.jit(loop.make_update(loss_fn, optimizer, schedule, config),
                   in_shardings=(p_shardings, o_shardings, replicated, rows, replicated),
                   out_shardings=(p_shardings, o_shardings, replicated),
                   donate_argnums=(0, 1))
  t0 = time.time()
  compiled = update.lower(params, opt, jax.ShapeDtypeStruct((), jnp.int32), batch,
                          jax.random.PRNGKey(0)).compile()
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
  gib = lambda x: round(x / 2**30, 3)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"global_batch": batch_size, "arguments_gib": gib(m.argument_size_in_bytes),
          "outputs_gib": gib(m.output_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes),
          "aliased_gib": gib(m.alias_size_in_bytes), "total_gib": gib(total),
          "bytes": {"arguments": int(m.argument_size_in_bytes),
                    "temp": int(m.temp_size_in_bytes), "total": int(total)},
          "compile_s": round(time.time() - t0, 1)}
