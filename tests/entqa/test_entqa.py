"""EntQA end to end: the retriever and reader trainers on the tiny world, the metrics, the
title-match baseline, the threshold calibration, the evaluate / link command paths, and an
export of the reader linking raw text without its workdirs."""

import json
import os

import numpy as np
import pytest

import tiny_world
from zel_jax import evaluate
from zel_jax import export as export_cli
from zel_jax import link as link_cli
from zel_jax.data import documents as documents_lib
from zel_jax.data import zeshel
from zel_jax.evals import linking
from zel_jax.recipes.entqa import end_to_end, passage_retrieval, reader_trainer
from zel_jax.recipes.entqa import reader as entqa_reader
from zel_jax.recipes.entqa import retriever as entqa_retriever


def _doc(doc_id, text, spans=()):
  return documents_lib.Document(doc_id, text, None, tuple(
      documents_lib.GoldSpan(*s) for s in spans))


# ------------------------------------------------------------------------------------------
# Metrics, baseline, threshold.


def test_end_to_end_report_strong_and_mention_detection():
  gold = {("d1", 0, 4, "A"), ("d1", 10, 14, "B"), ("d2", 3, 5, "C")}
  perfect = [(*g, 0.9) for g in gold]
  report = end_to_end.end_to_end_report(gold, perfect)
  assert report["inkb_micro_f1"] == 100.0 and report["md_f1"] == 100.0
  # A wrong entity on a right span: strong matching loses it, mention detection does not.
  wrong = [("d1", 0, 4, "A", 0.9), ("d1", 10, 14, "X", 0.9), ("d2", 3, 5, "C", 0.9),
           ("d3", 0, 2, "A", 0.9)]  # d3 has no gold: a false positive.
  report = end_to_end.end_to_end_report(gold, wrong)
  assert report["inkb_micro_p"] == 50.0                 # 2 of 4
  assert report["inkb_micro_r"] == pytest.approx(66.67)  # 2 of 3
  assert report["inkb_micro_f1"] == pytest.approx(57.14)
  assert report["md_p"] == 75.0 and report["md_r"] == 100.0
  assert end_to_end.end_to_end_report(gold, [])["inkb_micro_f1"] == 0.0


def test_calibrate_picks_the_best_f1_threshold():
  gold = {("d", 0, 1, "A"), ("d", 2, 3, "B")}
  predicted = [("d", 0, 1, "A", 0.9), ("d", 2, 3, "B", 0.5), ("d", 4, 5, "C", 0.3),
               ("d", 6, 7, "D", 0.2)]
  result = end_to_end.calibrate(gold, predicted, grid=[0.1, 0.25, 0.4, 0.6])
  # 0.4 keeps exactly the two golds (F1 100); 0.6 loses B, 0.25 and 0.1 add false ones.
  assert result["gamma"] == 0.4 and result["f1"] == 100.0
  assert 0.3 <= end_to_end.calibrate(gold, predicted)["gamma"] < 0.5


def test_title_match_longest_first_without_overlap_or_self(tmp_path):
  root = tmp_path / "data"
  (root / "documents").mkdir(parents=True)
  (root / "mentions").mkdir()
  entities = [("E1", "Unix"), ("E2", "Unix shell"), ("E3", "shell"), ("E4", "C"),
              ("E5", "shell")]  # A second "shell": the first in file order wins.
  with open(root / "documents" / "w.json", "w") as f:
    for doc_id, title in entities:
      f.write(json.dumps({"document_id": doc_id, "title": title, "text": title + " ."}) + "\n")
  (root / "mentions" / "test.json").write_text("")
  dataset = zeshel.ZeshelDataset(root)
  text = "a Unix shell and a shell in C or Unix"
  doc = _doc("D", text)
  found = end_to_end.title_match(dataset, [doc], ["w"])
  spans = [(text[c0:c1], e) for _, c0, c1, e, _ in found]
  assert spans == [("Unix shell", "E2"), ("shell", "E3"), ("C", "E4"), ("Unix", "E1")]
  own = _doc("E3", "the shell")  # An entity's own text never links to itself.
  assert end_to_end.title_match(dataset, [own], ["w"]) == []


def test_training_lists_put_missed_golds_last_and_label_spans():
  rows = np.asarray([[5, 6, 7, 8], [1, 2, 3, -1]])
  golds = [np.asarray([7, 9]), np.asarray([4])]
  out = entqa_reader.with_golds(rows, golds)
  # 9 was missed: it replaces the lowest-ranked non-gold (8); 4 replaces the last slot.
  assert out.tolist() == [[5, 6, 7, 9], [1, 2, 3, 4]]


def test_a_perfect_reader_scores_exactly_100(tmp_path, minilm_path):
  """Labels -> logits that put all mass on them -> span decoding -> characters -> merge ->
  metrics: any off-by-one between the training targets (row position j + 1) and decoding
  (or the window-edge rule dropping whole mentions) shows up as a lost point."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from zel_jax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.entqa import model as entqa  # pylint: disable=g-import-not-at-top
  data = tiny_world.write_world(tmp_path / "data")
  dataset = zeshel.ZeshelDataset(data)
  featurizer = features_lib.Featurizer.from_pretrained(minilm_path)
  config = _retriever_config(data, minilm_path)
  docs = documents_lib.zeshel_documents(dataset, "train")
  table = passage_retrieval.entity_table(dataset, ["computing"], featurizer, 12)
  pset = passage_retrieval.passage_set(config, dataset, featurizer, docs, table)
  # Some golds sit at a window's inner edge: the edge rule drops them there, and the
  # neighbouring window must read them.
  assert any(entqa_reader._cut_by_window_edge(pset.passages, p, j0, j1)  # pylint: disable=protected-access
             for p, spans in enumerate(pset.gold_spans) for j0, j1, _ in spans)
  c = 4
  rng = np.random.default_rng(0)
  rows = np.full((len(pset), c), -1, np.int64)
  for p, gold in enumerate(pset.golds):
    others = [r for r in rng.permutation(len(table)) if r not in pset.exclude[p]]
    rows[p] = np.concatenate([gold, others])[:c]
  assert max(len(g) for g in pset.golds) <= c
  index = np.arange(len(pset))
  lab = entqa_reader.labels(pset, rows, index)
  mask = entqa_reader.span_mask(pset, index)
  # One gold span per (passage, entity) here, so start and end logits pin it down.
  assert all(len(s) == len({r for *_, r in s}) for s in pset.gold_spans)
  start = jnp.where(lab["start_labels"] > 0, 20.0, -20.0)
  end = jnp.where(lab["end_labels"] > 0, 20.0, -20.0)
  rank = jnp.where(lab["rank_labels"] > 0, 10.0, -10.0)
  spans = jnp.broadcast_to(jnp.asarray(mask)[:, None, :], start.shape)
  best, j0, j1, null = entqa.top_spans(start, end, spans, 16, 12)
  rank_lp = entqa.masked_log_softmax(rank, jnp.asarray(lab["candidate_valid"]))
  rset = entqa_reader.ReaderSet(pset, table, rows)
  answers = []
  for p in index:
    answers += entqa_reader.passage_answers(rset, p, np.asarray(rank_lp[p]),
                                            np.asarray(best[p]), np.asarray(j0[p]),
                                            np.asarray(j1[p]), np.asarray(null[p]), 3, False)
  merged = [a for a in entqa.merge_predictions(answers) if a[4] > 0.05]
  report = end_to_end.end_to_end_report(end_to_end.gold_set(docs), merged)
  assert report["gold"] == 48
  assert report["inkb_micro_f1"] == 100.0 and report["md_f1"] == 100.0


# ------------------------------------------------------------------------------------------
# The trainers, evaluate and link on the tiny world.


def _retriever_config(data, model_dir, **overrides):
  from zel_jax.configs import entqa_retriever as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.data.dir = str(data)
  config.model.pretrained = str(model_dir)
  config.model.pooling = "mean"
  config.model.hidden_dropout = config.model.attention_dropout = 0.0
  config.data.passage_length = 12
  config.data.passage_stride = 6
  config.data.topic_tokens = 4
  config.data.entity_length = 12
  config.data.max_train_passages = 24
  config.negatives.num = 4
  config.negatives.hard_fraction = 0.25
  config.negatives.hard_top = 6
  config.batch_size = 8
  config.num_train_steps = 8        # 3 batches an epoch: mined in epochs 0, 1 and 2.
  config.log_every = 2
  config.checkpoint_every = 4
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_fraction = 0.0
  config.eval_batch_size = 16
  config.evals.splits = ("train", "test")
  config.evals.max_train_passages = 40
  config.evals.top_k = 8
  config.mesh = [("data", 4), ("fsdp", 2)]
  return tiny_world._override(config, overrides)  # pylint: disable=protected-access


def _reader_config(data, model_dir, retriever, **overrides):
  from zel_jax.configs import entqa_reader as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.data.dir = str(data)
  config.data.candidates = str(retriever)
  config.model.pretrained = str(model_dir)
  config.model.hidden_dropout = config.model.attention_dropout = 0.0
  config.data.entity_length = 12
  config.data.num_candidates = 4
  config.reader.top_k = 4
  # A from-scratch 2-layer reader needs ~80 steps at a high rate before any span beats the
  # null span (it then reads the training documents' mentions back).
  config.batch_size = 8
  config.num_train_steps = 80
  config.log_every = 10
  config.checkpoint_every = 40
  config.optimizer.learning_rate = 1e-2
  config.optimizer.warmup_fraction = 0.0
  config.eval_batch_size = 8
  config.evals.splits = ("test",)
  config.evals.calibrate_split = "val"
  config.evals.calibrate_documents = 6
  config.mesh = [("data", 4), ("fsdp", 2)]
  return tiny_world._override(config, overrides)  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("entqa")
  data = tiny_world.write_world(root / "data")
  model_dir = tiny_world.write_tiny_bert(root / "bert")
  retriever = root / "retriever"
  ret_result = entqa_retriever.train_and_evaluate(_retriever_config(data, model_dir),
                                                  str(retriever))
  reader = root / "reader"
  read_result = reader_trainer.train_and_evaluate(_reader_config(data, model_dir, retriever),
                                                str(reader))
  return data, model_dir, retriever, reader, ret_result, read_result


def test_retriever_trains_mines_and_writes_passage_candidates(trained):
  data, _, retriever, _, result, _ = trained
  assert np.isfinite(result["loss"])
  test = result["evals"]["test"]
  assert test["passages_with_gold"] > 0
  assert 0.0 <= test["passage_recall@1"] <= test["passage_recall@8"] <= 100.0
  assert test["passage_recall@8"] <= test["recall@8"]  # All golds of a passage is stricter.
  # Three times chance at k = 4 of the world's 56 entities (measured 28.57 over 21 passages).
  assert test["passage_recall@4"] > 3 * 100 * 4 / 56
  lines = [json.loads(x) for x in open(retriever / "candidates" / "passages_test.jsonl")]
  assert len(lines) == test["passages"]
  # A context document is an entity of the world too: it never retrieves itself.
  assert all(x["document_id"] not in x["candidates"] for x in lines)
  assert all(len(x["candidates"]) == 8 for x in lines)
  # The last checkpoint carries the negatives mined for its epoch, for an exact resume.
  meta = json.load(open(retriever / "eval_train.json"))
  assert meta["passages"] == 40
  dataset = zeshel.ZeshelDataset(data)
  assert all(x["world"] == "computing" and x["candidates"][0] in dataset for x in lines)


def test_retriever_resume_restores_mined_negatives(trained, tmp_path, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  data, model_dir, retriever, _, _, _ = trained
  meta = json.loads((retriever / "checkpoints" / "8" / "meta" / "metadata").read_text())
  # Step 8 is in epoch 2 (3 batches an epoch): the negatives mined when it started.
  assert meta["hard_negatives_epoch"] == 2
  hard = np.asarray(meta["hard_negatives"])
  assert hard.shape == (24, 6) and (hard >= -1).all()
  # Resuming at step 8 and going on to 10: step 9 uses the restored negatives, step 10
  # starts epoch 3 and mines once. Without the restore it would mine for epoch 2 too.
  workdir = tmp_path / "resumed"
  shutil.copytree(retriever, workdir)
  mined = []
  real = entqa_retriever.mine_hard

  def counting(*args, **kwargs):
    mined.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(entqa_retriever, "mine_hard", counting)
  config = _retriever_config(data, model_dir, num_train_steps=10)
  config.evals.splits = ()
  entqa_retriever.train_and_evaluate(config, str(workdir))
  assert len(mined) == 1
  meta = json.loads((workdir / "checkpoints" / "10" / "meta" / "metadata").read_text())
  assert meta["hard_negatives_epoch"] == 3


def test_reader_trains_calibrates_and_evaluates_end_to_end(trained, tmp_path):
  data, _, _, reader, _, result = trained
  assert np.isfinite(result["loss"])
  calibration = json.load(open(reader / end_to_end.THRESHOLD_FILE))
  assert calibration["split"] == "val" and calibration["documents"] == 6
  test = result["evals"]["test"]
  for key in ("inkb_micro_p", "inkb_micro_r", "inkb_micro_f1", "md_f1", "documents_per_s"):
    assert key in test
  assert test["threshold"] == calibration["gamma"]
  assert test["md_f1"] >= test["inkb_micro_f1"]
  # The evaluate command path gives the same report, and the baseline runs beside it.
  report = evaluate.run_end_to_end(str(reader), None, "test")
  assert report["inkb_micro_f1"] == test["inkb_micro_f1"]
  base = evaluate.run_end_to_end(str(reader), None, "test", baseline="title_match")
  assert base["gold"] == test["gold"] and base["inkb_micro_r"] > 0
  # The same documents in GERBIL's JSON-lines form score the same.
  docs, _ = end_to_end.split_documents(end_to_end.EndToEnd(str(reader)).config,
                                         zeshel.ZeshelDataset(data), "test")
  path = tmp_path / "test.jsonl"
  documents_lib.write_gerbil_jsonl(path, docs)
  gerbil = evaluate.run_end_to_end(str(reader), None, "test", input_path=str(path),
                                   world="computing")
  assert gerbil["gold"] == test["gold"]
  assert gerbil["inkb_micro_f1"] == test["inkb_micro_f1"]


def test_link_end_to_end_maps_spans_back_to_the_raw_text(trained):
  data, _, _, reader, _, _ = trained
  e2e = end_to_end.EndToEnd(str(reader))
  # A training document as raw text, with runs of spaces the stored text does not have: the
  # spans must come back as offsets into this string.
  doc = zeshel.ZeshelDataset(data).document("C000")
  text = doc.text.replace(" : ", " :   ").replace(" the ", "  the ")
  linked, timing = linking.link_documents(e2e, [{"text": text, "id": "x", "topic": doc.title}],
                                       "computing", threshold=0.0)
  assert timing["documents"] == 1 and timing["passages"] >= 1
  spans = linked[0]["spans"]
  assert spans, "the reader finds a training document's mentions again"
  stored = next(d for d in documents_lib.zeshel_documents(zeshel.ZeshelDataset(data), "train")
                if d.doc_id == "C000")
  golds = {(stored.text[g.start:g.end], g.entity) for g in stored.spans}
  assert golds & {(x["mention"], x["document_id"]) for x in spans}
  for span in spans:
    assert text[span["start"]:span["end"]] == span["mention"]
    assert span["mention"] == span["mention"].strip() and span["score"] > 0.0
  with pytest.raises(ValueError, match="field 'text'"):
    linking.link_documents(e2e, [{"txt": text}], "computing")


def _spans(record):
  return [(s["start"], s["end"], s["document_id"]) for s in record["spans"]]


def test_an_exported_reader_links_raw_text_without_its_workdirs(trained, tmp_path):
  data, _, retriever, reader, _, _ = trained
  out = tmp_path / "export"
  manifest = export_cli.export(str(reader), str(out), world="computing")
  assert manifest["documents"]["module"] == "zel_jax.recipes.entqa.exported"
  gamma = json.load(open(reader / end_to_end.THRESHOLD_FILE))["gamma"]
  assert manifest["documents"]["threshold"] == gamma
  text = zeshel.ZeshelDataset(data).document("C000").text
  e2e = end_to_end.EndToEnd(str(reader))
  expected, _ = linking.link_documents(e2e, [{"text": text, "id": "x"}], "computing",
                                       threshold=0.0)
  # Neither workdir is read: both are moved away while the export links.
  for path in (reader, retriever):
    os.rename(path, f"{path}.away")
  try:
    linker = linking.Linker.from_pretrained(str(out))
    assert linker.documents.threshold() == gamma
    got = linker.link([{"text": text, "id": "x"}, text], threshold=0.0)
    with pytest.raises(ValueError, match="input line 2: this retriever embeds passages"):
      linker.link([text, "a [[compiler]] translates programs"])
  finally:
    for path in (reader, retriever):
      os.rename(f"{path}.away", path)
  assert _spans(got[0]) and _spans(got[0]) == _spans(expected[0])
  np.testing.assert_allclose([s["score"] for s in got[0]["spans"]],
                             [s["score"] for s in expected[0]["spans"]], atol=2e-4)
  assert got[1] == {"text": text, "spans": got[0]["spans"]}  # A plain string is raw text.
  # The best-linked entity removed is never linked; added back under a new id (same title
  # and text), it is linked where it was; a restart reads the persisted knowledge base.
  first = got[0]["spans"][0]
  row = linker.kb.ids.index(first["document_id"])
  entity = {"document_id": "NEW", "title": linker.kb.titles[row], "text": linker.kb.texts[row]}
  linker.remove_entities([first["document_id"]])
  gone = linker.link([text], threshold=0.0)[0]
  assert first["document_id"] not in {s["document_id"] for s in gone["spans"]}
  linker.add_entities([entity])
  back = linker.link([text], threshold=0.0)[0]
  assert (first["start"], first["end"], "NEW") in _spans(back)
  reopened = linking.Linker.from_pretrained(str(out))
  assert _spans(reopened.link([text], threshold=0.0)[0]) == _spans(back)
  # A corpus file of raw texts goes through link --export's path; gamma applies by default.
  corpus, links = tmp_path / "docs.jsonl", tmp_path / "links.jsonl"
  corpus.write_text(json.dumps({"text": text}) + "\n")
  counts = link_cli.link_file(reopened, str(corpus), str(links), None)
  linked = json.loads(links.read_text())
  assert counts["documents"] == 1 and counts["mentions"] == len(linked["spans"])
  assert all(s["score"] > gamma for s in linked["spans"])
  assert {tuple(x) for x in _spans(linked)} <= {tuple(x) for x in _spans(back)}


def test_raw_text_without_a_reader_names_what_to_give(trained, tmp_path):
  data, _, retriever, _, _, _ = trained
  out = tmp_path / "export"
  export_cli.export(str(retriever), str(out), world="computing")
  linker = linking.Linker.from_pretrained(str(out))
  assert linker.documents is None
  with pytest.raises(ValueError, match="needs EntQA's reader: an export of a reader"):
    linker.link(["raw text with no marks"])
  with pytest.raises(ValueError, match="needs EntQA's reader"):
    linker.link([{"text": "raw text"}])
