"""The closest real cross-language linking set reachable here: Debian's FreeDict headwords as
mentions in their languages, linked to an English KB made of WordNet (dict-wn) entries (the
layout and the construction: zel_jax/data/crosslang/__init__.py)."""

from __future__ import annotations

import collections
import hashlib
import re
from typing import Any, Iterable, Sequence

from zel_jax.data import crosslang, dictd


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




def entity_id(name_key: str) -> str:
  return "wn:" + hashlib.sha1(name_key.encode("utf-8")).hexdigest()[:12]


def wordnet_kb(database: dictd.DictdDatabase) -> dict[str, crosslang.KbEntity]:
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
    kb[key] = crosslang.KbEntity(entity_id(key), names[key], description, types)
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

  Per language at most max_mentions headwords are drawn (by a stable hash), crosslang.NIL ones up to
  nil_share of them, and split train/dev/test by split_shares (the rest is test). The KB
  holds every gold entity plus WordNet entries named by other FreeDict translations, up to
  kb_size. Name pairs come from entries outside the dev and test mentions.
  """
  with dictd.DictdDatabase.open(wordnet_dir, "wn") as wn:
    wordnet = wordnet_kb(wn)
  match = _KbMatcher(wordnet)
  mentions: dict[tuple[str, str], list[crosslang.XelMention]] = {}
  pairs: dict[str, list[tuple[str, str]]] = {}
  golds: set[str] = set()
  named: set[str] = set()
  stats: dict[str, Any] = {"languages": {}}
  for language in languages:
    code = crosslang.FREEDICT_CODES.get(language)
    if code is None:
      raise ValueError(f"no FreeDict code known for language {language!r} "
                       f"(known: {sorted(crosslang.FREEDICT_CODES)})")
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
    linked.sort(key=lambda r: crosslang.stable_fraction(seed, language, r[0]))
    nil.sort(key=lambda r: crosslang.stable_fraction(seed, language, r[0]))
    n_nil = min(len(nil), int(round(max_mentions * nil_share)))
    chosen = linked[:max_mentions - n_nil] + nil[:n_nil]
    by_split: dict[str, list[crosslang.XelMention]] = {s: [] for s in crosslang.SPLITS}
    held_out = set()
    for number, (headword, key, pos) in enumerate(chosen):
      u = crosslang.stable_fraction(seed, "split", language, headword)
      split = ("train" if u < split_shares[0] else
               "dev" if u < split_shares[0] + split_shares[1] else "test")
      context, start, end = _context_for(headword, index)
      label = wordnet[key].id if key else crosslang.NIL
      if key:
        golds.add(key)
      if split != "train":
        held_out.add(headword)
      by_split[split].append(crosslang.XelMention(f"{language}-{number}", language, context,
                                                  start, end, label, pos))
    for split, records in by_split.items():
      mentions[(language, split)] = records
    pair_rows = [p for p in candidates_pairs if p[0] not in held_out]
    pair_rows.sort(key=lambda p: crosslang.stable_fraction(seed, "pair", language, p[0]))
    pairs[language] = pair_rows[:max_pairs]
    stats["languages"][language] = {
        "entries": len(entries), "linked": len(linked), "nil": len(nil),
        "ambiguous_skipped": ambiguous,
        **{split: len(r) for split, r in by_split.items()},
        "nil_in_selection": n_nil, "pairs": len(pairs[language])}
  distractors = sorted(named - golds, key=lambda k: crosslang.stable_fraction(seed, "kb", k))
  keys = sorted(golds) + distractors[:max(0, kb_size - len(golds))]
  kb = [wordnet[k] for k in keys]
  stats.update(kb=len(kb), gold_entities=len(golds), wordnet_entries=len(wordnet))
  crosslang.write_dataset(out_dir, kb, mentions, pairs, stats)
  return stats
