"""The README's first command: FOLDOC world -> bi-encoder from real MiniLM-L6 weights ->
recall on the test split for BM25, the untrained and the trained encoder -> one linked sentence.

  python -m zel_jax.quickstart [--workdir=workdirs/quickstart] [--steps=N]

Everything it leaves (the FOLDOC world under data/foldoc, the workdir with checkpoints,
metrics, candidates and stores) is printed at the end and reusable with zel_jax.evaluate and
zel_jax.link. Runs again resume: a finished training run is evaluated, not retrained.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app, flags, logging

from zel_jax import metric_writer, recipes, sharding
from zel_jax.training import checks
from zel_jax.configs import blink_biencoder, blink_crossencoder
from zel_jax.data import foldoc
from zel_jax.evals import linking
from zel_jax.evals.base import EvalRequest
from zel_jax.index import scann_store

SENTENCE = "The scheduler gives each process a time slice in [[round robin]] order."


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program (importing it next to
  another entry point, e.g. `zel_jax.bench`, which has its own --data, must not clash)."""
  flags.DEFINE_string("workdir", "workdirs/quickstart", "Training workdir.")
  flags.DEFINE_string("data", "data/foldoc", "Where the FOLDOC world is (built if absent).")
  flags.DEFINE_integer("steps", 0, "Training steps (0: the runlocal config's).")
  flags.DEFINE_bool(
      "stage2", False, "Also train BLINK's cross-encoder on the bi-encoder's candidates "
      "(workdir/cross), compare its reranked accuracy with the bi-encoder's, and rerank the "
      "linked sentence.")
  flags.DEFINE_string("sentence", SENTENCE,
                      "A sentence to link, its mention in [[double brackets]].")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  del argv
  summary = run(FLAGS.workdir, FLAGS.data, FLAGS.steps, FLAGS.stage2, FLAGS.sentence)
  sys.stdout.flush()
  print(json.dumps(summary))


def run(workdir: str, data: str, steps: int = 0, stage2: bool = False,
        sentence: str = SENTENCE) -> dict[str, Any]:
  """The quickstart as a function: prints its tables and the linked sentence, returns the
  summary that `main` prints as its last stdout line."""
  start = time.time()
  data = foldoc.fetch_foldoc(data)
  config = blink_biencoder.get_config("runlocal")
  config.data.dir = os.path.abspath(data)
  if steps:
    config.num_train_steps = steps
  config.evals.splits = ()  # Evaluated below, next to the baselines.
  workdir = os.path.abspath(workdir)
  checks.prepare_workdir(config, workdir)
  store = candidate_store()

  rows = {}
  print("evaluating BM25 and the untrained encoder on FOLDOC test ...", flush=True)
  rows["BM25 (title + text)"] = _evaluate(workdir, "test", baseline="bm25")
  rows["MiniLM-L6, untrained"] = _evaluate(workdir, "test", baseline="untrained")
  print(f"training the bi-encoder for {config.num_train_steps} steps ...", flush=True)
  recipes.for_config(config).train(config, workdir)
  rows["MiniLM-L6, trained"] = _evaluate(workdir, "test", store=store)
  reranker = None
  if stage2:
    reranker, rows["cross-encoder"] = _stage2(workdir, config.data.dir)
  print("\n" + "\n".join(results_lines(rows)))

  linker = recipes.open_linker(workdir, None, "foldoc", store=store)
  linked = linker.link([linking.marked_text(sentence)], top_k=5, reranker=reranker)[0]
  print(f"\n{sentence}\n  -> " + ", ".join(
      f"{e['title']} ({e['score']:.1f})" for e in linked["entities"]))
  print(f"\nworkdir: {workdir}  (python -m zel_jax.evaluate --workdir={workdir} --split=test; "
        f"python -m zel_jax.link --workdir={workdir} --world=foldoc --text='...')")
  summary = {name: {key: r[key] for key in r if key.startswith(("recall@", "normalized",
                                                                  "unnormalized"))}
             for name, r in rows.items()}
  summary.update(workdir=workdir, data=os.path.abspath(data), store=store,
                 linked=[e["title"] for e in linked["entities"]],
                 seconds=round(time.time() - start, 1))
  return summary


def results_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
  """The readable results: recall of each retriever on FOLDOC test and, after `--stage2`
  (the row "cross-encoder"), the reranked accuracy against the bi-encoder's."""
  lines = [f"FOLDOC test, {rows['BM25 (title + text)']['mentions']} mentions, recall (%):",
           f"{'retriever':26s} {'@1':>7s} {'@16':>7s} {'@64':>7s}"]
  for name, report in rows.items():
    if "recall@1" in report:
      # recall@k above the candidates retrieved is not measured (metrics.recall_report).
      lines.append(f"{name:26s} " + " ".join(
          f"{report[f'recall@{k}']:7.2f}" if f"recall@{k}" in report else f"{'n/a':>7s}"
          for k in (1, 16, 64)))
  if "cross-encoder" in rows:
    r = rows["cross-encoder"]
    lines += ["", f"reranking the bi-encoder's top {r['num_candidates']} (BLINK stage 2): "
              f"accuracy {r['unnormalized_accuracy']:.2f} (bi-encoder "
              f"{r['retriever_accuracy']:.2f}); normalized {r['normalized_accuracy']:.2f}"]
  return lines


def candidate_store() -> str:
  """ScaNN where it imports (x86-64 Linux with AVX2), else the exact store, with a warning."""
  if scann_store.available():
    return "scann"
  logging.warning("ScaNN cannot be imported here (x86-64 Linux with AVX2 only): the "
                  "quickstart searches with the exact store instead (same results, slower "
                  "on large worlds)")
  return "exact"


def _evaluate(workdir: str, split: str, store: str = "exact", baseline: str | None = None,
              top_k: int = 100):
  return recipes.evaluate_workdir(workdir, EvalRequest(
      split=split, split_given=True, store=store, baseline=baseline, top_k=top_k,
      top_k_given=True))


def _stage2(workdir: str, data: str):
  """BLINK stage 2 at runlocal size: candidates of the training split from the bi-encoder,
  a cross-encoder trained on them, evaluated on test. Returns (reranker, test report)."""
  config = blink_crossencoder.get_config("runlocal")
  config.data.dir = data
  config.data.candidates = workdir
  cross_dir = os.path.join(workdir, "cross")
  print("retrieving candidates for the training split ...", flush=True)
  _evaluate(workdir, "train", top_k=config.data.num_candidates)
  print(f"training the cross-encoder for {config.num_train_steps} steps ...", flush=True)
  report = recipes.for_config(config).train(config, cross_dir)["evals"]["test"]
  return recipes.open_reranker(cross_dir), report


FLAGS = flags.FLAGS


if __name__ == "__main__":
  define_flags()
  app.run(main)
