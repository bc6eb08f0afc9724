"""The interface every recipe exposes, and the only thing the entry points (train, evaluate,
link, bench) know about recipes. A recipe is a package whose `RECIPE` is a `Recipe`; adding
one is a folder and a config file (`config.recipe` names the package)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from zel_jax.evals.base import EvalRequest


@dataclasses.dataclass(frozen=True)
class Recipe:
  """name: the recipe (config.recipe). trainers: config.trainer (a stage of the recipe) ->
  train_and_evaluate(config, workdir). evaluate(workdir, config, request) -> report: what
  `python -m zel_jax.evaluate` prints for one of its workdirs. The hooks a recipe may lack
  (None: the entry point says the recipe does not do that):
    retriever(workdir, config, untrained) -> evals.linking.LoadedRetriever  (link)
    reranker(workdir, config) -> evals.linking.PairScorer                 (link --rerank)
    documents(workdir, data) -> evals.linking.DocumentLinker              (--end_to_end)
    export_documents(workdir, config, folder) -> manifest entry or None     (export)
      writes what links raw documents (EntQA's reader) into an export being written; the
      entry names the module whose open_exported(path, entry, linker) reads it back
    step_shapes(config, mesh) -> {name: (shape, dtype)} of a training batch  (bench memory)
  """
  name: str
  trainers: Mapping[str, Callable[[Any, str], dict[str, Any]]]
  evaluate: Callable[[str, Any, EvalRequest], dict[str, Any]]
  retriever: Callable[[str, Any, bool], Any] | None = None
  reranker: Callable[[str, Any], Any] | None = None
  documents: Callable[[str, str | None], Any] | None = None
  export_documents: Callable[[str, Any, Any], dict[str, Any] | None] | None = None
  step_shapes: Callable[[Any, Any], dict[str, Any]] | None = None

  def stage(self, config) -> str:
    stage = config.get("trainer")
    if stage not in self.trainers:
      raise ValueError(f"config.trainer={stage!r}: recipe {self.name!r} has stages "
                       f"{sorted(self.trainers)}")
    return stage

  def train(self, config, workdir: str) -> dict[str, Any]:
    return self.trainers[self.stage(config)](config, workdir)

  def hook(self, name: str, purpose: str):
    """The hook `name`, or an error saying that this recipe does not do `purpose`."""
    fn = getattr(self, name)
    if fn is None:
      raise ValueError(f"recipe {self.name!r} does not {purpose}")
    return fn
