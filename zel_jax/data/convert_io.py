"""Reading the rows of a file being converted, and writing what they become.

Rows come with their line number and raw text so that every problem can name its place
(`path:line: field 'name': reason`) and, with --skip-bad, go to a rejects file verbatim
instead of stopping the run (zel_jax.data.convert). Outputs are written all or nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
from typing import Any, Iterable, Iterator

from zel_jax.data import guards, zeshel

CSV_COLUMNS = ("id", "title", "text")
_BOM = b"\xef\xbb\xbf"


class BadRow(Exception):
  """One input row that cannot be converted: its field (or None) and the reason."""

  def __init__(self, field: str | None, message: str):
    super().__init__(message)
    self.field = field
    self.message = message


@dataclasses.dataclass
class Rejects:
  """Where bad rows go: raised as `path:line: field` errors, or with skip_bad kept to write."""
  path: pathlib.Path
  skip_bad: bool
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def add(self, line: int, bad: BadRow, raw: str) -> None:
    if not self.skip_bad:
      raise zeshel.format_error(self.path, line, bad.field, bad.message)
    self.rows.append({"line": line, "field": bad.field, "reason": bad.message,
                      "row": raw.rstrip("\r\n")})


# -- reading rows ---------------------------------------------------------------------------


def json_rows(path: pathlib.Path) -> Iterator[tuple[int, str, dict[str, Any] | BadRow]]:
  """(line, raw text, object or the reason it is none) of each non-blank line."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
      if not raw.strip():
        continue
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield number, raw.decode("utf-8", "replace"), BadRow(
            None, f"not UTF-8 ({e.reason} at byte {e.start})")
        continue
      try:
        record = guards.loads(text)
      except guards.DuplicateKeyError as e:
        yield number, text, BadRow(e.key, str(e))
        continue
      except json.JSONDecodeError as e:
        yield number, text, BadRow(None, f"malformed JSON: {e.msg} at column {e.colno}")
        continue
      if not isinstance(record, dict):
        yield number, text, BadRow(None,
                                   f"expected a JSON object, got {type(record).__name__}")
        continue
      yield number, text, record


def csv_rows(path: pathlib.Path) -> Iterator[tuple[int, str, dict[str, Any] | BadRow]]:
  """(first line, raw text, row by column or the reason it is none) of each CSV record.

  The header is checked first: a file without the required columns is an error of the
  file, not of a row, even with --skip-bad. A quoted field may span lines; a record is
  numbered by its first line.
  """
  data = path.read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise zeshel.format_error(path, data[:e.start].count(b"\n") + 1, None,
                              f"not UTF-8 ({e.reason} at byte {e.start})") from e
  # The csv module ends lines at \n, \r and \r\n only (str.splitlines also at \x0b, \u2028...).
  lines = io.StringIO(text, newline="").readlines()
  reader = csv.reader(io.StringIO(text, newline=""), strict=True)
  try:
    header = [name.strip() for name in next(reader)]
  except StopIteration:
    raise zeshel.format_error(path, 1, None, "empty CSV file: expected a header "
                              f"{','.join(CSV_COLUMNS)}[,aliases]") from None
  except csv.Error as e:
    raise zeshel.format_error(path, 1, None, f"malformed CSV header: {e}") from None
  for column in CSV_COLUMNS:
    if column not in header:
      raise zeshel.format_error(path, 1, column, f"missing from the header {header}")
  while True:
    first = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      yield first, "".join(lines[first - 1:reader.line_num]), BadRow(
          None, f"malformed CSV: {e}")
      continue
    raw = "".join(lines[first - 1:reader.line_num])
    if not row or (len(row) == 1 and not row[0].strip()):
      continue
    if len(row) != len(header):
      yield first, raw, BadRow(None, f"{len(row)} fields where the header has {len(header)}")
      continue
    yield first, raw, dict(zip(header, row))


def field_of(record: dict[str, Any], name: str, *kinds: type) -> Any:
  """record[name], which must be present, not null, and of one of `kinds`."""
  if name not in record or record[name] is None:
    raise BadRow(name, f"missing (keys present: {sorted(record)})")
  value = record[name]
  # bool is an int to Python; a JSON true as an id or offset is a broken row, not 1.
  if not isinstance(value, kinds) or isinstance(value, bool):
    wanted = " or ".join(k.__name__ for k in kinds)
    raise BadRow(name, f"expected {wanted}, got {type(value).__name__} {value!r:.60}")
  return value


def identifier(record: dict[str, Any], name: str) -> str:
  """A non-empty id: a string, or an integer (JSON files often number their entities)."""
  value = str(field_of(record, name, str, int)).strip()
  if not value:
    raise BadRow(name, "empty")
  return value


# -- writing --------------------------------------------------------------------------------


def write_files(files: dict[pathlib.Path, Iterable[dict[str, Any]] | None]) -> None:
  """JSON lines into each path (None: remove a stale file), in the dict's order, every file
  complete under a temporary name before any is renamed into place, so a failure (also one
  raised by a generator of records) changes nothing."""
  written: list[tuple[pathlib.Path, pathlib.Path]] = []
  try:
    for path, records in files.items():
      if records is None:
        continue
      path.parent.mkdir(parents=True, exist_ok=True)
      temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
      written.append((temporary, path))
      with open(temporary, "w", encoding="utf-8") as f:
        for record in records:
          f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for temporary, path in written:
      os.replace(temporary, path)
    for path, records in files.items():
      if records is None:
        # Without --skip-bad nothing was rejected: a rejects file of an earlier run is stale.
        path.unlink(missing_ok=True)
  finally:
    for temporary, _ in written:
      temporary.unlink(missing_ok=True)
