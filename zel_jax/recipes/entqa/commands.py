"""What `zel_jax.evaluate` and `zel_jax.link` do with an EntQA workdir: a retriever reports
passage recall on a split; a reader links whole documents end to end (`--end_to_end`)."""

from __future__ import annotations

from typing import Any

from zel_jax import workdir_io
from zel_jax.evals import base as evals_base
from zel_jax.recipes.blink import commands as blink_commands
from zel_jax.recipes.entqa import end_to_end, retriever


def evaluate(workdir: str, config, request: evals_base.EvalRequest) -> dict[str, Any]:
  """The recipe's `zel_jax.evaluate`: a reader end to end, a retriever by passage recall."""
  from_reader = config.get("trainer") == "entqa_reader"
  if request.end_to_end or from_reader:
    if not request.end_to_end:
      raise ValueError(f"{workdir} holds an EntQA reader: evaluate it with --end_to_end")
    return end_to_end.evaluate_end_to_end(workdir, config, request)
  if request.baseline or request.candidates or request.views:
    raise ValueError(f"{workdir} holds an EntQA retriever: it evaluates passage recall on "
                     "a split (no --baseline, --candidates or --views)")
  return retriever.run_eval(workdir, config, request.data or config.data.dir, request.split,
                        request.top_k, request.world)


def document_linker(workdir: str, data: str | None = None) -> end_to_end.EndToEnd:
  """`link --end_to_end` and `evaluate --end_to_end`: a reader workdir with its retriever."""
  return end_to_end.EndToEnd(workdir, data)


def load_retriever(workdir: str, config, untrained: bool = False):
  """The retriever hook (export, link): an EntQA retriever workdir, or a reader's retriever
  (its config.data.candidates workdir). Its mention tower embeds passages."""
  if config.get("trainer") == "entqa_reader":
    workdir = config.data.candidates
    if not workdir:
      raise ValueError("the reader's config.data.candidates (its retriever's workdir) is "
                       "empty")
    config = workdir_io.load_config(workdir)
  return blink_commands.load_retriever(workdir, config, untrained)
