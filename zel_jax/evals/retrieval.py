"""Retrieval evaluation: each world's entities encoded into a candidate store, the top-k
entities of each mention from its own world's store, recall@k, and the candidates written
for the next stage (JSON lines). BM25 evaluates the same way."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from zel_jax import index as index_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import guards, local_views, zeshel
from zel_jax.evals import fingerprint
from zel_jax.evals.inference import embed_rows, encoders
from zel_jax.evals.metrics import gold_ranks, recall_report
from zel_jax.index import views as views_lib
from zel_jax.index.bm25 import BM25


VIEWS = ("global", "local", "global+local")


def store_path(workdir: str, world: str, step: Any, kind: str, views: str = "global") -> str:
  """Where a world's store of a kind (exact, scann, device) for a checkpoint step is kept,
  shared by evaluate and link; it holds its fingerprint (evals/fingerprint.py), which
  decides whether it is reused."""
  guards.plain_name(world, "world")
  suffix = "" if views == "global" else f".{views}"
  return os.path.join(workdir, "stores", f"{world}.{step}.{kind}{suffix}")


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
  if views not in VIEWS:
    raise ValueError(f"views={views!r}: one of {VIEWS}")
  if views != "global" and "mvd" not in config:
    raise ValueError(f"views={views!r} needs a config with an mvd section (configs/mvd.py)")


def search_entities(index, queries: np.ndarray, k: int, views: str, num_entities: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Top-k entity rows of a store from entity_vectors: each entity once, at its best view."""
  if views == "global":
    return index.search(queries, k)
  return views_lib.search_entities(index, queries, k, num_entities=num_entities)


# Candidate stores a config or a flag may name: "exact" is zel_jax.index's "numpy" store.
STORES = ("exact", "scann", "device", "numpy")


def build_store(kind: str, embeddings: np.ndarray, mesh=None, ids: np.ndarray | None = None):
  """A candidate store over one world's entity embeddings (ids: row numbers by default; the
  entity row of each view for a store of views)."""
  name = {"exact": "numpy"}.get(kind, kind)
  cls = index_lib.store_class(name)
  if name == "device":
    return cls.build(embeddings, ids, mesh=mesh)
  return cls.build(embeddings, ids)


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
                       save_stores: tuple[str, Any] | None = None,
                       views: str = "global", vector_cache: dict | None = None
                       ) -> dict[str, Any]:
  """Encodes each world's entities, retrieves top_k per mention from its own world's store,
  and reports recall@k (for k <= top_k: metrics.recall_report); writes the candidates when
  candidates_path is given. save_stores (workdir, step): each world's store is saved at
  store_path with its fingerprint, so that zel_jax.link reuses it.

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
  # Collective (sharded parameters): computed by every process, once for all worlds.
  digest = fingerprint.params_digest(params) if save_stores is not None else None
  for w in worlds:
    n = len(entities[w].ids)
    if (w, views) not in cache:
      cache[(w, views)] = entity_vectors(encode_entities, params, featurizer, entities[w],
                                         config, mesh, views)
    table, owner = cache[(w, views)]
    sizes[w], view_counts[w] = n, len(owner)
    index = build_store(store, table, mesh, ids=None if views == "global" else owner)
    store_bytes[w] = int(index.size_bytes)
    if save_stores is not None and (store == "device" or jax.process_index() == 0):
      workdir, step = save_stores
      e = entities[w]
      fingerprint.save_store(  # A device store's save is collective.
          index, store_path(workdir, w, step, store, views),
          fingerprint.store_fingerprint(step, digest, config, views, e.ids, e.titles, e.texts))
    sel = np.flatnonzero(mentions.worlds == w)
    if len(sel):
      kk = min(k, n)
      scores, rows = search_entities(index, mention_emb[sel], kk, views, n)
      all_rows[sel, :kk], all_scores[sel, :kk] = rows, scores
      all_rows[sel, kk:] = -1
  ranks = gold_ranks(all_rows, mentions.gold_rows)
  report = recall_report(ranks, mentions.worlds, [m.category for m in mentions.mentions],
                         retrieved=k)
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
  report = recall_report(ranks, worlds_all, categories, retrieved=top_k)
  report.update(split=split, store="bm25", context_words=context_words,
                seconds=round(time.time() - t0, 1))
  if candidates_path and kept:
    _write_world_candidates(candidates_path, kept, ids_of, np.concatenate(rows_all),
                      np.concatenate(scores_all))
    report["candidates"] = candidates_path
  return report
