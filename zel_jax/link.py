"""Linking: mentions in, entities out, with a trained bi-encoder (and optionally BLINK's
second stage, a cross-encoder reranking the retrieved candidates).

  python -m zel_jax.link --workdir=W --data=DIR --world=NAME --input=mentions.jsonl \
      --output=out.jsonl --top-k=16 [--rerank=W_CROSS]

Each input line is either a ZESHEL mention record (context_document_id, start_index,
end_index, ...) or raw text with a character span: {"text": "...", "start": 4, "end": 11}
(end exclusive). Each output line repeats the input and adds "entities": [{document_id,
title, score}, ...], best first. `--text="... [[mention]] ..."` links one sentence whose
mention is marked with double brackets, and prints the result.

The world's entity store is built once per checkpoint and kept under W/stores/, so repeated
calls load it instead of re-encoding the knowledge base. With --rerank, the top-k retrieved
entities are scored by the cross-encoder and returned in its order; "score" is then the
cross-encoder's and "retrieval_score" the bi-encoder's.

EntQA end to end (`--end-to-end`, --workdir an EntQA reader): the input is whole documents,
`--text="..."` or JSON lines {"text", "id"?, "topic"?}; the retriever finds each passage's
candidate entities, the reader their mentions, and each output line repeats the input and
adds "spans": [{start, end, mention, document_id, title, score}] (character offsets into
the text, end exclusive) for the spans scoring above the threshold gamma.

  python -m zel_jax.link --end-to-end --workdir=W_READ --world=foldoc \
      --text="Emacs is an editor written in Lisp."
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Sequence

from absl import app, flags, logging
import jax
import numpy as np

from zel_jax import evaluate, metrics, sharding
from zel_jax.data import examples as examples_lib
from zel_jax.data import zeshel
from zel_jax.trainers import loop


class Linker:
  """A trained bi-encoder plus one world's entity store, ready to link mentions."""

  def __init__(self, workdir: str, data: str | None, world: str, store: str = "exact",
               untrained: bool = False):
    self.config = loop.load_config(workdir)
    trainer = evaluate.retriever_trainer(self.config)
    self.dataset = zeshel.ZeshelDataset(data or self.config.data.dir)
    if world not in self.dataset.worlds():
      raise ValueError(f"unknown world {world!r}; worlds: {self.dataset.worlds()}")
    self.world = world
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.model, self.featurizer = trainer.build_model(self.config, self.mesh)
    shardings = trainer.param_shardings(self.config, self.model, self.mesh)
    if untrained:
      self.params, step = trainer.pretrained_params(self.config, self.model, shardings,
                                                    jax.random.PRNGKey(0)), "untrained"
    else:
      restore = trainer.restore_params
      if self.config.get("trainer") == "mvd":
        from zel_jax.trainers import mvd  # pylint: disable=g-import-not-at-top
        restore = mvd.restore_student
      self.params, step = restore(workdir, self.config, self.model, self.mesh)
    # An MVD retriever's store holds its views (config.evals.views); a bi-encoder's, one
    # vector per entity.
    self.views = (self.config.evals.views if self.config.get("trainer") == "mvd"
                  else "global")
    self.encode_mentions, encode_entities = evaluate.encoders(self.model)
    self.entities = {e.document_id: e for e in self.dataset.iter_entities(world)}
    self.doc_ids = np.asarray(list(self.entities))
    kind = store if self.views == "global" else f"{store}.{self.views}"
    self.store = self._store(evaluate.store_path(workdir, world, step, kind), store,
                             encode_entities)

  def _store(self, path: str, kind: str, encode_entities):
    from zel_jax import index  # pylint: disable=g-import-not-at-top
    if os.path.isdir(path):
      loaded = index.load_store(path, **({"mesh": self.mesh} if kind == "device" else {}))
      held = len(loaded) if self.views == "global" else len(np.unique(loaded.ids))
      if held == len(self.doc_ids):
        return loaded
      logging.warning("%s holds %d entities, the world %d: rebuilding", path, held,
                      len(self.doc_ids))
    world = examples_lib.world_entities(self.dataset, self.world, self.featurizer,
                                        self.config.data.entity_length)
    emb, owner = evaluate.entity_vectors(encode_entities, self.params, self.featurizer, world,
                                         self.config, self.mesh, self.views)
    built = evaluate.build_store(kind, emb, self.mesh,
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
           reranker: "Reranker | None" = None) -> list[dict[str, Any]]:
    pieces = [self._pieces(r, i + 1) for i, r in enumerate(records)]
    if not pieces:
      return []
    lefts, mentions, rights = zip(*pieces)
    feats = self.featurizer.mention_features(lefts, mentions, rights,
                                             self.config.data.mention_length)
    emb = evaluate.embed_rows(self.encode_mentions, self.params, feats, self.mesh,
                              self.config.eval_batch_size, self.config.sharding.batch_axes)
    scores, rows = evaluate.search_entities(self.store, emb, min(top_k, len(self.doc_ids)),
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


class Reranker:
  """A trained cross-encoder (BLINK stage 2) scoring mentions against given entities."""

  def __init__(self, workdir: str):
    from zel_jax.trainers import crossencoder as trainer  # pylint: disable=g-import-not-at-top
    self.config = loop.load_config(workdir)
    if self.config.get("trainer") != "crossencoder":
      raise ValueError(f"--rerank={workdir!r} is not a cross-encoder workdir (its trainer is "
                       f"{self.config.get('trainer')!r})")
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.model, self.featurizer = trainer.build_model(self.config, self.mesh)
    self.params, self.step = trainer.restore_params(workdir, self.config, self.model,
                                                    self.mesh)

  def score(self, pieces: Sequence[tuple[str, str, str]],
            candidates: Sequence[Sequence[zeshel.Entity]]) -> np.ndarray:
    """Scores [M, K] of each mention (left, mention, right) against its candidate entities
    (K = the longest list; -inf in the slots of shorter lists)."""
    from zel_jax.trainers import crossencoder as trainer  # pylint: disable=g-import-not-at-top
    lefts, mentions, rights = zip(*pieces)
    mention_feats = self.featurizer.mention_features(lefts, mentions, rights,
                                                     self.config.data.mention_length)
    flat = [e for row in candidates for e in row]
    entity_feats = self.featurizer.entity_features([e.title for e in flat],
                                                   [e.text for e in flat],
                                                   self.config.data.entity_length)
    k = max(len(row) for row in candidates)
    rows = np.full((len(candidates), k), -1, np.int64)
    start = 0
    for i, row in enumerate(candidates):
      rows[i, :len(row)] = np.arange(start, start + len(row))
      start += len(row)
    return trainer.score_candidates(self.model, self.params, mention_feats, entity_feats,
                                    rows, self.config, self.mesh, self.config.eval_batch_size)


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
  import html  # pylint: disable=g-import-not-at-top
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
  from zel_jax.data import documents as documents_lib  # pylint: disable=g-import-not-at-top
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


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: malformed JSON: {e.msg}") from None
  return records


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program (several CLIs import
  each other's functions)."""
  flags.DEFINE_string("workdir", None, "A bi-encoder training workdir.")
  flags.DEFINE_string("data", None, "ZESHEL-layout directory (default: the config's).")
  flags.DEFINE_string("world", None, "The world whose entities to link to.")
  flags.DEFINE_string("input", None, "JSON lines of mentions.")
  flags.DEFINE_string("output", None, "Where to write the linked JSON lines.")
  flags.DEFINE_string("text", None, "One text with its mention in [[double brackets]].")
  flags.DEFINE_integer("top_k", 16, "Entities per mention.")
  flags.DEFINE_alias("top-k", "top_k")
  flags.DEFINE_enum("store", "exact", ["exact", "scann", "device"], "Candidate store.")
  flags.DEFINE_string("rerank", None, "A cross-encoder workdir: rerank the top-k with it.")
  flags.DEFINE_bool("end_to_end", False, "EntQA: --workdir is a reader; --text (or each "
                    "--input line's text) is a whole document whose mentions are found.")
  flags.DEFINE_alias("end-to-end", "end_to_end")
  flags.DEFINE_float("threshold", None, "--end_to_end: gamma (default: the reader's "
                     "calibrated one).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metrics.quiet_library_logs()
  del argv
  if bool(FLAGS.input) == bool(FLAGS.text):
    raise app.UsageError("give exactly one of --input and --text")
  if FLAGS.end_to_end:
    _main_end_to_end()
    return
  linker = Linker(FLAGS.workdir, FLAGS.data, FLAGS.world, FLAGS.store)
  records = _read_jsonl(FLAGS.input) if FLAGS.input else [marked_text(FLAGS.text)]
  reranker = Reranker(FLAGS.rerank) if FLAGS.rerank else None
  linked = linker.link(records, FLAGS.top_k, reranker)
  if FLAGS.output:
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w") as f:
      for record in linked:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, FLAGS.output)
  for record in linked[:5] if FLAGS.output else linked:
    top = ", ".join(f"{e['title']} ({e['score']:.2f})" for e in record["entities"][:5])
    print(f"{record['mention']!r} -> {top}")
  sys.stdout.flush()
  print(json.dumps({"linked": len(linked), "output": FLAGS.output,
                    "top": [r["entities"][0] if r["entities"] else None for r in linked[:3]]}))


def _main_end_to_end() -> None:
  from zel_jax.trainers import entqa_reader  # pylint: disable=g-import-not-at-top
  e2e = entqa_reader.EndToEnd(FLAGS.workdir, FLAGS.data)
  records = _read_jsonl(FLAGS.input) if FLAGS.input else [{"text": FLAGS.text}]
  top_k = FLAGS.top_k if FLAGS["top_k"].present else None
  linked, timing = link_documents(e2e, records, FLAGS.world, FLAGS.threshold, top_k)
  if FLAGS.output and jax.process_index() == 0:
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w") as f:
      for record in linked:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, FLAGS.output)
  for record in linked[:5] if FLAGS.output else linked:
    for span in record["spans"]:
      print(f"{span['mention']!r} [{span['start']}:{span['end']}] -> {span['title']} "
            f"({span['score']:.3f})")
  sys.stdout.flush()
  print(json.dumps({"documents": len(linked), "spans": sum(len(r["spans"]) for r in linked),
                    "output": FLAGS.output, **timing}))


FLAGS = flags.FLAGS


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir", "world"])
  app.run(main)
