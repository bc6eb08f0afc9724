"""EntQA's passages for retrieval: documents -> passages of L wordpieces with their topic
and gold entities, the entity table of their worlds, retrieving each passage's top entities,
passage recall@k, and the candidate files the reader reads
(`W/candidates/passages_<split>.jsonl`)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from zel_jax.data import documents as documents_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import local_views, zeshel
from zel_jax.evals import inference, retrieval
from zel_jax.recipes.entqa import passages as passages_lib


KS = (1, 2, 4, 8, 16, 32, 64, 100)
TOPICS = ("title", "first_sentence", "first_token", "none")


@dataclasses.dataclass
class EntityTable:
  """The entities of several worlds as one table of global rows."""
  features: dict[str, np.ndarray]   # input_ids, attention_mask [E, Le]
  worlds: np.ndarray                # [E]
  doc_ids: np.ndarray               # [E]

  def __len__(self) -> int:
    return len(self.doc_ids)

  def row_of(self) -> dict[tuple[str, str], int]:
    return {(w, d): i for i, (w, d) in enumerate(zip(self.worlds.tolist(),
                                                    self.doc_ids.tolist()))}

  def rows_of_world(self, world: str) -> np.ndarray:
    return np.flatnonzero(self.worlds == world)


def entity_table(dataset: zeshel.ZeshelDataset, worlds: Sequence[str], featurizer,
                 length: int) -> EntityTable:
  parts = [examples_lib.world_entities(dataset, w, featurizer, length) for w in sorted(worlds)]
  return EntityTable(
      {k: np.concatenate([p.features[k] for p in parts]) for k in ("input_ids",
                                                                   "attention_mask")},
      np.concatenate([[p.world] * len(p.ids) for p in parts]).astype(str),
      np.concatenate([p.ids for p in parts]).astype(str))


@dataclasses.dataclass
class PassageSet:
  """A split's documents cut into passages, each with its gold entities (global rows)."""
  documents: list[documents_lib.Document]
  doc_worlds: np.ndarray                # [D]
  passages: passages_lib.Passages
  golds: list[np.ndarray]               # [P] distinct gold rows, spans wholly inside
  exclude: list[np.ndarray]             # [P] never negatives: golds, cut spans, own document
  self_row: np.ndarray                  # [P] the document's own entity row, or -1
  gold_spans: list[list[tuple[int, int, int]]]  # [P] (j0, j1, row), passage-relative tokens
  counts: dict[str, int]

  def __len__(self) -> int:
    return len(self.golds)

  @property
  def worlds(self) -> np.ndarray:
    return self.doc_worlds[self.passages.document]

  def key(self, p: int) -> tuple[str, int]:
    return (self.documents[self.passages.document[p]].doc_id, int(self.passages.token_start[p]))


def topic_of(document: documents_lib.Document, how: str) -> str:
  """The topic text appended to every passage of a document (EntQA appends the title)."""
  if how not in TOPICS:
    raise ValueError(f"data.topic={how!r}: one of {TOPICS}")
  if how == "title":
    return document.topic or ""
  if how == "first_sentence":
    sentences = local_views.split_sentences(document.text)
    return sentences[0] if sentences else ""
  if how == "first_token":
    return document.text.split(" ", 1)[0]
  return ""


def split_documents(config, dataset: zeshel.ZeshelDataset, split: str
                    ) -> list[documents_lib.Document]:
  return documents_lib.zeshel_documents(dataset, split, select=config.data.documents)


def passage_set(config, dataset: zeshel.ZeshelDataset, featurizer,
                docs: Sequence[documents_lib.Document], table: EntityTable,
                worlds: Sequence[str] | None = None) -> PassageSet:
  """Passages of `docs` (their worlds: `worlds`, default the world holding each document in
  `dataset`) with gold rows into `table`. A gold naming an entity the table lacks is an
  error (NIL golds are dropped when documents are read)."""
  docs = list(docs)
  if worlds is None:
    worlds = [dataset.world_of(d.doc_id) for d in docs]
  doc_worlds = np.asarray(worlds, dtype=str) if docs else np.zeros(0, str)
  row_of = table.row_of()
  topics = None
  if config.data.topic != "none":
    topics = [topic_of(d, config.data.topic) for d in docs]
  passages = passages_lib.passage_features(
      featurizer, [d.text for d in docs], topics, length=int(config.data.passage_length),
      stride=int(config.data.passage_stride), topic_tokens=int(config.data.topic_tokens))
  doc_spans = []
  for d, world in zip(docs, doc_worlds.tolist()):
    spans = []
    for s in d.spans:
      row = row_of.get((world, s.entity))
      if row is None:
        raise ValueError(f"document {d.doc_id!r}: gold entity {s.entity!r} at "
                         f"[{s.start}:{s.end}] is not an entity of world {world!r}")
      spans.append((s.start, s.end, row))
    doc_spans.append(spans)
  gold_tuples, partial, counts = passages_lib.passage_golds(passages, doc_spans)
  n = len(passages.document)
  gold_spans: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
  for p, j0, j1, row in gold_tuples:
    gold_spans[p].append((int(j0), int(j1), int(row)))
  self_of_doc = np.asarray([row_of.get((w, d.doc_id), -1) if config.data.exclude_self else -1
                            for d, w in zip(docs, doc_worlds.tolist())], np.int64)
  self_row = self_of_doc[passages.document] if n else np.zeros(0, np.int64)
  golds = [np.unique(np.asarray([r for _, _, r in spans], np.int64)) for spans in gold_spans]
  exclude = [np.unique(np.concatenate([g, np.asarray(list(partial[p]), np.int64),
                                       self_row[p:p + 1][self_row[p:p + 1] >= 0]]))
             for p, g in enumerate(golds)]
  counts = dict(counts, documents=len(docs), passages=n,
                passages_with_gold=int(sum(len(g) > 0 for g in golds)),
                gold_pairs=int(sum(len(g) for g in golds)))
  return PassageSet(docs, doc_worlds, passages, golds, exclude, self_row, gold_spans, counts)


# Passages fields with one row per passage (the others are per document).
_PER_PASSAGE = ("input_ids", "attention_mask", "passage_ids", "document", "token_start",
                "num_tokens", "char_offsets")


def subset(pset: PassageSet, keep: np.ndarray) -> PassageSet:
  """The passages `keep` of a set (documents unchanged)."""
  p = pset.passages
  passages = dataclasses.replace(p, **{name: getattr(p, name)[keep] for name in _PER_PASSAGE})
  return dataclasses.replace(
      pset, passages=passages, golds=[pset.golds[i] for i in keep],
      exclude=[pset.exclude[i] for i in keep], self_row=pset.self_row[keep],
      gold_spans=[pset.gold_spans[i] for i in keep])


def retrieve(model, params, pset: PassageSet, table: EntityTable, config, mesh, k: int,
             vector_cache: dict | None = None, desc: str = "passages",
             encoders=None) -> tuple[np.ndarray, np.ndarray]:
  """Each passage's top-k entity rows of its own world (its own document left out) and
  their scores, [P, k] (-1 / -inf where a world has fewer), from a store of the kind
  config.evals.store names ("device": the entity table sharded over the mesh, exact top-k
  there; "exact" / "scann": on the host). encoders: inference.encoders(model), to reuse
  compiled ones."""
  encode_passages, encode_entities = encoders or inference.encoders(model)
  axes = config.sharding.batch_axes
  emb = inference.embed_rows(encode_passages, params,
                            {"input_ids": pset.passages.input_ids,
                             "attention_mask": pset.passages.attention_mask},
                            mesh, config.eval_batch_size, axes, desc=desc)
  rows = np.full((len(pset), k), -1, np.int64)
  scores = np.full((len(pset), k), -np.inf, np.float32)
  cache = {} if vector_cache is None else vector_cache
  worlds = pset.worlds
  for world in np.unique(worlds):
    members = table.rows_of_world(world)
    if world not in cache:
      cache[world] = inference.embed_rows(
          encode_entities, params, {name: v[members] for name, v in table.features.items()},
          mesh, config.eval_batch_size, axes, desc=f"{world} entities")
    store = retrieval.build_store(config.evals.get("store", "exact"), cache[world], mesh,
                                 ids=members)
    sel = np.flatnonzero(worlds == world)
    kk = min(k + 1, len(members))
    found_scores, found = store.search(emb[sel], kk)
    found_scores, found = np.asarray(found_scores), np.asarray(found)
    # The document's own entry drops out; the k best of the rest stay.
    keep = found != pset.self_row[sel][:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    taken = np.take_along_axis(keep, order, 1)
    width = order.shape[1]
    rows[sel, :width] = np.where(taken, np.take_along_axis(found, order, 1), -1)
    scores[sel, :width] = np.where(taken, np.take_along_axis(found_scores, order, 1), -np.inf)
  return rows, scores


def passage_recall_report(rows: np.ndarray, golds: Sequence[np.ndarray],
                          ks: Sequence[int] = KS) -> dict[str, Any]:
  """Passage recall@k (all golds of a passage in its top k, over passages with a gold) and
  micro recall@k over (passage, gold) pairs, in percent."""
  has = [p for p, g in enumerate(golds) if len(g)]
  report: dict[str, Any] = {"passages_with_gold": len(has),
                            "gold_pairs": int(sum(len(golds[p]) for p in has))}
  for k in ks:
    if k > rows.shape[1]:
      continue
    found = [np.isin(golds[p], rows[p, :k]) for p in has]
    report[f"passage_recall@{k}"] = round(100 * float(np.mean([f.all() for f in found]))
                                          if has else 0.0, 2)
    report[f"recall@{k}"] = round(100 * float(np.concatenate(found).mean()) if has else 0.0, 2)
  return report


def candidates_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, "candidates", f"passages_{split}.jsonl")


def write_passage_candidates(path: str, pset: PassageSet, table: EntityTable,
                             rows: np.ndarray, scores: np.ndarray) -> None:
  """JSON lines {document_id, world, token_start, candidates, scores}, atomically."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  worlds = pset.worlds
  with open(path + ".tmp", "w") as f:
    for p in range(len(pset)):
      doc_id, start = pset.key(p)
      filled = rows[p] >= 0
      f.write(json.dumps({"document_id": doc_id, "world": str(worlds[p]), "token_start": start,
                          "candidates": table.doc_ids[rows[p][filled]].tolist(),
                          "scores": [round(float(s), 5) for s in scores[p][filled]]}) + "\n")
  os.replace(path + ".tmp", path)


def load_candidates(path: str, top: int) -> dict[tuple[str, int], tuple[str, list[str]]]:
  """A passages_<split>.jsonl as {(document id, first token): (world, first `top` candidate
  ids)}, read once."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no passage candidates; evaluate the retriever on this "
                            "split first (configs/entqa_retriever.py, evals.splits)")
  by_key = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        record = json.loads(line)
        by_key[(record["document_id"], int(record["token_start"]))] = (
            record["world"], list(record["candidates"][:top]))
      except (ValueError, KeyError, TypeError) as e:
        raise zeshel.format_error(path, number, None, f"bad passage candidates: {e!r}") from e
  return by_key


def candidate_rows(by_key: dict, pset: PassageSet, table: EntityTable, top: int,
                   path: str) -> np.ndarray:
  """Rows [P, top] of `pset`'s passages from load_candidates' dict (-1: empty slot); a
  passage the file lacks is an error (it was written with other passage settings or
  documents)."""
  row_of = table.row_of()
  rows = np.full((len(pset), top), -1, np.int64)
  for p in range(len(pset)):
    key = pset.key(p)
    if key not in by_key:
      raise KeyError(f"{path}: no candidates for passage {key} (document, first token); were "
                     "they written with the same documents and passage length / stride?")
    world, ids = by_key[key]
    unknown = [d for d in ids if (world, d) not in row_of]
    if unknown:
      raise ValueError(f"{path}: passage {key}: candidates {unknown[:3]} are not entities of "
                       f"world {world!r}")
    rows[p, :len(ids)] = [row_of[(world, d)] for d in ids]
  return rows


def evaluate_passages(model, params, pset: PassageSet, table: EntityTable, config, mesh,
                      split: str, top_k: int, vector_cache: dict | None = None,
                      path: str | None = None) -> dict[str, Any]:
  t0 = time.time()
  rows, scores = retrieve(model, params, pset, table, config, mesh, top_k, vector_cache,
                          desc=f"{split} passages")
  report = passage_recall_report(rows, pset.golds)
  report.update(split=split, passages=len(pset), documents=pset.counts["documents"],
                seconds=round(time.time() - t0, 1))
  if path:
    write_passage_candidates(path, pset, table, rows, scores)
    report["candidates"] = path
  return report
