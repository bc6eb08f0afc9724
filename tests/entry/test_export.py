"""Export: a trained retriever and its knowledge base as a folder that links without the
workdir, whose encoder towers transformers loads, and whose entities can be added and
removed without retraining or re-encoding the rest."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel

import tiny_world
from zel_jax import export as export_lib
from zel_jax import recipes
from zel_jax.evals import inference, linking
from zel_jax.index import entity_kb
from zel_jax.models import hf_export
from zel_jax.recipes.blink import biencoder as trainer

MENTIONS = [{"text": "the kernel handles it", "start": 4, "end": 10},
            "notes on the [[parser]] and the [[router]]"]


def _trained(root, model_dir, steps=12):
  data = tiny_world.write_world(root / "data")
  workdir = root / "w"
  trainer.train_and_evaluate(tiny_world.tiny_config(data, model_dir, num_train_steps=steps),
                             str(workdir))
  return data, workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  data, workdir = _trained(root, tiny_world.write_tiny_bert(root / "bert"))
  out = root / "out"
  manifest = export_lib.export(str(workdir), str(out), str(data), "computing")
  return data, workdir, out, manifest


def _pooled(tower, feats):
  with torch.no_grad():
    hidden = tower(input_ids=torch.tensor(feats["input_ids"], dtype=torch.long),
                   attention_mask=torch.tensor(feats["attention_mask"], dtype=torch.long)
                   ).last_hidden_state.numpy()
  mask = feats["attention_mask"][..., None]
  return (hidden * mask).sum(1) / mask.sum(1)  # The tiny config pools means.


def test_export_links_as_the_workdir_does(exported):
  data, workdir, out, manifest = exported
  assert (manifest["step"], manifest["entities"], manifest["world"]) == (12, 56, "computing")
  assert set(manifest["towers"].values()) == {"mention_encoder", "entity_encoder"}
  assert manifest["bytes"] > 0
  from_workdir = recipes.open_linker(str(workdir), str(data), "computing").link(MENTIONS, 5)
  linker = linking.Linker.from_pretrained(str(out))
  from_export = linker.link(MENTIONS, 5)
  assert from_export[0]["mention"] == "kernel" and len(from_export[1]["spans"]) == 2
  assert from_export[1]["text"] == "notes on the parser and the router"
  assert [s["mention"] for s in from_export[1]["spans"]] == ["parser", "router"]
  pairs = [(from_workdir[0]["entities"], from_export[0]["entities"])] + [
      (a["entities"], b["entities"])
      for a, b in zip(from_workdir[1]["spans"], from_export[1]["spans"])]
  for a, b in pairs:
    assert [e["document_id"] for e in a] == [e["document_id"] for e in b]
    np.testing.assert_allclose([e["score"] for e in a], [e["score"] for e in b], atol=1e-3)
  for span in from_export[1]["spans"]:
    assert span["document_id"] == span["entities"][0]["document_id"]


def _entity_tower_in_transformers(out, model_class: str):
  """The export's linker and its entity tower loaded by transformers, checked to be a
  `model_class` whose pooled states equal the exported entity vectors within 1e-4."""
  linker = linking.Linker.from_pretrained(str(out))
  tower = AutoModel.from_pretrained(str(out / "entity_encoder")).eval()
  assert type(tower).__name__ == model_class
  feats = linker.featurizer.entity_features(linker.kb.titles, linker.kb.texts,
                                            linker.config.data.entity_length)
  assert np.abs(_pooled(tower, feats) - linker.kb.vectors).max() <= 1e-4
  return linker, tower


def test_towers_load_in_transformers_with_the_same_embeddings(exported):
  _, _, out, _ = exported
  linker, entity_tower = _entity_tower_in_transformers(out, "BertModel")
  # The mention tower differs from the entity tower (trained apart), and matches its own.
  mention_tower = AutoModel.from_pretrained(str(out / "mention_encoder")).eval()
  feats = linker.featurizer.mention_features(["the"], ["kernel"], ["handles it"],
                                             linker.config.data.mention_length)
  ours = inference.embed_rows(linker.encode_mentions, linker.params, feats,
                                      linker.mesh, 8)
  assert np.abs(_pooled(mention_tower, feats) - ours).max() <= 1e-4
  assert np.abs(_pooled(entity_tower, feats) - ours).max() > 1e-4


def test_added_entities_are_found_and_persist_removed_ones_are_gone(exported, tmp_path):
  _, _, out, _ = exported
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  linker = linking.Linker.from_pretrained(str(copy))
  before = linker.kb.vectors.copy()
  added = [{"id": "NEW-1", "title": "quantum", "text": "quantum quantum is a new thing ."},
           {"document_id": "NEW-2", "title": "firmware",
            "text": "firmware firmware is a new thing ."}]
  assert linker.add_entities(added) == 2
  # The others were not re-encoded: their vectors are the same arrays' values.
  np.testing.assert_array_equal(linker.kb.vectors[:len(before)], before)
  # Every entity, the new ones included, scores the mention's dot product with its vector
  # (the tiny encoder is too small to rank unseen words; test_own_kb.py links real ones).
  query = "a note on [[quantum]] here"
  feats = linker.featurizer.mention_features(["a note on"], ["quantum"], ["here"],
                                             linker.config.data.mention_length)
  q = inference.embed_rows(linker.encode_mentions, linker.params, feats, linker.mesh, 8)[0]
  ranked = linker.link([query], top_k=100)[0]["spans"][0]["entities"]
  assert len(ranked) == 58
  for entity in ranked:
    row = linker.kb.row_of(entity["document_id"])
    assert entity["score"] == pytest.approx(float(q @ linker.kb.vectors[row]), abs=1e-3)
  new_vectors = inference.embed_rows(
      linker._encode_entities, linker.params, linker.featurizer.entity_features(
          ["quantum", "firmware"], [a["text"] for a in added], 12), linker.mesh, 8)
  np.testing.assert_allclose(linker.kb.vectors[-2:], new_vectors, atol=1e-5)
  # A restart reads the persisted knowledge base.
  reopened = linking.Linker.from_pretrained(str(copy))
  assert len(reopened.kb) == 58 and reopened.kb.ids[-2:] == ["NEW-1", "NEW-2"]
  np.testing.assert_array_equal(reopened.kb.vectors, linker.kb.vectors)
  assert reopened.link([query], top_k=100)[0]["spans"][0]["entities"] == ranked
  assert reopened.remove_entities(["NEW-1"]) == 1
  found = {e["document_id"] for e in reopened.link([query], top_k=100)[0]["spans"][0][
      "entities"]}
  assert "NEW-1" not in found and "NEW-2" in found and len(found) == 57
  again = linking.Linker.from_pretrained(str(copy))
  assert len(again.kb) == 57 and "NEW-1" not in again.kb.ids
  with pytest.raises(ValueError, match="already in the knowledge base"):
    again.add_entities([added[1]])
  with pytest.raises(KeyError, match="not in the knowledge base"):
    again.remove_entities(["NEW-1"])
  with pytest.raises(ValueError, match="field 'title'"):
    again.add_entities([{"id": "X", "text": "no title"}])
  assert len(linking.Linker.from_pretrained(str(copy)).kb) == 57  # Errors changed nothing.


def test_a_failed_export_leaves_the_previous_one(exported, monkeypatch):
  data, workdir, out, _ = exported
  before = {p.name: p.stat().st_size for p in out.rglob("*")}
  manifest = json.loads((out / "export.json").read_text())
  with pytest.raises(ValueError, match="unknown world"):
    export_lib.export(str(workdir), str(out), str(data), "no-such-world")
  real_save = hf_export.save_encoder

  def disk_full_after_one_tower(directory, *args):
    real_save(directory, *args)
    if directory.name == "entity_encoder":
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(hf_export, "save_encoder", disk_full_after_one_tower)
  with pytest.raises(OSError, match="No space left"):
    export_lib.export(str(workdir), str(out), str(data), "computing")
  assert {p.name: p.stat().st_size for p in out.rglob("*")} == before
  assert json.loads((out / "export.json").read_text()) == manifest
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


def test_mpnet_towers_export_as_mpnet(tmp_path):
  data, workdir = _trained(tmp_path, tiny_world.write_tiny_mpnet(tmp_path / "mpnet"), steps=1)
  out = tmp_path / "out"
  export_lib.export(str(workdir), str(out), str(data), "computing")
  _entity_tower_in_transformers(out, "MPNetModel")


def test_knowledge_base_rows_after_removal_with_views():
  # Two entities with two views each and one with one: removing the first renumbers the
  # others' views, and search returns each entity once at its best view.
  vectors = np.asarray([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], np.float32)
  owners = np.asarray([0, 0, 1, 1, 2])
  kb = entity_kb.EntityKB(["a", "b", "c"], ["A", "B", "C"], ["", "", ""], vectors, owners,
                          views="global+local")
  scores, rows = kb.search(np.asarray([[1, 0]], np.float32), 3)
  assert rows.tolist() == [[0, 1, 2]] and scores[0, 0] == 1
  kb.remove(["a"])
  assert kb.ids == ["b", "c"] and kb.owners.tolist() == [0, 0, 1]
  scores, rows = kb.search(np.asarray([[1, 0]], np.float32), 2)
  assert rows.tolist() == [[0, 1]]
  np.testing.assert_allclose(scores, [[0.1, -1]])
  kb.add(["d"], ["D"], [""], np.asarray([[0.7, 0.7], [0.5, 0.5]], np.float32), [0, 0])
  assert kb.owners.tolist() == [0, 0, 1, 2, 2] and kb.row_of("d") == 2
  with pytest.raises(ValueError, match="empty knowledge base"):
    kb.remove(["b", "c", "d"])


def test_batch_linking_of_a_corpus_from_the_export(exported, tmp_path):
  import subprocess
  import sys
  _, _, out, _ = exported
  corpus = tmp_path / "docs.jsonl"
  lines = [{"text": "the kernel handles it", "start": 4, "end": 10},
           {"id": "d2", "text": "the parser and the router", "spans": [
               {"start": 4, "end": 10}, {"start": 19, "end": 25}]},
           "a [[cache]] line"]
  corpus.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
  links = tmp_path / "links.jsonl"
  result = subprocess.run(
      [sys.executable, "-m", "zel_jax.link", f"--export={out}", f"--input={corpus}",
       f"--output={links}", "--top_k=3", "--chunk=2"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert (summary["documents"], summary["mentions"]) == (3, 4)
  assert summary["documents_per_s"] > 0 and summary["mentions_per_s"] > 0
  written = [json.loads(line) for line in links.read_text().splitlines()]
  assert written == linking.Linker.from_pretrained(str(out)).link(lines, top_k=3)
  assert written[1]["id"] == "d2" and [s["mention"] for s in written[1]["spans"]] == [
      "parser", "router"]
  # A bad line names the file and its line (across chunks); no output is left behind.
  corpus.write_text(corpus.read_text() + json.dumps({"text": "x y", "start": "abc",
                                                     "end": 2}) + "\n")
  links.unlink()
  from zel_jax import link as link_cli
  linker = linking.Linker.from_pretrained(str(out))
  with pytest.raises(ValueError, match=r"docs.jsonl: line 5: field 'start': expected an integer"):
    link_cli.link_file(linker, str(corpus), str(links), 3, chunk=2)
  assert not links.exists() and not (tmp_path / "links.jsonl.tmp").exists()


def test_bench_kb_adds_and_removes_in_a_larger_store(exported):
  from zel_jax.bench import kb as bench_kb
  _, _, out, _ = exported
  result = bench_kb.bench_kb(str(out), size=300, add=20, rebuild_sample=100)
  assert (result["entities"], result["added"], result["rebuild_encode_measured_on"]) == (
      300, 20, 100)
  assert min(result["rebuild_s"], result["add_s"], result["remove_s"]) >= 0
  assert (result["persisted_after_add"], result["persisted_after_remove"]) == (320, 300)
  assert result["kb_bytes"] > 300 * 32 * 4  # The vectors alone.
  # The export itself is untouched: the benchmark's store lives in a scratch folder.
  assert len(linking.Linker.from_pretrained(str(out)).kb) == 56


def test_errors_name_the_input_line_of_a_text_with_several_mentions(exported):
  _, _, out, _ = exported
  linker = linking.Linker.from_pretrained(str(out))
  items = ["a [[kernel]] b [[cache]]", {"text": "x y z", "spans": [{"start": 0, "end": 1},
                                                                    {"start": 2, "end": 9}]}]
  with pytest.raises(ValueError, match=r"input line 2: span \[2, 9\) outside the text"):
    linker.link(items)
  with pytest.raises(ValueError, match="input line 1: give the mentions"):
    linker.link([{"text": "raw text without marks"}])
  with pytest.raises(ValueError, match="mark the mention with double brackets"):
    linker.link(["raw text without marks"])


def test_a_workdir_linkers_scann_index_is_cached_and_read_back(exported, monkeypatch):
  from zel_jax.index import scann_store
  data, workdir, _, _ = exported
  first = recipes.open_linker(str(workdir), str(data), "computing", "scann")
  assert type(first.store).__name__ == "ScannStore"
  assert (workdir / "stores" / "computing.12.scann").is_dir()
  expected = first.link(MENTIONS, 5)

  def no_training(*args, **kwargs):
    raise AssertionError("the cached ScaNN index should have been read, not rebuilt")

  monkeypatch.setattr(scann_store.ScannStore, "build", classmethod(no_training))
  again = recipes.open_linker(str(workdir), str(data), "computing", "scann")
  assert again.link(MENTIONS, 5) == expected
