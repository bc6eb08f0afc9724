"""Cross-language entity linking data: mentions in several languages, one English KB.

Layout of a cross-language data directory (what the xel trainer reads):

  kb.jsonl                          {"id", "name", "description", "types": [...]}
  mentions/<lang>/<split>.jsonl     {"id", "language", "context", "start", "end", "label",
                                     "type"}: the mention is context[start:end] (characters),
                                     label is a kb id or "NIL", type the mention's type or ""
  pairs/<lang>.jsonl                {"source", "english"}: translated names, for the
                                     auxiliary name-matching loss (training material only)
  candidates/<lang>/<split>.jsonl   optional given candidate lists {"id", "candidates": [kb
                                     ids, best first], "scores": [...]}
  stats.json

No public cross-language linking corpus reaches these machines, so `build` makes the closest
real thing from Debian's dictd packages: the English KB is WordNet (`dict-wn`: one entity per
headword, its glosses as the description, its parts of speech as types) and the mentions are
the headwords of FreeDict's `dict-freedict-<lang>-eng` dictionaries. A headword's gold entity
is the WordNet entry its English translations name; it is NIL when they name none, and
headwords whose translations name two or more different entries are left out (one gold per
mention, as the paper's metrics assume). The context of a one-word headword is the shortest
multi-word headword of the same dictionary that contains it (real text of that language),
else the headword alone. The TAC-KBP 2015 and Wikipedia layouts of the reference code are
read by `read_tac_kbp` and `read_wiki_pickle`.

  python -m zel_jax.data.crosslang --freedict /tmp/fd/usr/share/dictd \\
      --wordnet /tmp/wn/usr/share/dictd --languages de,es,fr,it,nl,pt --out data/xel
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import re
import sys
from typing import Any, Iterable, Sequence

from zel_jax.data import dictd
from zel_jax.data import zeshel

NIL = "NIL"
SPLITS = ("train", "dev", "test")
# ISO 639-1 -> the ISO 639-3 code in FreeDict's package names.
FREEDICT_CODES = {"de": "deu", "es": "spa", "fr": "fra", "it": "ita", "nl": "nld", "pt": "por",
                  "da": "dan", "sv": "swe", "cs": "ces", "hu": "hun", "tr": "tur"}


# Bad input: the message names the file, line and field.
CrossLangFormatError = zeshel.ZeshelFormatError


@dataclasses.dataclass(frozen=True)
class KbEntity:
  id: str
  name: str
  description: str
  types: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class XelMention:
  id: str
  language: str
  context: str
  start: int
  end: int
  label: str          # a kb id or NIL
  type: str = ""

  @property
  def text(self) -> str:
    return self.context[self.start:self.end]


# ------------------------------------------------------------------------------------------
# Reading and writing the layout.


_error = zeshel.format_error
_records = zeshel.json_records


def _get(record, name, kind, path, number):
  if name not in record:
    raise _error(path, number, name, "missing")
  value = record[name]
  if kind is int and isinstance(value, bool) or not isinstance(value, kind):
    raise _error(path, number, name, f"expected {kind.__name__}, got {type(value).__name__}")
  return value


def read_kb(path: os.PathLike | str) -> list[KbEntity]:
  entities, seen = [], {}
  for number, r in _records(path):
    entity = KbEntity(_get(r, "id", str, path, number), _get(r, "name", str, path, number),
                      _get(r, "description", str, path, number),
                      tuple(_get(r, "types", list, path, number)))
    if entity.id == NIL:
      raise _error(path, number, "id", f"{NIL!r} is reserved for unlinkable mentions")
    if entity.id in seen:
      raise _error(path, number, "id", f"{entity.id!r} already on line {seen[entity.id]}")
    seen[entity.id] = number
    entities.append(entity)
  return entities


def read_mentions(path: os.PathLike | str, kb_ids: set[str] | None = None) -> list[XelMention]:
  """Mentions of one file; with kb_ids, a label outside the KB is an error."""
  mentions = []
  for number, r in _records(path):
    m = XelMention(_get(r, "id", str, path, number), _get(r, "language", str, path, number),
                   _get(r, "context", str, path, number), _get(r, "start", int, path, number),
                   _get(r, "end", int, path, number), _get(r, "label", str, path, number),
                   r.get("type", "") or "")
    if not 0 <= m.start < m.end <= len(m.context):
      raise _error(path, number, "end", f"span [{m.start}, {m.end}) is not inside the "
                   f"{len(m.context)}-character context")
    if kb_ids is not None and m.label != NIL and m.label not in kb_ids:
      raise _error(path, number, "label", f"{m.label!r} is not in the KB")
    mentions.append(m)
  return mentions


def read_pairs(path: os.PathLike | str) -> list[tuple[str, str]]:
  return [(_get(r, "source", str, path, n), _get(r, "english", str, path, n))
          for n, r in _records(path)]


def read_candidates(path: os.PathLike | str) -> dict[str, tuple[list[str], list[float]]]:
  """mention id -> (kb ids best first, scores)."""
  out = {}
  for number, r in _records(path):
    ids = _get(r, "candidates", list, path, number)
    scores = r.get("scores", [0.0] * len(ids))
    if len(scores) != len(ids):
      raise _error(path, number, "scores", f"{len(scores)} scores for {len(ids)} candidates")
    out[_get(r, "id", str, path, number)] = ([str(i) for i in ids], [float(s) for s in scores])
  return out


def mentions_path(root, language: str, split: str) -> pathlib.Path:
  return pathlib.Path(root) / "mentions" / language / f"{split}.jsonl"


def candidates_path(root, language: str, split: str) -> pathlib.Path:
  return pathlib.Path(root) / "candidates" / language / f"{split}.jsonl"


def languages_in(root) -> list[str]:
  base = pathlib.Path(root) / "mentions"
  if not base.is_dir():
    raise FileNotFoundError(f"{base}: no mentions folder; is {root} a cross-language data "
                            "directory (python -m zel_jax.data.crosslang builds one)?")
  return sorted(p.name for p in base.iterdir() if p.is_dir())


write_jsonl = zeshel.write_json_lines


def write_dataset(root, kb: Sequence[KbEntity], mentions: dict[tuple[str, str], list[XelMention]],
                  pairs: dict[str, list[tuple[str, str]]], stats: dict[str, Any]) -> None:
  root = pathlib.Path(root)
  write_jsonl(root / "kb.jsonl", (dict(dataclasses.asdict(e), types=list(e.types)) for e in kb))
  for (language, split), records in mentions.items():
    write_jsonl(mentions_path(root, language, split), (dataclasses.asdict(m) for m in records))
  for language, items in pairs.items():
    write_jsonl(root / "pairs" / f"{language}.jsonl",
                ({"source": s, "english": e} for s, e in items))
  tmp = root / f".stats.json.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, root / "stats.json")


# ------------------------------------------------------------------------------------------
# FreeDict + WordNet -> the layout.

_WN_POS = re.compile(r"^\s*(n|v|adj|adv)\s+(?:\d+:|:)", re.M)
_SENSE_MARK = re.compile(r"(?:^|\s)(?:(?:n|v|adj|adv)\s+)?\d*:(?=\s)")
_BRACKETS = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)|\{|\}")
_SENSE_NUMBER = re.compile(r"^\s*\d+\.\s*")
_STOP_LINE = re.compile(r"^\s*(Synonyms?|see|Note|Antonyms?|Usage|Example)\s*:", re.I)
_POS_TAG = re.compile(r"<([^>]*)>")
_COARSE_POS = {"n": "n", "pl": "n", "sg": "n", "masc": "n", "fem": "n", "neut": "n",
               "v": "v", "vt": "v", "vi": "v", "vr": "v", "adj": "adj", "adv": "adv",
               "prep": "prep", "pron": "pron", "conj": "conj", "num": "num", "art": "art",
               "interj": "interj", "abbr": "abbr"}


def _stable_fraction(*parts: str) -> float:
  digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
  return int(digest[:12], 16) / float(16 ** 12)


def entity_id(name_key: str) -> str:
  return "wn:" + hashlib.sha1(name_key.encode("utf-8")).hexdigest()[:12]


def wordnet_kb(database: dictd.DictdDatabase) -> dict[str, KbEntity]:
  """One entity per case-folded WordNet headword: glosses joined, parts of speech as types."""
  texts: dict[str, list[str]] = collections.defaultdict(list)
  names: dict[str, str] = {}
  for entry in database.entries():
    header, body = dictd.split_header(entry.text)
    for headword in entry.headwords:
      if dictd.is_metadata(headword):
        continue
      key = dictd.lookup_key(headword)
      # The header line keeps the word's case ("Bovidae"); the index is case-folded.
      cased = next((h for h in header if dictd.lookup_key(h) == key), headword)
      names.setdefault(key, cased)
      texts[key].append(body)
  kb = {}
  for key, bodies in texts.items():
    body = "\n".join(bodies)
    types = tuple(sorted(set(_WN_POS.findall(body))))
    glosses = _SENSE_MARK.sub(" ", _BRACKETS.sub("", re.sub(r"\[syn:[^\]]*\]", "", body)))
    description = " ".join(glosses.split())
    kb[key] = KbEntity(entity_id(key), names[key], description, types)
  return kb


def freedict_translations(text: str) -> list[str]:
  """The English translations of a FreeDict entry: the lines after the headword line up to
  the first blank, synonym, note or cross-reference line; labels, tags and sense numbers
  removed."""
  out = []
  for line in text.split("\n")[1:]:
    if not line.strip() or _STOP_LINE.match(line):
      break
    line = _SENSE_NUMBER.sub("", _BRACKETS.sub("", line))
    for part in re.split(r"[,;]|\s\d+\.\s", line):
      part = " ".join(_SENSE_NUMBER.sub("", part).split())
      if part:
        out.append(part)
  return out


def freedict_headword(text: str, fallback: str) -> str:
  """The headword as the entry's first line writes it (the index is case-folded): the line
  up to its /pronunciation/ or <tags>."""
  first = re.split(r"\s/|\s<", text.split("\n", 1)[0], maxsplit=1)[0]
  first = " ".join(first.split())
  return first if dictd.lookup_key(first) == dictd.lookup_key(fallback) else fallback


def freedict_pos(text: str) -> str:
  """Coarse part of speech of the headword line's <...> tag ("" when it has none)."""
  first = text.split("\n", 1)[0]
  tag = _POS_TAG.search(first)
  if not tag:
    return ""
  # Gender and number tags mark nouns; any other known tag wins over them.
  coarse = [_COARSE_POS[p] for p in tag.group(1).replace(",", " ").split() if p in _COARSE_POS]
  return next((c for c in coarse if c != "n"), "n" if coarse else "")


class _KbMatcher:
  """English strings -> WordNet keys: exact (case-folded), else "to X" -> X, else the key
  with spaces and hyphens squashed when exactly one key squashes to it (FreeDict writes some
  multi-word translations without their spaces: "naturalgas")."""

  def __init__(self, keys: Iterable[str]):
    self.keys = set(keys)
    squashed = collections.defaultdict(set)
    for k in self.keys:
      squashed[re.sub(r"[\s\-]", "", k)].add(k)
    self.squashed = {s: next(iter(ks)) for s, ks in squashed.items() if len(ks) == 1}

  def __call__(self, english: str) -> str | None:
    key = dictd.lookup_key(english)
    if key in self.keys:
      return key
    if key.startswith("to ") and key[3:] in self.keys:
      return key[3:]
    return self.squashed.get(re.sub(r"[\s\-]", "", key))


def _context_index(headwords: Iterable[str]) -> dict[str, list[str]]:
  """word (case-folded) -> the multi-word headwords (3 words or more) it occurs in."""
  index = collections.defaultdict(list)
  for h in headwords:
    words = h.split()
    if len(words) >= 3:
      for w in set(words):
        index[w.casefold()].append(h)
  return index


def _context_for(headword: str, index: dict[str, list[str]]) -> tuple[str, int, int]:
  if " " not in headword:
    phrases = [p for p in index.get(headword.casefold(), ()) if p != headword]
    if phrases:
      phrase = min(phrases, key=lambda p: (len(p), p))
      for match in re.finditer(r"\S+", phrase):
        if match.group().casefold() == headword.casefold():
          return phrase, match.start(), match.end()
  return headword, 0, len(headword)


def build(freedict_dir: str, wordnet_dir: str, languages: Sequence[str], out_dir: str, *,
          max_mentions: int = 4000, nil_share: float = 0.2, kb_size: int = 12000,
          max_pairs: int = 20000, split_shares: tuple[float, float] = (0.7, 0.1),
          seed: str = "0") -> dict[str, Any]:
  """Writes the cross-language data directory described in the module doc; returns stats.

  Per language at most max_mentions headwords are drawn (by a stable hash), NIL ones up to
  nil_share of them, and split train/dev/test by split_shares (the rest is test). The KB
  holds every gold entity plus WordNet entries named by other FreeDict translations, up to
  kb_size. Name pairs come from entries outside the dev and test mentions.
  """
  with dictd.DictdDatabase.open(wordnet_dir, "wn") as wn:
    wordnet = wordnet_kb(wn)
  match = _KbMatcher(wordnet)
  mentions: dict[tuple[str, str], list[XelMention]] = {}
  pairs: dict[str, list[tuple[str, str]]] = {}
  golds: set[str] = set()
  named: set[str] = set()
  stats: dict[str, Any] = {"languages": {}}
  for language in languages:
    code = FREEDICT_CODES.get(language)
    if code is None:
      raise ValueError(f"no FreeDict code known for language {language!r} "
                       f"(known: {sorted(FREEDICT_CODES)})")
    linked, nil, ambiguous = [], [], 0
    with dictd.DictdDatabase.open(freedict_dir, f"freedict-{code}-eng") as db:
      entries = [e for e in db.entries() if not dictd.is_metadata(e.headwords[0])]
    index = _context_index(freedict_headword(e.text, e.headwords[0]) for e in entries)
    candidates_pairs = []
    for entry in entries:
      headword = freedict_headword(entry.text, " ".join(entry.headwords[0].split()))
      if not headword:
        continue
      keys = {k for k in map(match, freedict_translations(entry.text)) if k}
      named |= keys
      if len(keys) > 1:
        ambiguous += 1
        continue
      (linked if keys else nil).append((headword, next(iter(keys)) if keys else None,
                                        freedict_pos(entry.text)))
      if keys and " " not in headword:
        candidates_pairs.append((headword, wordnet[next(iter(keys))].name))
    linked.sort(key=lambda r: _stable_fraction(seed, language, r[0]))
    nil.sort(key=lambda r: _stable_fraction(seed, language, r[0]))
    n_nil = min(len(nil), int(round(max_mentions * nil_share)))
    chosen = linked[:max_mentions - n_nil] + nil[:n_nil]
    by_split: dict[str, list[XelMention]] = {s: [] for s in SPLITS}
    held_out = set()
    for number, (headword, key, pos) in enumerate(chosen):
      u = _stable_fraction(seed, "split", language, headword)
      split = ("train" if u < split_shares[0] else
               "dev" if u < split_shares[0] + split_shares[1] else "test")
      context, start, end = _context_for(headword, index)
      label = wordnet[key].id if key else NIL
      if key:
        golds.add(key)
      if split != "train":
        held_out.add(headword)
      by_split[split].append(XelMention(f"{language}-{number}", language, context, start, end,
                                        label, pos))
    for split, records in by_split.items():
      mentions[(language, split)] = records
    pair_rows = [p for p in candidates_pairs if p[0] not in held_out]
    pair_rows.sort(key=lambda p: _stable_fraction(seed, "pair", language, p[0]))
    pairs[language] = pair_rows[:max_pairs]
    stats["languages"][language] = {
        "entries": len(entries), "linked": len(linked), "nil": len(nil),
        "ambiguous_skipped": ambiguous,
        **{split: len(r) for split, r in by_split.items()},
        "nil_in_selection": n_nil, "pairs": len(pairs[language])}
  distractors = sorted(named - golds, key=lambda k: _stable_fraction(seed, "kb", k))
  keys = sorted(golds) + distractors[:max(0, kb_size - len(golds))]
  kb = [wordnet[k] for k in keys]
  stats.update(kb=len(kb), gold_entities=len(golds), wordnet_entries=len(wordnet))
  write_dataset(out_dir, kb, mentions, pairs, stats)
  return stats


# ------------------------------------------------------------------------------------------
# The reference code's layouts.


def read_wiki_pickle(path: os.PathLike | str, language: str
                     ) -> tuple[list[KbEntity], list[XelMention]]:
  """The Wikipedia-derived set of the reference code (`wiki_<lang>.pkl`): a dict with
  `en_pages` (English title -> {"_id", "title", "article", "categories"}), `mentions[lang]`
  and `nil_mentions[lang]` (doc title -> {(sent_id, link_id): {"sent": {"start", "title"},
  "link": {"start", "end", "id_ll", "title_ll"}}}) and `l2_pages[lang]` (doc title ->
  {"article"}). A mention is article[sent.start + link.start : sent.start + link.end]; its
  context here is the whole sentence-bearing article window around it."""
  with open(path, "rb") as f:
    data = pickle.load(f)
  for field in ("en_pages", "mentions", "l2_pages"):
    if field not in data:
      raise CrossLangFormatError(f"{path}: field {field!r}: missing")
  kb = [KbEntity(str(p["_id"]), str(p["title"]), str(p.get("article", "")),
                 tuple(p.get("categories", ()) or ())) for p in data["en_pages"].values()]
  by_title = {p["title"]: str(p["_id"]) for p in data["en_pages"].values()}
  out = []
  groups = [("mentions", False), ("nil_mentions", True)]
  for field, is_nil in groups:
    for doc_title, links in (data.get(field, {}).get(language, {}) or {}).items():
      page = data["l2_pages"][language].get(doc_title)
      if page is None:
        raise CrossLangFormatError(f"{path}: field 'l2_pages': no page {doc_title!r} for "
                                   f"its mentions in {field!r}")
      article = page["article"]
      for (sent_id, link_id), m in links.items():
        start = int(m["sent"]["start"]) + int(m["link"]["start"])
        end = int(m["sent"]["start"]) + int(m["link"]["end"])
        if not 0 <= start < end <= len(article):
          raise CrossLangFormatError(f"{path}: field 'link': span [{start}, {end}) outside "
                                     f"the article {doc_title!r}")
        lo, hi = max(0, start - 300), min(len(article), end + 300)
        label = NIL if is_nil else by_title.get(m["link"].get("title_ll"),
                                                str(m["link"].get("id_ll", NIL)))
        out.append(XelMention(f"{sent_id}_{link_id}_{language}", language, article[lo:hi],
                              start - lo, end - lo, label))
  return kb, out


def read_tac_kbp(gold_tab: os.PathLike | str, source_dir: os.PathLike | str,
                 kb_ids: set[str] | None = None, window: int = 300) -> list[XelMention]:
  """TAC-KBP 2015 tri-lingual EDL gold (`tac_kbp_2015_tedl_*_gold_standard_entity_mentions
  .tab`, tab-separated, no header: system, query id, mention string, DOCID:start-end (end
  inclusive), KB id (m.xxx or NIL...), entity type, mention type, ...). Documents are
  DOCID* files under source_dir, read as UTF-8 without their first XML declaration line.
  The language is the DOCID prefix before '_' (SPA, CMN, ENG). The KB itself (Freebase) is
  the user's: give it as kb.jsonl; with kb_ids, links outside it become NIL as in the
  reference code."""
  source = pathlib.Path(source_dir)
  docs: dict[str, str] = {}
  out = []
  with open(gold_tab, encoding="utf-8") as f:
    for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
      if not row:
        continue
      if len(row) < 6:
        raise CrossLangFormatError(f"{gold_tab}:{number}: expected at least 6 tab-separated "
                                   f"fields, got {len(row)}")
      query_id, mention, where, link, etype = row[1], row[2], row[3], row[4], row[5]
      match = re.fullmatch(r"(.+):(\d+)-(\d+)", where)
      if not match:
        raise _error(gold_tab, number, "doc_id_offsets", f"{where!r} is not DOCID:start-end")
      doc_id, start, end = match.group(1), int(match.group(2)), int(match.group(3)) + 1
      if doc_id not in docs:
        hits = sorted(source.rglob(f"{doc_id}*"))
        if not hits:
          raise _error(gold_tab, number, "doc_id_offsets", f"no document {doc_id}* under "
                       f"{source}")
        text = hits[0].read_text(encoding="utf-8")
        if text.startswith("<?xml"):
          text = text.split("\n", 1)[1] if "\n" in text else ""
        docs[doc_id] = text
      text = docs[doc_id]
      if text[start:end] != mention:
        raise _error(gold_tab, number, "mention_string", f"{mention!r} is not the text at "
                     f"{doc_id}:{start}-{end - 1} ({text[start:end]!r})")
      label = NIL if link.startswith("NIL") else link
      if kb_ids is not None and label not in kb_ids:
        label = NIL
      lo, hi = max(0, start - window), min(len(text), end + window)
      out.append(XelMention(query_id, doc_id.split("_", 1)[0].lower(), text[lo:hi],
                            start - lo, end - lo, label, etype))
  return out


def split_by_id(mentions: Sequence[XelMention], shares: tuple[float, float] = (0.7, 0.1),
                seed: str = "0") -> dict[str, list[XelMention]]:
  """train/dev/test by a stable hash of each mention id (the rest of the shares is test)."""
  out: dict[str, list[XelMention]] = {s: [] for s in SPLITS}
  for m in mentions:
    u = _stable_fraction(seed, "split", m.id)
    out["train" if u < shares[0] else "dev" if u < shares[0] + shares[1] else "test"].append(m)
  return out


def convert_reference(out_dir: str, kb: Sequence[KbEntity], mentions: Sequence[XelMention]
                      ) -> dict[str, Any]:
  """Writes mentions read from a reference layout (and their KB) into this layout."""
  by_language: dict[tuple[str, str], list[XelMention]] = {}
  for language in sorted({m.language for m in mentions}):
    for split, records in split_by_id([m for m in mentions if m.language == language]).items():
      by_language[(language, split)] = records
  stats = {"kb": len(kb), "mentions": {f"{l}/{s}": len(r) for (l, s), r in by_language.items()}}
  write_dataset(out_dir, kb, by_language, {}, stats)
  return stats


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.crosslang",
      description="Build a cross-language linking set from FreeDict and WordNet (dictd), or "
                  "convert the reference code's Wikipedia pickle or TAC-KBP 2015 files.")
  parser.add_argument("--freedict", help="folder with freedict-<xxx>-eng.index/.dict.dz")
  parser.add_argument("--wordnet", help="folder with wn.index, wn.dict.dz")
  parser.add_argument("--wiki_pickle", help="the reference code's wiki_<lang>.pkl")
  parser.add_argument("--tac_gold", help="tac_kbp_2015_tedl_*_gold_standard_entity_mentions.tab")
  parser.add_argument("--tac_source", help="folder holding the TAC documents (DOCID*)")
  parser.add_argument("--kb", help="--tac_gold: the KB (Freebase) as kb.jsonl")
  parser.add_argument("--languages", default="de,es,fr,it,nl,pt")
  parser.add_argument("--out", required=True)
  parser.add_argument("--max_mentions", type=int, default=4000)
  parser.add_argument("--nil_share", type=float, default=0.2)
  parser.add_argument("--kb_size", type=int, default=12000)
  parser.add_argument("--max_pairs", type=int, default=20000)
  args = parser.parse_args(argv)
  if args.wiki_pickle:
    language = args.languages.split(",")[0]
    stats = convert_reference(args.out, *read_wiki_pickle(args.wiki_pickle, language))
  elif args.tac_gold:
    if not (args.tac_source and args.kb):
      parser.error("--tac_gold needs --tac_source and --kb")
    kb = read_kb(args.kb)
    stats = convert_reference(args.out, kb, read_tac_kbp(args.tac_gold, args.tac_source,
                                                         {e.id for e in kb}))
  elif args.freedict and args.wordnet:
    stats = build(args.freedict, args.wordnet, args.languages.split(","), args.out,
                  max_mentions=args.max_mentions, nil_share=args.nil_share,
                  kb_size=args.kb_size, max_pairs=args.max_pairs)
  else:
    parser.error("give --freedict and --wordnet, --wiki_pickle, or --tac_gold")
  print(json.dumps(stats, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
