"""BLINK's retrieval evaluator, for training and for `python -m zel_jax.evaluate` alike:
recall@k of a bi-encoder's top-k from each mention's own world (the bi-encoder, the distilled
student; ETZEL's and MVD's retrievers reuse it), with the candidates written for the next
stage. The cross-encoder's evaluator (`rerank`) is crossencoder.rerank_evaluator.
"""

from __future__ import annotations

import os
from typing import Any

from zel_jax.data import zeshel
from zel_jax.evals import retrieval
from zel_jax.evals.base import Evaluator, check_type


def retrieval_evaluator(config, workdir: str, model, featurizer, mesh,
                        dataset: zeshel.ZeshelDataset, *, splits=None, store: str | None = None,
                        top_k: int | None = None, world: str | None = None,
                        views: str = "global", suffix: str = "",
                        save_stores: tuple[str, Any] | None = None) -> Evaluator:
  """Recall on each split; candidates to W/candidates/<split><suffix>.jsonl; with
  save_stores (workdir, step), each world's store under W/stores/ for the linker. Each
  world's entities are encoded once per set of parameters for all splits."""
  cache: dict[str, Any] = {"params": None, "vectors": {}}

  def evaluate_split(params, split):
    if cache["params"] is not params:
      cache["params"], cache["vectors"] = params, {}
    return retrieval.evaluate_biencoder(
        model, params, featurizer, dataset, split, config, mesh,
        store=store or config.evals.store, top_k=top_k or config.evals.top_k, world=world,
        views=views, vector_cache=cache["vectors"], save_stores=save_stores,
        candidates_path=os.path.join(workdir, "candidates", f"{split}{suffix}.jsonl"))

  return Evaluator("retrieval", splits if splits is not None else config.evals.splits,
                   evaluate_split, dataset.splits())


def training_evaluator(config, workdir, model, featurizer, mesh, dataset) -> Evaluator:
  """A retriever stage's evaluator on config.evals.splits (config.evals.type "retrieval")."""
  check_type(config, ("retrieval",), "blink", "retrieval")
  return retrieval_evaluator(config, workdir, model, featurizer, mesh, dataset)
