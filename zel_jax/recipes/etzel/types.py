"""Ultra-fine entity typing data (Choi et al., 2018; used by Sui et al., 2022): the type
vocabulary, type descriptions from WordNet glosses, the UFET crowd JSON-lines reader, distant
type labels read off knowledge-base descriptions, and the per-world extracted-types files.

Type labels are the vocabulary's own spelling (lower case, words joined by "_").
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Iterable, Iterator, Sequence

from zel_jax.data import dictd, guards, local_views, zeshel


@dataclasses.dataclass(frozen=True)
class TypeVocabulary:
  labels: tuple[str, ...]

  @classmethod
  def load(cls, path: os.PathLike | str) -> "TypeVocabulary":
    """One label per line (ufet_types.txt: the 9 general types first)."""
    labels, seen = [], set()
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        label = line.strip()
        if not label:
          raise zeshel.format_error(path, number, None, "empty type label")
        if label in seen:
          raise zeshel.format_error(path, number, None, f"duplicate type label {label!r}")
        seen.add(label)
        labels.append(label)
    return cls(tuple(labels))

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def index(self) -> dict[str, int]:
    return {label: i for i, label in enumerate(self.labels)}


def type_text(label: str) -> str:
  return label.replace("_", " ")


# ------------------------------------------------------------------------------------------
# Type descriptions: the first WordNet gloss of the label (noun senses first).

_SENSE = re.compile(r"^\s*(?:(n|v|adj|adv|s)\s+)?(\d+):\s", re.M)


def first_gloss(definition: str) -> str | None:
  """The gloss of the first noun sense of a dictd WordNet definition (else the first sense
  of any part of speech), without its quoted examples and synonym list."""
  body = definition.split("\n", 1)[1] if "\n" in definition else ""
  senses, pos = [], None
  matches = list(_SENSE.finditer(body))
  for i, match in enumerate(matches):
    pos = match.group(1) or pos
    end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
    senses.append((pos, body[match.end():end]))
  if not senses:
    return None
  text = next((t for p, t in senses if p == "n"), senses[0][1])
  text = " ".join(text.split())
  text = text.split("[syn:", 1)[0].split("[ant:", 1)[0]
  text = text.split('; "', 1)[0].split(' "', 1)[0] if '"' in text else text
  return text.strip(" ;") or None


def type_descriptions(vocabulary: TypeVocabulary, wordnet_dir: os.PathLike | str | None
                      ) -> tuple[list[str], int]:
  """Each type's description: its first WordNet gloss (Debian dict-wn, read with
  zel_jax.data.dictd), or the label's own words where WordNet has none. Returns the
  descriptions and how many came from WordNet."""
  texts = [type_text(label) for label in vocabulary.labels]
  if wordnet_dir is None:
    return texts, 0
  found = 0
  with dictd.DictdDatabase.open(wordnet_dir, "wn") as wordnet:
    for i, label in enumerate(vocabulary.labels):
      definitions = wordnet.lookup(type_text(label))
      gloss = first_gloss(definitions[0]) if definitions else None
      if gloss:
        texts[i], found = gloss, found + 1
  return texts, found


# ------------------------------------------------------------------------------------------
# Typing examples: a mention, its context, its type labels.


@dataclasses.dataclass(frozen=True)
class TypingExample:
  mention: str
  left: str
  right: str
  labels: tuple[str, ...]


def read_ufet(path: os.PathLike | str, vocabulary: TypeVocabulary | None = None
              ) -> list[TypingExample]:
  """The UFET crowd JSON-lines layout as released (`mention_span`, `left_context_token`,
  `right_context_token` token lists, `y_str` labels; other keys ignored). Labels outside
  `vocabulary` are an error naming the file, line and field."""
  index = vocabulary.index if vocabulary is not None else None
  examples = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise zeshel.format_error(path, number, None, f"not JSON: {e}") from None
      if not isinstance(record, dict):
        raise zeshel.format_error(path, number, None, "not a JSON object")

      def field(name, kind):
        if name not in record:
          raise zeshel.format_error(path, number, name, "missing")
        value = record[name]
        ok = (isinstance(value, str) if kind is str else
              isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
          raise zeshel.format_error(path, number, name, f"expected {kind.__name__} "
                                    f"{'of strings' if kind is list else ''}, got "
                                    f"{type(value).__name__}")
        return value

      mention = field("mention_span", str)
      left, right = field("left_context_token", list), field("right_context_token", list)
      labels = field("y_str", list)
      if not mention.strip():
        raise zeshel.format_error(path, number, "mention_span", "empty mention")
      if index is not None:
        unknown = [y for y in labels if y not in index]
        if unknown:
          raise zeshel.format_error(path, number, "y_str",
                                    f"labels not in the type vocabulary: {unknown[:5]}")
      examples.append(TypingExample(mention, " ".join(left), " ".join(right), tuple(labels)))
  return examples


# ------------------------------------------------------------------------------------------
# Distant labels from a knowledge-base description.

# FOLDOC's subject tags follow the headwords: "Title < language , humour > A daft way ...".
_TAGS = re.compile(r"^(.*?)\s<\s([^<>]*?)\s>\s?(.*)$", re.S)
# Where a definitional noun phrase ends: prepositions, relatives, conjunctions, punctuation.
_STOP_WORDS = frozenset(
    "of for in on at to from by with without into onto over under about as like that which "
    "who whom whose where when while and or but nor than used based written designed "
    "developed called known named produced made run , . ; : ( ) [ ] \" ' / is are was were "
    "has have had can may consists contains provides allows uses means refers describes "
    "gives takes makes lets represents performs runs supports".split())
_COPULA = re.compile(r"\b(?:is|are|was|were)\s+(?:a|an|the|any|one)\s+", re.I)
_ARTICLE = re.compile(r"^(?:a|an|the|any|one)\s+", re.I)


def subject_tags(text: str) -> tuple[list[str], str]:
  """FOLDOC's `< tag , tag >` after the headwords, and the text after them (the whole text
  and no tags for descriptions without them)."""
  match = _TAGS.match(text)
  if not match or len(match.group(1).split()) > 12:
    return [], text
  tags = [" ".join(t.split()) for t in match.group(2).split(",")]
  return [t.lower() for t in tags if t], match.group(3)


def _singular(word: str) -> list[str]:
  forms = [word]
  if word.endswith("ies") and len(word) > 4:
    forms.append(word[:-3] + "y")
  if word.endswith(("ses", "xes", "ches", "shes")):
    forms.append(word[:-2])
  if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
    forms.append(word[:-1])
  return forms


def _vocabulary_matches(words: Sequence[str], index: dict[str, int]) -> list[str]:
  """Labels for a noun phrase, longest first: every suffix of the phrase that the vocabulary
  has, with the head word as written or singular ("esoteric programming languages" ->
  programming_language, language)."""
  words = [w.lower() for w in words]
  found = []
  for start in range(len(words)):
    for head in _singular(words[-1]) if words else ():
      label = "_".join(words[start:-1] + [head])
      if label in index and label not in found:
        found.append(label)
  return found


def definitional_phrase(definition: str, index: dict[str, int] | None = None) -> list[str]:
  """The words of the noun phrase that defines the entry: what follows "is a" in the first
  sentence ("X is a programming language for ..." -> programming language), or the opening
  noun phrase of a dictionary-style definition ("An esoteric programming language based on
  ..." -> esoteric programming language); empty when neither is there."""
  sentences = local_views.split_sentences(definition)
  if not sentences:
    return []
  sentence = sentences[0]
  sentence = re.sub(r"^\(\s[^()]*\)\s*", "", sentence)  # a leading "( Or "Empty Nest" )"
  copula = _COPULA.search(sentence)
  if _ARTICLE.match(sentence):
    rest = _ARTICLE.sub("", sentence, count=1)
  elif copula and copula.start() < 80:
    rest = sentence[copula.end():]
  else:
    return []
  words = []
  tokens = rest.split()
  for i, word in enumerate(tokens):
    if word.lower() in _STOP_WORDS:
      break
    if not re.fullmatch(r"[A-Za-z]+", word):
      continue  # "A 32 - bit microprocessor", "An MS - DOS program": modifiers
    following = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
    if (words and re.fullmatch(r"[a-z]+(?:ing|ed)", word)
        and f"{word}_{following}" not in (index or {})):
      # A participle after the noun ends the phrase ("a language supporting ...", "a
      # program written ..."), unless it starts a compound type ("programming language").
      break
    words.append(word)
  return words[-6:]


def distant_labels(text: str, index: dict[str, int], title: str | None = None) -> list[str]:
  """Type labels of a knowledge-base entry from its own description: FOLDOC's subject tags
  that the vocabulary has (as written, else their head noun), then the head noun of the
  definitional phrase and its longer vocabulary matches. A description that opens with its
  title (ZESHEL's and FOLDOC's do) is read after it."""
  tags, definition = subject_tags(text)
  if not tags and title:
    definition = zeshel.strip_title(definition, title)
  labels: list[str] = []
  for tag in tags:
    words = tag.split()
    matches = _vocabulary_matches(words, index)
    labels.extend(m for m in matches[:1] if m not in labels)  # the longest match
  for label in _vocabulary_matches(definitional_phrase(definition, index), index):
    if label not in labels:
      labels.append(label)
  return labels


# ------------------------------------------------------------------------------------------
# Extracted types beside a world: DATA/types/<world>.json, one JSON object per entity.


def types_path(data_dir: os.PathLike | str, world: str,
               types_dir: os.PathLike | str = "") -> pathlib.Path:
  """A world's extracted-types file: in `types_dir` when given, else DATA/types."""
  guards.plain_name(world, "world")
  return pathlib.Path(types_dir or pathlib.Path(data_dir) / "types") / f"{world}.json"


def write_types(path: os.PathLike | str, rows: Iterable[tuple[str, Sequence[str]]]) -> int:
  """Writes (document_id, labels) rows atomically (a temporary file, then a rename), so a
  failure leaves any earlier file intact. Returns the number of rows."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  n = 0
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      for document_id, labels in rows:
        f.write(json.dumps({"document_id": document_id, "types": list(labels)}) + "\n")
        n += 1
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return n


def read_types(path: os.PathLike | str, index: dict[str, int] | None = None
               ) -> Iterator[tuple[str, list[str]]]:
  """(document_id, labels) rows of an extracted-types file, streamed."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      try:
        record = json.loads(line)
        document_id, labels = record["document_id"], record["types"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise zeshel.format_error(path, number, None, f"not a types row: {e!r}") from None
      if index is not None and any(y not in index for y in labels):
        raise zeshel.format_error(path, number, "types", "labels not in the vocabulary: "
                                  f"{[y for y in labels if y not in index][:5]}")
      yield document_id, labels
