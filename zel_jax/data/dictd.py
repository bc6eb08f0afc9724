"""dictd databases (FOLDOC, WordNet, FreeDict, GCIDE, ...): reading them, their
{cross-references}, and resolving a reference to the entry it names.

A dictd database is `NAME.index` + `NAME.dict.dz` (or a plain `NAME.dict`). Each index line is
`headword<TAB>offset<TAB>length[<TAB>original headword]`, the numbers written in dictd's
base64 (digits `A-Za-z0-9+/`, most significant first). `.dict.dz` is dictzip: gzip whose
header carries an `RA` extra field listing the compressed size of each fixed-size chunk; each
chunk ends on a full flush, so one definition is read by inflating only the chunks it spans.
A `.dz` without that field is read as plain gzip, decompressed once.

One database as a ZESHEL world (the quickstart's FOLDOC): zel_jax/data/foldoc.py; as a
benchmark world: zel_jax/data/worlds/dictd_world.py.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import os
import pathlib
import re
import struct
from typing import Callable, Iterator, Sequence
import zlib

from zel_jax.data import zeshel

DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(DICTD_BASE64)}
# dictfmt writes its metadata as entries; older versions drop the hyphens (no --allchars).
_METADATA_PREFIXES = ("00-database-", "00database")


class DictdFormatError(ValueError):
  """A dictd file that breaks the format; the message names the file (and line)."""


def decode_base64_number(text: str) -> int:
  """A dictd index number: base64 digits, most significant first ("B" is 1, "BA" is 64)."""
  if not text:
    raise ValueError("empty dictd number")
  value = 0
  for char in text:
    digit = _B64_VALUE.get(char)
    if digit is None:
      raise ValueError(f"{char!r} is not a dictd base64 digit in {text!r}")
    value = value * 64 + digit
  return value


def is_metadata(headword: str) -> bool:
  return headword.startswith(_METADATA_PREFIXES)


# -- the .dict / .dict.dz payload ------------------------------------------------------------


class _Payload:
  """Random access to the uncompressed bytes of a .dict or .dict.dz file."""

  def __init__(self, path: pathlib.Path, cache_chunks: int = 16):
    self.path = path
    self._file = open(path, "rb")
    self._chunk_len = 0
    self._chunk_starts: list[int] = []
    self._whole: bytes | None = None
    self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
    self._cache_chunks = cache_chunks
    if path.suffix == ".dz":
      self._read_gzip_header()

  def _read_gzip_header(self) -> None:
    head = self._file.read(10)
    if len(head) < 10 or head[:2] != b"\x1f\x8b":
      raise DictdFormatError(f"{self.path}: not a gzip/dictzip file")
    flags = head[3]
    chunk_sizes: list[int] | None = None
    if flags & 4:  # FEXTRA
      (xlen,) = struct.unpack("<H", self._file.read(2))
      extra = self._file.read(xlen)
      pos = 0
      while pos + 4 <= len(extra):
        tag, (size,) = extra[pos:pos + 2], struct.unpack("<H", extra[pos + 2:pos + 4])
        field = extra[pos + 4:pos + 4 + size]
        if tag == b"RA":
          version, chunk_len, count = struct.unpack("<HHH", field[:6])
          if version != 1 or len(field) < 6 + 2 * count:
            raise DictdFormatError(f"{self.path}: dictzip RA field version {version} with "
                                   f"{count} chunks does not fit its {size} bytes")
          self._chunk_len = chunk_len
          chunk_sizes = list(struct.unpack(f"<{count}H", field[6:6 + 2 * count]))
        pos += 4 + size
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
      if flags & flag:
        while self._file.read(1) not in (b"\x00", b""):
          pass
    if flags & 2:  # FHCRC
      self._file.read(2)
    if chunk_sizes is None:
      # Plain gzip: no random access, so inflate once and keep it.
      self._file.close()
      with gzip.open(self.path, "rb") as f:
        self._whole = f.read()
      return
    start = self._file.tell()
    for size in chunk_sizes:
      self._chunk_starts.append(start)
      start += size
    self._chunk_starts.append(start)

  def _chunk(self, i: int) -> bytes:
    data = self._cache.get(i)
    if data is not None:
      self._cache.move_to_end(i)
      return data
    self._file.seek(self._chunk_starts[i])
    compressed = self._file.read(self._chunk_starts[i + 1] - self._chunk_starts[i])
    try:
      data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed)
    except zlib.error as e:
      raise DictdFormatError(f"{self.path}: dictzip chunk {i} does not inflate: {e}") from e
    if len(data) != self._chunk_len and i + 1 < len(self._chunk_starts) - 1:
      raise DictdFormatError(f"{self.path}: dictzip chunk {i} inflates to {len(data)} bytes, "
                             f"not the chunk length {self._chunk_len}")
    self._cache[i] = data
    if len(self._cache) > self._cache_chunks:
      self._cache.popitem(last=False)
    return data

  def read(self, offset: int, length: int) -> bytes:
    if length <= 0:
      return b""
    if self._whole is not None:
      data = self._whole[offset:offset + length]
    elif self._chunk_len:
      first, last = offset // self._chunk_len, (offset + length - 1) // self._chunk_len
      if last >= len(self._chunk_starts) - 1:
        raise DictdFormatError(f"{self.path}: bytes [{offset}, {offset + length}) lie past "
                               f"the {len(self._chunk_starts) - 1} chunks of the file")
      data = b"".join(self._chunk(i) for i in range(first, last + 1))
      skip = offset - first * self._chunk_len
      data = data[skip:skip + length]
    else:
      self._file.seek(offset)
      data = self._file.read(length)
    if len(data) != length:
      raise DictdFormatError(f"{self.path}: bytes [{offset}, {offset + length}) lie past the "
                             f"end of the data")
    return data

  def close(self) -> None:
    self._file.close()
    self._cache.clear()


# -- the database ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IndexEntry:
  headword: str
  offset: int
  length: int


@dataclasses.dataclass(frozen=True)
class DictdEntry:
  """One stored definition and every headword of the index that points at it."""
  headwords: tuple[str, ...]
  offset: int
  length: int
  text: str


def _decode(data: bytes) -> str:
  # dictd predates UTF-8 everywhere; old databases are Latin-1.
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def lookup_key(headword: str) -> str:
  """dictd looks headwords up case-insensitively, whitespace collapsed."""
  return " ".join(headword.split()).casefold()


class DictdDatabase:
  """A dictd database: iterate (headword, definition), look headwords up, list entries.

    with DictdDatabase.open("/usr/share/dictd", "wn") as wn:
      wn.lookup("person")        # ["person\\n    n 1: a human being; ..."]
      for headword, definition in wn: ...

  Definitions are returned as stored, their own headword lines included. The `00-database-*`
  metadata entries are not headwords; read them with `metadata("short")`.
  """

  def __init__(self, index_path: os.PathLike | str, dict_path: os.PathLike | str):
    self.index_path = pathlib.Path(index_path)
    self.dict_path = pathlib.Path(dict_path)
    self.index: list[IndexEntry] = []
    self._metadata: dict[str, IndexEntry] = {}
    with open(self.index_path, "rb") as f:
      for number, raw in enumerate(f, start=1):
        line = _decode(raw).rstrip("\r\n")
        if not line.strip():
          continue
        fields = line.split("\t")
        if len(fields) not in (3, 4):
          raise DictdFormatError(f"{self.index_path}:{number}: expected headword<TAB>offset"
                                 f"<TAB>length, got {len(fields)} field(s): {line!r:.80}")
        try:
          offset, length = decode_base64_number(fields[1]), decode_base64_number(fields[2])
        except ValueError as e:
          raise DictdFormatError(f"{self.index_path}:{number}: {e}") from e
        # A 4th column (dictfmt --index-keep-orig) is the headword as written.
        headword = fields[3] if len(fields) == 4 and fields[3] else fields[0]
        entry = IndexEntry(headword, offset, length)
        if is_metadata(fields[0]):
          name = fields[0].removeprefix("00-database-").removeprefix("00database")
          self._metadata[name] = entry
        else:
          self.index.append(entry)
    self._by_key: dict[str, list[IndexEntry]] = collections.defaultdict(list)
    for entry in self.index:
      self._by_key[lookup_key(entry.headword)].append(entry)
    self._payload = _Payload(self.dict_path)

  @classmethod
  def open(cls, directory: os.PathLike | str, name: str) -> "DictdDatabase":
    """NAME.index with NAME.dict.dz, or NAME.dict when there is no .dz, in `directory`."""
    directory = pathlib.Path(directory)
    index = directory / f"{name}.index"
    if not index.is_file():
      raise FileNotFoundError(f"no dictd index {index}")
    for candidate in (directory / f"{name}.dict.dz", directory / f"{name}.dict"):
      if candidate.is_file():
        return cls(index, candidate)
    raise FileNotFoundError(f"no {name}.dict.dz or {name}.dict beside {index}")

  def read(self, offset: int, length: int) -> str:
    return _decode(self._payload.read(offset, length))

  def __len__(self) -> int:
    return len(self.index)

  def __iter__(self) -> Iterator[tuple[str, str]]:
    """(headword, definition) for every index line, in index order."""
    for entry in self.index:
      yield entry.headword, self.read(entry.offset, entry.length)

  def headwords(self) -> list[str]:
    return [entry.headword for entry in self.index]

  def lookup(self, headword: str) -> list[str]:
    """Every definition filed under `headword` (case-insensitive), in index order."""
    return [self.read(e.offset, e.length) for e in self._by_key.get(lookup_key(headword), [])]

  def __contains__(self, headword: str) -> bool:
    return lookup_key(headword) in self._by_key

  def entries(self) -> Iterator[DictdEntry]:
    """Each stored definition once, in file order, with all the headwords that share it."""
    grouped: dict[tuple[int, int], list[str]] = {}
    for entry in self.index:
      grouped.setdefault((entry.offset, entry.length), []).append(entry.headword)
    for (offset, length), headwords in sorted(grouped.items()):
      yield DictdEntry(tuple(headwords), offset, length, self.read(offset, length))

  def metadata(self, name: str) -> str | None:
    """A `00-database-NAME` entry ("short", "info", "url", ...) without its first line."""
    entry = self._metadata.get(name)
    if entry is None:
      return None
    text = self.read(entry.offset, entry.length)
    return text.split("\n", 1)[1].strip() if "\n" in text else ""

  def close(self) -> None:
    self._payload.close()

  def __enter__(self) -> "DictdDatabase":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def split_header(text: str) -> tuple[list[str], str]:
  """(headword lines, body) of a definition as dictfmt stores it.

  The headword lines come first at column 0 (FOLDOC: the title then its aliases; WordNet:
  the word); the body follows, indented, after a blank line or directly.
  """
  lines = text.split("\n")
  header: list[str] = []
  for line in lines:
    if not line.strip() or line[0].isspace():
      break
    header.append(line.strip())
  return header, "\n".join(lines[len(header):])


# -- FOLDOC as a ZESHEL world ----------------------------------------------------------------

# A cross-reference: braces around text that starts with a visible character and does not
# cross a blank line. Code samples and set notation ("{ x | x in S }") start with a space;
# a stray "{" is left alone because the content may not hold another brace.
REFERENCE = re.compile(r"\{(?![\s{}])((?:(?!\n[ \t]*\n)[^{}])*)\}")
# "{shown text (target)}": the text is displayed, the target is an entry name or a URL.
RETARGETED = re.compile(r"(.*?)\s*\(([^()]*)\)")
URL = re.compile(r"[A-Za-z][\w+.-]*:\S*|/\S*|\S*\.html?|.*://.*")


def _key(text: str) -> str:
  return " ".join(zeshel.tokenize(text)).casefold()


def _squashed(text: str) -> str:
  # "lambda-calculus", "lambda calculus" and "lambdacalculus" name one thing.
  return "".join(t for t in zeshel.tokenize(text) if t not in ("-", "_")).casefold()


def _number_variants(key: str) -> list[str]:
  """Keys that differ from `key` by an English plural (-s, -es, -ies), both directions."""
  variants = []
  if key.endswith("ies"):
    variants.append(key[:-3] + "y")
  if key.endswith("es"):
    variants.append(key[:-2])
  if key.endswith("s"):
    variants.append(key[:-1])
  if key.endswith("y"):
    variants.append(key[:-1] + "ies")
  variants += [key + "s", key + "es"]
  return variants


@dataclasses.dataclass
class _Document:
  document_id: str
  title: str
  names: tuple[str, ...]  # title, aliases and index headwords, as written
  text: str  # filled once every name is known (references are read against the names)
  references: list[tuple[int, int, str]]  # (first token, last token, target)


class NameResolver:
  """Entry names -> entry, trying case, then plural, then whitespace/hyphen variants."""

  def __init__(self, documents: Sequence[_Document]):
    self._documents = documents
    self._by_key: dict[str, list[int]] = collections.defaultdict(list)
    self._by_squashed: dict[str, list[int]] = collections.defaultdict(list)
    for i, document in enumerate(documents):
      for name in document.names:
        for table, key in ((self._by_key, _key(name)), (self._by_squashed, _squashed(name))):
          if key and i not in table[key]:
            table[key].append(i)

  def _pick(self, candidates: list[int], key: str, keyer) -> int:
    # Several entries share the name (FOLDOC files some words twice): prefer the one whose
    # title is that name, then the first in the file.
    for i in candidates:
      if keyer(self._documents[i].title) == key:
        return i
    return candidates[0]

  def is_name(self, text: str) -> bool:
    return _key(text) in self._by_key

  def resolve(self, target: str) -> tuple[int, str, bool] | None:
    """(document index, how, ambiguous) for a reference target; None when nothing fits."""
    key, squashed = _key(target), _squashed(target)
    stages = (
        ("case", self._by_key, [key], _key),
        ("plural", self._by_key, _number_variants(key), _key),
        ("whitespace", self._by_squashed, [squashed] + _number_variants(squashed), _squashed),
    )
    for how, table, keys, keyer in stages:
      for k in keys:
        candidates = table.get(k) if k else None
        if candidates:
          i = self._pick(candidates, k, keyer)
          if how == "case" and " ".join(target.split()) in self._documents[i].names:
            how = "exact"
          return i, how, len(candidates) > 1
    return None


def references(body: str, is_name: Callable[[str], bool]
               ) -> Iterator[tuple[re.Match, str, str, bool]]:
  """(match, shown text, target, is external) of each `{reference}` in a definition body.

  A content that is itself an entry name ("{/dev/null}", "{(c)}") is taken literally;
  otherwise "{shown (target)}" shows its text and links to its target, which may be a URL.
  """
  for match in REFERENCE.finditer(body):
    content = " ".join(match.group(1).split())
    shown = target = content
    external = False
    if not is_name(content):
      retargeted = RETARGETED.fullmatch(content)
      if retargeted:
        shown, target = retargeted.group(1) or retargeted.group(2), retargeted.group(2)
      external = bool(URL.fullmatch(target))
    yield match, shown, target, external
