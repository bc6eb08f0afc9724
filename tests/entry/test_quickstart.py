"""The quickstart's command line beside the bench's, its ScaNN fallback and its stage-2 line.

The quickstart's training and evaluations take minutes; `quickstart.run` is exercised here with
them replaced by fakes that record the store each search asks for, so what is tested is the
quickstart's own flow: which store it picks, what it prints and in which order.
"""

import logging
import os
import subprocess
import sys
import textwrap
import types

import pytest

from zel_jax import quickstart
from zel_jax.index import scann_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROSS = {"num_candidates": 64, "unnormalized_accuracy": 55.5, "retriever_accuracy": 44.25,
         "normalized_accuracy": 77.75, "mentions": 10}
STAGE2_LINE = ("reranking the bi-encoder's top 64 (BLINK stage 2): accuracy 55.50 (bi-encoder "
               "44.25); normalized 77.75")


@pytest.mark.parametrize("program,argv,expected", [
    ("bench", ["bench", "encode"], "data == '' and FLAGS.world == 'foldoc'"),
    ("quickstart", ["quickstart", "--stage2"], "data == 'data/foldoc' and FLAGS.stage2")])
def test_bench_and_quickstart_import_together(program, argv, expected):
  # Both have --data: importing the two (a notebook, a test, one entry point reusing the
  # other's helpers) must define neither's flags; the program defines its own.
  script = textwrap.dedent(f"""
      from absl import flags
      from zel_jax import quickstart
      from zel_jax.bench import __main__ as bench
      FLAGS = flags.FLAGS
      {program}.define_flags()
      FLAGS({argv!r})
      assert FLAGS.{expected}, FLAGS.flag_values_dict()
      print("ok")
  """)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "ok"


def test_results_lines_with_and_without_stage2():
  rows = {"BM25 (title + text)": {"mentions": 10, "recall@1": 10.0, "recall@16": 20.0,
                                  "recall@64": 30.0}}
  assert quickstart.results_lines(rows) == [
      "FOLDOC test, 10 mentions, recall (%):",
      "retriever                       @1     @16     @64",
      "BM25 (title + text)          10.00   20.00   30.00"]
  assert quickstart.results_lines({**rows, "cross-encoder": CROSS})[-2:] == ["", STAGE2_LINE]


@pytest.fixture
def fake_steps(monkeypatch):
  """quickstart.run with its world, training, evaluations and linker replaced; returns the
  stores asked for, in order ("linker" for the linker's)."""
  asked = []

  def evaluate(workdir, split, store="exact", baseline=None, top_k=100):
    del workdir, split, baseline, top_k
    asked.append(store)
    return {"mentions": 10, "recall@1": 1.0, "recall@16": 2.0, "recall@64": 3.0}

  class Linker:
    def link(self, records, top_k, reranker=None):
      del records, top_k, reranker
      return [{"entities": [{"title": "round-robin", "score": 9.0}]}]

  def open_linker(workdir, data, world, store="exact"):
    del workdir, data, world
    asked.append(("linker", store))
    return Linker()

  monkeypatch.setattr(quickstart.foldoc, "fetch_foldoc", lambda out: out)
  monkeypatch.setattr(quickstart, "_evaluate", evaluate)
  monkeypatch.setattr(quickstart, "_stage2", lambda workdir, data: (None, dict(CROSS)))
  monkeypatch.setattr(quickstart.recipes, "for_config", lambda config: types.SimpleNamespace(
      train=lambda config, workdir: {}))
  monkeypatch.setattr(quickstart.recipes, "open_linker", open_linker)
  return asked


def test_stage2_prints_its_accuracy_line(fake_steps, tmp_path, capsys):
  summary = quickstart.run(str(tmp_path / "w"), str(tmp_path / "data"), stage2=True)
  out = capsys.readouterr().out
  assert STAGE2_LINE in out
  # After the recall table, before the linked sentence.
  assert out.index("MiniLM-L6, trained") < out.index(STAGE2_LINE) < out.index("-> round-robin")
  assert summary["cross-encoder"] == {"unnormalized_accuracy": 55.5,
                                      "normalized_accuracy": 77.75}
  assert summary["linked"] == ["round-robin"]


def test_without_stage2_no_stage2_line(fake_steps, tmp_path, capsys):
  quickstart.run(str(tmp_path / "w"), str(tmp_path / "data"))
  assert "BLINK stage 2" not in capsys.readouterr().out


def _hide_scann(monkeypatch):
  # None in sys.modules makes `import scann...` raise ImportError, as where it is not installed.
  for name in [n for n in sys.modules if n.startswith("scann.")] + ["scann"]:
    monkeypatch.setitem(sys.modules, name, None)


def test_exact_store_with_one_warning_where_scann_cannot_be_imported(
    fake_steps, monkeypatch, tmp_path, caplog):
  _hide_scann(monkeypatch)
  assert not scann_store.available()
  with caplog.at_level(logging.WARNING):
    summary = quickstart.run(str(tmp_path / "w"), str(tmp_path / "data"), stage2=True)
  assert summary["store"] == "exact"
  assert fake_steps == ["exact", "exact", "exact", ("linker", "exact")]
  warned = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1 and "ScaNN" in warned[0].getMessage()


def test_scann_where_it_imports(fake_steps, tmp_path, caplog):
  if not scann_store.available():
    pytest.skip("ScaNN is not installed here (x86-64 Linux only)")
  with caplog.at_level(logging.WARNING):
    summary = quickstart.run(str(tmp_path / "w"), str(tmp_path / "data"))
  # The baselines are exact by design; the trained encoder and the linker use ScaNN.
  assert summary["store"] == "scann"
  assert fake_steps == ["exact", "exact", "scann", ("linker", "scann")]
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
