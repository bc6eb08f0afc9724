"""python -m zel_jax.bench {index|train|encode|rerank|mvd|memory} [--flags]: see
zel_jax/bench/__init__.py."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import jax
import numpy as np

from zel_jax import configs, sharding
from zel_jax.bench import memory, steps, zeroshot, zeroshot_report
from zel_jax.bench.index import bench_device, bench_faiss_flat, bench_faiss_hnsw, bench_scann
from zel_jax.bench.index import clustered_embeddings, qps_of, result_row, timed
from zel_jax.data import foldoc, worlds
from zel_jax.index.numpy_store import exact_search

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program (importing it next to
  another entry point that has its own --data, e.g. the quickstart, must not clash)."""
  flags.DEFINE_list("sizes", ["100000", "1000000"], "index: numbers of entities.")
  flags.DEFINE_integer("dim", 384, "index: embedding dimension.")
  flags.DEFINE_integer("queries", 2000, "index: evaluation queries per size.")
  flags.DEFINE_integer(
      "tune_queries", 1000, "index: queries used only to pick ScaNN's and HNSW's search knobs.")
  flags.DEFINE_integer("k", 64, "index: neighbours per query (recall@k).")
  flags.DEFINE_float("target_recall", 0.98,
                     "index: recall@k ScaNN must reach on the evaluation queries.")
  flags.DEFINE_float(
      "tune_margin", 0.005, "index: ScaNN is tuned to target_recall + this on the tuning "
      "queries, so that sampling noise between the query sets does not drop it below the target.")
  flags.DEFINE_list("stores", ["exact", "scann", "faiss_hnsw", "faiss_flat", "device"],
                    "index: stores to measure ('exact' always runs).")
  flags.DEFINE_float(
      "hnsw_build_budget_s", 600.0,
      "index: stop adding points to HNSW after this long and measure it on the rows added.")
  flags.DEFINE_integer("hnsw_m", 32, "index: FAISS HNSW graph degree M.")
  flags.DEFINE_integer(
      "hnsw_ef_construction", 128,
      "index: FAISS HNSW efConstruction (64 plateaus at recall@64 ~0.94 on the 1M set).")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_string("model", "all-MiniLM-L6-v2", "train/encode: the encoder.")
  flags.DEFINE_integer("batch_size", 32, "train: mentions per step.")
  flags.DEFINE_integer("mention_length", 128, "train: mention tokens.")
  flags.DEFINE_integer("entity_length", 128, "train: entity tokens.")
  flags.DEFINE_float("seconds", 30.0, "train: timing window per framework.")
  flags.DEFINE_string("data", "", "encode: ZESHEL-layout directory (default: the "
                      "FOLDOC world, built under data/foldoc if absent).")
  flags.DEFINE_string("world", "foldoc", "encode: the world whose entities to embed.")
  flags.DEFINE_integer("encode_length", 128, "encode: entity tokens.")
  flags.DEFINE_integer("encode_batch_size", 32, "encode: entities per batch.")
  flags.DEFINE_integer("rerank_mentions", 256, "rerank: test mentions scored.")
  flags.DEFINE_integer("rerank_k", 16, "rerank: candidates per mention.")
  flags.DEFINE_integer("rerank_batch_size", 2, "rerank: mentions per batch (x k pairs).")
  flags.DEFINE_string("mvd_variant", "runlocal",
                      "mvd: the configs/mvd.py variant whose shapes to time.")
  flags.DEFINE_integer("mvd_batch_size", 4, "mvd: mentions per step (both steps).")
  flags.DEFINE_string("mvd_dtype", "float32",
                      "mvd: compute dtype of both steps (bfloat16 on TPU/GPU).")
  flags.DEFINE_string(
      "memory_config", "configs/blink_biencoder.py:variant=base",
      "memory: the bi-encoder experiment (config file[:variant]) whose train step is compiled.")
  flags.DEFINE_string("memory_mesh", "data=8",
                      "memory: mesh axes, e.g. data=8 or data=2,fsdp=4.")
  flags.DEFINE_float("memory_budget_gib", 16.0,
                     "memory: per-device budget the largest batch must fit "
                     "(0: measure the config's batch only).")
  flags.DEFINE_list(
      "memory_set", [], "memory: config overrides key=value (model.dtype=bfloat16, "
      "model.remat=full, grad_accum_steps=4, ...).")
  flags.DEFINE_string("mvd_remat", "", "mvd: rematerialization policy of both "
                      "steps' layers (models.bert.REMAT_POLICIES; '': none).")
  flags.DEFINE_string("worlds", "data/worlds", "zeroshot: the benchmark folder built "
                      "by `python -m zel_jax.data.worlds`.")
  flags.DEFINE_string("zeroshot_runs", "workdirs/zeroshot",
                      "zeroshot: where every job's workdir goes (reused across runs).")
  flags.DEFINE_string("zeroshot_docs", "docs", "zeroshot: where benchmark.md, "
                      "benchmark.json and benchmark_recall.png are written; the results "
                      "already in its benchmark.json count as measured where their job's "
                      "config, inputs and data are unchanged.")
  flags.DEFINE_list("zeroshot_seeds", ["0", "1"], "zeroshot: seeds of the trained rows.")
  flags.DEFINE_list("zeroshot_only", [], "zeroshot: run these jobs, and the jobs they "
                    "read, unless finished in --zeroshot_runs; default every job not yet "
                    "measured. Names: bm25, untrained, blink.s0, hard.s0, cross.s0, ... "
                    "(see zeroshot.plan).")
  flags.DEFINE_bool("zeroshot_report_only", False, "zeroshot: run nothing; "
                    "rewrite the report from the finished jobs.")
  flags.DEFINE_string("zeroshot_budget", "", "zeroshot: overrides of the training "
                      "budget, e.g. steps=2000,length=128 (zeroshot.Budget).")


def run_index() -> dict[str, Any]:
  k, target, stores = FLAGS.k, FLAGS.target_recall, set(FLAGS.stores)
  unknown = stores - {"exact", "scann", "faiss_hnsw", "faiss_flat", "device"}
  if unknown:
    raise app.UsageError(f"unknown --stores {sorted(unknown)}")
  if stores & {"faiss_hnsw", "faiss_flat"}:
    try:
      import faiss  # lazy: FAISS is the reference, installed with the bench extra only
    except ImportError as e:
      raise app.UsageError("the FAISS columns need faiss-cpu (pip install faiss-cpu), or "
                           "leave them out with --stores") from e
  exact_fn = lambda t, q: exact_search(t, q, k)[1]
  rows = []
  for n in (int(s) for s in FLAGS.sizes):
    (table, queries), gen_s = timed(lambda n=n: clustered_embeddings(
        n, FLAGS.dim, FLAGS.tune_queries + FLAGS.queries, FLAGS.seed))
    tune_q, eval_q = queries[:FLAGS.tune_queries], queries[FLAGS.tune_queries:]
    logging.info("n=%d: data in %.1fs", n, gen_s)
    tune_exact = exact_fn(table, tune_q)
    eval_exact, qps = qps_of(lambda q: exact_fn(table, q), eval_q)
    rows.append(result_row("exact_numpy", n, 0.0, qps, 1.0,
                     params={"method": "matmul + argpartition, 128 queries per block at 1M"}))
    tuned_recall = target
    if "scann" in stores:
      row, tuned_recall = bench_scann(table, tune_q, tune_exact, eval_q, eval_exact, k,
                                      target + FLAGS.tune_margin)
      rows.append(row)
      gc.collect()
    if "faiss_hnsw" in stores:
      rows.append(bench_faiss_hnsw(table, tune_q, tune_exact, eval_q, eval_exact, k,
                                   tuned_recall, FLAGS.hnsw_build_budget_s, exact_fn,
                                   FLAGS.hnsw_m, FLAGS.hnsw_ef_construction))
      gc.collect()
    if "faiss_flat" in stores:
      rows.append(bench_faiss_flat(table, eval_q, eval_exact, k))
      gc.collect()
    if "device" in stores:
      rows.append(bench_device(table, eval_q, eval_exact, k))
      gc.collect()
    del table, queries
    gc.collect()
  return {"rows": rows}


def _data_dir() -> str:
  """--data, or the FOLDOC world (built under data/foldoc if absent)."""
  if FLAGS.data:
    return FLAGS.data
  return foldoc.fetch_foldoc("data/foldoc")


def run_rerank() -> dict[str, Any]:
  return steps.bench_rerank(_data_dir(), FLAGS.model, FLAGS.rerank_mentions, FLAGS.rerank_k,
                            FLAGS.rerank_batch_size)


def run_train() -> dict[str, Any]:
  return steps.bench_train(FLAGS.model, FLAGS.batch_size, FLAGS.mention_length,
                           FLAGS.entity_length, FLAGS.seconds)


def run_encode() -> dict[str, Any]:
  return steps.bench_encode(_data_dir(), FLAGS.world, FLAGS.model, FLAGS.encode_length,
                            FLAGS.encode_batch_size)


def run_mvd() -> dict[str, Any]:
  return steps.bench_mvd(FLAGS.model, FLAGS.mvd_variant, FLAGS.mvd_batch_size, FLAGS.seconds,
                         FLAGS.mvd_dtype, FLAGS.mvd_remat)


def _memory_config():
  """The experiment config of --memory_config with --memory_set overrides and the mesh."""
  path, _, arg = configs.resolve(FLAGS.memory_config).partition(":")
  spec = importlib.util.spec_from_file_location("memory_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in FLAGS.memory_set:
    key, _, value = item.partition("=")
    node = config
    *parents, last = key.split(".")
    for parent in parents:
      node = node[parent]
    node[last] = type(node[last])(value) if not isinstance(node[last], bool) else (
        value.lower() in ("1", "true"))
  config.mesh = [(name, int(size)) for name, size in
                 (axis.split("=") for axis in FLAGS.memory_mesh.split(","))]
  return config


def run_memory() -> dict[str, Any]:
  """The config's step at its own batch, then the largest global batch (a multiple of the
  batch shards) whose step fits --memory_budget_gib per device: doubling, then bisection."""
  config = _memory_config()
  mesh = sharding.make_mesh(config.mesh)
  unit = int(np.prod([mesh.shape[a] for a in config.sharding.batch_axes if a in mesh.shape]))
  budget = FLAGS.memory_budget_gib
  at_config = memory.step_memory(config, mesh, int(config.batch_size))
  logging.info("batch %d: %s", config.batch_size, at_config)
  fits = {}
  if budget <= 0:  # The config's own batch only.
    return {"config": FLAGS.memory_config, "overrides": FLAGS.memory_set,
            "mesh": dict(mesh.shape), "at_config_batch": at_config}

  def fit(units: int) -> bool:
    if units not in fits:
      fits[units] = memory.step_memory(config, mesh, units * unit)
      logging.info("batch %d: %.3f GiB per device", units * unit, fits[units]["total_gib"])
    return fits[units]["total_gib"] <= budget

  low, high = 0, 1
  while fit(high):
    low, high = high, high * 2
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (mid, high) if fit(mid) else (low, mid)
  return {"config": FLAGS.memory_config, "overrides": FLAGS.memory_set,
          "mesh": dict(mesh.shape), "devices": jax.device_count(),
          "platform": jax.devices()[0].platform, "encoder": config.model.pretrained,
          "dtype": config.model.dtype, "remat": config.model.remat or "none",
          "lengths": [int(config.data.mention_length), int(config.data.entity_length)],
          "at_config_batch": at_config, "budget_gib": budget,
          "largest_batch": low * unit if low else 0,
          "largest_batch_total_gib": fits[low]["total_gib"] if low else None}


def run_zeroshot() -> dict[str, Any]:
  fields = {f.name: f.type for f in dataclasses.fields(zeroshot.Budget)}
  changes = {}
  for part in filter(None, FLAGS.zeroshot_budget.split(",")):
    key, _, value = part.partition("=")
    if key not in fields:
      raise app.UsageError(f"--zeroshot_budget: unknown field {key!r}; fields: {sorted(fields)}")
    changes[key] = float(value) if fields[key] in ("float", float) else int(value)
  budget = zeroshot.Budget(**changes)
  seeds = [int(s) for s in FLAGS.zeroshot_seeds]
  summary_path = os.path.join(FLAGS.worlds, "benchmark.json")
  if not os.path.exists(summary_path):
    raise FileNotFoundError(f"{summary_path}: build the benchmark first with `python -m "
                            f"zel_jax.data.worlds --out={FLAGS.worlds}`")
  with open(summary_path) as f:
    summary = json.load(f)
  jobs = zeroshot.plan(budget, seeds)
  only = set() if FLAGS.zeroshot_report_only else (set(FLAGS.zeroshot_only) or None)
  command = "python -m zel_jax.bench zeroshot " + " ".join(
      a for a in sys.argv[2:] if not a.startswith("--zeroshot_report_only"))

  def report(results):
    return zeroshot_report.write(FLAGS.zeroshot_docs, summary, results, budget, seeds, command,
                                 worlds.worlds_of("test"), planned=[j.name for j in jobs])

  recorded_path = os.path.join(FLAGS.zeroshot_docs, "benchmark.json")
  recorded = {}
  if os.path.exists(recorded_path):
    with open(recorded_path) as f:
      record = json.load(f)
    recorded = record["results"]
    for line in zeroshot.package_changes(record.get("data", {}), summary):
      logging.warning("%s: %s; its results are for other data and will not be reused "
                      "(as root, `apt-get update`, then rebuild the worlds)", recorded_path, line)
  results = zeroshot.run_all(jobs, FLAGS.worlds, FLAGS.zeroshot_runs, only=only,
                             log=lambda text: logging.info("%s", text), on_result=report,
                             recorded=recorded)
  return {"written": report(results), "jobs": len(results)}


# Subcommands: name -> function returning the JSON object printed as the last stdout line.
COMMANDS: dict[str, Callable[[], dict[str, Any]]] = {
    "index": run_index, "train": run_train, "encode": run_encode, "rerank": run_rerank,
    "mvd": run_mvd, "memory": run_memory, "zeroshot": run_zeroshot}


def main(argv: Sequence[str]) -> None:
  sharding.use_cpu_cores_as_devices()
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m zel_jax.bench {{{'|'.join(COMMANDS)}}} [--flags]")
  result = COMMANDS[argv[1]]()
  sys.stdout.flush()
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
