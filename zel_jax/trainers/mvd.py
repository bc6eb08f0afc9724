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
models/multiview.py.

Parameters: the retriever's are a bi-encoder's (its workdir evaluates and links as one); the
teacher's a cross-encoder's; the joint stage's {"student": bi-encoder, "teacher": cross}.
Departures from the authors' code, which differs from the paper: padding views are masked out
of every max, argmax and softmax (the code scores them); the teacher gets no gradient from the
alignment terms (the code lets the KL terms train it too); in-batch negatives span the global
batch with duplicate golds masked (the code uses each GPU's batch).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import local_views as local_views_lib
from zel_jax.data import zeshel
from zel_jax.models import biencoder, crossencoder, multiview
from zel_jax.trainers import biencoder as bi_trainer
from zel_jax.trainers import crossencoder as cross_trainer
from zel_jax.trainers import loop


# ------------------------------------------------------------------------------------------
# Views and data.


@dataclasses.dataclass
class ViewTable:
  """Views of a set of entities: token rows, the entity of each view, and each entity's view
  rows ([E, S], -1 past its last view)."""
  features: dict[str, np.ndarray]   # input_ids, attention_mask [V, L]
  entity: np.ndarray                # [V]
  entity_views: np.ndarray          # [E, S]

  @classmethod
  def of(cls, features: dict[str, np.ndarray], entity: np.ndarray, num_entities: int
         ) -> "ViewTable":
    counts = np.bincount(entity, minlength=num_entities)
    width = max(int(counts.max(initial=0)), 1)
    first = np.cumsum(counts) - counts
    slot = np.arange(len(entity)) - first[entity]
    entity_views = np.full((num_entities, width), -1, np.int64)
    entity_views[entity, slot] = np.arange(len(entity))
    return cls({k: features[k] for k in ("input_ids", "attention_mask")},
               np.asarray(entity, np.int64), entity_views)

  def gather(self, entity_rows: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """The views of entity_rows [...] as {prefix_input_ids [..., S, L], prefix_attention_mask,
    prefix_valid [..., S]}; rows of -1 get no valid view."""
    rows = self.entity_views[np.maximum(entity_rows, 0)]
    rows = np.where((entity_rows >= 0)[..., None], rows, -1)
    safe = np.maximum(rows, 0)
    return {f"{prefix}_input_ids": self.features["input_ids"][safe],
            f"{prefix}_attention_mask": self.features["attention_mask"][safe] * (rows >= 0)[
                ..., None],
            f"{prefix}_valid": rows >= 0}


def local_views(featurizer, titles, texts, config, max_views: int) -> ViewTable:
  feats = local_views_lib.view_features(featurizer, titles, texts, int(config.mvd.view_length),
                                         max_views, int(config.mvd.min_view_tokens))
  return ViewTable.of(feats, feats["entity"], len(titles))


def global_views(featurizer, titles, texts, config) -> ViewTable:
  feats = featurizer.entity_features(titles, texts, int(config.data.entity_length))
  return ViewTable.of(feats, np.arange(len(titles)), len(titles))


def student_tables(featurizer, titles, texts, config) -> dict[str, ViewTable]:
  """The student's views in training by batch prefix: "view" (the first train_views local
  views) and, when trained, "global"."""
  tables = {"view": local_views(featurizer, titles, texts, config,
                                int(config.mvd.train_views))}
  if config.mvd.train_global_view:
    tables["global"] = global_views(featurizer, titles, texts, config)
  return tables


def gather_views(tables: dict[str, ViewTable], rows: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v for prefix, t in tables.items() for k, v in t.gather(rows, prefix).items()}


@dataclasses.dataclass
class MvdData:
  """A split's mentions and every entity of their worlds (global rows, worlds in order)."""
  mentions: list[zeshel.Mention]
  mention_features: dict[str, np.ndarray]   # input_ids, attention_mask [M, Lm]
  worlds: np.ndarray                        # [M]
  gold: np.ndarray                          # [M] global entity rows
  entity_worlds: np.ndarray                 # [E]
  entity_doc_ids: np.ndarray                # [E]
  titles: list[str]
  texts: list[str]

  def row_of(self) -> dict[tuple[str, str], int]:
    return {(w, d): i for i, (w, d) in enumerate(zip(self.entity_worlds.tolist(),
                                                    self.entity_doc_ids.tolist()))}


def mvd_data(config, dataset: zeshel.ZeshelDataset, featurizer, split: str,
             max_mentions: int = -1, seed: int = 0) -> MvdData:
  window = None if config.data.window_words < 0 else config.data.window_words
  worlds = sorted({m.corpus for m in dataset.iter_mentions(split, validate=False)})
  # Entity features at 2 tokens: mention_set needs only the id order; views are made apart.
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, 2) for w in worlds}
  mentions = examples_lib.mention_set(dataset, split, featurizer, config.data.mention_length,
                                      entities, worlds=worlds, window_words=window)
  keep = examples_lib.fixed_subset(len(mentions), max_mentions, seed)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(entities[w].ids) for w in worlds])))
  gold = np.asarray([offsets[w] for w in mentions.worlds], np.int64) + mentions.gold_rows
  return MvdData(
      [mentions.mentions[i] for i in keep],
      {k: v[keep] for k, v in mentions.features.items()}, mentions.worlds[keep], gold[keep],
      np.concatenate([[w] * len(entities[w].ids) for w in worlds]),
      np.concatenate([entities[w].ids for w in worlds]),
      [t for w in worlds for t in entities[w].titles],
      [t for w in worlds for t in entities[w].texts])


# ------------------------------------------------------------------------------------------
# Models and parameters.


def teacher_config(config):
  """The cross-encoder's view of the config: its entity input is one view."""
  view = config.copy_and_resolve_references()
  if not config.mvd.single_vector_teacher:
    view.data.entity_length = int(config.mvd.view_length)
  return view


def teacher_rows(data: MvdData, table: ViewTable, index: np.ndarray, rows: np.ndarray,
                 config) -> dict[str, np.ndarray]:
  """Cross-encoder inputs [b, K, S, L] of mentions `index` with the views of their candidate
  entity rows [b, K]; teacher_valid [b, K, S]."""
  views = table.entity_views[np.maximum(rows, 0)]                 # [b, K, S]
  views = np.where((rows >= 0)[..., None], views, -1)
  b, k, s = views.shape
  length = cross_trainer.pair_length(teacher_config(config))
  feats = cross_trainer.pair_features(data.mention_features, table.features, index,
                                      views.reshape(b, k * s), length)
  out = {f"teacher_{name}": v.reshape(b, k, s, -1) for name, v in feats.items()}
  out["teacher_valid"] = views >= 0
  return out


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


def static_top(path: str, data: MvdData, top: int) -> np.ndarray:
  rows, _ = candidates_lib.candidate_rows(path, [m.mention_id for m in data.mentions],
                                          data.row_of(), top)
  return rows


def mine_top(model, params, data: MvdData, tables: list[ViewTable], config, mesh
             ) -> np.ndarray:
  """Each mention's top-N entities of its own world by its best view under the current
  student, over the views of `tables` (local, and global when trained) ([M, N] global
  rows)."""
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  from zel_jax.index import views as views_lib  # pylint: disable=g-import-not-at-top
  from zel_jax.index.numpy_store import NumpyStore  # pylint: disable=g-import-not-at-top
  encode_mentions, encode_entities = evaluate.encoders(model)
  axes = config.sharding.batch_axes
  mention_emb = evaluate.embed_rows(encode_mentions, params, data.mention_features, mesh,
                                    config.eval_batch_size, axes, desc="mine: mentions")
  view_emb = np.concatenate([
      evaluate.embed_rows(encode_entities, params, t.features, mesh, config.eval_batch_size,
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


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  _require(config, "data.dir")
  stage = config.mvd.stage
  if stage not in ("retriever", "teacher", "joint"):
    raise ValueError(f"config.mvd.stage={stage!r}: one of retriever, teacher, joint")
  if config.mvd.no_dynamic_distillation:
    config.optimizer.frozen = ("teacher",)
  loop.save_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  run = {"retriever": _retriever, "teacher": _teacher, "joint": _joint}[stage]
  return run(config, workdir, dataset, mesh)


def _retriever(config, workdir, dataset, mesh):
  model, featurizer = bi_trainer.build_model(config, mesh)
  t0 = time.time()
  data = mvd_data(config, dataset, featurizer, config.data.train_split,
                  int(config.data.max_train_mentions), config.seed)
  tables = student_tables(featurizer, data.titles, data.texts, config)
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
    return dict(local, **gather_views(tables, local["entity_index"]))

  recipe = loop.Recipe(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda s, r: bi_trainer.random_params(model, s, r),
      pretrained_params=lambda s, r: bi_trainer.pretrained_params(config, model, s, r),
      loss_fn=loss_fn,
      features={"mention_input_ids": data.mention_features["input_ids"],
                "mention_attention_mask": data.mention_features["attention_mask"],
                "entity_index": data.gold.astype(np.int32)},
      groups=data.worlds if config.data.one_world_per_batch else None, prepare=prepare)
  outcome = loop.run(config, workdir, recipe, mesh)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}
  return {**outcome.last,
          "evals": evaluate_student(config, dataset, workdir, model, outcome.params,
                                    featurizer, mesh)}


def _teacher(config, workdir, dataset, mesh):
  _require(config, "mvd.candidates")
  tconfig = teacher_config(config)
  model, featurizer = cross_trainer.build_model(tconfig, mesh)
  split = config.data.train_split
  data = mvd_data(config, dataset, featurizer, split, int(config.data.max_train_mentions),
                  config.seed)
  table = _teacher_table(featurizer, data, config)
  top = static_top(candidates_lib.path_of(config.mvd.candidates, split), data,
                   int(config.mvd.num_candidates))
  rows, labels = candidates_lib.with_gold(top, data.gold)

  def loss_fn(params, batch, rng):
    scores = multiview.teacher_scores(model, params, batch, rng)
    return losses.candidate_softmax(losses.max_over_views(scores, batch["teacher_valid"]),
                                    batch["label"], batch["candidate_valid"], batch["valid"])

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    return dict(local, **teacher_rows(data, table, index, rows[index], config),
                candidate_valid=rows[index] >= 0)

  recipe = loop.Recipe(
      abstract_params=crossencoder.abstract_params(model),
      random_params=lambda s, r: cross_trainer.random_params(model, s, r),
      pretrained_params=lambda s, r: cross_trainer.pretrained_params(tconfig, model, s, r),
      loss_fn=loss_fn, features={"label": labels}, prepare=prepare)
  outcome = loop.run(config, workdir, recipe, mesh)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}

  def evaluate_split(split):
    return evaluate_teacher(config, dataset, featurizer, model, outcome.params, split, mesh)

  return {**outcome.last, "evals": loop.evaluate_splits(config, dataset, workdir,
                                                        evaluate_split)}


def _teacher_table(featurizer, data: MvdData, config) -> ViewTable:
  if config.mvd.single_vector_teacher:
    return global_views(featurizer, data.titles, data.texts, config)
  return local_views(featurizer, data.titles, data.texts, config, int(config.mvd.train_views))


def _joint(config, workdir, dataset, mesh):
  _require(config, "mvd.retriever", "mvd.teacher")
  if config.mvd.no_dynamic_negatives:
    _require(config, "mvd.candidates")
  student, featurizer = bi_trainer.build_model(config, mesh)
  tconfig = teacher_config(config)
  teacher, _ = cross_trainer.build_model(tconfig, mesh)
  split = config.data.train_split
  data = mvd_data(config, dataset, featurizer, split, int(config.data.max_train_mentions),
                  config.seed)
  tables = student_tables(featurizer, data.titles, data.texts, config)
  # The teacher reads the student's local views unless it is single-vector.
  t_table = (_teacher_table(featurizer, data, config) if config.mvd.single_vector_teacher
             else tables["view"])
  k = int(config.mvd.num_candidates)
  dynamic = not config.mvd.no_dynamic_negatives
  static = None if dynamic else static_top(
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
    return dict(local, **gather_views(tables, rows),
                **teacher_rows(data, t_table, index, rows, config),
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
    s, _ = loop.restore_params(config.mvd.retriever, biencoder.abstract_params(student),
                               shardings["student"])
    t, _ = loop.restore_params(config.mvd.teacher, crossencoder.abstract_params(teacher),
                               shardings["teacher"])
    return {"student": s, "teacher": t}

  def random(shardings, rng):
    return {"student": bi_trainer.random_params(student, shardings["student"], rng),
            "teacher": cross_trainer.random_params(teacher, shardings["teacher"],
                                                   jax.random.fold_in(rng, 1))}

  recipe = loop.Recipe(
      abstract_params=abstract(), random_params=random, pretrained_params=warmed_up,
      loss_fn=joint_loss_fn(student, teacher, config),
      features={"mention_input_ids": data.mention_features["input_ids"],
                "mention_attention_mask": data.mention_features["attention_mask"]},
      prepare=prepare, checkpoint_meta=checkpoint_meta, restore_meta=restore_meta)
  outcome = loop.run(config, workdir, recipe, mesh)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}
  return {**outcome.last,
          "evals": evaluate_student(config, dataset, workdir, student,
                                    outcome.params["student"], featurizer, mesh)}


# ------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_student(config, dataset, workdir, model, params, featurizer, mesh):
  """Recall@k of the retriever over config.evals.views, candidates written per split."""
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  vectors = {}  # Each world's views encoded once for all splits.
  return loop.evaluate_splits(config, dataset, workdir, lambda split: (
      evaluate.evaluate_biencoder(
          model, params, featurizer, dataset, split, config, mesh,
          store=config.evals.store, top_k=config.evals.top_k, views=config.evals.views,
          vector_cache=vectors,
          candidates_path=os.path.join(workdir, "candidates", f"{split}.jsonl"))))


def evaluate_teacher(config, dataset, featurizer, model, params, split, mesh):
  """Accuracy of the multi-view teacher reranking the retriever's candidates of `split`
  (BLINK's normalized and unnormalized accuracies): each candidate at its best view."""
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  data = mvd_data(config, dataset, featurizer, split)
  table = _teacher_table(featurizer, data, config)
  rows = static_top(candidates_lib.path_of(config.mvd.candidates, split), data,
                    int(config.mvd.num_candidates))
  views = np.where((rows >= 0)[..., None], table.entity_views[np.maximum(rows, 0)], -1)
  m, k, s = views.shape
  tconfig = teacher_config(config)
  scores = cross_trainer.score_candidates(model, params, data.mention_features, table.features,
                                          views.reshape(m, k * s), tconfig, mesh,
                                          config.eval_batch_size, desc=f"{split} teacher")
  scores = scores.reshape(m, k, s).max(-1)
  report = evaluate.rerank_report(scores, rows, data.gold, data.worlds,
                                  [x.category for x in data.mentions])
  report.update(split=split, num_candidates=k, views_per_candidate=s,
                seconds=round(time.time() - t0, 1))
  return report


def restore_student(workdir: str, config, model: biencoder.BiEncoder, mesh, step=None):
  """The retriever of an MVD workdir: the whole tree of a retriever stage, the "student" of
  a joint one. Returns (params, step)."""
  abstract = biencoder.abstract_params(model)
  shardings = loop.param_shardings(config, abstract, mesh)
  if config.mvd.stage == "retriever":
    return loop.restore_params(workdir, abstract, shardings, step)
  if config.mvd.stage != "joint":
    raise ValueError(f"{workdir} is an MVD {config.mvd.stage!r} stage: no retriever in it")
  teacher, _ = cross_trainer.build_model(teacher_config(config), mesh)
  t_abstract = crossencoder.abstract_params(teacher)
  params, step = loop.restore_params(
      workdir, {"student": abstract, "teacher": t_abstract},
      {"student": shardings, "teacher": loop.param_shardings(config, t_abstract, mesh)}, step)
  return params["student"], step


def run_teacher_eval(workdir: str, config, data: str, split: str) -> dict[str, Any]:
  """zel_jax.evaluate on a teacher-stage workdir."""
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = cross_trainer.build_model(teacher_config(config), mesh)
  params, step = cross_trainer.restore_params(workdir, teacher_config(config), model, mesh)
  report = evaluate_teacher(config, zeshel.ZeshelDataset(data), featurizer, model, params,
                            split, mesh)
  report["step"] = int(step)
  return report
