"""Per-device bytes of a compiled train step from shapes alone (python -m zel_jax.bench
memory)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from zel_jax import sharding


# ------------------------------------------------------------------------------------------
# Memory: per-device bytes of a compiled train step, without allocating it.

# Encoder sizes by name, for configs whose checkpoint is not on this machine (BERT paper).
STANDARD_BERT = {
    "bert-base-uncased": dict(),
    "bert-large-uncased": dict(hidden_size=1024, num_layers=24, num_heads=16,
                               intermediate_size=4096),
}


def encoder_config(name: str):
  from zel_jax.models import bert  # pylint: disable=g-import-not-at-top
  if name in STANDARD_BERT:
    return bert.BertConfig(**STANDARD_BERT[name])
  return bert.load_config(bert.resolve_pretrained(name))


def mvd_joint_shapes(config, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{name: (shape, dtype)} of MVD's joint-stage batch (trainers/mvd.py's prepare): the
  mention, K candidates x S local views (and each candidate's global view) for the student,
  the same pairs as cross-encoder rows for the teacher."""
  from zel_jax.trainers import crossencoder as cross_trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import mvd  # pylint: disable=g-import-not-at-top
  b, k, s = batch_size, int(config.mvd.num_candidates), int(config.mvd.train_views)
  lm, lv = int(config.data.mention_length), int(config.mvd.view_length)
  lg = int(config.data.entity_length)  # The global view.
  lc = cross_trainer.pair_length(mvd.teacher_config(config))
  st = 1 if config.mvd.single_vector_teacher else s  # Teacher views per candidate.
  i32, boolean = np.dtype(np.int32), np.dtype(bool)
  shapes = {"mention_input_ids": ((b, lm), i32), "mention_attention_mask": ((b, lm), i32),
            "view_input_ids": ((b, k, s, lv), i32), "view_attention_mask": ((b, k, s, lv), i32),
            "view_valid": ((b, k, s), boolean),
            "teacher_input_ids": ((b, k, st, lc), i32),
            "teacher_attention_mask": ((b, k, st, lc), i32),
            "teacher_token_type_ids": ((b, k, st, lc), i32),
            "teacher_valid": ((b, k, st), boolean), "label": ((b,), i32),
            "candidate_valid": ((b, k), boolean), "valid": ((b,), boolean)}
  if config.mvd.train_global_view:
    shapes.update(global_input_ids=((b, k, 1, lg), i32),
                  global_attention_mask=((b, k, 1, lg), i32),
                  global_valid=((b, k, 1), boolean))
  return shapes


def biencoder_shapes(config, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{name: (shape, dtype)} of BLINK's in-batch training batch."""
  b, lm, le = batch_size, int(config.data.mention_length), int(config.data.entity_length)
  i32 = np.dtype(np.int32)
  return {"mention_input_ids": ((b, lm), i32), "mention_attention_mask": ((b, lm), i32),
          "entity_input_ids": ((b, le), i32), "entity_attention_mask": ((b, le), i32),
          "entity_index": ((b,), i32), "valid": ((b,), np.dtype(bool))}


def step_memory(config, mesh, batch_size: int) -> dict[str, Any]:
  """Per-device bytes XLA plans for the recipe's jitted update at this global batch (the
  bi-encoder's, or MVD's joint step for configs/mvd.py): compiled from shapes and shardings
  alone (jax.ShapeDtypeStruct), so nothing is allocated and a step far larger than this
  machine's memory can be measured."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from zel_jax import checkpoint as checkpoint_lib, optim  # pylint: disable=g-import-not-at-top
  from zel_jax.models import biencoder, crossencoder  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as bi_trainer, loop, mvd  # pylint: disable=g-import-not-at-top

  bert_config = encoder_config(config.model.pretrained)
  common = dict(dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
                activation_sharding=sharding.activation_sharding(mesh,
                                                                 config.sharding.batch_axes))
  model = biencoder.BiEncoder(bert_config, pooling=config.model.pooling,
                              share_towers=config.model.share_towers, **common)
  if config.get("trainer") == "mvd":
    if config.mvd.stage != "joint":
      raise ValueError(f"bench memory measures MVD's joint step; the config is stage="
                       f"{config.mvd.stage} (use configs/mvd.py:...,stage=joint)")
    teacher = crossencoder.CrossEncoder(bert_config, **common)
    loss_fn = mvd.joint_loss_fn(model, teacher, config)
    abstract = {"student": biencoder.abstract_params(model),
                "teacher": crossencoder.abstract_params(teacher)}
    shapes = mvd_joint_shapes(config, batch_size)
  else:
    loss_fn = bi_trainer.make_loss_fn(model, config)
    abstract = biencoder.abstract_params(model)
    shapes = biencoder_shapes(config, batch_size)
  p_shardings = loop.param_shardings(config, abstract, mesh)
  params = loop.abstract_sharded_params(abstract, p_shardings)
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
