"""Checks on untrusted input before it is used: names that become file names, paths built
from data, and JSON objects that name a key twice.

World, split and language names come from flags and from data files (a mention's `corpus`,
a TAC DOCID) and are joined into paths: `../../x` would read or write outside the data
folder, so such a name is refused before any file is touched. A repeated JSON key is legal
to `json.loads`, which keeps the last value and silently drops the first; in a record it is
a broken file, so it is refused with the key named.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


class UnsafeNameError(ValueError):
  """A name that would take a path outside its folder."""


def plain_name(name: Any, what: str = "world") -> str:
  """`name` when it is a plain file name: a non-empty string with no folder part, not "."
  or "..", no NUL. Checked on the string alone (no filesystem access), so a refused name
  never reaches open() or stat()."""
  separators = {"/", "\\", "\x00"} | ({os.altsep} if os.altsep else set())
  if (not isinstance(name, str) or name in ("", ".", "..") or
      any(s in name for s in separators)):
    raise UnsafeNameError(f"{what} {name!r} is not a plain name (one that is not empty, '.' "
                          "or '..' and holds no '/', '\\' or NUL): it becomes a file name "
                          "under the data folder")
  return name


def confined(root: os.PathLike | str, *parts: str, what: str = "path") -> pathlib.Path:
  """root/parts..., refused unless it resolves (symbolic links and '..' followed) to a path
  under root: a file named by data may not lead out of the folder it was given for."""
  base = pathlib.Path(root)
  path = base.joinpath(*parts)
  resolved, top = path.resolve(), base.resolve()
  if resolved != top and top not in resolved.parents:
    raise UnsafeNameError(f"{what} {path} resolves to {resolved}, outside {top}")
  return path


class DuplicateKeyError(ValueError):
  """A JSON object that names a key twice."""

  def __init__(self, key: str):
    super().__init__(f"key {key!r} given twice in one object (JSON keeps the last silently)")
    self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  record: dict[str, Any] = {}
  for key, value in pairs:
    if key in record:
      raise DuplicateKeyError(key)
    record[key] = value
  return record


def loads(text: str | bytes) -> Any:
  """json.loads, refusing an object (at any depth) that repeats a key: DuplicateKeyError."""
  return json.loads(text, object_pairs_hook=_unique_keys)
