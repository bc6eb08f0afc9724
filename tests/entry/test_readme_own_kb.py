"""README's "Link your own knowledge base" section, run as written: its shell commands one by
one in a fresh folder holding the example files and a quickstart workdir, then its Python."""

import contextlib
import io
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import tiny_world
from zel_jax.configs import blink_biencoder
from zel_jax.recipes.blink import biencoder as trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _section() -> str:
  text = (REPO / "README.md").read_text()
  start = text.index("## Link your own knowledge base")
  return text[start:text.index("\n## ", start + 1)]


def test_the_section_is_at_most_40_lines():
  assert len(_section().strip().splitlines()) <= 40


def test_readme_own_kb_commands_run_as_written(tmp_path, monkeypatch):
  section = _section()
  shell = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).splitlines()
  python = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
  shutil.copytree(REPO / "examples", tmp_path / "examples")
  # The quickstart's workdir: its retriever config (MiniLM-L6), trained two steps on a tiny
  # world here; the quickstart itself trains it on FOLDOC.
  config = blink_biencoder.get_config("runlocal")
  config.data.dir = str(tiny_world.write_world(tmp_path / "tiny"))
  config.num_train_steps, config.batch_size = 2, 8
  config.data.mention_length = config.data.entity_length = 32
  config.evals.splits = ()
  trainer.train_and_evaluate(config, str(tmp_path / "workdirs" / "quickstart"))

  outputs = []
  for line in shell:
    words = shlex.split(line)  # As the shell reads it.
    assert words[:2] == ["python", "-m"], line
    result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (line, result.stderr[-3000:])
    outputs.append(result.stdout.strip().splitlines()[-1])
  assert (tmp_path / "exports" / "mykb" / "export.json").exists()
  assert json.loads(outputs[3])["linked"] == 1
  report = json.loads(outputs[4])
  assert report["mentions"] == 8 and 0 <= report["recall@1"] <= report["recall@4"] <= 100

  monkeypatch.chdir(tmp_path)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(python, "README.md", "exec"), {})  # pylint: disable=exec-used
  assert printed.getvalue().strip() == "Docker"
  kb = json.loads((tmp_path / "exports" / "mykb" / "kb" / "kb.json").read_text())
  assert kb["entities"] == 12  # Added, then removed: the export is as it was.
