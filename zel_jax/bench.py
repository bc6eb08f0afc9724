"""Benchmarks, each printing one JSON object as its last stdout line.

  python -m zel_jax.bench index [--sizes=100000,1000000] [--dim=384] [--queries=2000]
  python -m zel_jax.bench train [--batch_size=32 --mention_length=128 --entity_length=128]
  python -m zel_jax.bench encode [--data=data/foldoc --world=foldoc --encode_length=128]
  python -m zel_jax.bench rerank [--data=data/foldoc --rerank_mentions=256 --rerank_k=16]
  python -m zel_jax.bench mvd [--mvd_variant=runlocal --mvd_batch_size=4 --mvd_dtype=float32
                              --mvd_remat=]

train: pairs/s of the jitted bi-encoder update (MiniLM-L6, two towers, in-batch loss, AdamW,
clipping) against the same model and batch in PyTorch (transformers' BertModel) in the same
run, and the step's FLOP/s (XLA's cost analysis) as a fraction of a plain jitted matmul's.
encode: the whole knowledge-base embedding pass of a world (tokenize, batch, encode; rows
sorted by length and cut to 8-token buckets) against BLINK's pass that pads every entity to
the maximum length, in entities/s; the two alternate over quarters of the world.
rerank: cross-encoder scoring of real FOLDOC test mentions, each against k entities of its
world, at BLINK's lengths (128 + 128 -> 255-token pairs): zel_jax's length-bucketed pass
(score_candidates) against BLINK's PyTorch pass that pads every pair to 256 tokens, in
candidates/s, same encoder (MiniLM-L6 + a linear score on [CLS]).
mvd: seconds per MVD joint update (student over K candidates x S local views + the global view,
multi-view teacher over the local pairs) against a BLINK bi-encoder update, same encoder and
mentions per step.

index: candidate stores on clustered synthetic embeddings (see `clustered_embeddings`). For
each size, exact brute force (numpy BLAS matmul + argpartition) gives the ground truth and the
queries/s baseline; ScaNN, FAISS HNSW, FAISS flat and the DeviceStore are measured against it.
The approximate stores are tuned on a separate set of queries (ScaNN: the fastest
leaves-to-search / reordering setting reaching --target_recall + --tune_margin; HNSW: the
smallest efSearch reaching ScaNN's tuned recall, i.e. equal recall), then timed on the
evaluation queries with batched calls (the fastest of repeated calls counts). Output: {"rows": [{store, n, build_s, qps, recall_at_64_vs_exact,
params, ...}, ...]}.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import numpy as np

from zel_jax import sharding

FLAGS = flags.FLAGS

_SIZES = flags.DEFINE_list("sizes", ["100000", "1000000"], "index: numbers of entities.")
_DIM = flags.DEFINE_integer("dim", 384, "index: embedding dimension.")
_QUERIES = flags.DEFINE_integer("queries", 2000, "index: evaluation queries per size.")
_TUNE_QUERIES = flags.DEFINE_integer(
    "tune_queries", 1000, "index: queries used only to pick ScaNN's and HNSW's search knobs.")
_K = flags.DEFINE_integer("k", 64, "index: neighbours per query (recall@k).")
_TARGET_RECALL = flags.DEFINE_float("target_recall", 0.98,
                                    "index: recall@k ScaNN must reach on the evaluation queries.")
_TUNE_MARGIN = flags.DEFINE_float(
    "tune_margin", 0.005, "index: ScaNN is tuned to target_recall + this on the tuning queries, "
    "so that sampling noise between the query sets does not drop it below the target.")
_STORES = flags.DEFINE_list("stores", ["exact", "scann", "faiss_hnsw", "faiss_flat", "device"],
                            "index: stores to measure ('exact' always runs).")
_HNSW_BUDGET_S = flags.DEFINE_float(
    "hnsw_build_budget_s", 600.0,
    "index: stop adding points to HNSW after this long and measure it on the rows added.")
_HNSW_M = flags.DEFINE_integer("hnsw_m", 32, "index: FAISS HNSW graph degree M.")
_HNSW_EF_CONSTRUCTION = flags.DEFINE_integer(
    "hnsw_ef_construction", 128,
    "index: FAISS HNSW efConstruction (64 plateaus at recall@64 ~0.94 on the 1M set).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_MODEL = flags.DEFINE_string("model", "all-MiniLM-L6-v2", "train/encode: the encoder.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "train: mentions per step.")
_MENTION_LENGTH = flags.DEFINE_integer("mention_length", 128, "train: mention tokens.")
_ENTITY_LENGTH = flags.DEFINE_integer("entity_length", 128, "train: entity tokens.")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "train: timing window per framework.")
_DATA = flags.DEFINE_string("data", "", "encode: ZESHEL-layout directory (default: the "
                            "FOLDOC world, built under data/foldoc if absent).")
_WORLD = flags.DEFINE_string("world", "foldoc", "encode: the world whose entities to embed.")
_ENCODE_LENGTH = flags.DEFINE_integer("encode_length", 128, "encode: entity tokens.")
_ENCODE_BATCH = flags.DEFINE_integer("encode_batch_size", 32, "encode: entities per batch.")
_RERANK_MENTIONS = flags.DEFINE_integer("rerank_mentions", 256, "rerank: test mentions scored.")
_RERANK_K = flags.DEFINE_integer("rerank_k", 16, "rerank: candidates per mention.")
_RERANK_BATCH = flags.DEFINE_integer("rerank_batch_size", 2,
                                     "rerank: mentions per batch (x k pairs).")


_MVD_VARIANT = flags.DEFINE_string("mvd_variant", "runlocal",
                                   "mvd: the configs/mvd.py variant whose shapes to time.")
_MVD_BATCH = flags.DEFINE_integer("mvd_batch_size", 4, "mvd: mentions per step (both steps).")
_MVD_DTYPE = flags.DEFINE_string("mvd_dtype", "float32",
                                 "mvd: compute dtype of both steps (bfloat16 on TPU/GPU).")
_MEM_CONFIG = flags.DEFINE_string(
    "memory_config", "configs/blink_biencoder.py:variant=base",
    "memory: the bi-encoder experiment (config file[:variant]) whose train step is compiled.")
_MEM_MESH = flags.DEFINE_string("memory_mesh", "data=8",
                                "memory: mesh axes, e.g. data=8 or data=2,fsdp=4.")
_MEM_BUDGET = flags.DEFINE_float("memory_budget_gib", 16.0,
                                 "memory: per-device budget the largest batch must fit "
                                 "(0: measure the config's batch only).")
_MEM_OVERRIDES = flags.DEFINE_list(
    "memory_set", [], "memory: config overrides key=value (model.dtype=bfloat16, "
    "model.remat=full, grad_accum_steps=4, ...).")
_MVD_REMAT = flags.DEFINE_string("mvd_remat", "", "mvd: rematerialization policy of both "
                                 "steps' layers (models.bert.REMAT_POLICIES; '': none).")


# ----------------------------------------------------------------------------- data


def clustered_embeddings(n: int, dim: int, n_queries: int, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Unit-norm entity embeddings [n, dim] and queries [n_queries, dim] shaped like a trained
  bi-encoder's: a few broad topics, many entity clusters within them (Zipf-sized, ~n/500 of
  them), within-cluster variation in a shared 64-dimensional subspace (real embeddings have
  low intrinsic dimension) plus small isotropic noise. A query is a random entity's embedding
  moved by the same kinds of noise, as a mention is near, not at, its entity."""
  rng = np.random.default_rng(seed)
  n_topics, n_clusters, rank = 64, max(1, n // 500), 64
  topics = _unit(rng.standard_normal((n_topics, dim), np.float32))
  centres = _unit(topics[rng.integers(n_topics, size=n_clusters)]
                  + 0.8 * _unit(rng.standard_normal((n_clusters, dim), np.float32)))
  basis = np.linalg.qr(rng.standard_normal((dim, rank)).astype(np.float32))[0].T  # [rank, dim]
  weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
  cluster = rng.choice(n_clusters, size=n, p=weights / weights.sum())
  table = np.empty((n, dim), np.float32)
  chunk = 65536
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    table[start:stop] = _unit(centres[cluster[start:stop]]
                              + _noise(rng, stop - start, basis, 0.6, 0.25))
  sources = rng.integers(n, size=n_queries)
  queries = _unit(table[sources] + _noise(rng, n_queries, basis, 0.35, 0.25))
  return table, queries


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, n: int, basis: np.ndarray, low_rank: float,
           isotropic: float) -> np.ndarray:
  rank, dim = basis.shape
  z = rng.standard_normal((n, rank), np.float32) @ basis * (low_rank / math.sqrt(rank))
  return z + rng.standard_normal((n, dim), np.float32) * (isotropic / math.sqrt(dim))


# ----------------------------------------------------------------------------- measuring


def recall_at_k(found_rows: np.ndarray, exact_rows: np.ndarray) -> float:
  """Mean fraction of each query's exact top-k rows among its found rows."""
  k = exact_rows.shape[1]
  hits = [np.intersect1d(f, e, assume_unique=False).size for f, e in zip(found_rows, exact_rows)]
  return float(np.sum(hits) / (k * len(exact_rows)))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def qps_of(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
           min_seconds: float = 2.0) -> tuple[np.ndarray, float]:
  """Rows found and queries/s of a batched call over all `queries`, after a warm-up
  (compilation, caches). Fast searches repeat until `min_seconds` and the fastest call
  counts (as timeit does): on a machine shared with other jobs, the slower calls measure the
  neighbours."""
  search(queries[:64])
  best, total = math.inf, 0.0
  while total < min_seconds:
    rows, seconds = timed(lambda: search(queries))
    best, total = min(best, seconds), total + seconds
  return rows, len(queries) / best


def _row(store: str, n: int, build_s: float, qps: float, recall: float, **extra: Any
         ) -> dict[str, Any]:
  row = {"store": store, "n": n, "build_s": round(build_s, 2), "qps": round(qps, 1),
         "recall_at_64_vs_exact": round(recall, 4), **extra}
  logging.info("index row: %s", json.dumps(row))
  return row


# ----------------------------------------------------------------------------- index


def bench_scann(table, tune_q, tune_exact, eval_q, eval_exact, k, target):
  from zel_jax.index.scann_store import ScannStore  # pylint: disable=g-import-not-at-top
  n = len(table)
  store, build_s = timed(lambda: ScannStore.build(table))
  leaves = store.params["num_leaves"]
  # For each reordering depth, the fewest leaves that reach the target; the fastest wins.
  # Leaves to search from 1% to ~25% of the leaves in steps of 15%.
  sweep = sorted({max(1, round(leaves * 0.01 * 1.15**i)) for i in range(24)})
  best = None
  for reorder in (128, 256, 512, 1024):
    for nl in sweep:
      search = lambda q, nl=nl, r=reorder: store.search(  # pylint: disable=cell-var-from-loop
          q, k, leaves_to_search=nl, reorder_num_neighbors=r)[1]
      rows, qps = qps_of(search, tune_q, min_seconds=1.0)
      recall = recall_at_k(rows, tune_exact)
      logging.info("scann n=%d leaves_to_search=%d reorder=%d: recall %.4f, %.0f q/s", n, nl,
                   reorder, recall, qps)
      if recall >= target:
        if best is None or qps > best[0]:
          best = (qps, nl, reorder, recall)
        break
  if best is None:
    logging.warning("scann n=%d: no setting reached recall %.3f; using the widest", n, target)
    best = (0.0, sweep[-1], 1024, 0.0)
  _, nl, reorder, tune_recall = best
  rows, qps = qps_of(lambda q: store.search(q, k, leaves_to_search=nl,
                                            reorder_num_neighbors=reorder)[1], eval_q)
  params = {**store.params, "num_leaves_to_search": nl, "reorder_num_neighbors": reorder}
  return _row("scann", n, build_s, qps, recall_at_k(rows, eval_exact), params=params,
              size_bytes=store.size_bytes), tune_recall


def bench_faiss_hnsw(table, tune_q, tune_exact, eval_q, eval_exact, k, target, budget_s,
                     exact_fn):
  import faiss  # pylint: disable=g-import-not-at-top
  n, dim = table.shape
  index = faiss.IndexHNSWFlat(dim, _HNSW_M.value, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION.value
  start = time.perf_counter()
  added = 0
  while added < n:
    stop = min(added + 50_000, n)
    index.add(table[added:stop])
    added = stop
    if time.perf_counter() - start > budget_s and added < n:
      logging.warning("faiss HNSW: build budget %.0fs spent after %d of %d rows", budget_s,
                      added, n)
      break
  build_s = time.perf_counter() - start
  note = {}
  if added < n:
    # Recall is then measured against exact search over the rows the graph holds.
    tune_exact = exact_fn(table[:added], tune_q)
    eval_exact = exact_fn(table[:added], eval_q)
    note = {"note": f"build stopped at {added} of {n} rows after {build_s:.0f}s "
                    f"(budget {budget_s:.0f}s); n and recall refer to those rows"}

  def search(q, ef):
    index.hnsw.efSearch = ef
    return index.search(q, k)[1]

  chosen = None
  for ef in (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048):
    rows, qps = qps_of(lambda q, ef=ef: search(q, ef), tune_q, min_seconds=1.0)
    recall = recall_at_k(rows, tune_exact)
    logging.info("faiss HNSW n=%d efSearch=%d: recall %.4f, %.0f q/s", added, ef, recall, qps)
    chosen = ef
    if recall >= target:
      break
  rows, qps = qps_of(lambda q: search(q, chosen), eval_q)
  return _row("faiss_hnsw", added, build_s, qps, recall_at_k(rows, eval_exact),
              params={"M": _HNSW_M.value, "efConstruction": _HNSW_EF_CONSTRUCTION.value,
                      "efSearch": chosen}, **note)


def bench_faiss_flat(table, eval_q, eval_exact, k):
  import faiss  # pylint: disable=g-import-not-at-top
  index, build_s = timed(lambda: _faiss_flat(faiss, table))
  rows, qps = qps_of(lambda q: index.search(q, k)[1], eval_q)
  return _row("faiss_flat", len(table), build_s, qps, recall_at_k(rows, eval_exact),
              params={"index": "IndexFlatIP"})


def _faiss_flat(faiss, table):
  index = faiss.IndexFlatIP(table.shape[1])
  index.add(table)
  return index


def bench_device(table, eval_q, eval_exact, k):
  import jax  # pylint: disable=g-import-not-at-top
  from zel_jax.index.device_store import DeviceStore  # pylint: disable=g-import-not-at-top

  def build():
    store = DeviceStore.build(table, query_batch=256)
    store.table.block_until_ready()
    return store

  store, build_s = timed(build)
  rows, qps = qps_of(lambda q: store.search_rows(q, k)[1], eval_q)
  return _row("device_exact", len(table), build_s, qps, recall_at_k(rows, eval_exact),
              params={"mode": "exact", "dtype": "float32", "query_batch": 256,
                      "devices": f"{jax.device_count()} x {jax.devices()[0].platform}"})


def run_index() -> dict[str, Any]:
  from zel_jax.index.numpy_store import exact_search  # pylint: disable=g-import-not-at-top
  k, target, stores = _K.value, _TARGET_RECALL.value, set(_STORES.value)
  unknown = stores - {"exact", "scann", "faiss_hnsw", "faiss_flat", "device"}
  if unknown:
    raise app.UsageError(f"unknown --stores {sorted(unknown)}")
  if stores & {"faiss_hnsw", "faiss_flat"}:
    try:
      import faiss  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise app.UsageError("the FAISS columns need faiss-cpu (pip install faiss-cpu), or "
                           "leave them out with --stores") from e
  exact_fn = lambda t, q: exact_search(t, q, k)[1]
  rows = []
  for n in (int(s) for s in _SIZES.value):
    (table, queries), gen_s = timed(lambda n=n: clustered_embeddings(
        n, _DIM.value, _TUNE_QUERIES.value + _QUERIES.value, _SEED.value))
    tune_q, eval_q = queries[:_TUNE_QUERIES.value], queries[_TUNE_QUERIES.value:]
    logging.info("n=%d: data in %.1fs", n, gen_s)
    tune_exact = exact_fn(table, tune_q)
    eval_exact, qps = qps_of(lambda q: exact_fn(table, q), eval_q)
    rows.append(_row("exact_numpy", n, 0.0, qps, 1.0,
                     params={"method": "matmul + argpartition, 128 queries per block at 1M"}))
    tuned_recall = target
    if "scann" in stores:
      row, tuned_recall = bench_scann(table, tune_q, tune_exact, eval_q, eval_exact, k,
                                      target + _TUNE_MARGIN.value)
      rows.append(row)
      gc.collect()
    if "faiss_hnsw" in stores:
      rows.append(bench_faiss_hnsw(table, tune_q, tune_exact, eval_q, eval_exact, k,
                                   tuned_recall, _HNSW_BUDGET_S.value, exact_fn))
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


# ------------------------------------------------------------------------------------------
# train: the bi-encoder update against PyTorch on the same model and batch.


def _matmul_flops_per_s(seconds: float = 3.0, n: int = 2048) -> float:
  """XLA's own ceiling here: FLOP/s of one plain jitted fp32 matmul."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    f(a, a).block_until_ready()
    runs += 1
  return 2 * n ** 3 * runs / (time.perf_counter() - start)


def _train_batch(tokenizer, batch_size: int, mention_length: int, entity_length: int):
  """A realistic batch: real vocabulary ids, every row at full length (no padding)."""
  rng = np.random.default_rng(0)
  vocab = len(tokenizer)
  def rows(length):
    ids = rng.integers(1000, vocab, (batch_size, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return ids, np.ones_like(ids)
  return rows(mention_length), rows(entity_length)


def bench_train(model_name: str, batch_size: int, mention_length: int, entity_length: int,
                seconds: float) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from configs import blink_biencoder  # pylint: disable=g-import-not-at-top
  from zel_jax import optim  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import loop  # pylint: disable=g-import-not-at-top

  config = blink_biencoder.get_config("runlocal")
  config.model.pretrained = model_name
  config.batch_size = batch_size
  config.model.hidden_dropout = config.model.attention_dropout = 0.1
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  shardings = trainer.param_shardings(config, model, mesh)
  params = trainer.pretrained_params(config, model, shardings, jax.random.PRNGKey(0))
  optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
  opt_state = optimizer.init(params)
  (m_ids, m_mask), (e_ids, e_mask) = _train_batch(featurizer.tokenizer, batch_size,
                                                  mention_length, entity_length)
  batch = {"mention_input_ids": m_ids, "mention_attention_mask": m_mask,
           "entity_input_ids": e_ids, "entity_attention_mask": e_mask,
           "entity_index": np.arange(batch_size, dtype=np.int32),
           "valid": np.ones(batch_size, bool)}
  batch = sharding.global_batch(batch, mesh, config.sharding.batch_axes)
  update = jax.jit(loop.make_update(trainer.make_loss_fn(model, config), optimizer, schedule,
                                    config),
                   donate_argnums=(0, 1))
  rng = jax.random.PRNGKey(0)
  compiled = update.lower(params, opt_state, jnp.int32(0), batch, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis counts one device's partition of the SPMD program; the batch is
  # split evenly over the devices, so the step's work is that times the device count.
  step_flops = float(cost.get("flops", 0.0)) * jax.device_count()

  def zel_step(state):
    p, o = state
    p, o, m = update(p, o, jnp.int32(1), batch, rng)
    jax.block_until_ready(m["loss"])
    return (p, o)

  zel_s = _time_steps(zel_step, (params, opt_state), seconds)

  torch.manual_seed(0)
  from transformers import BertModel  # pylint: disable=g-import-not-at-top
  path = _resolve(model_name)
  towers = [BertModel.from_pretrained(path, add_pooling_layer=False).train() for _ in range(2)]
  torch_params = [p for t in towers for p in t.parameters()]
  decay = [p for t in towers for n, p in t.named_parameters()
           if not (n.endswith("bias") or "LayerNorm" in n)]
  no_decay = [p for t in towers for n, p in t.named_parameters()
              if n.endswith("bias") or "LayerNorm" in n]
  torch_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
  tm = [torch.tensor(x, dtype=torch.long) for x in (m_ids, m_mask, e_ids, e_mask)]
  labels = torch.arange(batch_size)

  def torch_step(state):
    torch_opt.zero_grad(set_to_none=True)
    mention = towers[0](input_ids=tm[0], attention_mask=tm[1]).last_hidden_state[:, 0]
    entity = towers[1](input_ids=tm[2], attention_mask=tm[3]).last_hidden_state[:, 0]
    loss = torch.nn.functional.cross_entropy(mention @ entity.T, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
    torch_opt.step()
    return state

  torch_s = _time_steps(torch_step, None, seconds)
  ceiling = _matmul_flops_per_s()
  zel_pairs = batch_size / zel_s
  torch_pairs = batch_size / torch_s
  return {"model": model_name, "batch_size": batch_size,
          "lengths": [mention_length, entity_length], "devices": jax.device_count(),
          "torch_threads": torch.get_num_threads(),
          "zel_pairs_per_s": round(zel_pairs, 3), "torch_pairs_per_s": round(torch_pairs, 3),
          "ratio": round(zel_pairs / torch_pairs, 3), "step_gflop": round(step_flops / 1e9, 1),
          "step_gflop_per_s": round(step_flops / zel_s / 1e9, 2),
          "matmul_gflop_per_s": round(ceiling / 1e9, 2),
          "matmul_fraction": round(step_flops / zel_s / ceiling, 3)}


def bench_mvd(variant: str, batch_size: int, seconds: float, dtype: str = "float32",
              remat: str = "") -> dict[str, Any]:
  """Seconds per jitted update of MVD's joint step (student over K candidates x S views,
  teacher over the same pairs, both losses and alignments) against the BLINK bi-encoder's
  in-batch step, same encoder, same mentions per step, full-length random token rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import blink_biencoder, mvd as mvd_config  # pylint: disable=g-import-not-at-top
  from zel_jax import optim  # pylint: disable=g-import-not-at-top
  from zel_jax.models import biencoder, crossencoder  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as bi_trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import crossencoder as cross_trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import loop, mvd  # pylint: disable=g-import-not-at-top

  arg = "runlocal" if variant == "runlocal" else f"variant={variant}"
  config = mvd_config.get_config(f"{arg},stage=joint")
  config.model.pretrained = _MODEL.value
  config.model.dtype = dtype
  config.model.remat = remat
  config.batch_size = batch_size
  bi_config = blink_biencoder.get_config(arg)
  bi_config.model.pretrained = _MODEL.value
  bi_config.model.dtype = dtype
  bi_config.model.remat = remat
  mesh = sharding.make_mesh(config.mesh)
  rng = np.random.default_rng(0)
  b, k, s = batch_size, int(config.mvd.num_candidates), int(config.mvd.train_views)
  lm, lv = int(config.data.mention_length), int(config.mvd.view_length)
  lc, le = lm + lv - 1, int(bi_config.data.entity_length)
  lg = int(config.data.entity_length)  # The global view, a view of the student when trained.
  ids = lambda *shape: rng.integers(1000, 30000, shape).astype(np.int32)
  ones = lambda *shape: np.ones(shape, np.int32)

  def timed_update(loss_fn, abstract, init, batch):
    shardings = loop.param_shardings(config, abstract, mesh)
    params = init(shardings)
    optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
    batch = sharding.global_batch(batch, mesh, config.sharding.batch_axes)
    state = (params, optimizer.init(params))
    update = jax.jit(loop.make_update(loss_fn, optimizer, schedule, config),
                     donate_argnums=(0, 1)).lower(
                         *state, jnp.int32(1), batch, jax.random.PRNGKey(0)).compile()
    # Per-device bytes XLA plans for the step's temporaries (activations kept for the
    # backward pass dominate); None where the backend does not report it.
    memory = update.memory_analysis()
    temp_gb = None if memory is None else round(memory.temp_size_in_bytes / 2**30, 2)

    def step(state):
      p, o = state
      p, o, m = update(p, o, jnp.int32(1), batch, jax.random.PRNGKey(0))
      jax.block_until_ready(m["loss"])
      return (p, o)

    return _time_steps(step, state, seconds), temp_gb

  student, _ = bi_trainer.build_model(config, mesh)
  teacher, _ = cross_trainer.build_model(mvd.teacher_config(config), mesh)
  key = jax.random.PRNGKey(0)
  joint_batch = {
      "mention_input_ids": ids(b, lm), "mention_attention_mask": ones(b, lm),
      "view_input_ids": ids(b, k, s, lv), "view_attention_mask": ones(b, k, s, lv),
      "view_valid": np.ones((b, k, s), bool),
      "global_input_ids": ids(b, k, 1, lg), "global_attention_mask": ones(b, k, 1, lg),
      "global_valid": np.ones((b, k, 1), bool),
      "teacher_input_ids": ids(b, k, s, lc), "teacher_attention_mask": ones(b, k, s, lc),
      "teacher_token_type_ids": np.concatenate([np.zeros((b, k, s, lm), np.int32),
                                                ones(b, k, s, lv - 1)], -1),
      "teacher_valid": np.ones((b, k, s), bool), "label": np.zeros(b, np.int32),
      "candidate_valid": np.ones((b, k), bool), "valid": np.ones(b, bool)}
  joint_s, joint_gb = timed_update(
      mvd.joint_loss_fn(student, teacher, config),
      {"student": biencoder.abstract_params(student),
       "teacher": crossencoder.abstract_params(teacher)},
      lambda sh: {"student": bi_trainer.random_params(student, sh["student"], key),
                  "teacher": cross_trainer.random_params(teacher, sh["teacher"], key)},
      joint_batch)
  bi_model, _ = bi_trainer.build_model(bi_config, mesh)
  bi_batch = {"mention_input_ids": ids(b, lm), "mention_attention_mask": ones(b, lm),
              "entity_input_ids": ids(b, le), "entity_attention_mask": ones(b, le),
              "entity_index": np.arange(b, dtype=np.int32), "valid": np.ones(b, bool)}
  bi_s, bi_gb = timed_update(bi_trainer.make_loss_fn(bi_model, bi_config),
                      biencoder.abstract_params(bi_model),
                      lambda sh: bi_trainer.random_params(bi_model, sh, key), bi_batch)
  return {"variant": variant, "dtype": dtype, "platform": jax.devices()[0].platform,
          "mentions_per_step": b, "candidates": k, "views": s,
          "lengths": {"mention": lm, "view": lv, "teacher_pair": lc, "bi_entity": le,
                      "global_view": lg if config.mvd.train_global_view else 0},
          "devices": jax.device_count(), "mvd_step_s": round(joint_s, 3),
          "biencoder_step_s": round(bi_s, 3), "ratio": round(joint_s / bi_s, 2),
          "remat": config.model.remat or "none", "mvd_temp_gib": joint_gb,
          "biencoder_temp_gib": bi_gb}


def _time_steps(step, state, seconds: float, warmup: int = 2) -> float:
  """Median seconds per step after `warmup` steps (compile, allocator warm-up)."""
  for _ in range(warmup):
    state = step(state)
  times = []
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 3:
    t = time.perf_counter()
    state = step(state)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _resolve(model_name: str) -> str:
  from zel_jax.models import bert  # pylint: disable=g-import-not-at-top
  return bert.resolve_pretrained(model_name)


# ------------------------------------------------------------------------------------------
# encode: the whole knowledge-base embedding pass.


def bench_encode(data: str, world: str, model_name: str, length: int,
                 batch_size: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from configs import blink_biencoder  # pylint: disable=g-import-not-at-top
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  from zel_jax.data import zeshel  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as trainer  # pylint: disable=g-import-not-at-top

  dataset = zeshel.ZeshelDataset(data)
  entities = list(dataset.iter_entities(world))
  config = blink_biencoder.get_config("runlocal")
  config.model.pretrained = model_name
  config.data.entity_length = length
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  params = trainer.pretrained_params(config, model, trainer.param_shardings(config, model, mesh),
                                     jax.random.PRNGKey(0))
  _, encode_entities = evaluate.encoders(model)
  # Compile every bucket shape once outside the timing: a KB pass runs long enough in
  # practice that compilation is amortized; it is reported separately.
  warm = featurizer.entity_features([e.title for e in entities[:batch_size]],
                                    [e.text for e in entities[:batch_size]], length)
  t = time.perf_counter()
  for width in range(8, length + 1, 8):
    w = {k: np.ascontiguousarray(v[:, :width]) for k, v in warm.items()}
    w["attention_mask"][:] = 1
    evaluate.embed_rows(encode_entities, params, w, mesh, batch_size)
  compile_s = time.perf_counter() - t

  from transformers import BertModel  # pylint: disable=g-import-not-at-top
  tower = BertModel.from_pretrained(_resolve(model_name), add_pooling_layer=False).eval()

  def zel_pass(part):
    feats = featurizer.entity_features([e.title for e in part], [e.text for e in part], length)
    return evaluate.embed_rows(encode_entities, params, feats, mesh, batch_size), feats

  def torch_pass(part):
    # BLINK's pass: every entity padded to the maximum length, fixed batches, [CLS] state.
    padded = featurizer.entity_features([e.title for e in part], [e.text for e in part],
                                        length)
    out = []
    with torch.inference_mode():
      for start in range(0, len(part), batch_size):
        ids = torch.tensor(padded["input_ids"][start:start + batch_size], dtype=torch.long)
        mask = torch.tensor(padded["attention_mask"][start:start + batch_size],
                            dtype=torch.long)
        out.append(tower(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
    return torch.cat(out).numpy()

  # The two passes alternate over 4 random quarters of the world, so that a change in the
  # machine's speed during the run (shared hosts) weighs on both alike.
  quarters = np.array_split(np.random.default_rng(0).permutation(len(entities)), 4)
  zel_s = torch_s = 0.0
  zel_emb, torch_emb, masks = [], [], []
  for quarter in quarters:
    part = [entities[i] for i in quarter]
    t = time.perf_counter()
    emb, feats = zel_pass(part)
    zel_s += time.perf_counter() - t
    t = time.perf_counter()
    torch_emb.append(torch_pass(part))
    torch_s += time.perf_counter() - t
    zel_emb.append(emb)
    masks.append(feats["attention_mask"])
  zel_emb, torch_emb = np.concatenate(zel_emb), np.concatenate(torch_emb)
  feats = {"attention_mask": np.concatenate(masks)}
  agreement = float(np.max(np.abs(torch_emb - zel_emb)))
  real_tokens = int(feats["attention_mask"].sum())
  return {"world": world, "entities": len(entities), "length": length,
          "real_token_fraction": round(real_tokens / feats["attention_mask"].size, 3),
          "zel_entities_per_s": round(len(entities) / zel_s, 1),
          "torch_entities_per_s": round(len(entities) / torch_s, 1),
          "ratio": round(torch_s / zel_s, 3), "zel_compile_s": round(compile_s, 1),
          "max_abs_difference": agreement, "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------
# rerank: cross-encoder scoring throughput.


def bench_rerank(data: str, model_name: str, mentions: int, k: int, batch_size: int
                 ) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from configs import blink_crossencoder  # pylint: disable=g-import-not-at-top
  from zel_jax.data import examples, zeshel  # pylint: disable=g-import-not-at-top
  from zel_jax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import crossencoder as trainer  # pylint: disable=g-import-not-at-top

  config = blink_crossencoder.get_config("variant=base")
  config.model.pretrained = model_name
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  params = trainer.pretrained_params(config, model, trainer.param_shardings(config, model, mesh),
                                     jax.random.PRNGKey(0))
  dataset = zeshel.ZeshelDataset(data)
  world = "foldoc" if "foldoc" in dataset.worlds() else dataset.worlds()[0]
  entities = examples.world_entities(dataset, world, featurizer, config.data.entity_length)
  test = examples.mention_set(dataset, "test", featurizer, config.data.mention_length,
                              {world: entities}, worlds=[world])
  rng = np.random.default_rng(0)
  index = np.sort(rng.choice(len(test), min(mentions, len(test)), replace=False))
  mention_feats = {name: v[index] for name, v in test.features.items()}
  rows = rng.integers(0, len(entities.ids), (len(index), k))
  rows[:, 0] = test.gold_rows[index]
  pairs = len(index) * k
  length = trainer.pair_length(config)

  def zel_pass():
    return trainer.score_candidates(model, params, mention_feats, entities.features, rows,
                                    config, mesh, batch_size, desc="")

  zel_pass()  # Compiles every bucket this set needs.
  t = time.perf_counter()
  zel_scores = zel_pass()
  zel_s = time.perf_counter() - t

  from transformers import BertModel  # pylint: disable=g-import-not-at-top
  tower = BertModel.from_pretrained(_resolve(model_name), add_pooling_layer=False).eval()
  linear = torch.nn.Linear(tower.config.hidden_size, 1)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(np.asarray(params["score"]["kernel"]).T))
    linear.bias.copy_(torch.from_numpy(np.asarray(params["score"]["bias"])))
  t = time.perf_counter()
  torch_scores = []
  with torch.inference_mode():
    for start in range(0, len(index), batch_size):
      sel = np.arange(start, min(start + batch_size, len(index)))
      # BLINK: every pair padded to max_seq_length (256; the pairs here hold at most 255).
      feats = features_lib.cross_features(
          mention_feats["input_ids"][sel], mention_feats["attention_mask"][sel],
          entities.features["input_ids"][rows[sel]],
          entities.features["attention_mask"][rows[sel]], length + 1)
      flat = {name: torch.tensor(v.reshape(-1, length + 1), dtype=torch.long)
              for name, v in feats.items()}
      cls = tower(**flat).last_hidden_state[:, 0]
      torch_scores.append(linear(cls)[:, 0].reshape(len(sel), k))
  torch_s = time.perf_counter() - t
  torch_scores = torch.cat(torch_scores).numpy()
  real = (mention_feats["attention_mask"].sum(1)[:, None]
          + entities.features["attention_mask"][rows].sum(2) - 1)
  return {"world": world, "mentions": int(len(index)), "candidates_per_mention": k,
          "pair_length": length + 1, "real_token_fraction": round(float(real.mean()) /
                                                                  (length + 1), 3),
          "zel_candidates_per_s": round(pairs / zel_s, 1),
          "torch_candidates_per_s": round(pairs / torch_s, 1),
          "ratio": round(torch_s / zel_s, 3),
          "max_abs_difference": float(np.max(np.abs(torch_scores - zel_scores))),
          "devices": jax.device_count(), "torch_threads": torch.get_num_threads()}


def _data_dir() -> str:
  """--data, or the FOLDOC world (built under data/foldoc if absent)."""
  if _DATA.value:
    return _DATA.value
  from zel_jax import quickstart  # pylint: disable=g-import-not-at-top
  return quickstart.fetch_foldoc("data/foldoc")


def run_rerank() -> dict[str, Any]:
  return bench_rerank(_data_dir(), _MODEL.value, _RERANK_MENTIONS.value, _RERANK_K.value,
                      _RERANK_BATCH.value)


def run_train() -> dict[str, Any]:
  return bench_train(_MODEL.value, _BATCH.value, _MENTION_LENGTH.value, _ENTITY_LENGTH.value,
                     _SECONDS.value)


def run_encode() -> dict[str, Any]:
  return bench_encode(_data_dir(), _WORLD.value, _MODEL.value, _ENCODE_LENGTH.value,
                      _ENCODE_BATCH.value)


def run_mvd() -> dict[str, Any]:
  return bench_mvd(_MVD_VARIANT.value, _MVD_BATCH.value, _SECONDS.value, _MVD_DTYPE.value,
                   _MVD_REMAT.value)


# ------------------------------------------------------------------------------------------
# Memory: per-device bytes of a compiled train step, without allocating it.

# Encoder sizes by name, for configs whose checkpoint is not on this machine (BERT paper).
STANDARD_BERT = {
    "bert-base-uncased": dict(),
    "bert-large-uncased": dict(hidden_size=1024, num_layers=24, num_heads=16,
                               intermediate_size=4096),
}


def _bert_config(name: str):
  from zel_jax.models import bert  # pylint: disable=g-import-not-at-top
  if name in STANDARD_BERT:
    return bert.BertConfig(**STANDARD_BERT[name])
  return bert.load_config(bert.resolve_pretrained(name))


def step_memory(config, mesh, batch_size: int) -> dict[str, Any]:
  """Per-device bytes XLA plans for the bi-encoder's jitted update at this global batch:
  compiled from shapes and shardings alone (jax.ShapeDtypeStruct), so nothing is allocated
  and a step far larger than this machine's memory can be measured."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from zel_jax import checkpoint as checkpoint_lib, optim  # pylint: disable=g-import-not-at-top
  from zel_jax.models import biencoder  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import biencoder as bi_trainer, loop  # pylint: disable=g-import-not-at-top

  model = biencoder.BiEncoder(
      _bert_config(config.model.pretrained), pooling=config.model.pooling,
      share_towers=config.model.share_towers, dtype=jnp.dtype(config.model.dtype),
      remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  abstract = biencoder.abstract_params(model)
  p_shardings = loop.param_shardings(config, abstract, mesh)
  params = loop.abstract_sharded_params(abstract, p_shardings)
  optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
  opt = jax.eval_shape(optimizer.init, params)
  o_shardings = loop.opt_shardings(opt, params, p_shardings, mesh)
  opt = checkpoint_lib.abstract_like(opt, o_shardings)
  rows = sharding.batch_sharding(mesh, config.sharding.batch_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  lm, le = int(config.data.mention_length), int(config.data.entity_length)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  batch = {"mention_input_ids": spec((batch_size, lm), jnp.int32),
           "mention_attention_mask": spec((batch_size, lm), jnp.int32),
           "entity_input_ids": spec((batch_size, le), jnp.int32),
           "entity_attention_mask": spec((batch_size, le), jnp.int32),
           "entity_index": spec((batch_size,), jnp.int32),
           "valid": spec((batch_size,), jnp.bool_)}
  update = jax.jit(loop.make_update(bi_trainer.make_loss_fn(model, config), optimizer,
                                    schedule, config),
                   in_shardings=(p_shardings, o_shardings, replicated, rows, replicated),
                   out_shardings=(p_shardings, o_shardings, replicated),
                   donate_argnums=(0, 1))
  t0 = time.time()
  compiled = update.lower(params, opt, jax.ShapeDtypeStruct((), jnp.int32), batch,
                          jax.random.PRNGKey(0)).compile()
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
  gib = lambda x: round(x / 2**30, 3)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"global_batch": batch_size, "arguments_gib": gib(m.argument_size_in_bytes),
          "outputs_gib": gib(m.output_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes),
          "aliased_gib": gib(m.alias_size_in_bytes), "total_gib": gib(total),
          "bytes": {"arguments": int(m.argument_size_in_bytes),
                    "temp": int(m.temp_size_in_bytes), "total": int(total)},
          "compile_s": round(time.time() - t0, 1)}


def _memory_config():
  """The experiment config of --memory_config with --memory_set overrides and the mesh."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = _MEM_CONFIG.value.partition(":")
  spec = importlib.util.spec_from_file_location("memory_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in _MEM_OVERRIDES.value:
    key, _, value = item.partition("=")
    node = config
    *parents, last = key.split(".")
    for parent in parents:
      node = node[parent]
    node[last] = type(node[last])(value) if not isinstance(node[last], bool) else (
        value.lower() in ("1", "true"))
  config.mesh = [(name, int(size)) for name, size in
                 (axis.split("=") for axis in _MEM_MESH.value.split(","))]
  return config


def run_memory() -> dict[str, Any]:
  """The config's step at its own batch, then the largest global batch (a multiple of the
  batch shards) whose step fits --memory_budget_gib per device: doubling, then bisection."""
  import jax  # pylint: disable=g-import-not-at-top
  config = _memory_config()
  mesh = sharding.make_mesh(config.mesh)
  unit = int(np.prod([mesh.shape[a] for a in config.sharding.batch_axes if a in mesh.shape]))
  budget = _MEM_BUDGET.value
  at_config = step_memory(config, mesh, int(config.batch_size))
  logging.info("batch %d: %s", config.batch_size, at_config)
  fits = {}
  if budget <= 0:  # The config's own batch only.
    return {"config": _MEM_CONFIG.value, "overrides": _MEM_OVERRIDES.value,
            "mesh": dict(mesh.shape), "at_config_batch": at_config}

  def fit(units: int) -> bool:
    if units not in fits:
      fits[units] = step_memory(config, mesh, units * unit)
      logging.info("batch %d: %.3f GiB per device", units * unit, fits[units]["total_gib"])
    return fits[units]["total_gib"] <= budget

  low, high = 0, 1
  while fit(high):
    low, high = high, high * 2
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (mid, high) if fit(mid) else (low, mid)
  return {"config": _MEM_CONFIG.value, "overrides": _MEM_OVERRIDES.value,
          "mesh": dict(mesh.shape), "devices": jax.device_count(),
          "platform": jax.devices()[0].platform, "encoder": config.model.pretrained,
          "dtype": config.model.dtype, "remat": config.model.remat or "none",
          "lengths": [int(config.data.mention_length), int(config.data.entity_length)],
          "at_config_batch": at_config, "budget_gib": budget,
          "largest_batch": low * unit if low else 0,
          "largest_batch_total_gib": fits[low]["total_gib"] if low else None}


# Subcommands: name -> function returning the JSON object printed as the last stdout line.
COMMANDS: dict[str, Callable[[], dict[str, Any]]] = {
    "index": run_index, "train": run_train, "encode": run_encode, "rerank": run_rerank,
    "mvd": run_mvd, "memory": run_memory}


def main(argv: Sequence[str]) -> None:
  sharding.use_cpu_cores_as_devices()
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m zel_jax.bench {{{'|'.join(COMMANDS)}}} [--flags]")
  result = COMMANDS[argv[1]]()
  sys.stdout.flush()
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
