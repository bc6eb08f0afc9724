"""What `zel_jax.evaluate` and `zel_jax.link` do with a BLINK workdir: evaluate it (a
retriever with its BM25 and untrained baselines, or a cross-encoder over a retriever's
candidates), load it as the linker's retriever, or as its reranker (`link --rerank`).
ETZEL and MVD reuse `evaluate_retriever` and `load_retriever` with their own model loaders."""

from __future__ import annotations

import os
import types
from typing import Any, Sequence

import jax
import numpy as np

from zel_jax import sharding, workdir_io
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import zeshel
from zel_jax.evals import retrieval
from zel_jax.evals.base import EvalRequest
from zel_jax.evals.linking import LoadedRetriever
from zel_jax.recipes.blink import biencoder as bi_trainer
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.blink import evaluators


def evaluate_retriever(workdir: str, config, request: EvalRequest,
                       trainer: types.ModuleType = bi_trainer, restore=None,
                       default_views: str = "global") -> dict[str, Any]:
  """`zel_jax.evaluate` on a retriever workdir: its checkpoint (or, with --baseline, BM25 or
  the encoder before training) on one split. trainer: the module that builds the model
  (build_model, param_shardings, pretrained_params, restore_params); restore: its checkpoint
  reader when not trainer.restore_params (MVD's student); views: what the store holds."""
  views = request.views or default_views
  dataset = zeshel.ZeshelDataset(request.data or config.data.dir)
  split, world, baseline = request.split, request.world, request.baseline
  suffix = "".join(f".{x}" for x in (world, baseline) if x)
  if baseline == "bm25":
    return retrieval.evaluate_bm25(
        dataset, split, top_k=request.top_k, world=world,
        context_words=request.bm25_context_words,
        candidates_path=os.path.join(workdir, "candidates", f"{split}{suffix}.jsonl"))
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  if baseline == "untrained":
    shardings = trainer.param_shardings(config, model, mesh)
    params, step = trainer.pretrained_params(config, model, shardings,
                                             jax.random.PRNGKey(config.seed)), 0
  else:
    params, step = (restore or trainer.restore_params)(workdir, config, model, mesh)
  if views != default_views:
    suffix += "." + views.replace("+", "_")
  evaluator = evaluators.retrieval_evaluator(
      config, workdir, model, featurizer, mesh, dataset, splits=(split,), store=request.store,
      top_k=request.top_k, world=world, views=views, suffix=suffix,
      save_stores=(workdir, baseline or step))
  report = evaluator.evaluate_split(params, split)
  report["step"] = int(step)
  return report


def evaluate_reranker(workdir: str, config, request: EvalRequest) -> dict[str, Any]:
  """`zel_jax.evaluate` on a cross-encoder workdir: reranks --candidates (a bi-encoder workdir
  or a candidates file; default the one it trained on). With --world, a bi-encoder workdir's
  candidates of that world (its `evaluate --world` file) when it has them."""
  if request.baseline:
    raise ValueError(f"--baseline={request.baseline} evaluates retrievers; {workdir} holds a "
                     "cross-encoder")
  source = candidates_lib.path_of(request.candidates or config.data.candidates, request.split,
                                  request.world)
  dataset = zeshel.ZeshelDataset(request.data or config.data.dir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = cross_trainer.build_model(config, mesh)
  params, step = cross_trainer.restore_params(workdir, config, model, mesh)
  evaluator = cross_trainer.rerank_evaluator(config, workdir, model, featurizer, mesh, dataset,
                               splits=(request.split,), source=source, world=request.world)
  report = evaluator.evaluate_split(params, request.split)
  report.update(step=int(step), reranked=source)
  return report


def evaluate(workdir: str, config, request: EvalRequest) -> dict[str, Any]:
  """The recipe's `zel_jax.evaluate`: a cross-encoder reranks, anything else retrieves."""
  if config.get("trainer") == "crossencoder":
    return evaluate_reranker(workdir, config, request)
  return evaluate_retriever(workdir, config, request)


def load_retriever(workdir: str, config, untrained: bool = False,
                   trainer: types.ModuleType = bi_trainer, restore=None,
                   views: str = "global") -> LoadedRetriever:
  """A retriever workdir's model and parameters for the linker (untrained: the encoder
  before training, whose stores are named "untrained")."""
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  if untrained:
    shardings = trainer.param_shardings(config, model, mesh)
    params, step = trainer.pretrained_params(config, model, shardings,
                                             jax.random.PRNGKey(0)), "untrained"
  else:
    params, step = (restore or trainer.restore_params)(workdir, config, model, mesh)
  return LoadedRetriever(config, mesh, model, featurizer, params, step, views)


def load_bi_retriever(workdir: str, config, untrained: bool = False) -> LoadedRetriever:
  """BLINK's retriever hook: a bi-encoder or distilled workdir (a cross-encoder is not one)."""
  if config.get("trainer") == "crossencoder":
    raise ValueError(f"{workdir} holds a cross-encoder: link with a retriever's --workdir and "
                     "give this one as --rerank")
  return load_retriever(workdir, config, untrained)


class Reranker:
  """A trained cross-encoder (BLINK stage 2) scoring mentions against given entities."""

  def __init__(self, workdir: str, config=None):
    self.config = config if config is not None else workdir_io.load_config(workdir)
    if self.config.get("trainer") != "crossencoder":
      raise ValueError(f"--rerank={workdir!r} is not a cross-encoder workdir (its trainer is "
                       f"{self.config.get('trainer')!r})")
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.model, self.featurizer = cross_trainer.build_model(self.config, self.mesh)
    self.params, self.step = cross_trainer.restore_params(workdir, self.config, self.model,
                                                    self.mesh)

  def score(self, pieces: Sequence[tuple[str, str, str]],
            candidates: Sequence[Sequence[zeshel.Entity]]) -> np.ndarray:
    """Scores [M, K] of each mention (left, mention, right) against its candidate entities
    (K = the longest list; -inf in the slots of shorter lists)."""
    lefts, mentions, rights = zip(*pieces)
    mention_feats = self.featurizer.mention_features(lefts, mentions, rights,
                                                     self.config.data.mention_length)
    flat = [e for row in candidates for e in row]
    entity_feats = self.featurizer.entity_features([e.title for e in flat],
                                                   [e.text for e in flat],
                                                   self.config.data.entity_length)
    k = max(len(row) for row in candidates)
    rows = np.full((len(candidates), k), -1, np.int64)
    start = 0
    for i, row in enumerate(candidates):
      rows[i, :len(row)] = np.arange(start, start + len(row))
      start += len(row)
    return cross_trainer.score_candidates(self.model, self.params, mention_feats, entity_feats,
                                    rows, self.config, self.mesh, self.config.eval_batch_size)
