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

from absl import app, flags

from zel_jax import metric_writer, recipes, sharding, workdir_io
from zel_jax.configs import blink_biencoder, blink_crossencoder
from zel_jax.data import foldoc
from zel_jax.evals import linking
from zel_jax.evals.base import EvalRequest

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/quickstart", "Training workdir.")
_DATA = flags.DEFINE_string("data", "data/foldoc", "Where the FOLDOC world is (built if absent).")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps (0: the runlocal config's).")
_STAGE2 = flags.DEFINE_bool(
    "stage2", False, "Also train BLINK's cross-encoder on the bi-encoder's candidates "
    "(workdir/cross), compare its reranked accuracy with the bi-encoder's, and rerank the "
    "linked sentence.")
_SENTENCE = flags.DEFINE_string(
    "sentence", "The scheduler gives each process a time slice in [[round robin]] order.",
    "A sentence to link, its mention in [[double brackets]].")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  del argv
  start = time.time()
  data = foldoc.fetch_foldoc(_DATA.value)
  config = blink_biencoder.get_config("runlocal")
  config.data.dir = os.path.abspath(data)
  if _STEPS.value:
    config.num_train_steps = _STEPS.value
  config.evals.splits = ()  # Evaluated below, next to the baselines.
  workdir = os.path.abspath(_WORKDIR.value)
  workdir_io.save_config(config, workdir)

  rows = {}
  print("evaluating BM25 and the untrained encoder on FOLDOC test ...", flush=True)
  rows["BM25 (title + text)"] = _evaluate(workdir, "test", baseline="bm25")
  rows["MiniLM-L6, untrained"] = _evaluate(workdir, "test", baseline="untrained")
  print(f"training the bi-encoder for {config.num_train_steps} steps ...", flush=True)
  recipes.for_config(config).train(config, workdir)
  rows["MiniLM-L6, trained"] = _evaluate(workdir, "test", store="scann")

  print(f"\nFOLDOC test, {rows['BM25 (title + text)']['mentions']} mentions, recall (%):")
  print(f"{'retriever':26s} {'@1':>7s} {'@16':>7s} {'@64':>7s}")
  for name, report in rows.items():
    if "recall@1" in report:
      print(f"{name:26s} " + " ".join(f"{report[f'recall@{k}']:7.2f}" for k in (1, 16, 64)))
  if "cross-encoder" in rows:
    r = rows["cross-encoder"]
    print(f"\nreranking the bi-encoder's top {r['num_candidates']} (BLINK stage 2): accuracy "
          f"{r['unnormalized_accuracy']:.2f} (bi-encoder {r['retriever_accuracy']:.2f}); "
          f"normalized {r['normalized_accuracy']:.2f}")

  reranker = None
  if _STAGE2.value:
    reranker, rows["cross-encoder"] = _stage2(workdir, config.data.dir)
  linker = recipes.open_linker(workdir, None, "foldoc", store="scann")
  linked = linker.link([linking.marked_text(_SENTENCE.value)], top_k=5, reranker=reranker)[0]
  print(f"\n{_SENTENCE.value}\n  -> " + ", ".join(
      f"{e['title']} ({e['score']:.1f})" for e in linked["entities"]))
  print(f"\nworkdir: {workdir}  (python -m zel_jax.evaluate --workdir={workdir} --split=test; "
        f"python -m zel_jax.link --workdir={workdir} --world=foldoc --text='...')")
  summary = {name: {key: r[key] for key in r if key.startswith(("recall@", "normalized",
                                                                  "unnormalized"))}
             for name, r in rows.items()}
  summary.update(workdir=workdir, data=os.path.abspath(data),
                 linked=[e["title"] for e in linked["entities"]],
                 seconds=round(time.time() - start, 1))
  sys.stdout.flush()
  print(json.dumps(summary))


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


if __name__ == "__main__":
  app.run(main)
