"""Linking with a loaded retriever: mentions in, entities out (`Linker`), the pieces a
recipe's hooks hand the linker (`LoadedRetriever`, `PairScorer`, `DocumentLinker`), linking
whole documents with a document linker (EntQA), and the notebook's display helpers."""

from __future__ import annotations

import dataclasses
import html
import importlib
import os
import re
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from zel_jax.data import documents as documents_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import guards
from zel_jax.data import zeshel
from zel_jax.evals import export_io, fingerprint, inference, retrieval
from zel_jax.index.entity_kb import EntityKB


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
  """End-to-end linking of raw documents (EntQA): `predict(docs, worlds, top_k)` ->
  ([(doc_id, c0, c1, entity_id, score)], timing), `threshold(value)` -> gamma,
  `title_of(world, entity_id)`."""

  def predict(self, docs, worlds, top_k): ...

  def threshold(self, value): ...

  def title_of(self, world, entity_id): ...


class Linker:
  """A retriever plus a knowledge base (its entities, their vectors and the store over them),
  ready to link mentions. Opened from a training workdir and one world of a ZESHEL-layout
  folder (`for_world`; the store is built once per checkpoint and kept under W/stores/), or
  from an export (`from_pretrained`, no workdir needed). Entities can be added and removed
  without retraining and without re-encoding the others; an export's knowledge base is
  rewritten atomically after each change."""

  def __init__(self, retriever: LoadedRetriever, kb: EntityKB, world: str = "",
               dataset: zeshel.ZeshelDataset | None = None, kb_path: str | None = None):
    self.config = retriever.config
    self.mesh, self.model, self.featurizer = retriever.mesh, retriever.model, retriever.featurizer
    self.params, self.views, self.step = retriever.params, retriever.views, retriever.step
    self.encode_mentions, self._encode_entities = inference.encoders(self.model)
    self.kb, self.world, self.dataset, self.kb_path = kb, world, dataset, kb_path
    # Finds and links the mentions of raw text (an export with EntQA's reader), else None.
    self.documents: DocumentLinker | None = None

  @classmethod
  def for_world(cls, retriever: LoadedRetriever, workdir: str, data: str | None, world: str,
                store: str = "exact") -> "Linker":
    """One world of a ZESHEL-layout folder (data, default the config's). Its vectors are
    cached as an exact store under W/stores/, read back only when its fingerprint (the
    checkpoint's step and parameters, the encoder settings, the world's entities) is this
    one's, else re-encoded (evals/fingerprint.py); a ScaNN index is cached beside them the
    same way, a device store built from them."""
    config = retriever.config
    guards.plain_name(world, "world")
    dataset = zeshel.ZeshelDataset(data or config.data.dir)
    if world not in dataset.worlds():
      raise ValueError(f"unknown world {world!r}; worlds: {dataset.worlds()}")
    entities = list(dataset.iter_entities(world))
    views = retriever.views
    wanted = fingerprint.store_fingerprint(
        retriever.step, fingerprint.params_digest(retriever.params), config, views,
        [e.document_id for e in entities], [e.title for e in entities],
        [e.text for e in entities])
    path = retrieval.store_path(workdir, world, retriever.step, "exact", views)
    cached = fingerprint.load_store(path, wanted)
    if cached is not None:
      vectors, owners = cached.table, (None if views == "global" else cached.ids)
    else:
      table = examples_lib.world_entities(dataset, world, retriever.featurizer,
                                          config.data.entity_length)
      _, encode_entities = inference.encoders(retriever.model)
      vectors, owners = retrieval.entity_vectors(encode_entities, retriever.params,
                                                 retriever.featurizer, table, config,
                                                 retriever.mesh, views)
      if jax.process_index() == 0:
        fingerprint.save_store(retrieval.build_store(
            "exact", vectors, ids=None if views == "global" else owners), path, wanted)
    # A ScaNN index takes longer to train than to read: kept beside the exact vectors.
    scann_path = retrieval.store_path(workdir, world, retriever.step, "scann", views)
    cached = fingerprint.load_store(scann_path, wanted) if store == "scann" else None
    kb = EntityKB([e.document_id for e in entities], [e.title for e in entities],
                  [e.text for e in entities], vectors, owners, views, store, retriever.mesh,
                  store=cached)
    if store == "scann" and cached is None and jax.process_index() == 0:
      fingerprint.save_store(kb.store, scann_path, wanted)
    return cls(retriever, kb, world, dataset)

  @classmethod
  def from_pretrained(cls, path: str, store: str | None = None) -> "Linker":
    """An export (`python -m zel_jax.export`): its retriever and knowledge base, which
    add_entities / remove_entities rewrite in place. store: another kind of store than the
    exported one (exact, scann, device), built from the vectors."""
    exported = export_io.read_retriever(path)
    kb = export_io.read_kb(path, store, exported.mesh)
    retriever = LoadedRetriever(exported.config, exported.mesh, exported.model,
                                exported.featurizer, exported.params, exported.step,
                                exported.views)
    linker = cls(retriever, kb, exported.manifest.get("world", ""),
                 kb_path=os.path.join(path, "kb"))
    spec = exported.manifest.get("documents")
    if spec:
      # The export names the module that reads its document linker, as a config names its
      # recipe: nothing here imports a recipe.
      linker.documents = importlib.import_module(spec["module"]).open_exported(path, spec,
                                                                               linker)
    return linker

  @property
  def store(self):
    return self.kb.store

  @property
  def doc_ids(self) -> np.ndarray:
    return np.asarray(self.kb.ids)

  def entity(self, row: int) -> zeshel.Entity:
    return zeshel.Entity(self.kb.ids[row], self.kb.titles[row], self.kb.texts[row], self.world)

  def add_entities(self, records: Sequence[dict[str, Any]]) -> int:
    """Adds entities {"document_id" (or "id"), "title", "text"}: only they are encoded, the
    store is rebuilt from the vectors held. Returns the number added."""
    ids, titles, texts = [], [], []
    for i, record in enumerate(records):
      doc_id = record.get("document_id", record.get("id"))
      for field, value in (("document_id", doc_id), ("title", record.get("title")),
                           ("text", record.get("text"))):
        if not isinstance(value, str) or (field != "text" and not value.strip()):
          raise ValueError(f"entity {i}: field {field!r} missing, empty or not a string")
      ids.append(doc_id)
      titles.append(record["title"])
      texts.append(record["text"])
    if not ids:
      return 0
    table = examples_lib.WorldEntities(self.world, np.asarray(ids), titles, texts,
                                       self.featurizer.entity_features(
                                           titles, texts, self.config.data.entity_length))
    vectors, owners = retrieval.entity_vectors(self._encode_entities, self.params,
                                               self.featurizer, table, self.config,
                                               self.mesh, self.views)
    self.kb.add(ids, titles, texts, vectors, owners)
    self._persist()
    return len(ids)

  def remove_entities(self, ids: Sequence[str]) -> int:
    """Removes entities by id (an unknown id is an error). Returns the number removed."""
    self.kb.remove(ids)
    self._persist()
    return len(ids)

  def _persist(self) -> None:
    if self.kb_path is not None and jax.process_index() == 0:
      self.kb.save(self.kb_path)

  def _pieces(self, record: dict[str, Any], line: int) -> tuple[str, str, str]:
    if "context_document_id" in record:
      if self.dataset is None:
        raise ValueError(f"input line {line}: a ZESHEL mention record needs the ZESHEL "
                         "folder its context document is in; give {text, start, end}")
      start, end = (_integer(record, f, line) for f in ("start_index", "end_index"))
      document_id = record["context_document_id"]
      if not isinstance(document_id, str) or document_id not in self.dataset:
        raise ValueError(f"input line {line}: field 'context_document_id': unknown document "
                         f"{document_id!r:.60}")
      tokens = self.dataset.document(document_id).text.split()
      if not 0 <= start <= end < len(tokens):
        raise ValueError(f"input line {line}: span [{start}, {end}] outside the document's "
                         f"{len(tokens)} tokens")
      return (" ".join(tokens[:start]), " ".join(tokens[start:end + 1]),
              " ".join(tokens[end + 1:]))
    for field in ("text", "start", "end"):
      if field not in record:
        raise ValueError(f"input line {line}: field {field!r} missing (give a ZESHEL mention "
                         "record or {text, start, end})")
    text = record["text"]
    if not isinstance(text, str):
      raise ValueError(f"input line {line}: field 'text' is not a string")
    start, end = _integer(record, "start", line), _integer(record, "end", line)
    if not 0 <= start < end <= len(text):
      raise ValueError(f"input line {line}: span [{start}, {end}) outside the text of "
                       f"{len(text)} characters")
    if not text[start:end].strip():
      # An empty mention embeds as its markers alone and links to whatever is nearest.
      raise ValueError(f"input line {line}: field 'start': span [{start}, {end}) "
                       f"{text[start:end]!r} is only whitespace")
    return text[:start], text[start:end], text[end:]

  def link(self, items: Sequence[dict[str, Any] | str], top_k: int | None = None,
           reranker: PairScorer | None = None, threshold: float | None = None
           ) -> list[dict[str, Any]]:
    """Links mentions and texts. Each item is a mention ({text, start, end} in characters,
    end exclusive, or a ZESHEL mention record): returned with "mention" and "entities"
    [{document_id, title, score}, ...] best first (top_k, default 16); or a text with its
    mentions, a string marked "a [[mention]] here" (any number of marks) or {text, spans:
    [{start, end}, ...]}: returned as {..., "spans": [{start, end, mention, document_id,
    title, score, entities}]} (the best entity first, the top_k in "entities"). With a
    document linker (an export of EntQA's reader), raw text too, a string without marks or
    {text, topic?}: its mentions are found and linked, the spans scoring above the
    threshold (default: the calibrated gamma) returned the same way; top_k is then the
    candidates read per passage (default: the reader's)."""
    raw = [i for i, item in enumerate(items) if self._is_raw_text(item)]
    by_item = dict(zip(raw, self._link_raw(items, raw, top_k, threshold)))
    mentions, ranges, lines = [], {}, []
    for i, item in enumerate(items):
      if i in by_item:
        continue
      found = _mentions_of(item, i + 1)
      ranges[i] = (len(mentions), len(mentions) + len(found))
      mentions += found
      lines += [i + 1] * len(found)
    linked = self._link_mentions(mentions, top_k or 16, reranker, lines)
    out = []
    for i, item in enumerate(items):
      if i in by_item:
        out.append(by_item[i])
        continue
      if _is_mention(item):
        out.append(linked[ranges[i][0]])
        continue
      spans = []
      for record in linked[ranges[i][0]:ranges[i][1]]:
        best = record["entities"][0] if record["entities"] else {}
        spans.append({"start": record["start"], "end": record["end"],
                      "mention": record["mention"], **best, "entities": record["entities"]})
      base = {"text": _plain_text(item)} if isinstance(item, str) else dict(item)
      out.append({**base, "spans": spans})
    return out

  def _is_raw_text(self, item: Any) -> bool:
    """Text whose mentions are not given: linked by the document linker (an error names
    what to give without one)."""
    if self.documents is None:
      return False
    if isinstance(item, str):
      return not re.search(r"\[\[(.+?)\]\]", item)
    return isinstance(item, dict) and not _is_mention(item) and "spans" not in item

  def _link_raw(self, items, raw: Sequence[int], top_k: int | None,
                threshold: float | None) -> list[dict[str, Any]]:
    if not raw:
      return []
    records = [{"text": items[i]} if isinstance(items[i], str) else items[i] for i in raw]
    try:
      linked, _ = link_documents(self.documents, records, self.world, threshold, top_k)
    except ValueError as e:
      # link_documents counts lines among the raw texts; name the item instead.
      raise ValueError(re.sub(r"input line (\d+)",
                              lambda m: f"input line {raw[int(m.group(1)) - 1] + 1}",
                              str(e))) from None
    for record in linked:
      for span in record["spans"]:
        span["entities"] = [{k: span[k] for k in ("document_id", "title", "score")}]
    return linked

  def _link_mentions(self, records: Sequence[dict[str, Any]], top_k: int,
                     reranker: PairScorer | None, lines: Sequence[int]
                     ) -> list[dict[str, Any]]:
    """records: mentions; lines: the input line (item number) of each, for errors."""
    pieces = [self._pieces(r, line) for r, line in zip(records, lines)]
    if not pieces:
      return []
    if self.config.data.get("mention_length") is None:
      raise ValueError(f"input line {lines[0]}: this retriever embeds passages, not marked "
                       "mentions (EntQA's): give the text without marks or spans, and its "
                       "reader finds the mentions")
    lefts, mentions, rights = zip(*pieces)
    feats = self.featurizer.mention_features(lefts, mentions, rights,
                                             self.config.data.mention_length)
    emb = inference.embed_rows(self.encode_mentions, self.params, feats, self.mesh,
                              self.config.eval_batch_size, self.config.sharding.batch_axes)
    scores, rows = self.kb.search(emb, top_k)
    retrieval_scores = scores
    if reranker is not None:
      scores = reranker.score(pieces, [[self.entity(r) for r in row if r >= 0]
                                       for row in rows])
      order = np.argsort(-scores, axis=1, kind="stable")
      scores = np.take_along_axis(scores, order, 1)
      rows = np.take_along_axis(rows, order, 1)
      retrieval_scores = np.take_along_axis(retrieval_scores, order, 1)
    out = []
    for record, mention, score_row, id_row, retrieval_row in zip(records, mentions, scores,
                                                                 rows, retrieval_scores):
      found = [{"document_id": self.kb.ids[r], "title": self.kb.titles[r],
                "score": round(float(s), 4)} for r, s in zip(id_row, score_row) if r >= 0]
      if reranker is not None:
        for entity, r in zip(found, retrieval_row[id_row >= 0]):
          entity["retrieval_score"] = round(float(r), 4)
      out.append({**record, "mention": mention, "entities": found})
    return out


RAW_TEXT_HINT = ("finding mentions in raw text needs EntQA's reader: an export of a reader "
                 "workdir, or link --end_to_end --workdir=<reader>")


def _integer(record: dict[str, Any], field: str, line: int) -> int:
  """record[field], a JSON integer: int() would also take "4", 4.9 and true, numbers the
  file did not give."""
  if field not in record:
    raise ValueError(f"input line {line}: field {field!r}: missing")
  value = record[field]
  if not isinstance(value, int) or isinstance(value, bool):
    raise ValueError(f"input line {line}: field {field!r}: expected an integer, got "
                     f"{type(value).__name__} {value!r:.40}")
  return value


def _is_mention(item: Any) -> bool:
  return isinstance(item, dict) and ("start" in item or "context_document_id" in item)


def _plain_text(text: str) -> str:
  return re.sub(r"\[\[(.+?)\]\]", r"\1", text)


def _mentions_of(item: Any, line: int) -> list[dict[str, Any]]:
  """The mention records of one item of Linker.link (see there)."""
  if isinstance(item, str):
    return marked_mentions(item)
  if not isinstance(item, dict):
    raise ValueError(f"input line {line}: a mention or text record (a JSON object) or a "
                     f"marked string, got {type(item).__name__}")
  if _is_mention(item):
    return [item]
  if "spans" not in item:
    raise ValueError(f"input line {line}: give the mentions: {{text, start, end}}, "
                     "{text, spans: [{start, end}]} or a string with [[marked]] mentions "
                     f"({RAW_TEXT_HINT})")
  if not isinstance(item["spans"], list):
    raise ValueError(f"input line {line}: field 'spans' must be a list of {{start, end}}")
  out = []
  for j, span in enumerate(item["spans"]):
    if not isinstance(span, dict) or "start" not in span or "end" not in span:
      raise ValueError(f"input line {line}: field 'spans[{j}]' must be {{start, end}}")
    out.append({"text": item.get("text"), "start": span["start"], "end": span["end"]})
  return out


def marked_mentions(text: str) -> list[dict[str, Any]]:
  """ "a [[b]] c [[d]]" -> [{"text": "a b c d", "start": 2, "end": 3}, {..., 6, 7}]."""
  plain, spans = _plain_text(text), []
  for n, match in enumerate(re.finditer(r"\[\[(.+?)\]\]", text)):
    start = match.start() - 4 * n  # Each earlier mark dropped its four brackets.
    spans.append({"text": plain, "start": start, "end": start + len(match.group(1))})
  if not spans:
    raise ValueError(f"mark the mention with double brackets: {text!r} ({RAW_TEXT_HINT})")
  return spans


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
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
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
  by_doc: dict[str, list] = {d.doc_id: [] for d in docs}
  for doc_id, c0, c1, entity, score in predicted:
    if score > gamma:
      by_doc[doc_id].append((c0, c1, entity, score))
  out = []
  for record, doc in zip(records, docs):
    spans = sorted(by_doc[doc.doc_id], key=lambda x: (x[0], x[1]))
    out.append({**record, "spans": [
        {"start": c0, "end": c1, "mention": doc.text[c0:c1], "document_id": entity,
         "title": e2e.title_of(world, entity), "score": round(float(score), 4)}
        for c0, c1, entity, score in spans]})
  return out, dict(timing, threshold=gamma)
