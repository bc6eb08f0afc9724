"""MVD's evaluators, for training and `python -m zel_jax.evaluate` alike: the retriever
(the warm-up stage, or the joint stage's student) by recall@k over its store's views
(config.evals.views; BLINK's retrieval evaluator), and the multi-view teacher by BLINK's
reranking accuracies over the retriever's candidates, each candidate at its best view."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from zel_jax import sharding
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import metrics
from zel_jax.evals.linking import LoadedRetriever
from zel_jax.models import biencoder, crossencoder
from zel_jax.recipes.blink import commands as blink_commands
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.blink import evaluators as blink_evaluators
from zel_jax.recipes.mvd import data as data_lib
from zel_jax.training import params as params_lib


def student_evaluator(config, workdir, model, featurizer, mesh, dataset,
                      student_of=lambda params: params) -> evals_base.Evaluator:
  """Recall@k of the retriever over config.evals.views; student_of picks its parameters
  out of the stage's (the joint stage trains {"student", "teacher"})."""
  inner = blink_evaluators.retrieval_evaluator(config, workdir, model, featurizer, mesh,
                                               dataset, views=config.evals.views)
  return evals_base.Evaluator(
      "retrieval", inner.splits, lambda params, split: inner.evaluate_split(
          student_of(params), split), dataset.splits())


def teacher_evaluator(config, featurizer, model, mesh, dataset) -> evals_base.Evaluator:
  return evals_base.Evaluator(
      "teacher", config.evals.splits, lambda params, split: evaluate_teacher(
          config, dataset, featurizer, model, params, split, mesh), dataset.splits())


def check_stage_evaluator(config) -> str:
  """config.evals.type for the stage: "teacher" for the teacher, "retrieval" otherwise."""
  default = "teacher" if config.mvd.stage == "teacher" else "retrieval"
  return evals_base.check_type(config, (default,), "mvd", default)


def evaluate_teacher(config, dataset, featurizer, model, params, split, mesh):
  """Accuracy of the multi-view teacher reranking the retriever's candidates of `split`
  (BLINK's normalized and unnormalized accuracies): each candidate at its best view."""
  t0 = time.time()
  data = data_lib.mvd_data(config, dataset, featurizer, split)
  table = data_lib.teacher_table(featurizer, data, config)
  rows = data_lib.static_top(candidates_lib.path_of(config.mvd.candidates, split), data,
                    int(config.mvd.num_candidates))
  views = np.where((rows >= 0)[..., None], table.entity_views[np.maximum(rows, 0)], -1)
  m, k, s = views.shape
  tconfig = data_lib.teacher_config(config)
  scores = cross_trainer.score_candidates(model, params, data.mention_features, table.features,
                                          views.reshape(m, k * s), tconfig, mesh,
                                          config.eval_batch_size, desc=f"{split} teacher")
  scores = scores.reshape(m, k, s).max(-1)
  report = metrics.rerank_report(scores, rows, data.gold, data.worlds,
                                  [x.category for x in data.mentions])
  report.update(split=split, num_candidates=k, views_per_candidate=s,
                seconds=round(time.time() - t0, 1))
  return report


def restore_student(workdir: str, config, model: biencoder.BiEncoder, mesh, step=None):
  """The retriever of an MVD workdir: the whole tree of a retriever stage, the "student" of
  a joint one. Returns (params, step)."""
  abstract = biencoder.abstract_params(model)
  shardings = params_lib.param_shardings(config, abstract, mesh)
  if config.mvd.stage == "retriever":
    return params_lib.restore_params(workdir, abstract, shardings, step)
  if config.mvd.stage != "joint":
    raise ValueError(f"{workdir} is an MVD {config.mvd.stage!r} stage: no retriever in it")
  teacher, _ = cross_trainer.build_model(data_lib.teacher_config(config), mesh)
  t_abstract = crossencoder.abstract_params(teacher)
  params, step = params_lib.restore_params(
      workdir, {"student": abstract, "teacher": t_abstract},
      {"student": shardings, "teacher": params_lib.param_shardings(config, t_abstract, mesh)}, step)
  return params["student"], step


def run_teacher_eval(workdir: str, config, data: str, split: str) -> dict[str, Any]:
  """zel_jax.evaluate on a teacher-stage workdir."""
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = cross_trainer.build_model(data_lib.teacher_config(config), mesh)
  params, step = cross_trainer.restore_params(workdir, data_lib.teacher_config(config), model,
                                              mesh)
  evaluator = teacher_evaluator(config, featurizer, model, mesh, zeshel.ZeshelDataset(data))
  report = evaluator.evaluate_split(params, split)
  report["step"] = int(step)
  return report


def evaluate(workdir: str, config, request: evals_base.EvalRequest) -> dict[str, Any]:
  """The recipe's `zel_jax.evaluate`: the teacher on its candidates, or the retriever (with
  BLINK's baselines) over its views."""
  if config.mvd.stage == "teacher":
    if request.baseline:
      raise ValueError(f"--baseline={request.baseline} evaluates retrievers; {workdir} holds "
                       "a cross-encoder")
    if request.world or request.candidates:
      raise ValueError("an MVD teacher workdir evaluates on its config.mvd.candidates, "
                       "all worlds of the split")
    return run_teacher_eval(workdir, config, request.data or config.data.dir, request.split)
  return blink_commands.evaluate_retriever(workdir, config, request, restore=restore_student,
                                           default_views=config.evals.views)


def load_retriever(workdir: str, config, untrained: bool = False) -> LoadedRetriever:
  """The linker's retriever: the student, its store holding config.evals.views."""
  return blink_commands.load_retriever(workdir, config, untrained, restore=restore_student,
                                       views=config.evals.views)
