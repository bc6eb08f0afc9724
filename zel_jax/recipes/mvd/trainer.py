"""MVD: multi-view enhanced distillation (Liu et al., ACL 2023), configs/mvd.py.

Three stages, one per config.mvd.stage, each a run of the shared loop:

  retriever  the bi-encoder warmed up with in-batch negatives, each entity scored at its best
             view (losses.in_batch_view_softmax): its local views and, with
             config.mvd.train_global_view, its global view;
  teacher    a multi-view cross-encoder, `[CLS] mention [SEP] title [ENT] chunk [SEP]` per view,
             a candidate scored at its best view, trained on the retriever's static top-k;
  joint      both together, L_de + L_ce + alpha L_cross + beta L_self (losses.mvd_alignment),
             the candidates re-mined with the current student every config.mvd.refresh_every
             steps: top-N entities, K sampled at random, gold always in. The teacher reads
             local views only; L_de scores a candidate over all the student's views, the
             alignment terms compare the local views.

The scoring itself (views through the entity tower, view-max, the teacher per view) is
multiview.py.

Parameters: the retriever's are a bi-encoder's (its workdir evaluates and links as one); the
teacher's a cross-encoder's; the joint stage's {"student": bi-encoder, "teacher": cross}.
Departures from the authors' code, which differs from the paper: padding views are masked out
of every max, argmax and softmax (the code scores them); the teacher gets no gradient from the
alignment terms (the code lets the KL terms train it too); in-batch negatives span the global
batch with duplicate golds masked (the code uses each GPU's batch).
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding, workdir_io
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import zeshel
from zel_jax.evals import inference
from zel_jax.index import views as views_lib
from zel_jax.index.numpy_store import NumpyStore
from zel_jax.models import biencoder, crossencoder, pretrained
from zel_jax.recipes.blink import biencoder as bi_trainer
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.mvd import data as data_lib
from zel_jax.recipes.mvd import evaluators, multiview
from zel_jax.training import checks, loop
from zel_jax.training import params as params_lib


# ------------------------------------------------------------------------------------------
# Models and parameters.


def joint_loss_fn(student: biencoder.BiEncoder, teacher: crossencoder.CrossEncoder, config):
  alpha = 0.0 if config.mvd.no_cross_alignment else float(config.mvd.alpha)
  beta = 0.0 if (config.mvd.no_self_alignment or config.mvd.single_vector_teacher) else float(
      config.mvd.beta)
  frozen_teacher = bool(config.mvd.no_dynamic_distillation)
  with_global = bool(config.mvd.train_global_view)

  def loss_fn(params, batch, rng):
    r_student, r_teacher = jax.random.split(rng)
    mention, views, all_valid = multiview.student_views(student, params["student"], batch,
                                                        r_student, with_global)
    s_all = multiview.candidate_view_scores(mention, views)
    s_ce = multiview.teacher_scores(teacher, params["teacher"], batch, r_teacher,
                                    deterministic=frozen_teacher)
    if frozen_teacher:
      s_ce = jax.lax.stop_gradient(s_ce)
    label, cand, valid = batch["label"], batch["candidate_valid"], batch["valid"]
    # The student's own loss scores each candidate over all its views (the global one
    # included when trained); the teacher reads local views only, so the alignment terms
    # compare the local views, index for index.
    l_de = losses.candidate_softmax(losses.max_over_views(s_all, all_valid), label, cand, valid)
    s_de, view_valid = (s_all[..., 1:], all_valid[..., 1:]) if with_global else (
        s_all, all_valid)
    l_ce = losses.candidate_softmax(losses.max_over_views(s_ce, batch["teacher_valid"]), label,
                                    cand, valid)
    if config.mvd.single_vector_teacher:
      # One teacher score per candidate: there is no relevant view to read the student at.
      s_ce = jnp.broadcast_to(s_ce[..., :1], s_de.shape)
    cross, self_ = losses.mvd_alignment(
        s_de, s_ce, view_valid, cand, valid,
        relevant_view=not (config.mvd.no_relevant_view or config.mvd.single_vector_teacher))
    loss = l_de + alpha * cross + beta * self_
    return loss if frozen_teacher else loss + l_ce
  return loss_fn


# ------------------------------------------------------------------------------------------
# Candidates: static from a retriever's file, dynamic from the current student.


def mine_top(model, params, data: data_lib.MvdData, tables: list[data_lib.ViewTable], config,
             mesh) -> np.ndarray:
  """Each mention's top-N entities of its own world by its best view under the current
  student, over the views of `tables` (local, and global when trained) ([M, N] global
  rows)."""
  encode_mentions, encode_entities = inference.encoders(model)
  axes = config.sharding.batch_axes
  mention_emb = inference.embed_rows(encode_mentions, params, data.mention_features, mesh,
                                    config.eval_batch_size, axes, desc="mine: mentions")
  view_emb = np.concatenate([
      inference.embed_rows(encode_entities, params, t.features, mesh, config.eval_batch_size,
                          axes, desc="mine: views") for t in tables])
  view_entity = np.concatenate([t.entity for t in tables])
  n = int(config.mvd.top_n)
  top = np.full((len(data.gold), n), -1, np.int64)
  view_world = data.entity_worlds[view_entity]
  for w in np.unique(data.worlds):
    sel = np.flatnonzero(data.worlds == w)
    mine = np.flatnonzero(view_world == w)
    store = NumpyStore.build(view_emb[mine], view_entity[mine])
    _, found = views_lib.search_entities(store, mention_emb[sel], n)
    top[sel, :found.shape[1]] = found
  return top


# ------------------------------------------------------------------------------------------
# Stages.


def _require(config, *fields):
  for field in fields:
    section, name = field.split(".")
    if not config[section][name]:
      raise ValueError(f"config.{field} is empty (stage {config.mvd.stage!r} needs it)")


def _check_teacher_encoder(config, tconfig) -> None:
  """The joint stage builds its teacher with the encoder the warm-up teacher was trained
  with (its checkpoint would not fit another)."""
  trained = workdir_io.load_config(config.mvd.teacher).model.pretrained
  if trained != tconfig.model.pretrained:
    raise ValueError(
        f"config.mvd.teacher={config.mvd.teacher!r} was trained with the encoder {trained!r} "
        f"but the joint stage would build its teacher with {tconfig.model.pretrained!r}: set "
        f"--config.mvd.teacher_pretrained={trained}")


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  _require(config, "data.dir")
  stage = config.mvd.stage
  if stage not in ("retriever", "teacher", "joint"):
    raise ValueError(f"config.mvd.stage={stage!r}: one of retriever, teacher, joint")
  if config.mvd.no_dynamic_distillation:
    config.optimizer.frozen = ("teacher",)
  evaluators.check_stage_evaluator(config)
  if stage == "joint":  # Checked before the workdir is touched.
    _require(config, "mvd.retriever", "mvd.teacher")
    _check_teacher_encoder(config, data_lib.teacher_config(config))
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  run = {"retriever": _retriever, "teacher": _teacher, "joint": _joint}[stage]
  return run(config, workdir, dataset, mesh)


def _retriever(config, workdir, dataset, mesh):
  model, featurizer = bi_trainer.build_model(config, mesh)
  t0 = time.time()
  data = data_lib.mvd_data(config, dataset, featurizer, config.data.train_split,
                  int(config.data.max_train_mentions), config.seed)
  tables = data_lib.student_tables(featurizer, data.titles, data.texts, config)
  num_views = len(tables["view"].entity)
  logging.info("%d mentions, %d entities, %d local views (%.2f per entity) in %.1fs",
               len(data.gold), len(data.titles), num_views,
               num_views / max(len(data.titles), 1), time.time() - t0)
  with_global = bool(config.mvd.train_global_view)

  def loss_fn(params, batch, rng):
    mention, views, valid = multiview.student_views(model, params, batch, rng, with_global)
    return losses.in_batch_view_softmax(mention, views, valid, batch["entity_index"],
                                        batch["valid"])

  def prepare(local, params, epoch):
    del params, epoch
    return dict(local, **data_lib.gather_views(tables, local["entity_index"]))

  recipe = loop.TrainSpec(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda s, r: bi_trainer.random_params(model, s, r),
      pretrained_params=lambda s, r: bi_trainer.pretrained_params(config, model, s, r),
      loss_fn=loss_fn,
      features={"mention_input_ids": data.mention_features["input_ids"],
                "mention_attention_mask": data.mention_features["attention_mask"],
                "entity_index": data.gold.astype(np.int32)},
      groups=data.worlds if config.data.one_world_per_batch else None, prepare=prepare)
  evaluator = evaluators.student_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]


def _teacher(config, workdir, dataset, mesh):
  _require(config, "mvd.candidates")
  tconfig = data_lib.teacher_config(config)
  model, featurizer = cross_trainer.build_model(tconfig, mesh)
  split = config.data.train_split
  data = data_lib.mvd_data(config, dataset, featurizer, split, int(config.data.max_train_mentions),
                  config.seed)
  table = data_lib.teacher_table(featurizer, data, config)
  top = data_lib.static_top(candidates_lib.path_of(config.mvd.candidates, split), data,
                   int(config.mvd.num_candidates))
  rows, labels = candidates_lib.with_gold(top, data.gold)

  def loss_fn(params, batch, rng):
    scores = multiview.teacher_scores(model, params, batch, rng)
    return losses.candidate_softmax(losses.max_over_views(scores, batch["teacher_valid"]),
                                    batch["label"], batch["candidate_valid"], batch["valid"])

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    return dict(local, **data_lib.teacher_rows(data.mention_features, table, index,
                                               rows[index], config, model.config),
                candidate_valid=rows[index] >= 0)

  recipe = loop.TrainSpec(
      abstract_params=crossencoder.abstract_params(model),
      random_params=lambda s, r: cross_trainer.random_params(model, s, r),
      pretrained_params=lambda s, r: cross_trainer.pretrained_params(tconfig, model, s, r),
      loss_fn=loss_fn, features={"label": labels}, prepare=prepare)
  evaluator = evaluators.teacher_evaluator(config, featurizer, model, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]


def _joint(config, workdir, dataset, mesh):
  if config.mvd.no_dynamic_negatives:
    _require(config, "mvd.candidates")
  student, featurizer = bi_trainer.build_model(config, mesh)
  tconfig = data_lib.teacher_config(config)
  teacher, t_featurizer = cross_trainer.build_model(tconfig, mesh)
  split = config.data.train_split
  data = data_lib.mvd_data(config, dataset, featurizer, split, int(config.data.max_train_mentions),
                  config.seed)
  tables = data_lib.student_tables(featurizer, data.titles, data.texts, config)
  # The teacher reads the student's local views unless it is single-vector; a teacher with
  # its own encoder reads them (and the mentions) in its own tokenization.
  own_tokens = tconfig.model.pretrained != config.model.pretrained
  t_mentions = data.mention_features
  if own_tokens:
    t_data = data_lib.mvd_data(config, dataset, t_featurizer, split,
                               int(config.data.max_train_mentions), config.seed)
    if [m.mention_id for m in t_data.mentions] != [m.mention_id for m in data.mentions]:
      raise AssertionError("teacher and student tokenizations read different mentions")
    t_mentions = t_data.mention_features
  if config.mvd.single_vector_teacher:
    t_table = data_lib.teacher_table(t_featurizer, data, config)
  elif own_tokens:
    t_table = data_lib.local_views(featurizer, data.titles, data.texts, config,
                                   int(config.mvd.train_views), row_featurizer=t_featurizer)
  else:
    t_table = tables["view"]
  k = int(config.mvd.num_candidates)
  dynamic = not config.mvd.no_dynamic_negatives
  static = None if dynamic else data_lib.static_top(
      candidates_lib.path_of(config.mvd.candidates, split), data, int(config.mvd.top_n))
  refresh = int(config.mvd.refresh_every)
  state = {"rows": None, "labels": None, "mined_at": -1, "batches": 0}

  def candidates_for(params, key: int):
    top = (mine_top(student, params["student"], data, list(tables.values()), config, mesh)
           if dynamic else static)
    rng = np.random.default_rng([int(config.seed), key])
    state["rows"], state["labels"] = candidates_lib.sample_with_gold(top, data.gold, k, rng)
    state["mined_at"] = key
    logging.info("candidates (%s) for key %d: gold in the top-%d for %.1f%%",
                 "mined" if dynamic else "static", key, top.shape[1],
                 100 * float((top == data.gold[:, None]).any(1).mean()))

  def prepare(local, params, epoch):
    key = epoch if refresh <= 0 else state["batches"] // refresh
    if state["mined_at"] != key:
      candidates_for(params, key)
    state["batches"] += 1
    index = local["example_index"]
    rows = state["rows"][index]
    return dict(local, **data_lib.gather_views(tables, rows),
                **data_lib.teacher_rows(t_mentions, t_table, index, rows, config,
                                        teacher.config),
                label=state["labels"][index].astype(np.int32), candidate_valid=rows >= 0)

  def checkpoint_meta():
    return {"mvd_batches": state["batches"], "mvd_mined_at": state["mined_at"],
            "mvd_rows": state["rows"].tolist(), "mvd_labels": state["labels"].tolist()}

  def restore_meta(meta, source):
    if source == "workdir" and "mvd_rows" in meta:
      state.update(batches=int(meta["mvd_batches"]), mined_at=int(meta["mvd_mined_at"]),
                   rows=np.asarray(meta["mvd_rows"], np.int64),
                   labels=np.asarray(meta["mvd_labels"], np.int64))

  def abstract():
    return {"student": biencoder.abstract_params(student),
            "teacher": crossencoder.abstract_params(teacher)}

  def warmed_up(shardings, rng):
    del rng
    s, _ = params_lib.restore_params(config.mvd.retriever, biencoder.abstract_params(student),
                               shardings["student"])
    t, _ = params_lib.restore_params(config.mvd.teacher, crossencoder.abstract_params(teacher),
                               shardings["teacher"])
    return {"student": s, "teacher": t}

  def random(shardings, rng):
    return {"student": bi_trainer.random_params(student, shardings["student"], rng),
            "teacher": cross_trainer.random_params(teacher, shardings["teacher"],
                                                   jax.random.fold_in(rng, 1))}

  recipe = loop.TrainSpec(
      abstract_params=abstract(), random_params=random, pretrained_params=warmed_up,
      loss_fn=joint_loss_fn(student, teacher, config),
      features={"mention_input_ids": data.mention_features["input_ids"],
                "mention_attention_mask": data.mention_features["attention_mask"]},
      prepare=prepare, checkpoint_meta=checkpoint_meta, restore_meta=restore_meta)
  evaluator = evaluators.student_evaluator(config, workdir, student, featurizer, mesh, dataset,
                                          student_of=lambda params: params["student"])
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]


# ------------------------------------------------------------------------------------------
# Shapes of a train step (bench memory).


def mvd_joint_shapes(config, batch_size: int, encoder
                     ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{name: (shape, dtype)} of MVD's joint-stage batch (_joint's prepare): the
  mention, K candidates x S local views (and each candidate's global view) for the student,
  the same pairs as cross-encoder rows for the teacher (in its encoder's pair format)."""
  b, k, s = batch_size, int(config.mvd.num_candidates), int(config.mvd.train_views)
  lm, lv = int(config.data.mention_length), int(config.mvd.view_length)
  lg = int(config.data.entity_length)  # The global view.
  lc = cross_trainer.pair_length(data_lib.teacher_config(config), encoder)
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


def step_shapes(config, mesh, batch_size: int):
  """(loss_fn, abstract params, batch shapes) of the joint step at this global batch, from
  the encoder's config alone (no weights read)."""
  if config.mvd.stage != "joint":
    raise ValueError(f"bench memory measures MVD's joint step; the config is stage="
                     f"{config.mvd.stage} (use configs/mvd.py:...,stage=joint)")
  bert_config = pretrained.encoder_config(config.model.pretrained)
  common = dict(dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
                activation_sharding=sharding.activation_sharding(mesh,
                                                                 config.sharding.batch_axes))
  student = biencoder.BiEncoder(bert_config, pooling=config.model.pooling,
                                share_towers=config.model.share_towers, **common)
  teacher_bert = pretrained.encoder_config(data_lib.teacher_config(config).model.pretrained)
  teacher = crossencoder.CrossEncoder(teacher_bert, **common)
  abstract = {"student": biencoder.abstract_params(student),
              "teacher": crossencoder.abstract_params(teacher)}
  return (joint_loss_fn(student, teacher, config), abstract,
          mvd_joint_shapes(config, batch_size, teacher_bert))
