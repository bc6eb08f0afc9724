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
import tempfile
import time

from absl import app, flags, logging

from zel_jax import metrics, sharding

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


def fetch_foldoc(out_dir: str) -> str:
  """Builds the FOLDOC world from Debian's dict-foldoc package unless `out_dir` has it."""
  from zel_jax.data import debian, dictd  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(out_dir, "stats.json")):
    return out_dir
  with tempfile.TemporaryDirectory() as tmp:
    unpacked = os.path.join(tmp, "root")
    debian.extract_deb(debian.download_deb("dict-foldoc", tmp), unpacked)
    stats = dictd.build_world(os.path.join(unpacked, "usr", "share", "dictd"), "foldoc",
                              out_dir)
  logging.info("FOLDOC world: %s", stats)
  return out_dir


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metrics.quiet_library_logs()
  del argv
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,unused-import
  import configs.blink_biencoder as recipe  # pylint: disable=g-import-not-at-top
  from zel_jax import evaluate, link  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import loop  # pylint: disable=g-import-not-at-top

  start = time.time()
  data = fetch_foldoc(_DATA.value)
  config = recipe.get_config("runlocal")
  config.data.dir = os.path.abspath(data)
  if _STEPS.value:
    config.num_train_steps = _STEPS.value
  config.evals.splits = ()  # Evaluated below, next to the baselines.
  workdir = os.path.abspath(_WORKDIR.value)
  loop.save_config(config, workdir)

  rows = {}
  print("evaluating BM25 and the untrained encoder on FOLDOC test ...", flush=True)
  rows["BM25 (title + text)"] = evaluate.run(workdir, None, "test", "exact", None, "bm25", 100)
  rows["MiniLM-L6, untrained"] = evaluate.run(workdir, None, "test", "exact", None,
                                              "untrained", 100)
  print(f"training the bi-encoder for {config.num_train_steps} steps ...", flush=True)
  trainer.train_and_evaluate(config, workdir)
  rows["MiniLM-L6, trained"] = evaluate.run(workdir, None, "test", "scann", None, None, 100)

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
  linker = link.Linker(workdir, None, "foldoc", store="scann")
  linked = linker.link([link.marked_text(_SENTENCE.value)], top_k=5, reranker=reranker)[0]
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


def _stage2(workdir: str, data: str):
  """BLINK stage 2 at runlocal size: candidates of the training split from the bi-encoder,
  a cross-encoder trained on them, evaluated on test. Returns (reranker, test report)."""
  import configs.blink_crossencoder as recipe  # pylint: disable=g-import-not-at-top
  from zel_jax import evaluate, link  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import crossencoder  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.data.dir = data
  config.data.candidates = workdir
  cross_dir = os.path.join(workdir, "cross")
  print("retrieving candidates for the training split ...", flush=True)
  evaluate.run(workdir, None, "train", "exact", None, None, config.data.num_candidates)
  print(f"training the cross-encoder for {config.num_train_steps} steps ...", flush=True)
  report = crossencoder.train_and_evaluate(config, cross_dir)["evals"]["test"]
  return link.Reranker(cross_dir), report


if __name__ == "__main__":
  app.run(main)
