"""Experiment configs, one file per experiment (`get_config(arg)`, big_vision style).

They are installed inside the package, so nothing named `configs` lands in site-packages, and
`--config` takes either a file path or a packaged config's name from any directory:

  --config=configs/blink_biencoder.py:runlocal    a file (the repository's configs/ folder)
  --config=blink_biencoder:runlocal               the packaged config of that name
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app

HERE = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The packaged experiment configs (every module with a get_config)."""
  out = []
  for file in sorted(os.listdir(HERE)):
    if file.endswith(".py") and not file.startswith("_") and file != "common.py":
      out.append(file[:-3])
  return out


def resolve(value: str) -> str:
  """`path[:arg]` -> the same when the file exists; otherwise a packaged config's file.

  A bare name (`blink_biencoder`, `blink_biencoder.py`) or a `configs/<name>.py` path that
  does not exist from here (the README's form, typed outside the repository) names the
  packaged config. Anything else is returned unchanged, so the config flag reports it.
  """
  path, colon, arg = value.partition(":")
  if os.path.exists(path):
    return value
  name = os.path.basename(path).removesuffix(".py")
  if os.path.dirname(path) in ("", "configs") and name in names():
    return os.path.join(HERE, f"{name}.py") + colon + arg
  return value


def resolve_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
  """Command-line arguments with `--<flag>=name[:arg]` (or `--<flag> name`) resolved."""
  out, argv = [], list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith(f"--{flag}="):
      a = f"--{flag}=" + resolve(a.split("=", 1)[1])
    elif a == f"--{flag}" and i + 1 < len(argv):
      out.append(a)
      i += 1
      a = resolve(argv[i])
    out.append(a)
    i += 1
  return out


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`app.run(main, flags_parser=configs.parse_flags)`: absl's parsing after resolving the
  config flag's packaged names."""
  return app.parse_flags_with_usage(resolve_argv(argv))
