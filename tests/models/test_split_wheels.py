"""A model zip split over several installed wheels: found through the wheels' metadata,
joined, verified and unpacked once; missing, truncated and corrupt chunks give clear errors
and leave no folder that looks finished. Fake distributions are written into a folder on
sys.path, which importlib.metadata reads as it reads site-packages."""

import io
import os
import zipfile

import numpy as np
import pytest

from zel_jax.models import split_wheels

FILES = {"config.json": b'{"model_type": "mpnet"}',
         "model.safetensors": np.random.default_rng(0).bytes(50_000),
         "tokenizer.json": b"{}"}


def _install_fake(site, monkeypatch, parts=3, corrupt=None, truncate=None, skip=None):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    for name, data in FILES.items():
      archive.writestr(f"toy-model/{name}", data)
  blob = bytearray(buffer.getvalue())
  if corrupt is not None:
    blob[corrupt] ^= 0xFF
  size = -(-len(blob) // parts)
  chunks = [bytes(blob[i * size:(i + 1) * size]) for i in range(parts)]
  if truncate is not None:
    chunks[truncate] = chunks[truncate][:len(chunks[truncate]) // 2]
  names = []
  for i, chunk in enumerate(chunks, start=1):
    dist = f"toy-model-part-{i:03d}"
    names.append(dist)
    if skip == i:
      continue
    package = site / f"toy_model_part_{i:03d}"
    package.mkdir(parents=True)
    (package / f"toy-model.zip.{i:03d}").write_bytes(chunk)
    info = site / f"toy_model_part_{i:03d}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"toy_model_part_{i:03d}/toy-model.zip.{i:03d},,\n")
  monkeypatch.syspath_prepend(str(site))
  spec = split_wheels.SplitModel(name="toy-model", distributions=tuple(names),
                                 chunk_prefix="toy-model.zip.", folder="toy-model")
  monkeypatch.setitem(split_wheels.SPLIT_MODELS, "toy-model", spec)



def test_joins_verifies_and_unpacks_once(tmp_path, monkeypatch):
  _install_fake(tmp_path / "site", monkeypatch)
  folder = split_wheels.model_dir("toy-model", root=str(tmp_path / "cache"))
  assert folder == str(tmp_path / "cache" / "toy-model")
  for name, data in FILES.items():
    assert (tmp_path / "cache" / "toy-model" / name).read_bytes() == data
  assert os.listdir(tmp_path / "cache") == ["toy-model"]  # No temporary folder left.
  # Done once: with the chunks gone the cached folder is still returned.
  for chunk in (tmp_path / "site").glob("toy_model_part_*/toy-model.zip.*"):
    chunk.unlink()
  assert split_wheels.model_dir("toy-model", root=str(tmp_path / "cache")) == folder


def test_missing_wheel_names_it_and_the_command(tmp_path, monkeypatch):
  _install_fake(tmp_path / "site", monkeypatch, skip=2)
  with pytest.raises(FileNotFoundError, match=r"toy-model-part-002 \(not installed\).*"
                     r"python -m zel_jax.weights toy-model"):
    split_wheels.model_dir("toy-model", root=str(tmp_path / "cache"))
  assert not (tmp_path / "cache" / "toy-model").exists()


@pytest.mark.parametrize("damage", [dict(corrupt=60_000 // 2), dict(truncate=1)])
def test_damaged_chunk_is_refused_and_nothing_is_left(tmp_path, monkeypatch, damage):
  _install_fake(tmp_path / "site", monkeypatch, **damage)
  with pytest.raises(ValueError, match=r"toy-model\.zip\.001 \+ toy-model\.zip\.002 \+ "
                     r"toy-model\.zip\.003: .*(CRC|not a valid zip)"):
    split_wheels.model_dir("toy-model", root=str(tmp_path / "cache"))
  assert os.listdir(tmp_path / "cache") == []


def test_unknown_model():
  with pytest.raises(KeyError, match="not one of the split-wheel models"):
    split_wheels.model_dir("no-such-model")
