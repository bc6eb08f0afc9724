"""Whole documents with their gold entity spans: the input of end-to-end linking (EntQA).

A `Document` is a text, a topic (its title, which EntQA appends to every passage) and gold
character spans, end exclusive, each naming a KB entity by document id. Two sources:

  zeshel_documents   the context documents of a ZESHEL-layout split, spans from its mentions
                     (word indices converted to exact character offsets);
  read_gerbil_jsonl  one document a line, `{"id", "text", "topic"?, "labels": [[start, end,
                     entity_id], ...]}` (GERBIL's A2KB gold as JSON lines).

    python -m zel_jax.data.documents --data data/foldoc --split test --out test.jsonl \
        --select dictd_split
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys
from typing import Collection, Iterable, Sequence

from zel_jax.data import foldoc, zeshel


@dataclasses.dataclass(frozen=True)
class GoldSpan:
  start: int  # character offsets into Document.text, end exclusive
  end: int
  entity: str  # the KB document id


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str
  text: str
  topic: str | None
  spans: tuple[GoldSpan, ...]  # sorted by (start, end)


# The words of str.split(): both split at Py_UNICODE_ISSPACE characters.
_WORD = re.compile(r"\S+")


def word_char_spans(text: str) -> list[tuple[int, int]]:
  """Character span [start, end) of each whitespace word of `text`, as indexed by ZESHEL's
  start_index / end_index (inclusive indices into text.split())."""
  return [m.span() for m in _WORD.finditer(text)]


def _mention_span(mention: zeshel.Mention, text: str, words: list[tuple[int, int]]
                  ) -> GoldSpan:
  if not 0 <= mention.start_index <= mention.end_index < len(words):
    raise ValueError(f"mention {mention.mention_id!r}: words [{mention.start_index}, "
                     f"{mention.end_index}] outside the {len(words)} words of document "
                     f"{mention.context_document_id!r}")
  c0, c1 = words[mention.start_index][0], words[mention.end_index][1]
  # Released texts may hold runs of whitespace inside a span that the mention's text writes
  # as one space; the span is still right, so only the words must agree.
  if text[c0:c1] != mention.text and (zeshel.normalize_whitespace(text[c0:c1])
                                      != zeshel.normalize_whitespace(mention.text)):
    raise ValueError(f"mention {mention.mention_id!r}: text {mention.text!r} differs from "
                     f"characters [{c0}, {c1}) of document {mention.context_document_id!r}: "
                     f"{text[c0:c1]!r}")
  return GoldSpan(c0, c1, mention.label_document_id)


def zeshel_documents(dataset: zeshel.ZeshelDataset | os.PathLike | str, split: str,
                     world: str | None = None, select: str = "mentions") -> list[Document]:
  """The context documents of a split with their gold spans; topic = the document's title.

  select="mentions": the documents that hold a mention of the split (of `world`'s corpus
  when given), in the order of their first mention. select="dictd_split": every document of
  `world` that foldoc.split_of assigns to the split, mentions or not, in file order (a
  dictd-built world such as FOLDOC, where mention-less documents still count against
  precision); `world` may be omitted when the dataset has one world.
  """
  if select not in ("mentions", "dictd_split"):
    raise ValueError(f"select must be 'mentions' or 'dictd_split', not {select!r}")
  if not isinstance(dataset, zeshel.ZeshelDataset):
    with zeshel.ZeshelDataset(dataset) as opened:
      return zeshel_documents(opened, split, world, select)
  if select == "dictd_split" and world is None:
    worlds = dataset.worlds()
    if len(worlds) != 1:
      raise ValueError(f"select='dictd_split' needs a world: {dataset.data_dir} has {worlds}")
    world = worlds[0]
  by_document: dict[str, list[zeshel.Mention]] = {}
  for mention in dataset.iter_mentions(split):
    if world is None or mention.corpus == world:
      by_document.setdefault(mention.context_document_id, []).append(mention)
  if select == "mentions":
    entities: Iterable[zeshel.Entity] = (dataset.document(d) for d in by_document)
  else:
    entities = (e for e in dataset.iter_entities(world)
                if e.document_id in by_document or foldoc.split_of(e.document_id) == split)
  documents = []
  for entity in entities:
    words = word_char_spans(entity.text)
    spans = {_mention_span(m, entity.text, words)
             for m in by_document.get(entity.document_id, ())}
    documents.append(Document(entity.document_id, entity.text, entity.title,
                              tuple(sorted(spans, key=lambda s: (s.start, s.end, s.entity)))))
  return documents


def _label(value, index: int, text: str, path: pathlib.Path, number: int
           ) -> tuple[int, int, str]:
  def bad(message):
    return zeshel.format_error(path, number, "labels", f"label {index}: {message}")
  if not isinstance(value, list) or len(value) != 3:
    raise bad(f"expected [start, end, entity_id], got {value!r:.80}")
  start, end, entity = value
  for name, v in (("start", start), ("end", end)):
    if not isinstance(v, int) or isinstance(v, bool):
      raise bad(f"{name} must be an integer, got {v!r:.40}")
  if not isinstance(entity, str) or not entity:
    raise bad(f"entity_id must be a non-empty string, got {entity!r:.40}")
  if start >= end:
    raise bad(f"start {start} is not before end {end}")
  if start < 0 or end > len(text):
    raise bad(f"span [{start}, {end}) outside the text of {len(text)} characters")
  return start, end, entity


def read_gerbil_jsonl(path: os.PathLike | str, kb_ids: Collection[str] | None = None
                      ) -> tuple[list[Document], dict[str, int]]:
  """Documents of a GERBIL-style JSON-lines file. Labels whose entity is not in `kb_ids`
  (when given) are NIL: counted and left out of the gold, as GERBIL's InKB scores do.

  Returns the documents and counts: documents, labels, spans (kept), nil. Format problems
  raise zeshel.ZeshelFormatError naming `path:line: field 'name':`.
  """
  path = pathlib.Path(path)
  documents: list[Document] = []
  seen: dict[str, int] = {}
  counts = {"documents": 0, "labels": 0, "spans": 0, "nil": 0}
  for number, record in zeshel.json_records(path):
    field = zeshel._field  # pylint: disable=protected-access
    doc_id = field(record, "id", str, path, number)
    if not doc_id:
      raise zeshel.format_error(path, number, "id", "empty")
    if doc_id in seen:
      raise zeshel.format_error(path, number, "id",
                                f"duplicate id {doc_id!r} (first at line {seen[doc_id]})")
    seen[doc_id] = number
    text = field(record, "text", str, path, number)
    topic = field(record, "topic", str, path, number, optional=True)
    labels = [_label(v, i, text, path, number)
              for i, v in enumerate(field(record, "labels", list, path, number))]
    ordered = sorted(range(len(labels)), key=lambda i: labels[i][:2])
    for a, b in zip(ordered, ordered[1:]):
      if labels[b][0] < labels[a][1]:
        raise zeshel.format_error(
            path, number, "labels", f"label {b} [{labels[b][0]}, {labels[b][1]}) overlaps "
            f"label {a} [{labels[a][0]}, {labels[a][1]})")
    kept = tuple(GoldSpan(*labels[i]) for i in ordered
                 if kb_ids is None or labels[i][2] in kb_ids)
    counts["documents"] += 1
    counts["labels"] += len(labels)
    counts["spans"] += len(kept)
    counts["nil"] += len(labels) - len(kept)
    documents.append(Document(doc_id, text, topic, kept))
  return documents, counts


def write_gerbil_jsonl(path: os.PathLike | str, documents: Iterable[Document]) -> None:
  """Writes documents in read_gerbil_jsonl's format, atomically (zeshel.write_json_lines)."""
  def record(document: Document) -> dict:
    out = {"id": document.doc_id, "text": document.text}
    if document.topic is not None:
      out["topic"] = document.topic
    out["labels"] = [[s.start, s.end, s.entity] for s in document.spans]
    return out
  zeshel.write_json_lines(path, map(record, documents))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.documents",
      description="Write the documents of a ZESHEL-layout split, with gold spans, as GERBIL "
                  "JSON lines.")
  parser.add_argument("--data", required=True, help="ZESHEL-layout folder, e.g. data/foldoc")
  parser.add_argument("--split", required=True, help="mentions/<split>.json")
  parser.add_argument("--out", required=True, help="output .jsonl")
  parser.add_argument("--world", default=None, help="keep this world's documents only")
  parser.add_argument("--select", default="mentions", choices=("mentions", "dictd_split"),
                      help="documents with mentions, or all documents hashing to the split "
                           "(dictd-built worlds)")
  args = parser.parse_args(argv)
  with zeshel.ZeshelDataset(args.data) as dataset:
    documents = zeshel_documents(dataset, args.split, args.world, args.select)
  write_gerbil_jsonl(args.out, documents)
  print(json.dumps({"documents": len(documents),
                    "without_spans": sum(not d.spans for d in documents),
                    "spans": sum(len(d.spans) for d in documents),
                    "split": args.split, "select": args.select, "out": args.out}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
