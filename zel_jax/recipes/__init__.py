"""Recipes (layer 3): one package per paper, each exposing a `RECIPE` (recipes.base.Recipe).

The entry points find a recipe by the config's `recipe` name: a package here
(zel_jax/recipes/<name>/) or any importable module path (a recipe of one's own, outside
zel_jax). Recipes are imported by name only when asked for, so nothing here imports them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from zel_jax import checkpoint, workdir_io
from zel_jax.evals import linking
from zel_jax.evals.base import EvalRequest
from zel_jax.recipes.base import Recipe

# Workdirs written before configs named their recipe: config.trainer -> recipe.
_LEGACY_TRAINERS = {
    "biencoder": "blink", "crossencoder": "blink", "distill": "blink",
    "typing": "etzel", "etzel": "etzel", "mvd": "mvd",
    "entqa_retriever": "entqa", "entqa_reader": "entqa", "xel": "xel",
}


def names() -> list[str]:
  """The recipes shipped with zel_jax."""
  here = os.path.dirname(__file__)
  return sorted(d for d in os.listdir(here)
                if os.path.isfile(os.path.join(here, d, "__init__.py")))


def by_name(name: str) -> Recipe:
  """zel_jax.recipes.<name>.RECIPE, or <name>.RECIPE for a module path of one's own."""
  for module_name in ([f"zel_jax.recipes.{name}"] if "." not in name else []) + [name]:
    try:
      module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name is not None and module_name.startswith(e.name):
        continue  # This candidate does not exist; a missing import inside it is raised.
      raise
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, Recipe):
      raise ValueError(f"recipe {name!r}: module {module_name} has no RECIPE "
                       "(zel_jax.recipes.base.Recipe)")
    return recipe
  raise ValueError(f"config.recipe={name!r}: no package zel_jax/recipes/{name}/ and no "
                   f"importable module {name!r} (recipes: {names()})")


def for_config(config) -> Recipe:
  """The recipe of a config: config.recipe, or for older workdirs the trainer's recipe."""
  name = config.get("recipe") or _LEGACY_TRAINERS.get(config.get("trainer"))
  if not name:
    raise ValueError(f"the config names no recipe (config.recipe; recipes: {names()})")
  return by_name(name)


def for_workdir(workdir: str) -> tuple[Recipe, object]:
  """(recipe, config) of a training workdir."""
  config = workdir_io.load_config(workdir)
  return for_config(config), config


def evaluate_workdir(workdir: str, request: EvalRequest) -> dict[str, Any]:
  """`python -m zel_jax.evaluate`'s work: a workdir evaluated by its recipe, at
  request.step's checkpoint when given (its config too)."""
  with pinned(workdir, request.step):
    recipe, config = for_workdir(workdir)
    if request.end_to_end:
      _documents_hook(recipe, config, workdir)
    return recipe.evaluate(workdir, config, request)


def pinned(workdir: str, step: int | None):
  """Within it, the workdir's config and parameters are those of checkpoint `step` (None:
  the newest intact one), wherever the recipe reads them."""
  return checkpoint.pinned_step(os.path.join(workdir, "checkpoints"), step)


def open_linker(workdir: str, data: str | None, world: str, store: str = "exact",
                untrained: bool = False, step: int | None = None) -> linking.Linker:
  """A retriever workdir (any recipe with a retriever) and one world's entity store, ready
  to link mentions; untrained: the encoder before training (the baseline); step: that
  checkpoint (default the newest intact one)."""
  with pinned(workdir, step):
    recipe, config = for_workdir(workdir)
    load = recipe.hook("retriever", "retrieve entities: link needs a retriever's workdir")
    return linking.Linker.for_world(load(workdir, config, untrained), workdir, data, world,
                                    store)


def documents_exporter(workdir: str):
  """What an export of this workdir adds to link raw documents (EntQA's reader): a function
  of the export folder being written that returns the manifest's "documents" entry, or
  None when the recipe links mentions only."""
  recipe, config = for_workdir(workdir)
  if recipe.export_documents is None:
    return None
  return lambda folder: recipe.export_documents(workdir, config, folder)


def open_reranker(workdir: str) -> linking.PairScorer:
  """A second-stage workdir (BLINK's cross-encoder) for `link --rerank`."""
  recipe, config = for_workdir(workdir)
  return recipe.hook("reranker", "rerank candidates: --rerank needs a cross-encoder "
                     "workdir")(workdir, config)


def open_document_linker(workdir: str, data: str | None = None,
                         step: int | None = None) -> linking.DocumentLinker:
  """A workdir that links whole documents (EntQA's reader) for `--end_to_end`."""
  with pinned(workdir, step):
    recipe, config = for_workdir(workdir)
    return _documents_hook(recipe, config, workdir)(workdir, data)


def _documents_hook(recipe: Recipe, config, workdir: str):
  if recipe.documents is None:
    raise ValueError(f"--end_to_end needs an EntQA reader workdir (configs/entqa_reader.py); "
                     f"{workdir} holds a {config.get('trainer')!r} run")
  return recipe.documents
