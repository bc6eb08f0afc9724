"""Retrieval evaluation: recall@k of the gold entity among each mention's candidates from its
own world, micro and macro over worlds, per world and per ZESHEL category.

  python -m zel_jax.evaluate --workdir=W --data=DIR --split=test [--store=exact|scann|device]
      [--world=NAME] [--baseline=bm25|untrained] [--step=N]

writes the top-k candidates of every mention (the cross-encoder's input) to
W/candidates/<split>[.<world>][.<baseline>].jsonl and prints, as its last stdout line, one JSON
object: {"recall@1": ..., ..., "macro": {...}, "per_world": {...}, "per_category": {...}}
(percentages). Each recipe evaluates its own workdirs (its `evaluate` hook: a cross-encoder
reranks, an EntQA reader links documents end to end with --end_to_end, a cross-language
workdir prints its per-language P/R/F1 report); this command only reads the flags.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app, flags, logging

from zel_jax import metric_writer, recipes, sharding
from zel_jax.evals import retrieval
from zel_jax.evals.base import EvalRequest


def run(workdir: str, data: str | None, split: str, store: str, world: str | None,
        baseline: str | None, top_k: int, bm25_context_words: int = 0,
        candidates: str | None = None, views: str | None = None,
        step: int | None = None) -> dict[str, Any]:
  """The command line's work as a function (notebooks, the quickstart, tests)."""
  return recipes.evaluate_workdir(workdir, EvalRequest(
      split=split, split_given=True, data=data, store=store, world=world, baseline=baseline,
      top_k=top_k, top_k_given=True, bm25_context_words=bm25_context_words,
      candidates=candidates, views=views, step=step))


def run_end_to_end(workdir: str, data: str | None, split: str | None, *,
                   input_path: str | None = None, world: str | None = None,
                   threshold: float | None = None, calibrate: bool = False,
                   top_k: int | None = None, baseline: str | None = None,
                   documents: str | None = None, max_documents: int = -1) -> dict[str, Any]:
  """`--end_to_end` as a function: split None is "test", or the config's
  evals.calibrate_split when calibrating."""
  return recipes.evaluate_workdir(workdir, EvalRequest(
      split=split or "test", split_given=split is not None, data=data, world=world,
      baseline=baseline, top_k=top_k or 100, top_k_given=top_k is not None,
      end_to_end=True, input=input_path, threshold=threshold, calibrate=calibrate,
      documents=documents, max_documents=max_documents))


def summary(report: dict[str, Any]) -> str | None:
  """One log line for the kinds of report that have one."""
  if "gamma" in report:
    return f"calibrated gamma {report['gamma']:.4f}: F1 {report['f1']:.2f}"
  if "inkb_micro_f1" in report:
    return (f"end-to-end: InKB P/R/F1 {report['inkb_micro_p']:.2f} / "
            f"{report['inkb_micro_r']:.2f} / {report['inkb_micro_f1']:.2f}, MD F1 "
            f"{report['md_f1']:.2f} ({report['gold']} gold, {report['predicted']} predicted)")
  if "normalized_accuracy" in report:
    return (f"{report['split']} rerank: normalized {report['normalized_accuracy']:.2f}, "
            f"unnormalized {report['unnormalized_accuracy']:.2f} (macro "
            f"{report['macro']['normalized_accuracy']:.2f} / "
            f"{report['macro']['unnormalized_accuracy']:.2f}) over {report['mentions']} "
            "mentions")
  if "recall@1" in report and "store" in report:
    # recall@k above the candidates retrieved is not measured (metrics.recall_report).
    shown = [k for k in (1, 16, 64) if f"recall@{k}" in report]
    micro = " ".join(f"R@{k}={report[f'recall@{k}']:.2f}" for k in shown)
    if len(shown) < 3:
      micro += f" (top {report.get('retrieved', '?')} retrieved: no recall@k above)"
    return f"{report['split']} {report['store']}: {micro} over {report['mentions']} mentions"
  return None


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program (tests and notebooks
  import its functions)."""
  flags.DEFINE_string("workdir", None, "A bi-encoder or cross-encoder training workdir.")
  flags.DEFINE_integer("step", None, "Restore this checkpoint step (default: the newest "
                       "intact one); its config is read from it too.")
  flags.DEFINE_string("candidates", None,
                      "Cross-encoder workdirs: the bi-encoder workdir (or candidates file) "
                      "whose candidates to rerank; default the one it trained on.")
  flags.DEFINE_string("data", None, "ZESHEL-layout directory (default: the config's).")
  flags.DEFINE_string("split", "test", "Mention split to evaluate.")
  flags.DEFINE_enum("store", "exact", ["exact", "scann", "device"], "Candidate store.")
  flags.DEFINE_string("world", None, "Evaluate one world only.")
  flags.DEFINE_enum("baseline", None, ["bm25", "untrained", "title_match"],
                    "Evaluate BM25, or the encoder before training, instead; with "
                    "--end_to_end, exact title matches.")
  flags.DEFINE_bool("end_to_end", False,
                    "EntQA reader workdirs: link whole documents and report InKB micro "
                    "P/R/F1 (strong match) and mention-detection F1.")
  flags.DEFINE_alias("end-to-end", "end_to_end")
  flags.DEFINE_string("input", None, "--end_to_end: GERBIL-style JSON lines (text, labels) "
                      "instead of the split's documents; needs --world.")
  flags.DEFINE_float("threshold", None, "--end_to_end: gamma (default: W/threshold.json, "
                     "else the config's reader.threshold).")
  flags.DEFINE_bool("calibrate", False, "--end_to_end: pick gamma on these documents and "
                    "write W/threshold.json.")
  flags.DEFINE_string("documents", None, "--end_to_end: 'mentions' or 'dictd_split' "
                      "(default: the config's data.documents).")
  flags.DEFINE_integer("max_documents", -1, "--end_to_end: a fixed subset of this many "
                       "documents.")
  flags.DEFINE_integer("top_k", 100, "Candidates retrieved and written per mention.")
  flags.DEFINE_alias("top-k", "top_k")
  flags.DEFINE_integer("bm25_context_words", 0,
                                       "BM25 query: mention plus this many words each side.")
  flags.DEFINE_enum("views", None, list(retrieval.VIEWS),
                    "MVD retrievers: what the store holds per entity (default: the config's "
                    "evals.views).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  del argv
  report = recipes.evaluate_workdir(FLAGS.workdir, EvalRequest(
      split=FLAGS.split, split_given=FLAGS["split"].present, data=FLAGS.data,
      store=FLAGS.store, world=FLAGS.world, baseline=FLAGS.baseline, top_k=FLAGS.top_k,
      top_k_given=FLAGS["top_k"].present, bm25_context_words=FLAGS.bm25_context_words,
      candidates=FLAGS.candidates, views=FLAGS.views, end_to_end=FLAGS.end_to_end,
      input=FLAGS.input, threshold=FLAGS.threshold, calibrate=FLAGS.calibrate,
      documents=FLAGS.documents, max_documents=FLAGS.max_documents, step=FLAGS.step))
  line = summary(report)
  if line:
    logging.info("%s", line)
  sys.stdout.flush()
  print(json.dumps(report))


FLAGS = flags.FLAGS


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
