"""The reference code's layouts read into the cross-language layout: its Wikipedia pickles
and TAC-KBP 2015 gold files, split by mention id."""

from __future__ import annotations

import csv
import glob
import os
import pathlib
import pickle
import re
from typing import Any, Sequence

from zel_jax.data import crosslang, guards


class UntrustedPickleError(ValueError):
  """A pickle given without trust_pickle: loading one runs code it names."""


def read_wiki_pickle(path: os.PathLike | str, language: str, trust_pickle: bool = False
                     ) -> tuple[list[crosslang.KbEntity], list[crosslang.XelMention]]:
  """The Wikipedia-derived set of the reference code (`wiki_<lang>.pkl`): a dict with
  `en_pages` (English title -> {"_id", "title", "article", "categories"}), `mentions[lang]`
  and `nil_mentions[lang]` (doc title -> {(sent_id, link_id): {"sent": {"start", "title"},
  "link": {"start", "end", "id_ll", "title_ll"}}}) and `l2_pages[lang]` (doc title ->
  {"article"}). A mention is article[sent.start + link.start : sent.start + link.end]; its
  context here is the whole sentence-bearing article window around it.

  Unpickling executes whatever code the file names (any function, with any arguments), so
  the file is read only with trust_pickle=True (--trust_pickle): a pickle you made or whose
  source you trust as you would a program's."""
  if not trust_pickle:
    raise UntrustedPickleError(
        f"{path}: not read: loading a pickle executes code from the file. Give "
        "--trust_pickle (trust_pickle=True) only for a file you trust as a program")
  guards.plain_name(language, "language")
  with open(path, "rb") as f:
    data = pickle.load(f)
  for field in ("en_pages", "mentions", "l2_pages"):
    if field not in data:
      raise crosslang.CrossLangFormatError(f"{path}: field {field!r}: missing")
  kb = [crosslang.KbEntity(str(p["_id"]), str(p["title"]), str(p.get("article", "")),
                 tuple(p.get("categories", ()) or ())) for p in data["en_pages"].values()]
  by_title = {p["title"]: str(p["_id"]) for p in data["en_pages"].values()}
  out = []
  groups = [("mentions", False), ("nil_mentions", True)]
  for field, is_nil in groups:
    for doc_title, links in (data.get(field, {}).get(language, {}) or {}).items():
      page = data["l2_pages"][language].get(doc_title)
      if page is None:
        raise crosslang.CrossLangFormatError(f"{path}: field 'l2_pages': no page {doc_title!r} for "
                                   f"its mentions in {field!r}")
      article = page["article"]
      for (sent_id, link_id), m in links.items():
        start = int(m["sent"]["start"]) + int(m["link"]["start"])
        end = int(m["sent"]["start"]) + int(m["link"]["end"])
        if not 0 <= start < end <= len(article):
          raise crosslang.CrossLangFormatError(
              f"{path}: field 'link': span [{start}, {end}) outside the article {doc_title!r}")
        lo, hi = max(0, start - 300), min(len(article), end + 300)
        label = crosslang.NIL if is_nil else by_title.get(m["link"].get("title_ll"),
                                                str(m["link"].get("id_ll", crosslang.NIL)))
        out.append(crosslang.XelMention(f"{sent_id}_{link_id}_{language}", language, article[lo:hi],
                              start - lo, end - lo, label))
  return kb, out


def read_tac_kbp(gold_tab: os.PathLike | str, source_dir: os.PathLike | str,
                 kb_ids: set[str] | None = None, window: int = 300) -> list[crosslang.XelMention]:
  """TAC-KBP 2015 tri-lingual EDL gold (`tac_kbp_2015_tedl_*_gold_standard_entity_mentions
  .tab`, tab-separated, no header: system, query id, mention string, DOCID:start-end (end
  inclusive), KB id (m.xxx or crosslang.NIL...), entity type, mention type, ...). Documents are
  DOCID* files under source_dir, read as UTF-8 without their first XML declaration line.
  The language is the DOCID prefix before '_' (SPA, CMN, ENG). The KB itself (Freebase) is
  the user's: give it as kb.jsonl; with kb_ids, links outside it become crosslang.NIL as in the
  reference code. A DOCID names a file and the language folder written: it must be a plain
  name, and the file found for it must lie under source_dir (links followed), else the row
  is an error naming its line."""
  source = pathlib.Path(source_dir)
  docs: dict[str, str] = {}
  out = []
  with open(gold_tab, encoding="utf-8") as f:
    for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
      if not row:
        continue
      if len(row) < 6:
        raise crosslang.CrossLangFormatError(
            f"{gold_tab}:{number}: expected at least 6 tab-separated fields, got {len(row)}")
      query_id, mention, where, link, etype = row[1], row[2], row[3], row[4], row[5]
      match = re.fullmatch(r"(.+):(\d+)-(\d+)", where)
      if not match:
        raise crosslang._error(gold_tab, number, "doc_id_offsets",
                               f"{where!r} is not DOCID:start-end")
      doc_id, start, end = match.group(1), int(match.group(2)), int(match.group(3)) + 1
      if doc_id not in docs:
        try:
          # Checked before the search: "../x" would look, and then write, outside.
          guards.plain_name(doc_id, "DOCID")
          guards.plain_name(doc_id.split("_", 1)[0].lower(), "language (DOCID prefix)")
          # The DOCID is text to match, not a pattern: "*" or "[" in it match literally.
          hits = sorted(source.rglob(glob.escape(doc_id) + "*"))
          if hits:
            guards.confined(source, hits[0].relative_to(source), what="document")
        except guards.UnsafeNameError as e:
          raise crosslang._error(gold_tab, number, "doc_id_offsets", str(e)) from None
        if not hits:
          raise crosslang._error(gold_tab, number, "doc_id_offsets",
                                 f"no document {doc_id}* under {source}")
        text = hits[0].read_text(encoding="utf-8")
        if text.startswith("<?xml"):
          text = text.split("\n", 1)[1] if "\n" in text else ""
        docs[doc_id] = text
      text = docs[doc_id]
      if text[start:end] != mention:
        raise crosslang._error(gold_tab, number, "mention_string",
                               f"{mention!r} is not the text at {doc_id}:{start}-{end - 1} "
                               f"({text[start:end]!r})")
      label = crosslang.NIL if link.startswith("NIL") else link
      if kb_ids is not None and label not in kb_ids:
        label = crosslang.NIL
      lo, hi = max(0, start - window), min(len(text), end + window)
      out.append(crosslang.XelMention(query_id, doc_id.split("_", 1)[0].lower(), text[lo:hi],
                            start - lo, end - lo, label, etype))
  return out


def split_by_id(mentions: Sequence[crosslang.XelMention], shares: tuple[float, float] = (0.7, 0.1),
                seed: str = "0") -> dict[str, list[crosslang.XelMention]]:
  """train/dev/test by a stable hash of each mention id (the rest of the shares is test)."""
  out: dict[str, list[crosslang.XelMention]] = {s: [] for s in crosslang.SPLITS}
  for m in mentions:
    u = crosslang.stable_fraction(seed, "split", m.id)
    out["train" if u < shares[0] else "dev" if u < shares[0] + shares[1] else "test"].append(m)
  return out


def convert_reference(out_dir: str, kb: Sequence[crosslang.KbEntity],
                      mentions: Sequence[crosslang.XelMention]) -> dict[str, Any]:
  """Writes mentions read from a reference layout (and their KB) into this layout."""
  by_language: dict[tuple[str, str], list[crosslang.XelMention]] = {}
  for language in sorted({m.language for m in mentions}):
    for split, records in split_by_id([m for m in mentions if m.language == language]).items():
      by_language[(language, split)] = records
  stats = {"kb": len(kb), "mentions": {f"{l}/{s}": len(r) for (l, s), r in by_language.items()}}
  crosslang.write_dataset(out_dir, kb, by_language, {}, stats)
  return stats
