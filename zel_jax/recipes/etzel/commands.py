"""What `zel_jax.evaluate` and `zel_jax.link` do with an ETZEL workdir: a typing model reports
UFET metrics on a split; the multi-task retriever evaluates and links as a bi-encoder (BLINK's
commands with the type-aware model)."""

from __future__ import annotations

from typing import Any

from zel_jax.evals.base import EvalRequest
from zel_jax.evals.linking import LoadedRetriever
from zel_jax.recipes.blink import commands as blink_commands
from zel_jax.recipes.etzel import multitask, typer


def evaluate(workdir: str, config, request: EvalRequest) -> dict[str, Any]:
  if config.get("trainer") == "typing":
    if request.baseline or request.world or request.candidates:
      raise ValueError(f"{workdir} holds an entity typing model: it evaluates typing F1 on a "
                       "split (no --baseline, --world or --candidates)")
    return typer.run_eval(workdir, config, request.data or config.data.dir, request.split)
  return blink_commands.evaluate_retriever(workdir, config, request, trainer=multitask)


def load_retriever(workdir: str, config, untrained: bool = False) -> LoadedRetriever:
  if config.get("trainer") == "typing":
    raise ValueError(f"{workdir} holds an entity typing model, not a retriever: link with the "
                     "multi-task stage's workdir (configs/etzel_multitask.py)")
  return blink_commands.load_retriever(workdir, config, untrained, trainer=multitask)
