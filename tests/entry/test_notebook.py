"""notebooks/explore.ipynb executed top to bottom on CPU, as a Colab user would run it (the
install cell finds zel_jax installed and does nothing), and the HTML it links with."""

import os
import pathlib
import re

import nbformat
from nbclient import NotebookClient

from zel_jax.evals import linking

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_highlight_html_marks_mentions_and_escapes():
  record = {"text": "a <b> & [C] here", "start": 9, "end": 10,
            "entities": [{"title": "C (language)", "score": 12.345}, {"title": "x"}]}
  assert linking.highlight_html(record) == (
      '<p>a &lt;b&gt; &amp; [<mark title="C (language)">C</mark><sub>&rarr; C (language) '
      "12.35</sub>] here</p>")
  spans = {"text": "Emacs is written in Lisp.", "spans": [
      {"start": 20, "end": 24, "title": "Lisp", "score": 0.9},
      {"start": 0, "end": 5, "title": "Emacs \"GNU\"", "score": 0.8},
      {"start": 2, "end": 8, "title": "overlaps Emacs", "score": 0.1}]}
  html = linking.highlight_html(spans)
  assert html.count("<mark") == 2 and "overlaps" not in html
  assert html.index(">Emacs</mark>") < html.index(">Lisp</mark>")
  assert 'title="Emacs &quot;GNU&quot;"' in html
  assert linking.highlight_html({"text": "no one", "start": 0, "end": 2, "entities": []}) == (
      '<p><mark title="(no entity)">no</mark><sub>&rarr; (no entity)</sub> one</p>')


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                 and o.name == "stdout")


def test_explore_notebook_runs_top_to_bottom(tmp_path):
  notebook = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
  env = dict(os.environ, ZEL_NOTEBOOK_DATA=str(tmp_path / "foldoc"),
             ZEL_NOTEBOOK_WORKDIR=str(tmp_path / "workdir"), ZEL_NOTEBOOK_STEPS="20")
  env.pop("ZEL_JAX_SOURCE", None)
  client = NotebookClient(notebook, timeout=1500, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO / "notebooks")}})
  client.execute(env=env)  # Raises CellExecutionError naming the failing cell.

  tagged = {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}
  rows = {}
  for line in _text(tagged["recall-table"]).splitlines()[1:]:
    name, *values = re.split(r"\s{2,}", line.strip())
    rows[name] = [float(v) for v in values]
  assert set(rows) == {"BM25", "MiniLM-L6, untrained", "MiniLM-L6, trained"}
  # Twenty steps of in-batch negatives already lift R@64 far above the untrained encoder
  # (45% untrained, 93% after 20 steps when this was written).
  assert rows["MiniLM-L6, trained"][2] > rows["MiniLM-L6, untrained"][2] + 20
  assert all(0 <= v <= 100 for values in rows.values() for v in values)
  assert any("image/png" in o.get("data", {}) for o in tagged["recall-plot"].outputs)
  html = "".join(o["data"].get("text/html", "") for o in tagged["link"].outputs
                 if o.output_type == "display_data")
  assert html.count("<mark") == 4 and ">round robin</mark>" in html
  assert (tmp_path / "workdir" / "stores").is_dir()
