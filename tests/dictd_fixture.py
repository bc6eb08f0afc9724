"""dictd databases written in the real format (index in dictd's base64, dictzip data) with
FOLDOC-style entries: the fixture of the dictd, FOLDOC and passage tests."""

import gzip
import json
import pathlib
import struct
import zlib

from zel_jax.data import dictd

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

METADATA = [
    ("00-database-short", "00-database-short\n     Test dictionary\n"),
    ("00-database-url", "00-database-url\n     http://example.com/test\n"),
]
# FOLDOC-style entries: headword lines at column 0 (title, then aliases), a blank line, an
# indented body with {cross-references}.
ENTRIES = [
    ("Lisp", "Lisp\n\n   <language> A {functional} language; see {Scheme} and\n"
             "   {S-expressions}.  {Lisp}'s\n   dialects include {Common\n   LISP}.\n\n"),
    ("functional programming",
     "functional programming\nfunctional\n\n   <programming> Programs built from "
     "{functions (function)}, unlike\n   {imperative programming}.\n\n"),
    ("function", "function\n\n   <mathematics> A map.  Related: {functional programming},\n"
                 "   {libraries}, {function}, {machine (Lisp machine)},\n"
                 "   {home page (http://example.com/f.html)}, { x | x in S }.\n\n"),
    ("library", "library\n\n   A collection of {function}s for {Lisp-machine} and\n"
                "   {lispmachine}.\n\n"),
    ("Lisp machine", "Lisp machine\n\n   A computer that runs {Lisp}.\n\n"),
    ("Scheme (language)", "Scheme (language)\nScheme\n\n   A dialect of {LISP}.\n\n"),
    ("S-expression", "S-expression\nsexp\n\n   A {Lisp} datum.\n\n"),
    ("Common Lisp", "Common Lisp\n\n   The {ANSI} standard {Lisp}; see {sexps}.\n\n"),
]
TEXTS = {
    "Lisp": "Lisp < language > A functional language ; see Scheme and S - expressions . "
            "Lisp ' s dialects include Common LISP .",
    "functional programming": "functional programming functional < programming > Programs "
                              "built from functions , unlike imperative programming .",
    "function": "function < mathematics > A map . Related : functional programming , "
                "libraries , function , machine , home page , { x | x in S } .",
    "library": "library A collection of function s for Lisp - machine and lispmachine .",
}
# (context title, mention text, label title, category): titles as written, categories from the
# tokenized forms (a mention's text is tokens, "S - expressions")
EXPECTED_MENTIONS = {
    ("Lisp", "functional", "functional programming", "AMBIGUOUS_SUBSTRING"),
    ("Lisp", "Scheme", "Scheme (language)", "MULTIPLE_CATEGORIES"),
    ("Lisp", "S - expressions", "S-expression", "LOW_OVERLAP"),
    ("Lisp", "Common LISP", "Common Lisp", "HIGH_OVERLAP"),
    ("functional programming", "functions", "function", "LOW_OVERLAP"),
    ("function", "functional programming", "functional programming", "HIGH_OVERLAP"),
    ("function", "libraries", "library", "LOW_OVERLAP"),
    ("function", "machine", "Lisp machine", "AMBIGUOUS_SUBSTRING"),
    ("library", "function", "function", "HIGH_OVERLAP"),
    ("library", "Lisp - machine", "Lisp machine", "LOW_OVERLAP"),
    ("library", "lispmachine", "Lisp machine", "LOW_OVERLAP"),
    ("Lisp machine", "Lisp", "Lisp", "HIGH_OVERLAP"),
    ("Scheme (language)", "LISP", "Lisp", "HIGH_OVERLAP"),
    ("S-expression", "Lisp", "Lisp", "HIGH_OVERLAP"),
    ("Common Lisp", "sexps", "S-expression", "LOW_OVERLAP"),
    ("Common Lisp", "Lisp", "Lisp", "HIGH_OVERLAP"),
}


def b64(number: int) -> str:
  digits = ""
  while True:
    number, digit = divmod(number, 64)
    digits = B64[digit] + digits
    if not number:
      return digits


def write_dictzip(path: pathlib.Path, data: bytes, chunk_len: int) -> list[int]:
  """dictzip as dictd's dictzip writes it: gzip, each chunk ending on a full flush, and the
  compressed chunk sizes in an RA extra field (after which comes an FNAME). Returns the file
  offset of each compressed chunk."""
  compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  chunks = [data[i:i + chunk_len] for i in range(0, len(data), chunk_len)]
  compressed = []
  for i, chunk in enumerate(chunks):
    last = i == len(chunks) - 1
    compressed.append(compressor.compress(chunk) +
                      compressor.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH))
  ra = struct.pack("<HHH", 1, chunk_len, len(chunks)) + b"".join(
      struct.pack("<H", len(c)) for c in compressed)
  extra = b"RA" + struct.pack("<H", len(ra)) + ra
  header = (b"\x1f\x8b\x08" + bytes([4 | 8]) + struct.pack("<I", 0) + b"\x02\x03" +
            struct.pack("<H", len(extra)) + extra + b"test.dict\x00")
  trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
  path.write_bytes(header + b"".join(compressed) + trailer)
  starts = [len(header)]
  for c in compressed[:-1]:
    starts.append(starts[-1] + len(c))
  return starts


def write_database(directory: pathlib.Path, fmt: str, name: str = "test",
                   entries=ENTRIES, chunk_len: int = 64) -> pathlib.Path:
  """NAME.index + NAME.dict(.dz) with dictfmt's lower-cased headwords; returns directory."""
  directory.mkdir(parents=True, exist_ok=True)
  data = b""
  index = []
  for headword, text in METADATA + [("", text) for _, text in entries]:
    raw = text.encode("utf-8")
    # Every headword line of an entry is an index headword (the aliases share the entry).
    headwords = [headword] if headword else dictd.split_header(text)[0]
    for h in headwords:
      index.append((h.lower(), len(data), len(raw)))
    data += raw
  index.sort()
  (directory / f"{name}.index").write_text(
      "".join(f"{h}\t{b64(o)}\t{b64(n)}\n" for h, o, n in index), encoding="utf-8")
  if fmt == "dictzip":
    chunk_starts = write_dictzip(directory / f"{name}.dict.dz", data, chunk_len)
    (directory / "chunk_starts.json").write_text(json.dumps(chunk_starts))
    assert gzip.decompress((directory / f"{name}.dict.dz").read_bytes()) == data
  elif fmt == "gzip":
    (directory / f"{name}.dict.dz").write_bytes(gzip.compress(data))
  else:
    (directory / f"{name}.dict").write_bytes(data)
  return directory
