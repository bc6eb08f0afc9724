"""Reader of the ZESHEL layout (Logeswaran et al., 2019), with validation.

    DATA/documents/<world>.json   one entity per line: document_id, title, text
    DATA/mentions/<split>.json    one mention per line: mention_id, context_document_id,
                                  label_document_id, start_index, end_index, text, corpus,
                                  category (optional: a knowledge base alone has no
                                  mentions/, and encoding, indexing and linking need none)

`start_index` and `end_index` are INCLUSIVE indices over the whitespace tokens of the context
document's `text`. The entity set of a mention is the documents of its `corpus` world; its
context document may sit in any documents file of the directory.

The full dataset (16 worlds, ~500k documents) must be readable in bounded memory, so nothing
here holds all texts: one streaming pass builds `document_id -> (world, byte offset)` and
documents are read back by seeking. Every format problem raises `ZeshelFormatError` whose
message starts with `path:line:` and, where one field is at fault, `field 'name':`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import re
import warnings
from typing import Any, Iterable, Iterator, Literal

from absl import logging

from zel_jax.data import guards

HIGH_OVERLAP = "HIGH_OVERLAP"
MULTIPLE_CATEGORIES = "MULTIPLE_CATEGORIES"
AMBIGUOUS_SUBSTRING = "AMBIGUOUS_SUBSTRING"
LOW_OVERLAP = "LOW_OVERLAP"
CATEGORIES = (HIGH_OVERLAP, MULTIPLE_CATEGORIES, AMBIGUOUS_SUBSTRING, LOW_OVERLAP)

TextMismatch = Literal["error", "warn"]


@dataclasses.dataclass(frozen=True)
class Entity:
  document_id: str
  title: str
  text: str
  world: str


@dataclasses.dataclass(frozen=True)
class Mention:
  mention_id: str
  context_document_id: str
  label_document_id: str
  start_index: int
  end_index: int
  text: str
  corpus: str
  category: str | None


class ZeshelFormatError(ValueError):
  """A ZESHEL file that breaks the format; the message names file, line and field."""


class ZeshelFormatWarning(UserWarning):
  """A tolerated problem (mention text not matching its tokens with text_mismatch='warn')."""


def format_error(path: os.PathLike | str, line: int, field: str | None,
                 message: str) -> ZeshelFormatError:
  where = f"{path}:{line}: "
  return ZeshelFormatError(where + (f"field {field!r}: " if field else "") + message)


def normalize_whitespace(text: str) -> str:
  return " ".join(text.split())


# Released ZESHEL texts put every non-alphanumeric character in a token of its own
# ("Tegan Jovanka ' s", "al - Malik", "( 1268 )"); underscore counts as punctuation, as in
# BERT's basic tokenizer.
_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
  """Tokens in the convention of ZESHEL texts: alphanumeric runs and single other characters.

  Idempotent: `tokenize(" ".join(tokenize(t))) == tokenize(t)`, so text written as joined
  tokens reads back with `str.split()` into the same tokens.
  """
  return _TOKEN.findall(text)


def strip_title(text: str, title: str) -> str:
  """`text` after the title it opens with (ZESHEL and FOLDOC texts repeat it), the title
  matched as written or as tokens (FOLDOC's "round-robin" opens "round - robin < ... >");
  `text` itself when it does not open with it."""
  for name in (title, " ".join(tokenize(title))):
    if text.startswith(name):
      return text[len(name):].lstrip()
  return text


# A disambiguation phrase is a parenthesised suffix, as in the paper's example
# "Batman" -> "Batman (Lego)" and in the released titles ("Mistfall ( audio story )").
_DISAMBIGUATION = re.compile(r"\(.*\S.*\)")


def category_of(mention_text: str, title: str, case_sensitive: bool = False) -> str:
  """ZESHEL's mention category of a mention string against its gold entity's title.

  The four classes as Logeswaran et al. (2019, Sec. 6 / Table 4) define them:
    HIGH_OVERLAP         the title is identical to the mention text;
    MULTIPLE_CATEGORIES  the title is the mention text followed by a disambiguation phrase
                         ("Batman" -> "Batman (Lego)");
    AMBIGUOUS_SUBSTRING  the mention is a substring of the title ("Agent" -> "The Agent");
    LOW_OVERLAP          all other cases ("Emperor" -> "Palpatine").
  The rules are tried in that order. Whitespace is normalized on both sides (released titles
  are tokenized: "Mistfall ( audio story )"). Comparison ignores case by default: the paper
  speaks of string overlap, not of capitalisation, and a wiki link "the doctor" to "The Doctor"
  is the easy case the HIGH_OVERLAP class is meant to isolate. The four mentions of the
  released excerpt get their recorded categories either way.
  """
  mention = normalize_whitespace(mention_text)
  name = normalize_whitespace(title)
  if not case_sensitive:
    mention, name = mention.casefold(), name.casefold()
  if mention == name:
    return HIGH_OVERLAP
  if mention and name.startswith(mention):
    rest = name[len(mention):]
    if rest[:1] == " " and _DISAMBIGUATION.fullmatch(rest.strip()):
      return MULTIPLE_CATEGORIES
  if mention in name:
    return AMBIGUOUS_SUBSTRING
  return LOW_OVERLAP


def _lines(path: pathlib.Path) -> Iterator[tuple[int, int, bytes]]:
  """(1-based line number, byte offset, raw line) of each non-blank line, streaming."""
  offset = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if raw.strip():
        yield number, offset, raw
      offset += len(raw)


def _parse_object(path: pathlib.Path, number: int, raw: bytes) -> dict[str, Any]:
  try:
    record = guards.loads(raw.decode("utf-8"))
  except guards.DuplicateKeyError as e:
    raise format_error(path, number, e.key, str(e)) from None
  except UnicodeDecodeError as e:
    raise format_error(path, number, None, f"not UTF-8 ({e.reason} at byte {e.start})") from e
  except json.JSONDecodeError as e:
    raise format_error(path, number, None, f"malformed JSON: {e.msg} at column {e.colno}") from e
  if not isinstance(record, dict):
    raise format_error(path, number, None,
                       f"expected a JSON object, got {type(record).__name__}")
  return record


def json_records(path: os.PathLike | str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, object) of each non-blank line of a JSON-lines file; a line that
  is not a JSON object is an error naming the file and line."""
  path = pathlib.Path(path)
  for number, _, raw in _lines(path):
    yield number, _parse_object(path, number, raw)


def write_json_lines(path: os.PathLike | str, records: Iterable[dict[str, Any]]) -> None:
  """One JSON object per line, written to a temporary name and renamed into place: readers
  never see half a file and a failure leaves an existing one intact."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(temporary, "w", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def write_json(path: os.PathLike | str, value: Any) -> None:
  """One indented JSON document, written to a temporary name and renamed into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  temporary.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
  os.replace(temporary, path)


def _field(record: dict[str, Any], name: str, kind: type, path: pathlib.Path, number: int,
           optional: bool = False) -> Any:
  if name not in record or (optional and record[name] is None):
    if optional:
      return None
    raise format_error(path, number, name, f"missing (keys present: {sorted(record)})")
  value = record[name]
  # bool is an int to Python; a JSON true as an index is a broken file, not 1.
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise format_error(path, number, name,
                       f"expected {kind.__name__}, got {type(value).__name__} {value!r:.60}")
  return value


def _entity(record: dict[str, Any], world: str, path: pathlib.Path, number: int) -> Entity:
  document_id = _field(record, "document_id", str, path, number)
  if not document_id:
    raise format_error(path, number, "document_id", "empty")
  entity = Entity(document_id=document_id, title=_field(record, "title", str, path, number),
                  text=_field(record, "text", str, path, number), world=world)
  # Nothing to encode: the entity would be an input of special tokens alone, a candidate
  # that every mention scores alike.
  if not entity.title.strip() and not entity.text.strip():
    raise format_error(path, number, "title", f"empty, and so is 'text', for document "
                       f"{document_id!r}: an entity needs a title or a description")
  return entity


def _mention(record: dict[str, Any], path: pathlib.Path, number: int) -> Mention:
  category = _field(record, "category", str, path, number, optional=True)
  mention = Mention(
      mention_id=_field(record, "mention_id", str, path, number),
      context_document_id=_field(record, "context_document_id", str, path, number),
      label_document_id=_field(record, "label_document_id", str, path, number),
      start_index=_field(record, "start_index", int, path, number),
      end_index=_field(record, "end_index", int, path, number),
      text=_field(record, "text", str, path, number),
      corpus=_field(record, "corpus", str, path, number),
      category=category)
  if not mention.mention_id:
    raise format_error(path, number, "mention_id", "empty")
  if not mention.text.strip():
    raise format_error(path, number, "text", f"{mention.text!r}: empty or only whitespace")
  # The corpus names documents/<corpus>.json: checked here, before anything opens it.
  try:
    guards.plain_name(mention.corpus, "world")
  except guards.UnsafeNameError as e:
    raise format_error(path, number, "corpus", str(e)) from None
  return mention


@dataclasses.dataclass(frozen=True, slots=True)
class _Location:
  world: str
  offset: int
  line: int


class ZeshelDataset:
  """A directory in ZESHEL layout.

    ds = ZeshelDataset("zeshel")                  # nothing is read yet
    ds.worlds(), ds.splits()
    for e in ds.iter_entities("starwars"): ...    # streaming, validated
    for m in ds.iter_mentions("train"): ...       # streaming, validated against the documents
    left, span, right = ds.mention_tokens(m)

  `text_mismatch` says what a mention whose text differs from its tokens does: "error" raises,
  "warn" emits a `ZeshelFormatWarning` and the mention is still yielded.
  """

  def __init__(self, data_dir: os.PathLike | str, text_mismatch: TextMismatch = "error",
               cache_size: int = 32):
    if text_mismatch not in ("error", "warn"):
      raise ValueError(f"text_mismatch must be 'error' or 'warn', got {text_mismatch!r}")
    self.data_dir = pathlib.Path(data_dir)
    self.text_mismatch = text_mismatch
    # A knowledge base alone (documents/, no mentions/) is a complete directory: encoding,
    # indexing and linking read only documents; what needs mentions says so when it asks.
    if not (self.data_dir / "documents").is_dir():
      raise FileNotFoundError(f"{self.data_dir}: no documents/ folder; not a ZESHEL directory")
    self._index: dict[str, _Location] | None = None
    self._known_worlds: frozenset[str] = frozenset()
    self._handles: dict[str, Any] = {}
    # Mentions of one context document tend to be adjacent; a small cache makes validating a
    # split read each context document about once.
    self._cache: collections.OrderedDict[str, Entity] = collections.OrderedDict()
    self._cache_size = cache_size
    self._warned: set[tuple[pathlib.Path, str]] = set()  # (file, field) warned about

  # -- files ------------------------------------------------------------------------------

  def worlds(self) -> list[str]:
    return sorted(p.stem for p in (self.data_dir / "documents").glob("*.json"))

  def has_mentions(self) -> bool:
    """Whether there is a mentions/ folder (a knowledge base alone has none)."""
    return (self.data_dir / "mentions").is_dir()

  def splits(self) -> list[str]:
    """The mention splits; none for a knowledge base alone."""
    return sorted(p.stem for p in (self.data_dir / "mentions").glob("*.json"))

  def documents_path(self, world: str) -> pathlib.Path:
    guards.plain_name(world, "world")
    path = self.data_dir / "documents" / f"{world}.json"
    if not path.is_file():
      raise KeyError(f"unknown world {world!r}: no {path} (worlds: {self.worlds()})")
    return path

  def mentions_path(self, split: str) -> pathlib.Path:
    guards.plain_name(split, "split")
    if not self.has_mentions():
      raise FileNotFoundError(
          f"{self.data_dir} has no mentions/ folder (a knowledge base alone), so no split "
          f"{split!r}: training and evaluation need {self.data_dir}/mentions/{split}.json "
          "(python -m zel_jax.data.convert mentions writes one); encoding, indexing and "
          "linking need only documents/")
    path = self.data_dir / "mentions" / f"{split}.json"
    if not path.is_file():
      raise KeyError(f"unknown split {split!r}: no {path} (splits: {self.splits()})")
    return path

  # -- entities ---------------------------------------------------------------------------

  def iter_entities(self, world: str) -> Iterator[Entity]:
    """The documents of one world in file order; duplicate ids in the file are an error."""
    path = self.documents_path(world)
    seen: dict[str, int] = {}
    # Lines of entities with an empty title or text: legal but suspicious, said once a file.
    empty: dict[str, list[int]] = {"title": [], "text": []}
    for number, _, raw in _lines(path):
      entity = _entity(_parse_object(path, number, raw), world, path, number)
      if entity.document_id in seen:
        raise format_error(path, number, "document_id",
                           f"duplicate id {entity.document_id!r} (first at line "
                           f"{seen[entity.document_id]})")
      seen[entity.document_id] = number
      for field in empty:
        if not getattr(entity, field).strip():
          empty[field].append(number)
      yield entity
    for field, lines in empty.items():
      if lines and (path, field) not in self._warned:
        self._warned.add((path, field))
        logging.warning("%s:%d: field %r: empty in %d of %d entities (lines %s), encoded "
                        "from their %s alone", path, lines[0], field, len(lines), len(seen),
                        lines[:5], "text" if field == "title" else "title")

  def entities(self, world: str) -> dict[str, Entity]:
    """The entity set of a world, loaded: document_id -> Entity, in file order."""
    return {e.document_id: e for e in self.iter_entities(world)}

  # -- the document index -----------------------------------------------------------------

  def build_index(self) -> dict[str, _Location]:
    """document_id -> where it is, over every documents file, in one streaming pass.

    Validates every document line on the way; an id found twice (in one file or across two)
    is an error naming both places.
    """
    if self._index is not None:
      return self._index
    index: dict[str, _Location] = {}
    for world in self.worlds():
      path = self.documents_path(world)
      for number, offset, raw in _lines(path):
        record = _parse_object(path, number, raw)
        document_id = _entity(record, world, path, number).document_id
        first = index.get(document_id)
        if first is not None:
          raise format_error(path, number, "document_id",
                             f"duplicate id {document_id!r} (first at "
                             f"{self.documents_path(first.world)}:{first.line})")
        index[document_id] = _Location(world, offset, number)
    self._index = index
    self._known_worlds = frozenset(self.worlds())
    return index

  def world_of(self, document_id: str) -> str:
    location = self.build_index().get(document_id)
    if location is None:
      raise KeyError(f"unknown document {document_id!r} in {self.data_dir / 'documents'}")
    return location.world

  def __contains__(self, document_id: str) -> bool:
    return document_id in self.build_index()

  def document(self, document_id: str) -> Entity:
    """The document with this id, read by seeking into its world file."""
    cached = self._cache.get(document_id)
    if cached is not None:
      self._cache.move_to_end(document_id)
      return cached
    location = self.build_index().get(document_id)
    if location is None:
      raise KeyError(f"unknown document {document_id!r} in {self.data_dir / 'documents'}")
    if location.world not in self._handles:
      path = self.documents_path(location.world)
      self._handles[location.world] = (path, open(path, "rb"))
    path, handle = self._handles[location.world]
    handle.seek(location.offset)
    entity = _entity(_parse_object(path, location.line, handle.readline()), location.world,
                     path, location.line)
    self._cache[document_id] = entity
    if len(self._cache) > self._cache_size:
      self._cache.popitem(last=False)
    return entity

  # -- mentions ---------------------------------------------------------------------------

  def iter_mentions(self, split: str, validate: bool = True) -> Iterator[Mention]:
    """The mentions of a split in file order.

    With `validate` (the default) each mention is checked against the documents: known
    context and label documents, the label inside the `corpus` world, the span inside the
    context document, and the text equal to the span's tokens (per `text_mismatch`).
    Duplicate mention ids are always an error.
    """
    path = self.mentions_path(split)
    seen: dict[str, int] = {}
    for number, _, raw in _lines(path):
      mention = _mention(_parse_object(path, number, raw), path, number)
      if mention.mention_id in seen:
        raise format_error(path, number, "mention_id",
                           f"duplicate id {mention.mention_id!r} (first at line "
                           f"{seen[mention.mention_id]})")
      seen[mention.mention_id] = number
      if validate:
        self._check_mention(mention, path, number)
      yield mention

  def _check_mention(self, mention: Mention, path: pathlib.Path, number: int) -> None:
    index = self.build_index()
    if mention.corpus not in self._known_worlds:
      raise format_error(path, number, "corpus",
                         f"unknown world {mention.corpus!r} (worlds: {self.worlds()})")
    if mention.context_document_id not in index:
      raise format_error(path, number, "context_document_id",
                         f"unknown document {mention.context_document_id!r}")
    label = index.get(mention.label_document_id)
    if label is None:
      raise format_error(path, number, "label_document_id",
                         f"unknown document {mention.label_document_id!r}")
    if label.world != mention.corpus:
      raise format_error(path, number, "label_document_id",
                         f"document {mention.label_document_id!r} is in world "
                         f"{label.world!r}, not in the mention's corpus {mention.corpus!r}")
    tokens = self.document(mention.context_document_id).text.split()
    if not 0 <= mention.start_index < len(tokens):
      raise format_error(path, number, "start_index",
                         f"{mention.start_index} outside document "
                         f"{mention.context_document_id!r} of {len(tokens)} tokens")
    if not 0 <= mention.end_index < len(tokens):
      raise format_error(path, number, "end_index",
                         f"{mention.end_index} outside document "
                         f"{mention.context_document_id!r} of {len(tokens)} tokens")
    if mention.start_index > mention.end_index:
      raise format_error(path, number, "end_index",
                         f"{mention.end_index} is before start_index {mention.start_index}")
    span = " ".join(tokens[mention.start_index:mention.end_index + 1])
    if span != normalize_whitespace(mention.text):
      error = format_error(path, number, "text",
                           f"{mention.text!r} does not match tokens "
                           f"[{mention.start_index}, {mention.end_index}] of document "
                           f"{mention.context_document_id!r}: {span!r}")
      if self.text_mismatch == "error":
        raise error
      warnings.warn(str(error), ZeshelFormatWarning, stacklevel=3)

  def mention_tokens(self, mention: Mention) -> tuple[list[str], list[str], list[str]]:
    """(left context, mention, right context) as whitespace tokens of the context document."""
    tokens = self.document(mention.context_document_id).text.split()
    if not 0 <= mention.start_index <= mention.end_index < len(tokens):
      raise ValueError(f"mention {mention.mention_id!r}: span [{mention.start_index}, "
                       f"{mention.end_index}] outside {len(tokens)} tokens of "
                       f"{mention.context_document_id!r}")
    return (tokens[:mention.start_index], tokens[mention.start_index:mention.end_index + 1],
            tokens[mention.end_index + 1:])

  # -- lifetime ---------------------------------------------------------------------------

  def close(self) -> None:
    for _, handle in self._handles.values():
      handle.close()
    self._handles.clear()
    self._cache.clear()

  def __enter__(self) -> "ZeshelDataset":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  # interpreter shutdown
      pass
