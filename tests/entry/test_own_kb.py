"""Linking one's own knowledge base end to end, training nothing: a JSONL KB and BLINK-format
mentions converted to the ZESHEL layout, an export of the quickstart's retriever (MiniLM-L6
before training, mean pooled as its checkpoint pools), entities added and found, one removed
and no longer found, and a restarted process reading the persisted knowledge base."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from zel_jax import export as export_lib
from zel_jax import workdir_io
from zel_jax.configs import blink_biencoder
from zel_jax.data import convert, zeshel
from zel_jax.evals import linking

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "own_kb"
ADDED = [{"id": "docker", "title": "Docker",
          "text": "Docker packages an application and its dependencies into a container "
                  "image that runs the same way on any machine."},
         {"id": "nginx", "title": "nginx",
          "text": "nginx is a web server that also works as a reverse proxy and load "
                  "balancer in front of application servers."}]
QUERIES = ["The team ships every service as a [[Docker]] container image .",
           "Requests reach the app through [[nginx]] acting as a reverse proxy ."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("own_kb")
  data = root / "data"
  convert.main(["kb", f"--input={EXAMPLE / 'kb.jsonl'}", "--format=jsonl", "--world=mykb",
                f"--out={data}"])
  convert.main(["mentions", f"--input={EXAMPLE / 'mentions.blink.jsonl'}", "--format=blink",
                "--world=mykb", "--split=test", f"--out={data}"])
  config = blink_biencoder.get_config("runlocal")  # The quickstart's retriever.
  config.data.dir = str(data)
  config.model.pooling = "mean"  # Untrained: as the checkpoint pools.
  workdir = root / "quickstart"
  workdir_io.save_config(config, str(workdir))
  out = root / "export"
  export_lib.export(str(workdir), str(out), str(data), "mykb", untrained=True)
  return data, out


def _blink_rows():
  return [json.loads(line) for line in (EXAMPLE / "mentions.blink.jsonl").open()]


def test_converted_kb_links_and_takes_new_entities(exported, tmp_path):
  data, out = exported
  dataset = zeshel.ZeshelDataset(data)
  mentions = list(dataset.iter_mentions("test"))
  assert len(mentions) == 8 and len(dataset.entities("mykb")) == 12
  copy = tmp_path / "export"
  shutil.copytree(out, copy)
  linker = linking.Linker.from_pretrained(str(copy))
  records = []
  for row in _blink_rows():
    left = row["context_left"] + " "
    records.append({"text": left + row["mention"] + " " + row["context_right"],
                    "start": len(left), "end": len(left) + len(row["mention"])})
  linked = linker.link(records, top_k=3)
  gold = [m.label_document_id for m in mentions]
  hits = sum(r["entities"][0]["document_id"] == g for r, g in zip(linked, gold))
  assert hits >= 7, [(r["mention"], r["entities"][0]["title"]) for r in linked]

  assert linker.add_entities(ADDED) == 2
  best = [r["spans"][0]["document_id"] for r in linker.link(QUERIES, top_k=3)]
  assert best == ["docker", "nginx"]
  assert linker.remove_entities(["docker"]) == 1
  everything = linker.link(QUERIES[:1], top_k=100)[0]["spans"][0]["entities"]
  assert len(everything) == 13 and "docker" not in {e["document_id"] for e in everything}


def test_a_restarted_process_reads_the_persisted_knowledge_base(exported, tmp_path):
  _, out = exported
  copy = tmp_path / "export"
  shutil.copytree(out, copy)
  linker = linking.Linker.from_pretrained(str(copy))
  linker.add_entities(ADDED)
  linker.remove_entities(["docker"])
  del linker
  result = subprocess.run(
      [sys.executable, "-m", "zel_jax.link", f"--export={copy}", f"--text={QUERIES[1]}",
       "--top_k=13"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  printed = result.stdout.strip().splitlines()
  summary = json.loads(printed[-1])
  assert summary["linked"] == 1 and summary["top"][0]["document_id"] == "nginx"
  assert "'nginx' -> nginx" in printed[-2] and "Docker" not in printed[-2]
  kb = json.loads((copy / "kb" / "kb.json").read_text())
  assert kb["entities"] == 13
