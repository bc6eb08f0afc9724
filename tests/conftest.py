"""Test setup: 8 fake CPU devices (set before JAX starts) and the shared real data."""

import os
import pathlib
import tempfile

import jax

# Must run before any JAX computation initializes the CPU backend.
jax.config.update("jax_num_cpu_devices", 8)
# Several tests compile the same train step (fresh closures, same program): a persistent
# cache shared by the session (and by pytest-xdist's workers; JAX recompiles where it reads
# an entry the other worker is still writing) turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), f"zel_jax_test_cache_{os.getuid()}"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent


def shared_data_dir() -> pathlib.Path:
  """The real data excerpts committed under tests/data/real (copied from ../shared/data)."""
  return REPO / "tests" / "data" / "real"


@pytest.fixture
def shared_data():
  """The real data excerpts (ZESHEL, the UFET type vocabulary), part of every clone."""
  return shared_data_dir()


@pytest.fixture(scope="session")
def minilm_path():
  """The real all-MiniLM-L6-v2 weights, installed by the project's setup (see README)."""
  from zel_jax.models import bert_io  # pylint: disable=g-import-not-at-top
  return bert_io.resolve_pretrained("all-MiniLM-L6-v2")

# Test helpers (tiny_world.py, checkpoint_worker.py) import as top-level modules.
import sys  # pylint: disable=g-import-not-at-top,wrong-import-order
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
