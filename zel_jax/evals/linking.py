"""Linking with a loaded retriever: mentions in, entities out (`Linker`), the pieces a
recipe's hooks hand the linker (`LoadedRetriever`, `PairScorer`, `DocumentLinker`), linking
whole documents with a document linker (EntQA), and the notebook's display helpers."""

from __future__ import annotations

import dataclasses
import html
import os
import re
from typing import Any, Protocol, Sequence

from absl import logging
import jax
import numpy as np

from zel_jax import index as index_lib
from zel_jax.data import documents as documents_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import zeshel
from zel_jax.evals import inference, retrieval


@dataclasses.dataclass
class LoadedRetriever:
  """A recipe's retriever, restored (or untrained: step "untrained" names its stores):
  `model` has encode_mentions / encode_entities; views is what its store holds per entity."""
  config: Any
  mesh: Any
  model: Any
  featurizer: Any
  params: Any
  step: int | str
  views: str = "global"


class PairScorer(Protocol):
  """A second stage (BLINK's cross-encoder): scores [M, K] of each mention's candidates."""

  def score(self, pieces: Sequence[tuple[str, str, str]],
            candidates: Sequence[Sequence[zeshel.Entity]]) -> np.ndarray: ...


class DocumentLinker(Protocol):
  """End-to-end linking of raw documents (EntQA): `dataset`, `predict(docs, worlds, top_k)`
  -> ([(doc_id, c0, c1, entity_id, score)], timing), `threshold(value)` -> gamma."""
  dataset: zeshel.ZeshelDataset

  def predict(self, docs, worlds, top_k): ...

  def threshold(self, value): ...


class Linker:
  """A retriever plus one world's entity store, ready to link mentions. The store is built
  once per checkpoint (and kind of store) and kept under W/stores/."""

  def __init__(self, retriever: LoadedRetriever, workdir: str, data: str | None, world: str,
               store: str = "exact"):
    self.config = retriever.config
    self.dataset = zeshel.ZeshelDataset(data or self.config.data.dir)
    if world not in self.dataset.worlds():
      raise ValueError(f"unknown world {world!r}; worlds: {self.dataset.worlds()}")
    self.world = world
    self.mesh, self.model, self.featurizer = retriever.mesh, retriever.model, retriever.featurizer
    self.params, self.views = retriever.params, retriever.views
    self.encode_mentions, encode_entities = inference.encoders(self.model)
    self.entities = {e.document_id: e for e in self.dataset.iter_entities(world)}
    self.doc_ids = np.asarray(list(self.entities))
    kind = store if self.views == "global" else f"{store}.{self.views}"
    self.store = self._store(retrieval.store_path(workdir, world, retriever.step, kind), store,
                             encode_entities)

  def _store(self, path: str, kind: str, encode_entities):
    if os.path.isdir(path):
      loaded = index_lib.load_store(path, **({"mesh": self.mesh} if kind == "device" else {}))
      held = len(loaded) if self.views == "global" else len(np.unique(loaded.ids))
      if held == len(self.doc_ids):
        return loaded
      logging.warning("%s holds %d entities, the world %d: rebuilding", path, held,
                      len(self.doc_ids))
    world = examples_lib.world_entities(self.dataset, self.world, self.featurizer,
                                        self.config.data.entity_length)
    emb, owner = retrieval.entity_vectors(encode_entities, self.params, self.featurizer, world,
                                         self.config, self.mesh, self.views)
    built = retrieval.build_store(kind, emb, self.mesh,
                                 ids=None if self.views == "global" else owner)
    if kind == "device" or jax.process_index() == 0:
      built.save(path)  # A device store's save is collective: each process writes its rows.
    return built

  def _pieces(self, record: dict[str, Any], line: int) -> tuple[str, str, str]:
    if "context_document_id" in record:
      try:
        tokens = self.dataset.document(record["context_document_id"]).text.split()
        start, end = int(record["start_index"]), int(record["end_index"])
      except KeyError as e:
        raise ValueError(f"input line {line}: field {e}: missing or unknown") from None
      if not 0 <= start <= end < len(tokens):
        raise ValueError(f"input line {line}: span [{start}, {end}] outside the document's "
                         f"{len(tokens)} tokens")
      return (" ".join(tokens[:start]), " ".join(tokens[start:end + 1]),
              " ".join(tokens[end + 1:]))
    for field in ("text", "start", "end"):
      if field not in record:
        raise ValueError(f"input line {line}: field {field!r} missing (give a ZESHEL mention "
                         "record or {text, start, end})")
    text, start, end = record["text"], int(record["start"]), int(record["end"])
    if not 0 <= start < end <= len(text):
      raise ValueError(f"input line {line}: span [{start}, {end}) outside the text of "
                       f"{len(text)} characters")
    return text[:start], text[start:end], text[end:]

  def link(self, records: Sequence[dict[str, Any]], top_k: int = 16,
           reranker: PairScorer | None = None) -> list[dict[str, Any]]:
    pieces = [self._pieces(r, i + 1) for i, r in enumerate(records)]
    if not pieces:
      return []
    lefts, mentions, rights = zip(*pieces)
    feats = self.featurizer.mention_features(lefts, mentions, rights,
                                             self.config.data.mention_length)
    emb = inference.embed_rows(self.encode_mentions, self.params, feats, self.mesh,
                              self.config.eval_batch_size, self.config.sharding.batch_axes)
    scores, rows = retrieval.search_entities(self.store, emb, min(top_k, len(self.doc_ids)),
                                            self.views, len(self.doc_ids))
    retrieval_scores = scores
    if reranker is not None:
      scores = reranker.score(pieces, [[self.entities[str(self.doc_ids[r])] for r in row
                                        if r >= 0] for row in rows])
      order = np.argsort(-scores, axis=1, kind="stable")
      scores = np.take_along_axis(scores, order, 1)
      rows = np.take_along_axis(rows, order, 1)
      retrieval_scores = np.take_along_axis(retrieval_scores, order, 1)
    out = []
    for record, mention, score_row, id_row, retrieval_row in zip(records, mentions, scores,
                                                                 rows, retrieval_scores):
      found = [{"document_id": str(self.doc_ids[r]), "title": self.entities[
          str(self.doc_ids[r])].title, "score": round(float(s), 4)}
               for r, s in zip(id_row, score_row) if r >= 0]
      if reranker is not None:
        for entity, r in zip(found, retrieval_row[id_row >= 0]):
          entity["retrieval_score"] = round(float(r), 4)
      out.append({**record, "mention": mention, "entities": found})
    return out


def marked_text(text: str) -> dict[str, Any]:
  """ "a [[mention]] here" -> {"text": "a mention here", "start": 2, "end": 9}."""
  match = re.search(r"\[\[(.+?)\]\]", text)
  if not match:
    raise ValueError(f"mark the mention with double brackets: {text!r}")
  plain = text[:match.start()] + match.group(1) + text[match.end():]
  return {"text": plain, "start": match.start(), "end": match.start() + len(match.group(1))}


def highlight_html(record: dict[str, Any]) -> str:
  """One linked text as HTML for a notebook: each mention in a <mark> followed by its best
  entity's title and score. Takes Linker.link's records ({text, start, end, entities}) and
  link_documents' ({text, spans}); the text is HTML-escaped."""
  text = record["text"]
  if "spans" in record:
    spans = [(s["start"], s["end"], s["title"], s["score"]) for s in record["spans"]]
  else:
    best = record["entities"][0] if record.get("entities") else None
    spans = [(int(record["start"]), int(record["end"]),
              best["title"] if best else "(no entity)", best["score"] if best else None)]
  out, at = [], 0
  for start, end, title, score in sorted(spans, key=lambda s: s[0]):
    if start < at:  # Overlapping spans: the earlier one is shown.
      continue
    label = html.escape(title) + (f" {score:.2f}" if score is not None else "")
    out += [html.escape(text[at:start]),
            f'<mark title="{html.escape(title, quote=True)}">{html.escape(text[start:end])}'
            f"</mark><sub>&rarr; {label}</sub>"]
    at = end
  out.append(html.escape(text[at:]))
  return "<p>" + "".join(out) + "</p>"


def link_documents(e2e, records: Sequence[dict[str, Any]], world: str,
                   threshold: float | None = None, top_k: int | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """EntQA end to end: raw texts ({"text", "id"?, "topic"?}) -> the spans above gamma, each
  with its entity and score, best first within a document."""
  docs, seen = [], {}
  for i, record in enumerate(records):
    if not isinstance(record.get("text"), str):
      raise ValueError(f"input line {i + 1}: field 'text' missing or not a string")
    doc_id = str(record.get("id", f"input:{i}"))
    if doc_id in seen:
      raise ValueError(f"input line {i + 1}: field 'id': {doc_id!r} repeats line "
                       f"{seen[doc_id]}")
    seen[doc_id] = i + 1
    docs.append(documents_lib.Document(str(record.get("id", f"input:{i}")), record["text"],
                                       record.get("topic"), ()))
  predicted, timing = e2e.predict(docs, [world] * len(docs), top_k)
  gamma = e2e.threshold(threshold)
  entities = e2e.dataset.entities(world)
  by_doc: dict[str, list] = {d.doc_id: [] for d in docs}
  for doc_id, c0, c1, entity, score in predicted:
    if score > gamma:
      by_doc[doc_id].append((c0, c1, entity, score))
  out = []
  for record, doc in zip(records, docs):
    spans = sorted(by_doc[doc.doc_id], key=lambda x: (x[0], x[1]))
    out.append({**record, "spans": [
        {"start": c0, "end": c1, "mention": doc.text[c0:c1], "document_id": entity,
         "title": entities[entity].title, "score": round(float(score), 4)}
        for c0, c1, entity, score in spans]})
  return out, dict(timing, threshold=gamma)
