"""The install's promises (docs/install.md): the core imports without any extra (every zel_jax
module but the TFDS builder, with the extras' packages hidden as if never installed), the TFDS
builder asks for its extra, and pyproject's extras are what the docs say."""

import json
import pathlib
import re
import subprocess
import sys

from packaging.requirements import Requirement
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TFDS_MODULE = "zel_jax.data.tfds_zeshel"
# The packages of the tfds, test and bench extras that zel_jax itself imports.
EXTRAS_ONLY = ("tensorflow_datasets", "array_record", "torch", "faiss", "matplotlib")

# The entry points define their absl flags at import, several of the same name (--config),
# so each is imported in an interpreter of its own.
ENTRY_POINTS = ("train", "evaluate", "link", "encode", "quickstart", "bench", "weights")

# Runs in a fresh interpreter: every finder on sys.meta_path is wrapped so that the hidden
# packages are not found (find_spec -> None, `import` -> ModuleNotFoundError), exactly as
# when they are not installed; then imports each module named on the command line.
_CHILD = r"""
import importlib, json, sys, traceback
hidden = set(sys.argv[1].split(","))

class Hiding:
  def __init__(self, finder):
    self._finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in hidden:
      return None
    find = getattr(self._finder, "find_spec", None)
    return find(name, path, target) if find else None
  def __getattr__(self, name):
    return getattr(self._finder, name)

sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
out = {"failed": {}, "tfds_error": None}
for name in sys.argv[2].split(","):
  try:
    importlib.import_module(name)
  except Exception:
    out["failed"][name] = traceback.format_exc()[-2000:]
try:
  importlib.import_module(sys.argv[3])
except ImportError as e:
  out["tfds_error"] = str(e)
out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in hidden)
print(json.dumps(out))
"""


def _modules() -> list[str]:
  """Every importable zel_jax module (a __main__ that runs when imported is a command only)."""
  out = []
  for path in sorted((REPO / "zel_jax").rglob("*.py")):
    if path.name == "__main__.py" and "__name__ == \"__main__\"" not in path.read_text():
      continue
    parts = ("zel_jax",) + path.relative_to(REPO / "zel_jax").with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out.append(".".join(parts))
  return out


def _import_without_extras(modules: list[str]) -> dict:
  run = subprocess.run(
      [sys.executable, "-c", _CHILD, ",".join(EXTRAS_ONLY), ",".join(modules), TFDS_MODULE],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_the_extras_and_tfds_asks_for_its_extra():
  modules = [m for m in _modules() if m != TFDS_MODULE]
  assert len(modules) > 100 and "zel_jax.bench.__main__" in modules
  entry = {name: [m for m in modules if m.split(".")[1:2] == [name]] for name in ENTRY_POINTS}
  library = [m for m in modules if not any(m in group for group in entry.values())]
  assert all(entry.values()) and len(library) > 90
  for group in [library, *entry.values()]:
    out = _import_without_extras(group)
    assert out["failed"] == {}, group
    assert out["leaked"] == []
    assert 'pip install "zel_jax[tfds]"' in (out["tfds_error"] or ""), out["tfds_error"]


def _pyproject() -> dict:
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+.
  return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set[str]:
  """`name` or `name[extra,...]` of each requirement, without versions or markers."""
  out = set()
  for text in requirements:
    r = Requirement(text)
    out.add(r.name + (f"[{','.join(sorted(r.extras))}]" if r.extras else ""))
  return out


def test_extras_follow_jax_and_keep_tfds_and_torch_out_of_the_core():
  project = _pyproject()
  core = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
  extras = project["optional-dependencies"]
  assert {"gpu", "tpu", "tfds", "test"} <= set(extras)
  for extra, jax_extra in (("gpu", "cuda12"), ("tpu", "tpu")):
    jax_req, = (Requirement(r) for r in extras[extra])
    assert (jax_req.name, jax_req.extras) == ("jax", {jax_extra})
    assert jax_req.specifier == core["jax"].specifier  # The same jax as the core's.
  assert _names(extras["tfds"]) == {"tensorflow-datasets", "array-record"}
  assert "zel_jax[tfds]" in _names(extras["test"])
  for package in ("tensorflow-datasets", "array-record", "torch", "faiss-cpu", "tensorflow"):
    assert package not in core, package
  assert "huggingface-hub" in core and "transformers" in core
  torch_in = {name for name, reqs in extras.items() if "torch" in _names(reqs)}
  assert torch_in == {"test", "bench"}


def test_the_install_page_lists_exactly_the_extras():
  extras = _pyproject()["optional-dependencies"]
  page = (REPO / "docs" / "install.md").read_text()
  rows = re.findall(r"^\| `([a-z]+)` \| ([^|]+) \|", page, flags=re.M)
  documented = {name: set(re.findall(r"`([^`]+)`", cell)) for name, cell in rows}
  assert documented == {name: _names(reqs) for name, reqs in extras.items()}
  for extra in ("gpu", "tpu", "test"):
    assert f'pip install -e ".[{extra}]"' in page, extra
  assert 'pip install "zel_jax[tfds]"' in page
  assert "--index-url https://download.pytorch.org/whl/cpu" in page
