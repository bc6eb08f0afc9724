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
read by reference.py (`read_tac_kbp`, `read_wiki_pickle`). This module is the layout; the
FreeDict + WordNet builder is freedict.py, the command line cli.py:

  python -m zel_jax.data.crosslang --freedict /tmp/fd/usr/share/dictd \\
      --wordnet /tmp/wn/usr/share/dictd --languages de,es,fr,it,nl,pt --out data/xel
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

from zel_jax.data import guards, zeshel

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
  return pathlib.Path(root) / "mentions" / _name(language, split) / f"{split}.jsonl"


def candidates_path(root, language: str, split: str) -> pathlib.Path:
  return pathlib.Path(root) / "candidates" / _name(language, split) / f"{split}.jsonl"


def _name(language: str, split: str = "train") -> str:
  """The language, checked with the split: both come from data (a TAC DOCID's prefix) and
  become folder and file names under the root."""
  guards.plain_name(split, "split")
  return guards.plain_name(language, "language")


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
    write_jsonl(root / "pairs" / f"{_name(language)}.jsonl",
                ({"source": s, "english": e} for s, e in items))
  tmp = root / f".stats.json.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, root / "stats.json")


def stable_fraction(*parts: str) -> float:
  digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
  return int(digest[:12], 16) / float(16 ** 12)
