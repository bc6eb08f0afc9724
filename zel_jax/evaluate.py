"""Retrieval evaluation: recall@k of the gold entity among each mention's candidates from its
own world, micro and macro over worlds, per world and per ZESHEL category.

  python -m zel_jax.evaluate --workdir=W --data=DIR --split=test [--store=exact|scann|device]
      [--world=NAME] [--baseline=bm25|untrained]

writes the top-k candidates of every mention (the cross-encoder's input) to
W/candidates/<split>[.<world>][.<baseline>].jsonl and prints, as its last stdout line, one JSON
object: {"recall@1": ..., ..., "macro": {...}, "per_world": {...}, "per_category": {...}}
(percentages). For a cross-language workdir (configs/xel.py) it prints the per-language
P/R/F1 report of trainers/xel.py instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import metrics, sharding
from zel_jax.data import examples as examples_lib
from zel_jax.data import local_views
from zel_jax.data import zeshel
from zel_jax.index import views as views_lib
from zel_jax.models import biencoder
from zel_jax.trainers import loop

# What a store holds per entity: its whole input (BLINK) and/or MVD's local views.
_VIEWS = ("global", "local", "global+local")

KS = (1, 2, 4, 8, 16, 32, 50, 64, 100)


# ------------------------------------------------------------------------------------------
# Metrics.


def gold_ranks(candidate_rows: np.ndarray, gold_rows: np.ndarray) -> np.ndarray:
  """0-based rank of each mention's gold among its candidates; K (= not found) if absent."""
  hit = candidate_rows == gold_rows[:, None]
  return np.where(hit.any(1), hit.argmax(1), candidate_rows.shape[1])


def _recalls(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
  if len(ranks) == 0:
    return {f"recall@{k}": float("nan") for k in ks}
  return {f"recall@{k}": round(100.0 * float(np.mean(ranks < k)), 4) for k in ks}


def recall_report(ranks: np.ndarray, worlds: Sequence[str], categories: Sequence[str | None],
                  ks: Sequence[int] = KS) -> dict[str, Any]:
  """Micro recall@k over all mentions, macro (the mean over worlds of each world's recall),
  per world and per category; percentages. k above the number of candidates retrieved is
  still reported: a gold outside the top-K is outside every top-k with k >= K."""
  ranks = np.asarray(ranks)
  worlds = np.asarray(worlds)
  categories = np.asarray([c or "NONE" for c in categories])
  report: dict[str, Any] = {**_recalls(ranks, ks), "mentions": int(len(ranks))}
  per_world = {str(w): {**_recalls(ranks[worlds == w], ks),
                        "mentions": int((worlds == w).sum())} for w in sorted(set(worlds))}
  report["macro"] = {key: round(float(np.mean([v[key] for v in per_world.values()])), 4)
                     for key in _recalls(ranks[:1], ks)} if per_world else {}
  report["per_world"] = per_world
  report["per_category"] = {str(c): {**_recalls(ranks[categories == c], ks),
                                     "mentions": int((categories == c).sum())}
                            for c in sorted(set(categories))}
  return report


def _f1(p: float, r: float) -> float:
  return 2 * p * r / (p + r) if p + r > 0 else 0.0


def typing_report(gold: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]]
                  ) -> dict[str, float]:
  """Ultra-fine entity typing metrics (Choi et al., 2018), percentages. Macro: precision
  averaged over the examples with a prediction, recall over the examples with gold types,
  F1 of the two; micro: over all (example, type) pairs."""
  p_sum = r_sum = 0.0
  p_n = r_n = hits = n_pred = n_gold = 0
  for g, y in zip(gold, predicted, strict=True):
    g, y = set(g), set(y)
    both = len(g & y)
    hits, n_pred, n_gold = hits + both, n_pred + len(y), n_gold + len(g)
    if y:
      p_sum, p_n = p_sum + both / len(y), p_n + 1
    if g:
      r_sum, r_n = r_sum + both / len(g), r_n + 1
  macro_p, macro_r = p_sum / max(p_n, 1), r_sum / max(r_n, 1)
  micro_p, micro_r = hits / max(n_pred, 1), hits / max(n_gold, 1)
  pct = lambda x: round(100.0 * x, 4)
  return {"macro_p": pct(macro_p), "macro_r": pct(macro_r),
          "macro_f1": pct(_f1(macro_p, macro_r)), "micro_p": pct(micro_p),
          "micro_r": pct(micro_r), "micro_f1": pct(_f1(micro_p, micro_r))}


def _accuracies(predicted_rows: np.ndarray, rows: np.ndarray, gold: np.ndarray
                ) -> dict[str, float]:
  correct = predicted_rows == gold
  found = (rows == gold[:, None]).any(1)
  pct = lambda x: round(100.0 * float(np.mean(x)), 4) if len(x) else 0.0
  return {"normalized_accuracy": pct(correct[found]), "unnormalized_accuracy": pct(correct),
          "candidate_recall": pct(found), "retriever_accuracy": pct(rows[:, 0] == gold)}


def rerank_report(scores: np.ndarray, rows: np.ndarray, gold: np.ndarray,
                  worlds: Sequence[str], categories: Sequence[str | None]) -> dict[str, Any]:
  """BLINK's reranking metrics, percentages: normalized accuracy (over the mentions whose
  gold is among their candidates), unnormalized accuracy (over all mentions), with the
  candidates' recall and the retriever's own accuracy@1 on the same candidates beside them;
  micro, macro over worlds (BLINK's headline numbers), per world and per category.

  scores [M, K] (-inf in empty slots), rows [M, K] entity rows (-1: empty), gold [M].
  """
  rows, gold = np.asarray(rows), np.asarray(gold)
  worlds = np.asarray(worlds)
  categories = np.asarray([c or "NONE" for c in categories])
  best = np.argmax(np.where(rows >= 0, scores, -np.inf), axis=1)
  predicted = np.take_along_axis(rows, best[:, None], 1)[:, 0]

  def part(mask):
    return {**_accuracies(predicted[mask], rows[mask], gold[mask]), "mentions": int(mask.sum())}

  report: dict[str, Any] = part(np.ones(len(gold), bool))
  per_world = {str(w): part(worlds == w) for w in sorted(set(worlds))}
  report["macro"] = {key: round(float(np.mean([v[key] for v in per_world.values()])), 4)
                     for key in ("normalized_accuracy", "unnormalized_accuracy",
                                 "candidate_recall", "retriever_accuracy")} if per_world else {}
  report["per_world"] = per_world
  report["per_category"] = {str(c): part(categories == c) for c in sorted(set(categories))}
  return report


# ------------------------------------------------------------------------------------------
# Linking with NIL (cross-language linking; Schumacher et al. 2021). Entities are rows >= 0;
# NIL_ROW stands for "no entity" in gold and predictions alike.

NIL_ROW = -1


def top_candidates(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(best row, its score) of each mention; (NIL_ROW, -inf) for a mention without
  candidates. scores, rows [M, K], rows -1 in empty slots."""
  scores = np.where(rows >= 0, scores, -np.inf)
  best = np.argmax(scores, axis=1)
  top_score = np.take_along_axis(scores, best[:, None], 1)[:, 0]
  top_row = np.where(np.isfinite(top_score), np.take_along_axis(rows, best[:, None], 1)[:, 0],
                     NIL_ROW)
  return top_row, top_score


def apply_nil_threshold(top_row: np.ndarray, top_score: np.ndarray, threshold: float
                        ) -> np.ndarray:
  """NIL where the best candidate scores below the threshold (or there is none)."""
  return np.where(top_score >= threshold, top_row, NIL_ROW)


def nil_link_report(predicted: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
  """Percentages: precision = correct links / links predicted, recall = correct links / gold
  links, F1; accuracy = mentions whose prediction equals the gold, NIL counting as a label
  (the TAC-KBP micro-average); the counts beside them."""
  predicted, gold = np.asarray(predicted), np.asarray(gold)
  linked, linkable = predicted != NIL_ROW, gold != NIL_ROW
  correct_links = int(((predicted == gold) & linked).sum())
  p = correct_links / max(int(linked.sum()), 1)
  r = correct_links / max(int(linkable.sum()), 1)
  pct = lambda x: round(100.0 * x, 4)
  return {"precision": pct(p), "recall": pct(r), "f1": pct(_f1(p, r)),
          "accuracy": pct(float((predicted == gold).mean()) if len(gold) else 0.0),
          "mentions": int(len(gold)), "gold_nil": int((~linkable).sum()),
          "predicted_nil": int((~linked).sum())}


def select_nil_threshold(top_row: np.ndarray, top_score: np.ndarray, gold: np.ndarray
                         ) -> float:
  """The threshold that maximizes accuracy (NIL included) on these mentions, among -inf
  (never NIL) and each mention's top score; ties go to the lowest threshold."""
  candidates = np.concatenate([[-np.inf], np.unique(top_score[np.isfinite(top_score)])])
  best, best_accuracy = -np.inf, -1.0
  for t in candidates:
    accuracy = float((apply_nil_threshold(top_row, top_score, t) == gold).mean())
    if accuracy > best_accuracy:
      best, best_accuracy = float(t), accuracy
  return best


def popularity_rerank(scores: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                      top: int = 10) -> np.ndarray:
  """Sec. 7.2: among each mention's `top` best-scoring candidates, the one most often gold in
  training (counts[row]); the best-scoring one when none occurs there; ties go to the
  higher-scoring candidate. Returns rows [M] (NIL_ROW without candidates)."""
  scores = np.where(rows >= 0, scores, -np.inf)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
  ranked = np.take_along_axis(rows, order, 1)
  ranked_scores = np.take_along_axis(scores, order, 1)
  popularity = np.where(np.isfinite(ranked_scores) & (ranked >= 0),
                        counts[np.maximum(ranked, 0)], -1)
  pick = np.argmax(popularity, axis=1)  # The first maximum: the best-ranked among equals.
  chosen = np.take_along_axis(ranked, pick[:, None], 1)[:, 0]
  return np.where(np.isfinite(ranked_scores[:, 0]), chosen, NIL_ROW)


# ------------------------------------------------------------------------------------------
# Encoding on the mesh.


def sorted_batches(lengths: np.ndarray, max_length: int, batch_size: int, mesh,
                   batch_axes=("data", "fsdp"), bucket: int = 8, desc: str = ""):
  """Global batches over rows sorted longest first, for inference on the mesh.

  Yields (rows, local_rows, width): the batch's rows (at most batch_size, in the output's
  numbering), this process's slice of them padded to a full global batch (the last row
  repeated), and the batch's width: its longest row rounded up to `bucket` tokens, so
  padding is not computed and only max_length / bucket shapes ever compile. batch_size is
  rounded up to a multiple of the batch shards and processes. A progress bar runs on
  process 0 when there are many batches.
  """
  n = len(lengths)
  shards = int(np.prod([mesh.shape[a] for a in batch_axes if a in mesh.shape]))
  per_process = jax.process_count()
  unit = int(np.lcm(shards, per_process))
  batch_size = max(unit, -(-batch_size // unit) * unit)
  local = batch_size // per_process
  first = jax.process_index() * local
  order = np.argsort(-np.asarray(lengths), kind="stable")  # The first compile is the widest.
  bar = None
  if jax.process_index() == 0 and n > 20 * batch_size:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=n, desc=desc or "batches", unit="row", mininterval=2.0, leave=False)
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    longest = int(np.max(lengths[rows]))
    width = int(min(max_length, max(bucket, -(-longest // bucket) * bucket)))
    take = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    yield rows, take[first:first + local], width
    if bar is not None:
      bar.update(len(rows))
  if bar is not None:
    bar.close()


def gather(x: jax.Array) -> np.ndarray:
  """A global array's values on every process (a sharded batch's results)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def embed_rows(encode: Callable, params: Any, feats: dict[str, np.ndarray], mesh,
               batch_size: int, batch_axes=("data", "fsdp"), bucket: int = 8,
               desc: str = "") -> np.ndarray:
  """Embeds every row of feats (input_ids, attention_mask) in global batches on the mesh,
  longest first and cut to `bucket`-token widths (sorted_batches). encode(params, ids,
  mask) -> [B, D] must be jitted. Returns [N, D] float32 in row order."""
  ids, mask = feats["input_ids"], feats["attention_mask"]
  out = None
  for rows, local_rows, width in sorted_batches(mask.sum(1), ids.shape[1], batch_size, mesh,
                                                batch_axes, bucket, desc or "embed"):
    batch = sharding.global_batch({"ids": ids[local_rows, :width],
                                   "mask": mask[local_rows, :width]}, mesh, batch_axes)
    emb = gather(encode(params, batch["ids"], batch["mask"])).astype(np.float32)
    if out is None:
      out = np.zeros((len(ids), emb.shape[1]), np.float32)
    out[rows] = emb[:len(rows)]
  return out if out is not None else np.zeros((0, 0), np.float32)


def encoders(model: biencoder.BiEncoder) -> tuple[Callable, Callable]:
  """Jitted (params, ids, mask) -> float32 embeddings for mentions and for entities (the
  model's own encode methods: subclasses such as the type-aware bi-encoder override them)."""
  def mentions(params, ids, mask):
    return model.apply({"params": params}, ids, mask,
                       method=type(model).encode_mentions).astype(jnp.float32)

  def entities(params, ids, mask):
    return model.apply({"params": params}, ids, mask,
                       method=type(model).encode_entities).astype(jnp.float32)

  return jax.jit(mentions), jax.jit(entities)


def store_path(workdir: str, world: str, step: Any, kind: str) -> str:
  """Where a world's store for a checkpoint step is kept, shared by evaluate and link."""
  return os.path.join(workdir, "stores", f"{world}.{step}.{kind}")


def entity_vectors(encode_entities: Callable, params: Any, featurizer,
                   entities: examples_lib.WorldEntities, config, mesh, views: str = "global"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The vectors a world's store holds and the entity row of each: one per entity for
  "global" (its whole input), MVD's local views (config.mvd's length, all of them) for
  "local", both for "global+local"."""
  _check_views(views, config)
  batch_axes = config.sharding.batch_axes
  tables, owners = [], []
  if "global" in views.split("+"):
    tables.append(embed_rows(encode_entities, params, entities.features, mesh,
                             config.eval_batch_size, batch_axes,
                             desc=f"{entities.world} entities"))
    owners.append(np.arange(len(entities.ids)))
  if "local" in views.split("+"):
    local = local_views.view_features(featurizer, entities.titles, entities.texts,
                                       int(config.mvd.view_length), 0,
                                       int(config.mvd.min_view_tokens))
    tables.append(embed_rows(encode_entities, params, local, mesh, config.eval_batch_size,
                             batch_axes, desc=f"{entities.world} views"))
    owners.append(local["entity"])
  return np.concatenate(tables), np.concatenate(owners)


def _check_views(views: str, config) -> None:
  if views not in _VIEWS:
    raise ValueError(f"views={views!r}: one of {_VIEWS}")
  if views != "global" and "mvd" not in config:
    raise ValueError(f"views={views!r} needs a config with an mvd section (configs/mvd.py)")


def search_entities(index, queries: np.ndarray, k: int, views: str, num_entities: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Top-k entity rows of a store from entity_vectors: each entity once, at its best view."""
  if views == "global":
    return index.search(queries, k)
  return views_lib.search_entities(index, queries, k, num_entities=num_entities)


def build_store(kind: str, embeddings: np.ndarray, mesh=None, ids: np.ndarray | None = None):
  """A candidate store over one world's entity embeddings (ids: row numbers by default; the
  entity row of each view for a store of views)."""
  from zel_jax import index  # pylint: disable=g-import-not-at-top
  name = {"exact": "numpy"}.get(kind, kind)
  cls = index.store_class(name)
  if name == "device":
    return cls.build(embeddings, ids, mesh=mesh)
  return cls.build(embeddings, ids)


# ------------------------------------------------------------------------------------------
# Evaluations.


def write_candidates(path: str, mentions: Sequence[zeshel.Mention], doc_ids: np.ndarray,
                     rows: np.ndarray, scores: np.ndarray) -> None:
  """JSON lines {mention_id, world, label_document_id, candidates, scores} (candidates as
  document ids: doc_ids[row]); atomic. Slots left empty (row -1) are not written."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for mention, cand, score in zip(mentions, rows, scores):
      filled = cand >= 0
      f.write(json.dumps({"mention_id": mention.mention_id, "world": mention.corpus,
                          "label_document_id": mention.label_document_id,
                          "candidates": doc_ids[cand[filled]].tolist(),
                          "scores": [round(float(x), 5) for x in score[filled]]}) + "\n")
  os.replace(tmp, path)


def _write_world_candidates(path: str, mentions: Sequence[zeshel.Mention],
                            ids_of: dict[str, np.ndarray], rows: np.ndarray,
                            scores: np.ndarray) -> None:
  """write_candidates with rows numbered within each mention's own world."""
  worlds = sorted(ids_of)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(ids_of[w]) for w in worlds])))
  shift = np.asarray([offsets[m.corpus] for m in mentions], np.int64)[:, None]
  write_candidates(path, mentions, np.concatenate([ids_of[w] for w in worlds]),
                   np.where(rows >= 0, rows + shift, -1), scores)


def _worlds_of(dataset: zeshel.ZeshelDataset, split: str, world: str | None) -> list[str]:
  worlds = sorted({m.corpus for m in dataset.iter_mentions(split, validate=False)})
  if world is not None:
    if world not in worlds:
      raise ValueError(f"world {world!r} has no mentions in split {split!r} (worlds: "
                       f"{worlds})")
    worlds = [world]
  return worlds


def evaluate_biencoder(model, params, featurizer, dataset: zeshel.ZeshelDataset, split: str,
                       config, mesh, *, store: str = "exact", top_k: int = 100,
                       world: str | None = None, candidates_path: str | None = None,
                       store_paths: Callable[[str], str] | None = None,
                       views: str = "global", vector_cache: dict | None = None
                       ) -> dict[str, Any]:
  """Encodes each world's entities, retrieves top_k per mention from its own world's store,
  and reports recall@k; writes the candidates when candidates_path is given, and each
  world's store to store_paths(world) when given (zel_jax.link then loads it).

  views: what the store holds for each entity: "global" (one vector of the whole entity
  input, BLINK), or MVD's "local" views (config.mvd's view length) or "global+local"; with
  local views an entity scores at its best view and is returned once. vector_cache: a dict
  shared by calls with the same params (several splits of one run), so each world's
  entities are encoded once."""
  _check_views(views, config)
  window = None if config.data.window_words < 0 else config.data.window_words
  encode_mentions, encode_entities = encoders(model)
  batch_axes = config.sharding.batch_axes
  t0 = time.time()
  worlds = _worlds_of(dataset, split, world)
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, config.data.entity_length)
              for w in worlds}
  mentions = examples_lib.mention_set(dataset, split, featurizer, config.data.mention_length,
                                      entities, worlds=worlds, window_words=window)
  mention_emb = embed_rows(encode_mentions, params, mentions.features, mesh,
                           config.eval_batch_size, batch_axes, desc=f"{split} mentions")
  k = top_k
  all_rows = np.zeros((len(mentions), k), np.int64)
  all_scores = np.full((len(mentions), k), -np.inf, np.float32)
  sizes = {}
  view_counts, store_bytes = {}, {}
  cache = {} if vector_cache is None else vector_cache
  for w in worlds:
    n = len(entities[w].ids)
    if (w, views) not in cache:
      cache[(w, views)] = entity_vectors(encode_entities, params, featurizer, entities[w],
                                         config, mesh, views)
    table, owner = cache[(w, views)]
    sizes[w], view_counts[w] = n, len(owner)
    index = build_store(store, table, mesh, ids=None if views == "global" else owner)
    store_bytes[w] = int(index.size_bytes)
    if store_paths is not None and (store == "device" or jax.process_index() == 0):
      index.save(store_paths(w))  # A device store's save is collective.
    sel = np.flatnonzero(mentions.worlds == w)
    if len(sel):
      kk = min(k, n)
      scores, rows = search_entities(index, mention_emb[sel], kk, views, n)
      all_rows[sel, :kk], all_scores[sel, :kk] = rows, scores
      all_rows[sel, kk:] = -1
  ranks = gold_ranks(all_rows, mentions.gold_rows)
  report = recall_report(ranks, mentions.worlds, [m.category for m in mentions.mentions])
  report.update(split=split, store=store, entities=sizes, seconds=round(time.time() - t0, 1))
  if views != "global":
    report.update(views=views, vectors=view_counts, store_bytes=store_bytes,
                  vectors_per_entity=round(sum(view_counts.values()) / max(sum(sizes.values()),
                                                                            1), 3))
  if candidates_path:
    _write_world_candidates(candidates_path, mentions.mentions,
                      {w: e.ids for w, e in entities.items()}, all_rows, all_scores)
    report["candidates"] = candidates_path
  return report


def evaluate_bm25(dataset: zeshel.ZeshelDataset, split: str, *, top_k: int = 100,
                  world: str | None = None, context_words: int = 0,
                  candidates_path: str | None = None) -> dict[str, Any]:
  """The same evaluation with BM25 over title + text; the query is the mention text plus
  `context_words` words on each side."""
  from zel_jax.index.bm25 import BM25  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  worlds = _worlds_of(dataset, split, world)
  ranks_all, worlds_all, categories, kept, rows_all, scores_all = [], [], [], [], [], []
  ids_of = {}
  for w in worlds:
    ids, texts = [], []
    for entity in dataset.iter_entities(w):
      ids.append(entity.document_id)
      texts.append(f"{entity.title} {entity.text}")
    ids_of[w] = np.asarray(ids)
    row_of = {d: i for i, d in enumerate(ids)}
    mentions = [m for m in dataset.iter_mentions(split) if m.corpus == w]
    if not mentions:
      continue
    retriever = BM25(texts)
    queries = examples_lib.mention_queries(dataset, mentions, context_words)
    kk = min(top_k, len(texts))
    scores, rows = retriever.search(queries, kk)
    rows = np.pad(rows, ((0, 0), (0, top_k - kk)), constant_values=-1)
    scores = np.pad(scores, ((0, 0), (0, top_k - kk)), constant_values=-np.inf)
    gold = np.asarray([row_of[m.label_document_id] for m in mentions])
    ranks_all.append(gold_ranks(rows, gold))
    worlds_all += [w] * len(mentions)
    categories += [m.category for m in mentions]
    kept += mentions
    rows_all.append(rows)
    scores_all.append(scores)
  ranks = np.concatenate(ranks_all) if ranks_all else np.zeros(0, np.int64)
  report = recall_report(ranks, worlds_all, categories)
  report.update(split=split, store="bm25", context_words=context_words,
                seconds=round(time.time() - t0, 1))
  if candidates_path and kept:
    _write_world_candidates(candidates_path, kept, ids_of, np.concatenate(rows_all),
                      np.concatenate(scores_all))
    report["candidates"] = candidates_path
  return report


# ------------------------------------------------------------------------------------------
# Command line.


def run_rerank(workdir: str, config, data: str, split: str, world: str | None,
               candidates: str | None) -> dict[str, Any]:
  """A cross-encoder workdir: reranks `candidates` (a bi-encoder workdir or a candidates
  file; default the one it trained on) and reports BLINK's accuracies."""
  from zel_jax.data import candidates as candidates_lib  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import crossencoder as trainer  # pylint: disable=g-import-not-at-top
  source = candidates_lib.path_of(candidates or config.data.candidates, split)
  dataset = zeshel.ZeshelDataset(data)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  params, step = trainer.restore_params(workdir, config, model, mesh)
  rerank_set = trainer.rerank_set(config, dataset, featurizer, split, source, world=world)
  suffix = f".{world}" if world else ""
  report = trainer.evaluate_rerank(
      model, params, rerank_set, config, mesh, split,
      candidates_path=os.path.join(workdir, "candidates", f"{split}{suffix}.jsonl"))
  report.update(step=int(step), reranked=source)
  return report


def retriever_trainer(config):
  """The trainer module that builds and restores a retriever workdir's model: the
  type-aware bi-encoder's for configs/etzel_multitask.py, BLINK's otherwise (MVD's student
  is a BLINK bi-encoder)."""
  # pylint: disable=g-import-not-at-top
  if config.get("trainer") == "etzel":
    from zel_jax.trainers import etzel
    return etzel
  from zel_jax.trainers import biencoder as biencoder_trainer
  return biencoder_trainer


def run(workdir: str, data: str | None, split: str, store: str, world: str | None,
        baseline: str | None, top_k: int, bm25_context_words: int = 0,
        candidates: str | None = None, views: str | None = None) -> dict[str, Any]:
  """The CLI's work as a function (notebooks, the quickstart). views: what an MVD
  retriever's store holds (default its config.evals.views); a bi-encoder's is "global"."""
  config = loop.load_config(workdir)
  trainer = retriever_trainer(config)
  data = data or config.data.dir
  reranker = config.get("trainer") == "crossencoder" or (
      config.get("trainer") == "mvd" and config.mvd.stage == "teacher")
  if reranker and baseline:
    raise ValueError(f"--baseline={baseline} evaluates retrievers; {workdir} holds a "
                     "cross-encoder")
  if config.get("trainer") == "crossencoder":
    return run_rerank(workdir, config, data, split, world, candidates)
  if config.get("trainer") == "entqa_reader":
    raise ValueError(f"{workdir} holds an EntQA reader: evaluate it with --end_to_end")
  if config.get("trainer") == "entqa_retriever":
    if baseline or candidates or views:
      raise ValueError(f"{workdir} holds an EntQA retriever: it evaluates passage recall on "
                       "a split (no --baseline, --candidates or --views)")
    from zel_jax.trainers import entqa_retriever  # pylint: disable=g-import-not-at-top
    return entqa_retriever.run_eval(workdir, config, data, split, top_k, world)
  if config.get("trainer") == "typing":
    if baseline or world or candidates:
      raise ValueError(f"{workdir} holds an entity typing model: it evaluates typing F1 on a "
                       "split (no --baseline, --world or --candidates)")
    from zel_jax.trainers import typing as typing_trainer  # pylint: disable=g-import-not-at-top
    return typing_trainer.run_eval(workdir, config, data, split)
  restore, default_views = trainer.restore_params, "global"
  if config.get("trainer") == "mvd":
    from zel_jax.trainers import mvd  # pylint: disable=g-import-not-at-top
    if config.mvd.stage == "teacher":
      if world or candidates:
        raise ValueError("an MVD teacher workdir evaluates on its config.mvd.candidates, "
                         "all worlds of the split")
      return mvd.run_teacher_eval(workdir, config, data, split)
    restore, default_views = mvd.restore_student, config.evals.views
  views = views or default_views
  dataset = zeshel.ZeshelDataset(data)
  suffix = "".join(f".{x}" for x in (world, baseline) if x)
  path = os.path.join(workdir, "candidates", f"{split}{suffix}.jsonl")
  if baseline == "bm25":
    return evaluate_bm25(dataset, split, top_k=top_k, world=world,
                         context_words=bm25_context_words, candidates_path=path)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  shardings = trainer.param_shardings(config, model, mesh)
  if baseline == "untrained":
    params, step = trainer.pretrained_params(config, model, shardings,
                                             jax.random.PRNGKey(config.seed)), 0
  else:
    params, step = restore(workdir, config, model, mesh)
  if views != default_views:
    path = path.replace(".jsonl", f".{views.replace('+', '_')}.jsonl")
  report = evaluate_biencoder(
      model, params, featurizer, dataset, split, config, mesh, store=store, top_k=top_k,
      world=world, candidates_path=path, views=views,
      store_paths=lambda w: store_path(workdir, w, step if baseline is None else baseline,
                                       store if views == "global" else f"{store}.{views}"))
  report["step"] = int(step)
  return report


def title_match(dataset: zeshel.ZeshelDataset, docs, worlds: Sequence[str],
                exclude_self: bool = True) -> list[tuple]:
  """The end-to-end baseline: every exact (case-sensitive) occurrence of an entity title in a
  document's words, longest title first, left to right, without overlaps; a title shared by
  several entities links to the first in file order, and a document never links to itself.
  Returns [(doc_id, c0, c1, entity_id, 1.0)]."""
  from zel_jax.data import documents as documents_lib  # pylint: disable=g-import-not-at-top
  titles: dict[str, tuple[dict[tuple[str, ...], str], int]] = {}
  out = []
  for doc, world in zip(docs, worlds):
    if world not in titles:
      table: dict[tuple[str, ...], str] = {}
      for entity in dataset.iter_entities(world):
        words = tuple(zeshel.tokenize(entity.title))
        if words:
          table.setdefault(words, entity.document_id)
      titles[world] = (table, max((len(t) for t in table), default=0))
    table, longest = titles[world]
    spans = documents_lib.word_char_spans(doc.text)
    words = [doc.text[a:b] for a, b in spans]
    i = 0
    while i < len(words):
      for n in range(min(longest, len(words) - i), 0, -1):
        entity = table.get(tuple(words[i:i + n]))
        if entity is not None and not (exclude_self and entity == doc.doc_id):
          out.append((doc.doc_id, spans[i][0], spans[i + n - 1][1], entity, 1.0))
          i += n
          break
      else:
        i += 1
  return out


def run_end_to_end(workdir: str, data: str | None, split: str | None, *, input_path: str | None = None,
                   world: str | None = None, threshold: float | None = None,
                   calibrate: bool = False, top_k: int | None = None,
                   baseline: str | None = None, documents: str | None = None,
                   max_documents: int = -1) -> dict[str, Any]:
  """End-to-end linking of a split's documents (or a GERBIL-style JSON-lines file) with an
  EntQA reader workdir: InKB micro P/R/F1 with strong matching and mention detection F1.
  calibrate: pick gamma on these documents and write it to W/threshold.json instead. split
  None: "test", or the config's evals.calibrate_split when calibrating; calibrating on a
  split of config.evals.splits (those reported) is refused."""
  from zel_jax.data import documents as documents_lib  # pylint: disable=g-import-not-at-top
  from zel_jax.trainers import entqa_reader  # pylint: disable=g-import-not-at-top
  config = loop.load_config(workdir)
  if config.get("trainer") != "entqa_reader":
    raise ValueError(f"--end_to_end needs an EntQA reader workdir (configs/entqa_reader.py); "
                     f"{workdir} holds a {config.get('trainer')!r} run")
  dataset = zeshel.ZeshelDataset(data or config.data.dir)
  if split is None:
    split = (config.evals.calibrate_split or "val") if calibrate else "test"
  if calibrate and not input_path and split in config.evals.splits:
    raise ValueError(f"--calibrate on split {split!r}, one of the splits results are reported "
                     f"on ({list(config.evals.splits)}): pick gamma on another (--split=val)")
  if input_path:
    if not world:
      raise ValueError("--input documents need --world: the world whose entities they name")
    kb = {e.document_id for e in dataset.iter_entities(world)}
    docs, counts = documents_lib.read_gerbil_jsonl(input_path, kb)
    worlds, source = [world] * len(docs), input_path
  else:
    if documents:
      config.data.documents = documents
    docs, worlds = entqa_reader.split_documents(config, dataset, split, max_documents,
                                                config.seed)
    if world:
      keep = [i for i, w in enumerate(worlds) if w == world]
      docs, worlds = [docs[i] for i in keep], [worlds[i] for i in keep]
    counts, source = {"documents": len(docs)}, split
  if baseline == "title_match":
    t0 = time.time()
    predicted = title_match(dataset, docs, worlds)
    report = entqa_reader.end_to_end_report(entqa_reader.gold_set(docs), predicted)
    report.update(baseline="title_match", documents=len(docs),
                  documents_per_s=round(len(docs) / max(time.time() - t0, 1e-9), 2))
  elif baseline:
    raise ValueError(f"--baseline={baseline}: end-to-end evaluation has the title_match "
                     "baseline only")
  else:
    e2e = entqa_reader.EndToEnd(workdir, data)
    if calibrate:
      report = entqa_reader.run_calibration(e2e, docs, worlds, source, top_k)
    else:
      report = entqa_reader.evaluate_documents(e2e, docs, worlds, e2e.threshold(threshold),
                                               top_k)
  report.update(source=source, input_counts=counts)
  return report


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program (several CLIs import
  each other's functions)."""
  flags.DEFINE_string("workdir", None, "A bi-encoder or cross-encoder training workdir.")
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
  flags.DEFINE_enum("views", None, list(_VIEWS),
                    "MVD retrievers: what the store holds per entity (default: the config's "
                    "evals.views).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metrics.quiet_library_logs()
  del argv
  if loop.load_config(FLAGS.workdir).get("trainer") == "xel":
    from zel_jax.trainers import xel  # pylint: disable=g-import-not-at-top
    report = xel.run_eval(FLAGS.workdir, (FLAGS.split,), FLAGS.data)[FLAGS.split]
    sys.stdout.flush()
    print(json.dumps(report))
    return
  if FLAGS.end_to_end:
    report = run_end_to_end(
        FLAGS.workdir, FLAGS.data, FLAGS.split if FLAGS["split"].present else None,
        input_path=FLAGS.input, world=FLAGS.world,
        threshold=FLAGS.threshold, calibrate=FLAGS.calibrate,
        top_k=FLAGS.top_k if FLAGS["top_k"].present else None, baseline=FLAGS.baseline,
        documents=FLAGS.documents, max_documents=FLAGS.max_documents)
    if "gamma" in report:
      logging.info("calibrated gamma %.4f: F1 %.2f", report["gamma"], report["f1"])
    else:
      logging.info("end-to-end: InKB P/R/F1 %.2f / %.2f / %.2f, MD F1 %.2f (%d gold, %d "
                   "predicted)", report["inkb_micro_p"], report["inkb_micro_r"],
                   report["inkb_micro_f1"], report["md_f1"], report["gold"],
                   report["predicted"])
    sys.stdout.flush()
    print(json.dumps(report))
    return
  report = run(FLAGS.workdir, FLAGS.data, FLAGS.split, FLAGS.store, FLAGS.world,
               FLAGS.baseline, FLAGS.top_k, FLAGS.bm25_context_words, FLAGS.candidates,
               FLAGS.views)
  if "normalized_accuracy" in report:
    logging.info("%s rerank: normalized %.2f, unnormalized %.2f (macro %.2f / %.2f) over %d "
                 "mentions", report["split"], report["normalized_accuracy"],
                 report["unnormalized_accuracy"], report["macro"]["normalized_accuracy"],
                 report["macro"]["unnormalized_accuracy"], report["mentions"])
  else:
    micro = " ".join(f"R@{k}={report[f'recall@{k}']:.2f}" for k in (1, 16, 64))
    logging.info("%s %s: %s over %d mentions", report["split"], report["store"], micro,
                 report["mentions"])
  sys.stdout.flush()
  print(json.dumps(report))


FLAGS = flags.FLAGS


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
