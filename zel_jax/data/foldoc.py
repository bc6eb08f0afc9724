"""One dictd database as one ZESHEL-layout world, split train/val/test by context document:
the quickstart's FOLDOC world (Debian's dict-foldoc, fetched and built by `fetch_foldoc`).

    python -m zel_jax.data.foldoc --dictd /usr/share/dictd --name foldoc --out data/foldoc

writes a ZESHEL world (see `build_world`): every entry a document, every `{cross-reference}`
inside an entry a mention labelled with the entry it names, counts on the last stdout line
and in OUT/stats.json. (The zero-shot benchmark builds its dictd worlds with
zel_jax/data/worlds/dictd_world.py.)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Iterable, Sequence

from absl import logging

from zel_jax.data import debian, dictd, zeshel


SPLITS = (("train", 80), ("val", 10), ("test", 10))


def split_of(document_id: str) -> str:
  """train/val/test (80/10/10) from a stable hash of the context document id."""
  bucket = int(hashlib.sha256(document_id.encode("utf-8")).hexdigest()[:8], 16) % 100
  for name, share in SPLITS:
    if bucket < share:
      return name
    bucket -= share
  raise AssertionError("split shares must sum to 100")


def _hex_id(*parts: str) -> str:
  # ZESHEL ids are 16 upper-case hex digits.
  return hashlib.sha1("\x00".join(parts).encode("utf-8")).hexdigest()[:16].upper()


def _render(header: Sequence[str], body: str, is_name: Callable[[str], bool]
            ) -> tuple[list[str], list[tuple[int, int, str]], collections.Counter]:
  """Tokens of an entry (headword lines, then body without reference braces) and its refs.

  Each piece between dictd.references is tokenized on its own, so a reference's words are always
  whole tokens even where punctuation touches the braces ("{interpreter}'s").
  """
  counts: collections.Counter = collections.Counter()
  tokens = zeshel.tokenize(" ".join(header))
  found = []
  position = 0
  for match, shown, target, external in dictd.references(body, is_name):
    tokens += zeshel.tokenize(body[position:match.start()])
    position = match.end()
    words = zeshel.tokenize(shown)
    counts["references"] += 1
    if external:
      counts["external_references"] += 1
    elif words:
      found.append((len(tokens), len(tokens) + len(words) - 1, target))
    tokens += words
  tokens += zeshel.tokenize(body[position:])
  return tokens, found, counts


def convert(database: dictd.DictdDatabase, world: str) -> tuple[list[zeshel.Entity],
                                                          dict[str, list[zeshel.Mention]],
                                                          dict[str, Any]]:
  """Entities, mentions per split and counts for a dictd database read as one world."""
  documents: list[dictd._Document] = []
  titles: list[str] = []  # as written, for display and output
  bodies: list[tuple[list[str], str]] = []
  used_ids: set[str] = set()
  for entry in database.entries():
    header, body = dictd.split_header(entry.text)
    title = header[0] if header else entry.headwords[0]
    document_id, k = _hex_id(world, title), 1
    while document_id in used_ids:  # the same title filed twice stays two documents
      k += 1
      document_id = _hex_id(world, title, str(k))
    used_ids.add(document_id)
    names = tuple(dict.fromkeys([title, *header, *entry.headwords]))
    # The resolver's tie-break and the mention categories read the tokenized title, as the
    # world's texts are tokenized ("round - robin"); the entity keeps the title as written.
    documents.append(dictd._Document(document_id, " ".join(zeshel.tokenize(title)), names, "", []))
    titles.append(title)
    bodies.append((header, body))
  resolver = dictd.NameResolver(documents)

  counts: collections.Counter = collections.Counter()
  for document, (header, body) in zip(documents, bodies):
    tokens, document.references, ref_counts = _render(header, body, resolver.is_name)
    document.text = " ".join(tokens)
    counts.update(ref_counts)

  mentions: dict[str, list[zeshel.Mention]] = {name: [] for name, _ in SPLITS}
  unresolved: collections.Counter = collections.Counter()
  resolved_by: collections.Counter = collections.Counter()
  categories: collections.Counter = collections.Counter()
  context_documents: collections.Counter = collections.Counter()
  for i, document in enumerate(documents):
    split = split_of(document.document_id)
    tokens = document.text.split(" ")
    has_mention = False
    for start, end, target in document.references:
      found = resolver.resolve(target)
      if found is None:
        unresolved[target] += 1
        continue
      label, how, ambiguous = found
      if label == i:
        # A link from an entry to itself teaches nothing: the context is the description.
        counts["self_references_dropped"] += 1
        continue
      counts["ambiguous_resolved"] += ambiguous
      resolved_by[how] += 1
      shown = " ".join(tokens[start:end + 1])
      category = zeshel.category_of(shown, documents[label].title)
      categories[category] += 1
      mentions[split].append(zeshel.Mention(
          mention_id=_hex_id(world, document.document_id, str(start), str(end)),
          context_document_id=document.document_id,
          label_document_id=documents[label].document_id,
          start_index=start, end_index=end, text=shown, corpus=world, category=category))
      has_mention = True
    context_documents[split] += has_mention

  entities = [zeshel.Entity(d.document_id, title, d.text, world)
              for d, title in zip(documents, titles)]
  total = sum(len(v) for v in mentions.values())
  stats = {
      "world": world,
      "source": str(database.dict_path),
      "entities": len(entities),
      "mentions": {name: len(mentions[name]) for name, _ in SPLITS},
      "mentions_total": total,
      "context_documents": {name: context_documents[name] for name, _ in SPLITS},
      "references": counts["references"],
      "external_references": counts["external_references"],
      "unresolved_dropped": sum(unresolved.values()),
      "self_references_dropped": counts["self_references_dropped"],
      "ambiguous_resolved": counts["ambiguous_resolved"],
      "resolved_by": {how: resolved_by[how] for how in ("exact", "case", "plural",
                                                        "whitespace")},
      "categories": {c: categories[c] for c in zeshel.CATEGORIES},
      "category_share": {c: round(categories[c] / total, 4) if total else 0.0
                         for c in zeshel.CATEGORIES},
      "top_unresolved": [[target, n] for target, n in unresolved.most_common(20)],
  }
  return entities, mentions, stats


def _json_line(record: dict[str, Any]) -> str:
  return json.dumps(record, ensure_ascii=False) + "\n"


def write_world(out_dir: os.PathLike | str, world: str, entities: Iterable[zeshel.Entity],
                mentions: dict[str, list[zeshel.Mention]], stats: dict[str, Any]) -> None:
  """Writes the world's files: every file goes to a temporary name first, and only when all
  are complete are they renamed into place, so a failure leaves earlier outputs intact."""
  out = pathlib.Path(out_dir)
  contents: dict[pathlib.Path, Iterable[str]] = {
      out / "documents" / f"{world}.json": (
          _json_line({"document_id": e.document_id, "title": e.title, "text": e.text})
          for e in entities),
  }
  for split, records in mentions.items():
    contents[out / "mentions" / f"{split}.json"] = (
        _json_line(dataclasses.asdict(m)) for m in records)
  contents[out / "stats.json"] = [json.dumps(stats, indent=2, ensure_ascii=False) + "\n"]
  written: list[tuple[pathlib.Path, pathlib.Path]] = []
  try:
    for path, lines in contents.items():
      path.parent.mkdir(parents=True, exist_ok=True)
      temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
      written.append((temporary, path))
      with open(temporary, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    for temporary, path in written:
      os.replace(temporary, path)
  finally:
    for temporary, _ in written:
      temporary.unlink(missing_ok=True)


def build_world(dictd_dir: os.PathLike | str, name: str, out_dir: os.PathLike | str,
                world: str | None = None) -> dict[str, Any]:
  """Reads DIR/NAME.index + NAME.dict(.dz) and writes OUT in ZESHEL layout; returns counts."""
  world = world or name
  with dictd.DictdDatabase.open(dictd_dir, name) as database:
    entities, mentions, stats = convert(database, world)
  write_world(out_dir, world, entities, mentions, stats)
  return stats


def fetch_foldoc(out_dir: str) -> str:
  """Builds the FOLDOC world from Debian's dict-foldoc package unless `out_dir` has it."""
  if os.path.exists(os.path.join(out_dir, "stats.json")):
    return out_dir
  with tempfile.TemporaryDirectory() as tmp:
    unpacked = os.path.join(tmp, "root")
    debian.extract_deb(debian.download_deb("dict-foldoc", tmp), unpacked)
    stats = build_world(os.path.join(unpacked, "usr", "share", "dictd"), "foldoc", out_dir)
  logging.info("FOLDOC world: %s", stats)
  return out_dir


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.foldoc",
      description="Build a ZESHEL-layout world from a dictd database (e.g. FOLDOC).")
  parser.add_argument("--dictd", required=True, help="folder with NAME.index, NAME.dict.dz")
  parser.add_argument("--name", required=True, help="database name, e.g. foldoc")
  parser.add_argument("--out", required=True, help="output folder (ZESHEL layout)")
  parser.add_argument("--world", default=None, help="world name (default: --name)")
  args = parser.parse_args(argv)
  stats = build_world(args.dictd, args.name, args.out, args.world)
  print(json.dumps(stats, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
