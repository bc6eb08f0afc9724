r"""Your own knowledge base and mentions -> the ZESHEL layout the rest of zel_jax reads.

  python -m zel_jax.data.convert kb --input=kb.jsonl --format=jsonl --world=mykb --out=DIR
  python -m zel_jax.data.convert mentions --input=test.jsonl --format=blink --world=mykb \
      --split=test --out=DIR [--gold=index|id|title] [--skip-bad]

`kb` writes DIR/documents/<world>.json (document_id, title, text; titles and texts as
written). Input formats (`--format`):
  jsonl  one object a line: `id` (string or integer), `title`, `text`, optional `aliases`
         (a JSON list of strings).
  csv    a header naming `id,title,text` (any order, UTF-8, an optional BOM), optional
         `aliases` column: several names separated by `|` (a name cannot hold a `|`).
  blink  BLINK's entity catalogue (entity.jsonl): `title`, `text` and `idx`, a Wikipedia URL
         such as https://en.wikipedia.org/wiki?curid=12. The document_id is what BLINK's
         `_load_candidates` keys the entity by: the page id after `curid=` ("12"), or the
         whole `idx` when it has no `curid=`; without `idx`, `kb_idx`; without either, the
         entity's 0-based position in the file (BLINK's local id).
Aliases go into an extra `aliases` field of the document record (only where there are
some): the reader ignores extra fields, and `--gold=title` resolves mentions through them.
Document ids are unique across a ZESHEL directory, so an id another documents file of DIR
already has is a bad row (two KBs numbered 1..N go into two folders).

`mentions` writes DIR/mentions/<split>.json against the KB already converted into DIR, and
the texts the mentions sit in as DIR/documents/<world>.<split>.contexts.json: a world of its
own, so context documents are never link candidates (candidates are the documents of the
mention's `corpus`, the KB world), yet ZeshelDataset finds them as it finds ZESHEL's. Mentions
of the same text share one context document. Each context text is the input's text with
whitespace runs made single spaces and a space added at each mention boundary that falls
inside a word ("Paris's" with the mention "Paris" becomes "Paris 's"), so a mention is whole
whitespace tokens and its `text` equals them. `category` is ZESHEL's
(`zeshel.category_of(mention, gold title)`), `corpus` the world. The split file keeps the
mentions of other worlds and replaces this world's. Input formats:
  blink  BLINK's rows: `context_left`, `mention`, `context_right` and the gold `label_id`;
         the mention_id is `query_id` (BLINK's benchmark files), else `id`, else
         `<world>-<split>-<line>`; the context text is the three pieces' words.
  jsonl  `{"text", "start", "end", "entity_id", "id"?}` (character offsets, end exclusive),
         or several mentions of one text: `{"text", "id"?, "title"?, "mentions": [{"start",
         "end", "entity_id", "id"?}, ...]}`; `title` becomes the context document's title.
         A mention without `id` is `<world>-<split>-<line>` (the k-th of a list: the text's
         `id` or that, then `-<k>`).
The gold (`--gold`) is read one of three ways:
  index  (blink's default) `label_id` is the 0-based position of the entity in the KB, as in
         BLINK's training files (and ZESHEL's BLINK conversion): the order of
         documents/<world>.json, which is the KB input's order when no KB row was rejected.
         Where the row also names `label_title` (or `Wikipedia_title`), a different title at
         that position is an error, which catches indices shifted by rejected KB rows.
  id     (jsonl's default) `label_id` / `entity_id` is a document_id: BLINK's benchmark files,
         whose `label_id` is the Wikipedia page id that `kb --format=blink` made the id.
  title  `label_title` (or `Wikipedia_title`) / `entity_title` names the entity: its exact
         title, else one of its aliases; a name two entities share is an error.

A bad row (malformed JSON or CSV, a missing or mistyped field, an empty or duplicate id, a
span outside its text, an unknown gold) is an error `path:line: field 'name': ...`. With
`--skip-bad` it goes with its line, field and reason to DIR/rejects/documents.<world>.jsonl
(kb) or DIR/rejects/mentions.<world>.<split>.jsonl, and the rest is converted (a CSV whose
header lacks a column, or that is not UTF-8, is an error of the file either way). Every output
is written to a temporary name and renamed into place only when the whole input converted,
so a failed run leaves earlier outputs as they were and a rerun writes the same files (a
clean run without --skip-bad removes an earlier run's rejects file). The last stdout line is
one JSON object of counts (written, rejected).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
from typing import Any, Iterator, Sequence

from zel_jax.data import convert_io, guards, zeshel
from zel_jax.data.convert_io import BadRow

KB_FORMATS = ("jsonl", "csv", "blink")
MENTION_FORMATS = ("blink", "jsonl")
GOLD_MODES = ("index", "id", "title")
ALIAS_SEPARATOR = "|"


# -- the knowledge base ---------------------------------------------------------------------


def _blink_id(record: dict[str, Any], position: int) -> tuple[str, str | None]:
  """(document_id, the field it came from) of a BLINK catalogue entry, as BLINK keys it."""
  if record.get("idx") is not None:
    idx = convert_io.identifier(record, "idx")
    if "curid=" in idx:
      page = idx.rsplit("curid=", 1)[1].strip()
      if not page:
        raise BadRow("idx", f"{idx!r} has no page id after 'curid='")
      # BLINK reads the page id as an integer: "curid=012" and label_id 12 are one page.
      return (str(int(page)) if page.isdigit() else page), "idx"
    return idx, "idx"
  if record.get("kb_idx") is not None:
    return convert_io.identifier(record, "kb_idx"), "kb_idx"
  return str(position), None


def _kb_document(record: dict[str, Any], fmt: str, position: int
                 ) -> tuple[dict[str, Any], str | None]:
  """(the ZESHEL document record, the field its id came from) of one KB input row."""
  if fmt == "blink":
    document_id, id_field = _blink_id(record, position)
    aliases: list[str] = []
  else:
    document_id, id_field = convert_io.identifier(record, "id"), "id"
    aliases = _aliases(record, fmt)
  document = {"document_id": document_id, "title": convert_io.field_of(record, "title", str),
              "text": convert_io.field_of(record, "text", str)}
  if not document["title"].strip() and not document["text"].strip():
    # The reader refuses such an entity (nothing to encode): refused here, with its line.
    raise BadRow("title", "empty, and so is 'text': an entity needs a title or a description")
  if aliases:
    document["aliases"] = aliases
  return document, id_field


def _aliases(record: dict[str, Any], fmt: str) -> list[str]:
  value = record.get("aliases")
  if value is None:
    return []
  if fmt == "csv":
    names = value.split(ALIAS_SEPARATOR)
  elif isinstance(value, list) and all(isinstance(v, str) for v in value):
    names = value
  else:
    raise BadRow("aliases", f"expected a JSON list of strings, got {value!r:.60}")
  return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def _other_ids(out: pathlib.Path, skip: pathlib.Path) -> dict[str, str]:
  """document_id -> 'file:line' over DIR's other documents files: ids are unique across a
  ZESHEL directory, so a second KB reusing one would break every reader."""
  found: dict[str, str] = {}
  for path in sorted((out / "documents").glob("*.json")):
    if path == skip:
      continue
    for number, record in zeshel.json_records(path):
      if isinstance(record.get("document_id"), str):
        found.setdefault(record["document_id"], f"{path}:{number}")
  return found


def convert_kb(input_path: os.PathLike | str, fmt: str, world: str, out_dir: os.PathLike | str,
               skip_bad: bool = False) -> dict[str, Any]:
  """Converts a KB file into OUT/documents/<world>.json; returns the counts.

  Documents stream from the input into the temporary output (BLINK's catalogue holds 5.9M
  Wikipedia entities); only ids stay in memory, to find duplicates.
  """
  if fmt not in KB_FORMATS:
    raise ValueError(f"--format for kb is one of {KB_FORMATS}, got {fmt!r}")
  guards.plain_name(world, "--world")
  source, out = pathlib.Path(input_path), pathlib.Path(out_dir)
  target = out / "documents" / f"{world}.json"
  rejects = convert_io.Rejects(source, skip_bad)
  elsewhere = _other_ids(out, target)
  first_line: dict[str, int] = {}

  def documents() -> Iterator[dict[str, Any]]:
    rows = convert_io.csv_rows(source) if fmt == "csv" else convert_io.json_rows(source)
    for position, (line, raw, record) in enumerate(rows):
      try:
        if isinstance(record, BadRow):
          raise record
        document, id_field = _kb_document(record, fmt, position)
        document_id = document["document_id"]
        if document_id in first_line:
          raise BadRow(id_field, f"duplicate id {document_id!r} (first at line "
                       f"{first_line[document_id]})")
        if document_id in elsewhere:
          raise BadRow(id_field, f"id {document_id!r} is already a document of "
                       f"{elsewhere[document_id]}; ids are unique across a ZESHEL "
                       "directory (convert this KB into its own --out)")
      except BadRow as bad:
        rejects.add(line, bad, raw)
        continue
      first_line[document_id] = line
      yield document

  rejects_path = out / "rejects" / f"documents.{world}.jsonl"
  # The rejects file is written after the documents, when rejects.rows is complete.
  convert_io.write_files({target: documents(),
                          rejects_path: iter(rejects.rows) if skip_bad else None})
  return {"world": world, "documents": str(target), "written": len(first_line),
          "rejected": len(rejects.rows), "rejects": str(rejects_path) if skip_bad else None}


# -- mentions -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Span:
  """One mention before tokenizing: character offsets into the input's text."""
  text: str
  start: int
  end: int
  gold: str  # the document_id, resolved
  mention_id: str
  id_field: str  # where mention_id came from, for a duplicate's error
  title: str  # the context document's title


class _Kb:
  """The converted KB of one world, for resolving gold entities."""

  def __init__(self, path: pathlib.Path):
    self.ids: list[str] = []
    self.titles: dict[str, str] = {}
    self.by_title: dict[str, list[str]] = {}
    self.by_alias: dict[str, list[str]] = {}
    for _, record in zeshel.json_records(path):
      document_id, title = record.get("document_id"), record.get("title")
      self.ids.append(document_id)
      self.titles[document_id] = title
      self.by_title.setdefault(title, []).append(document_id)
      for alias in record.get("aliases") or ():
        self.by_alias.setdefault(alias, []).append(document_id)

  def by_index(self, value: Any, field: str) -> str:
    if isinstance(value, str) and value.strip().isdigit():
      value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
      raise BadRow(field, f"--gold=index needs a 0-based integer position, got {value!r:.60}")
    if not 0 <= value < len(self.ids):
      raise BadRow(field, f"unknown gold: position {value} outside the KB's {len(self.ids)} "
                   "entities")
    return self.ids[value]

  def by_id(self, value: Any, field: str) -> str:
    document_id = str(value).strip()
    if document_id not in self.titles:
      raise BadRow(field, f"unknown gold: no document {document_id!r} in the KB")
    return document_id

  def by_name(self, name: str, field: str) -> str:
    for table, what in ((self.by_title, "titled"), (self.by_alias, "with the alias")):
      found = table.get(name, [])
      if len(found) > 1:
        raise BadRow(field, f"ambiguous gold: {len(found)} documents {what} {name!r} "
                     f"({found[:5]})")
      if found:
        return found[0]
    raise BadRow(field, f"unknown gold: no document titled {name!r} (nor with that alias)")


def _blink_title(record: dict[str, Any]) -> tuple[str | None, str | None]:
  for name in ("label_title", "Wikipedia_title"):
    if isinstance(record.get(name), str):
      return record[name], name
  return None, None


def _blink_spans(record: dict[str, Any], kb: _Kb, gold: str, default_id: str
                 ) -> list[_Span]:
  """A BLINK row's mention: its text is the three pieces' words joined by single spaces."""
  pieces = [convert_io.field_of(record, name, str).split()
            for name in ("context_left", "mention", "context_right")]
  left, mention, right = pieces
  if not mention:
    raise BadRow("mention", "empty")
  title, title_field = _blink_title(record)
  if gold == "title":
    if title is None:
      raise BadRow("label_title", "missing: --gold=title reads label_title or "
                   "Wikipedia_title")
    document_id = kb.by_name(title, title_field)
  else:
    value = convert_io.field_of(record, "label_id", str, int)
    document_id = (kb.by_index(value, "label_id") if gold == "index"
                   else kb.by_id(value, "label_id"))
    if gold == "index" and title is not None and kb.titles[document_id] != title:
      raise BadRow("label_id", f"position {value} of the KB is {kb.titles[document_id]!r} "
                   f"but {title_field} is {title!r} (KB rows rejected before it, or a "
                   "label_id that is a page id: --gold=id)")
  start = len(" ".join(left)) + (1 if left else 0)
  end = start + len(" ".join(mention))
  id_field = next((n for n in ("query_id", "id") if record.get(n) is not None), None)
  mention_id = convert_io.identifier(record, id_field) if id_field else default_id
  return [_Span(" ".join(left + mention + right), start, end, document_id, mention_id,
                id_field or "id", "")]


def _jsonl_spans(record: dict[str, Any], kb: _Kb, gold: str, default_id: str
                 ) -> list[_Span]:
  """The mentions of one JSON line, one or a `mentions` list; a bad one fails the line, its
  error naming the mention's field ("mentions[2].end")."""
  text = convert_io.field_of(record, "text", str)
  title = record.get("title") if isinstance(record.get("title"), str) else ""
  if "mentions" in record:
    items = convert_io.field_of(record, "mentions", list)
    base = convert_io.identifier(record, "id") if record.get("id") is not None else default_id
    named = [(item, f"mentions[{k}].", f"{base}-{k}") for k, item in enumerate(items)]
  else:
    named = [(record, "", default_id)]
  spans = []
  for item, prefix, fallback in named:
    try:
      if not isinstance(item, dict):
        raise BadRow(None, f"expected a JSON object, got {type(item).__name__}")
      start, end = (convert_io.field_of(item, name, int) for name in ("start", "end"))
      if not 0 <= start < end <= len(text):
        raise BadRow("start" if not 0 <= start < len(text) else "end",
                     f"span [{start}, {end}) outside the text of {len(text)} characters")
      if not text[start:end].strip():
        raise BadRow("start", f"span [{start}, {end}) is only whitespace")
      if gold == "title":
        document_id = kb.by_name(convert_io.field_of(item, "entity_title", str),
                                 "entity_title")
      else:
        document_id = kb.by_id(convert_io.field_of(item, "entity_id", str, int), "entity_id")
      mention_id = convert_io.identifier(item, "id") if item.get("id") is not None else fallback
    except BadRow as bad:
      raise BadRow(prefix + bad.field if bad.field else (prefix.rstrip(".") or None),
                   bad.message) from None
    spans.append(_Span(text, start, end, document_id, mention_id, prefix + "id", title))
  return spans


def _hex_id(*parts: str) -> str:
  return hashlib.sha1("\x00".join(parts).encode("utf-8")).hexdigest()[:16].upper()


def _context(text: str, spans: Sequence[_Span]) -> tuple[str, dict[int, int]]:
  """The context text of `text` (single spaces, a space at each span boundary inside a word)
  and the token index at each boundary's character offset."""
  cuts = sorted({0, len(text), *(s.start for s in spans), *(s.end for s in spans)})
  tokens: list[str] = []
  at: dict[int, int] = {}
  for begin, finish in zip(cuts, cuts[1:]):
    at[begin] = len(tokens)
    tokens += text[begin:finish].split()
  at[len(text)] = len(tokens)
  return " ".join(tokens), at


def _zeshel_records(spans: Sequence[_Span], kb: _Kb, world: str, split: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(context documents, mention records in input order): one context document per distinct
  text, holding every mention of that text."""
  by_text: dict[str, list[int]] = {}
  for k, span in enumerate(spans):
    by_text.setdefault(span.text, []).append(k)
  contexts, records = [], [{} for _ in spans]
  for text, group in by_text.items():
    context, at = _context(text, [spans[k] for k in group])
    # Ids are unique across a directory: a hash of the text, under a prefix apart from KB ids.
    document_id = f"context:{split}:{_hex_id(world, split, text)}"
    contexts.append({"document_id": document_id, "title": spans[group[0]].title,
                     "text": context})
    tokens = context.split()
    for k in group:
      span = spans[k]
      first, last = at[span.start], at[span.end] - 1
      mention_text = " ".join(tokens[first:last + 1])
      records[k] = {"mention_id": span.mention_id, "context_document_id": document_id,
                    "label_document_id": span.gold, "start_index": first, "end_index": last,
                    "text": mention_text, "corpus": world,
                    "category": zeshel.category_of(mention_text, kb.titles[span.gold])}
  return contexts, records


def convert_mentions(input_path: os.PathLike | str, fmt: str, world: str, split: str,
                     out_dir: os.PathLike | str, gold: str | None = None,
                     skip_bad: bool = False) -> dict[str, Any]:
  """Converts mentions into OUT/mentions/<split>.json (this world's; other worlds' kept) and
  their texts into OUT/documents/<world>.<split>.contexts.json; returns the counts."""
  if fmt not in MENTION_FORMATS:
    raise ValueError(f"--format for mentions is one of {MENTION_FORMATS}, got {fmt!r}")
  guards.plain_name(world, "--world")
  guards.plain_name(split, "--split")
  gold = gold or ("index" if fmt == "blink" else "id")
  if gold not in GOLD_MODES or (fmt == "jsonl" and gold == "index"):
    raise ValueError(f"--gold for {fmt} mentions is one of "
                     f"{GOLD_MODES if fmt == 'blink' else ('id', 'title')}, got {gold!r}")
  source, out = pathlib.Path(input_path), pathlib.Path(out_dir)
  kb_path = out / "documents" / f"{world}.json"
  if not kb_path.is_file():
    raise FileNotFoundError(f"{kb_path}: no such KB world; convert the knowledge base first "
                            f"(python -m zel_jax.data.convert kb --world={world} --out={out})")
  kb = _Kb(kb_path)
  split_path = out / "mentions" / f"{split}.json"
  kept = ([r for _, r in zeshel.json_records(split_path) if r.get("corpus") != world]
          if split_path.is_file() else [])
  first_seen = {r.get("mention_id"): f"{split_path} (world {r.get('corpus')!r})"
                for r in kept}
  rejects = convert_io.Rejects(source, skip_bad)
  parse = _blink_spans if fmt == "blink" else _jsonl_spans
  spans: list[_Span] = []
  for line, raw, record in convert_io.json_rows(source):
    try:
      if isinstance(record, BadRow):
        raise record
      found = parse(record, kb, gold, f"{world}-{split}-{line}")
      here: dict[str, str] = {}
      for span in found:
        where = first_seen.get(span.mention_id) or here.get(span.mention_id)
        if where:
          raise BadRow(span.id_field, f"duplicate mention id {span.mention_id!r} (first at "
                       f"{where})")
        here[span.mention_id] = f"line {line}"
    except BadRow as bad:
      rejects.add(line, bad, raw)
      continue
    first_seen.update(here)
    spans += found
  contexts, records = _zeshel_records(spans, kb, world, split)
  contexts_path = out / "documents" / f"{world}.{split}.contexts.json"
  rejects_path = out / "rejects" / f"mentions.{world}.{split}.jsonl"
  convert_io.write_files({contexts_path: contexts, split_path: kept + records,
                          rejects_path: rejects.rows if skip_bad else None})
  return {"world": world, "split": split, "mentions": str(split_path),
          "contexts": str(contexts_path), "context_documents": len(contexts),
          "written": len(spans), "rejected": len(rejects.rows),
          "rejects": str(rejects_path) if skip_bad else None}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.convert",
      description="Convert a knowledge base or mentions into the ZESHEL layout.")
  commands = parser.add_subparsers(dest="command", required=True)
  for name, formats in (("kb", KB_FORMATS), ("mentions", MENTION_FORMATS)):
    command = commands.add_parser(name, help=f"convert a {name} file")
    command.add_argument("--input", required=True, help="the file to convert")
    command.add_argument("--format", required=True, choices=formats)
    command.add_argument("--world", required=True, help="the KB's world name")
    command.add_argument("--out", required=True, help="the ZESHEL-layout folder")
    command.add_argument("--skip-bad", "--skip_bad", dest="skip_bad", action="store_true",
                         help="write bad rows to OUT/rejects/ and go on")
    if name == "mentions":
      command.add_argument("--split", default="test", help="mentions/<split>.json")
      command.add_argument("--gold", choices=GOLD_MODES, default=None,
                           help="how the gold names its entity (default: index for blink, "
                           "id for jsonl)")
  args = parser.parse_args(argv)
  try:
    if args.command == "kb":
      counts = convert_kb(args.input, args.format, args.world, args.out, args.skip_bad)
    else:
      counts = convert_mentions(args.input, args.format, args.world, args.split, args.out,
                                args.gold, args.skip_bad)
  except (zeshel.ZeshelFormatError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(counts, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
