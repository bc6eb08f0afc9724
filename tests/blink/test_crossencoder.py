"""BLINK stage 2: cross-encoder inputs, losses, the gold-insertion rule, metrics, training."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_world
from zel_jax import evaluate, losses, metric_writer, recipes
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import rows
from zel_jax.recipes.blink import crossencoder as trainer
from zel_jax.evals import metrics


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
      -1, keepdims=True)


# -- inputs ---------------------------------------------------------------------------------


def test_cross_features_concatenate_without_the_entity_cls():
  cls, sep, pad = 101, 102, 0
  mention = np.array([[cls, 5, 6, sep, pad], [cls, 7, sep, pad, pad]])
  entity = np.array([[[cls, 8, 9, sep], [cls, 10, sep, pad]],
                     [[cls, 11, 12, sep], [cls, 13, sep, pad]]])
  out = rows.cross_features(mention, (mention > 0).astype(int), entity,
                                (entity > 0).astype(int), 8)
  np.testing.assert_array_equal(out["input_ids"], [
      [[cls, 5, 6, sep, 8, 9, sep, pad], [cls, 5, 6, sep, 10, sep, pad, pad]],
      [[cls, 7, sep, 11, 12, sep, pad, pad], [cls, 7, sep, 13, sep, pad, pad, pad]]])
  np.testing.assert_array_equal(out["token_type_ids"][0],
                                [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(out["attention_mask"], out["input_ids"] > 0)
  # Too long: the description is cut and the row still ends in [SEP].
  short = rows.cross_features(mention, (mention > 0).astype(int), entity,
                                  (entity > 0).astype(int), 5)
  np.testing.assert_array_equal(short["input_ids"][0, 0], [cls, 5, 6, sep, sep])
  np.testing.assert_array_equal(short["input_ids"][1, 0], [cls, 7, sep, 11, sep])
  np.testing.assert_array_equal(short["input_ids"][1, 1], [cls, 7, sep, 13, sep])


def test_cross_features_roberta_style_pairs():
  """MPNet's pair format, `<s> a </s></s> b </s>`: one more separator, padding with its own
  id, and a cut row that still ends in a separator."""
  cls, sep, pad = 0, 2, 1
  mention = np.array([[cls, 5, 6, sep, pad]])
  entity = np.array([[[cls, 8, 9, sep], [cls, 10, sep, pad]]])
  mention_mask, entity_mask = (mention != pad).astype(int), (entity != pad).astype(int)
  out = rows.cross_features(mention, mention_mask, entity, entity_mask, 9, pad_id=pad,
                            separators=2)
  np.testing.assert_array_equal(out["input_ids"][0], [[cls, 5, 6, sep, sep, 8, 9, sep, pad],
                                                      [cls, 5, 6, sep, sep, 10, sep, pad, pad]])
  np.testing.assert_array_equal(out["attention_mask"][0], out["input_ids"][0] != pad)
  np.testing.assert_array_equal(out["token_type_ids"][0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 0])
  short = rows.cross_features(mention, mention_mask, entity, entity_mask, 7, pad_id=pad,
                              separators=2)
  np.testing.assert_array_equal(short["input_ids"][0, 0], [cls, 5, 6, sep, sep, 8, sep])
  with pytest.raises(ValueError, match="1 or 2 separators"):
    rows.cross_features(mention, mention_mask, entity, entity_mask, 9, separators=3)


# -- losses ---------------------------------------------------------------------------------


def test_candidate_softmax_by_hand():
  scores = np.array([[1.0, 2.0, 0.5], [0.0, 3.0, 9.0]], np.float32)
  labels = np.array([1, 0])
  valid_slots = np.array([[True, True, True], [True, True, False]])
  got = losses.candidate_softmax(jnp.asarray(scores), jnp.asarray(labels),
                                 jnp.asarray(valid_slots))
  row0 = -_log_softmax(scores[0])[1]
  row1 = -_log_softmax(scores[1, :2])[0]  # The empty third slot does not count.
  np.testing.assert_allclose(got, (row0 + row1) / 2, rtol=1e-6)
  got = losses.candidate_softmax(jnp.asarray(scores), jnp.asarray(labels),
                                 jnp.asarray(valid_slots), valid=jnp.array([True, False]))
  np.testing.assert_allclose(got, row0, rtol=1e-6)


def test_distillation_by_hand():
  student = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], np.float32)
  teacher = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
  labels = np.array([0, 2])
  weight, t = 0.7, 2.0
  p_t = np.exp(_log_softmax(teacher / t))
  kl = (p_t * (_log_softmax(teacher / t) - _log_softmax(student / t))).sum(-1)
  hard = -_log_softmax(student)[np.arange(2), labels]
  expected = np.mean((1 - weight) * hard + weight * t**2 * kl)
  got = losses.distillation(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                            weight=weight, temperature=t)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A student that matches the teacher has no KL left; weight 0 is the gold loss alone.
  same = losses.distillation(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(labels),
                             weight=1.0, temperature=t)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  gold_only = losses.distillation(jnp.asarray(student), jnp.asarray(teacher),
                                  jnp.asarray(labels), weight=0.0, temperature=t)
  np.testing.assert_allclose(gold_only, hard.mean(), rtol=1e-5)
  # Empty slots count for neither distribution.
  masked = losses.distillation(
      jnp.asarray(student), jnp.asarray(teacher), jnp.asarray([0, 1]), weight=weight,
      temperature=t, candidate_valid=jnp.array([[True, True, False], [True, True, False]]))
  s2, t2 = student[:, :2], teacher[:, :2]
  kl2 = (np.exp(_log_softmax(t2 / t)) * (_log_softmax(t2 / t) - _log_softmax(s2 / t))).sum(-1)
  hard2 = -_log_softmax(s2)[np.arange(2), [0, 1]]
  np.testing.assert_allclose(masked, np.mean((1 - weight) * hard2 + weight * t**2 * kl2), rtol=1e-5)


# -- the gold-insertion rule ----------------------------------------------------------------


def test_gold_replaces_the_last_candidate_only_when_missed():
  rows = np.array([[4, 9, 2, 7], [3, 5, 6, 8], [1, 6, -1, -1]])
  gold = np.array([2, 0, 9])
  new, labels = candidates_lib.with_gold(rows, gold)
  np.testing.assert_array_equal(new, [[4, 9, 2, 7], [3, 5, 6, 0], [1, 9, -1, -1]])
  np.testing.assert_array_equal(labels, [2, 3, 1])
  np.testing.assert_array_equal(rows[1], [3, 5, 6, 8])  # The input is not modified.


def test_candidates_file_errors_name_the_line(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text(json.dumps({"mention_id": "a", "world": "w", "candidates": ["x"]}) + "\n"
                  + '{"mention_id": "b", "candidates": ["y"]}\n')
  with pytest.raises(ValueError, match=r"c\.jsonl:2: not a candidates record"):
    candidates_lib.read(str(path))
  path.write_text(json.dumps({"mention_id": "a", "world": "w", "candidates": ["x", "zz"]})
                  + "\n")
  with pytest.raises(ValueError, match=r"candidates \['zz'\] are not entities of world 'w'"):
    candidates_lib.candidate_rows(str(path), ["a"], {("w", "x"): 0}, 4)
  with pytest.raises(ValueError, match="no candidates for 1 of 2 mentions"):
    candidates_lib.candidate_rows(str(path), ["a", "b"], {("w", "x"): 0, ("w", "zz"): 1}, 4)


# -- metrics --------------------------------------------------------------------------------


def test_rerank_report_by_hand():
  # World A: 3 mentions, gold found for 2, reranked right for 1 of those 2.
  # World B: 1 mention, gold found and reranked right; its retriever had it at rank 2.
  rows = np.array([[1, 2, 3], [4, 5, -1], [6, 7, 8], [9, 10, 11]])
  gold = np.array([2, 4, 0, 10])
  scores = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, -np.inf], [1.0, 2.0, 3.0],
                     [0.0, 4.0, 1.0]])
  report = metrics.rerank_report(scores, rows, gold, ["A", "A", "A", "B"],
                                  ["LOW_OVERLAP", "HIGH_OVERLAP", "LOW_OVERLAP", None])
  assert report["mentions"] == 4
  assert report["normalized_accuracy"] == pytest.approx(100 * 2 / 3, abs=1e-3)
  assert report["unnormalized_accuracy"] == pytest.approx(100 * 2 / 4)
  assert report["candidate_recall"] == pytest.approx(75.0)
  assert report["retriever_accuracy"] == pytest.approx(25.0)
  assert report["per_world"]["A"]["normalized_accuracy"] == pytest.approx(50.0)
  assert report["per_world"]["A"]["unnormalized_accuracy"] == pytest.approx(100 / 3, abs=1e-3)
  assert report["per_world"]["B"]["unnormalized_accuracy"] == pytest.approx(100.0)
  assert report["macro"]["normalized_accuracy"] == pytest.approx(75.0)
  assert report["macro"]["unnormalized_accuracy"] == pytest.approx((100 / 3 + 100) / 2,
                                                                   abs=1e-3)
  assert report["per_category"]["LOW_OVERLAP"]["unnormalized_accuracy"] == pytest.approx(50.0)
  assert report["per_category"]["NONE"]["mentions"] == 1


# -- training -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_cross")
  data = tiny_world.write_world(root / "data")
  bi = root / "bi"
  tiny_world.write_candidates(data, bi / "candidates" / "train.jsonl", "train", miss_every=5)
  tiny_world.write_candidates(data, bi / "candidates" / "test.jsonl", "test", seed=1)
  return data, tiny_world.write_tiny_bert(root / "bert"), bi


@pytest.fixture(scope="module")
def cross(tiny, tmp_path_factory):
  """A trained tiny cross-encoder: (workdir, config, train_and_evaluate's result)."""
  data, model_dir, bi = tiny
  workdir = tmp_path_factory.mktemp("cross")
  config = tiny_world.tiny_cross_config(data, model_dir, bi)
  return workdir, config, trainer.train_and_evaluate(config, str(workdir))


def test_tiny_cross_encoder_trains_on_the_mesh_and_evaluates(cross):
  tmp_path, _, result = cross
  logged = metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in logged] == list(range(4, 61, 4))
  first = np.mean([r["loss"] for r in logged[:2]])
  last = np.mean([r["loss"] for r in logged[-3:]])
  assert first > 1.0 and last < 0.7 * first, (first, last)
  assert result["loss"] == logged[-1]["loss"]

  # The evaluator recognizes a cross-encoder workdir and reranks the bi-encoder's file
  # as it is: no gold is inserted at evaluation, so the 10 training mentions whose lists miss
  # it cap the unnormalized accuracy. (A 2-layer encoder trained from scratch on 48
  # mentions fits them, it does not generalize: hence the training split.)
  report = evaluate.run(str(tmp_path), None, "train", "exact", None, None, 100, 0)
  assert report["mentions"] == 48 and report["step"] == 60
  assert report["candidate_recall"] == pytest.approx(100 * 38 / 48, abs=1e-3)
  assert report["unnormalized_accuracy"] == pytest.approx(
      report["normalized_accuracy"] * 38 / 48, abs=1e-3)
  assert report["normalized_accuracy"] > 40.0  # Four candidates: chance is 25%.
  written = [json.loads(line) for line in
             open(tmp_path / "candidates" / "train.jsonl", encoding="utf-8")]
  assert len(written) == 48
  right = sum(r["candidates"][0] == r["label_document_id"] for r in written)
  assert 100.0 * right / 48 == pytest.approx(report["unnormalized_accuracy"], abs=1e-3)
  assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in written)


def test_evaluating_one_world_reranks_that_worlds_candidates(tiny, cross, tmp_path):
  # `zel_jax.evaluate --world=W` on the bi-encoder writes candidates/test.W.jsonl; the
  # cross-encoder trained on that workdir, evaluated with --world=W, reranks that file.
  data, _, _ = tiny
  workdir = tmp_path / "cross"
  shutil.copytree(cross[0], workdir)
  bi = tmp_path / "bi"
  saved = json.loads((workdir / "config.json").read_text())
  saved["data"]["candidates"] = str(bi)
  (workdir / "config.json").write_text(json.dumps(saved))
  one = tiny_world.write_candidates(data, bi / "candidates" / "test.computing.jsonl", "test",
                                    seed=1)
  report = evaluate.run(str(workdir), None, "test", "exact", "computing", None, 100, 0)
  assert report["reranked"] == str(one) and report["mentions"] == 16
  assert (workdir / "candidates" / "test.computing.jsonl").is_file()
  # The world's file wins over a file of the split written for other worlds.
  (bi / "candidates" / "test.jsonl").write_text("")
  report = evaluate.run(str(workdir), None, "test", "exact", "computing", None, 100, 0)
  assert report["reranked"] == str(one)
  # Without the world's file, the split's file of every world (what it read before).
  one.unlink()
  with pytest.raises(ValueError, match=r"test\.jsonl: no candidates for 16 of 16"):
    evaluate.run(str(workdir), None, "test", "exact", "computing", None, 100, 0)
  # Neither: the error names the world's file and how to write it.
  (bi / "candidates" / "test.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match=r"test\.computing\.jsonl: no candidates file "
                     r".*--split=test --world=computing"):
    evaluate.run(str(workdir), None, "test", "exact", "computing", None, 100, 0)


# -- distillation and two-stage linking -----------------------------------------------------


def test_distillation_scores_once_and_trains(tiny, cross, tmp_path):
  from zel_jax.recipes.blink import distill  # pylint: disable=g-import-not-at-top
  data, model_dir, bi = tiny
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=6)
  from zel_jax.configs import blink_distill as recipe  # pylint: disable=g-import-not-at-top
  distill_config = recipe.get_config("runlocal")
  for section in ("data", "model", "optimizer"):
    distill_config[section].update({k: v for k, v in config[section].items()
                                    if k in distill_config[section]})
  distill_config.update(batch_size=8, num_train_steps=6, log_every=2, checkpoint_every=3,
                        mesh=config.mesh, eval_batch_size=16)
  distill_config.evals.splits = ()
  distill_config.data.candidates = str(bi)
  distill_config.data.num_candidates = 4
  distill_config.data.max_train_mentions = 32
  distill_config.data.one_world_per_batch = False
  distill_config.distill.teacher = str(cross[0])
  result = distill.train_and_evaluate(distill_config, str(tmp_path))
  assert np.isfinite(result["loss"])
  cache = tmp_path / distill.TEACHER_SCORES
  with np.load(cache) as saved:
    scores = saved["scores"]
  assert scores.shape == (32, 4) and np.isfinite(scores).all()
  # The cached scores are the cross-encoder's own: the linker's reranker (another path from
  # mention records and entities to scores) gives the same for the same pairs.
  from zel_jax.data import zeshel  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.blink import commands  # pylint: disable=g-import-not-at-top
  dataset = zeshel.ZeshelDataset(data)
  reranker = commands.Reranker(str(cross[0]))
  train = trainer.rerank_set(distill_config, dataset, reranker.featurizer, "train",
                             candidates_lib.path_of(str(bi), "train"), 32, distill_config.seed)
  rows_used, _ = candidates_lib.with_gold(train.rows, train.gold)
  pieces, entities = [], []
  for mention, row in zip(train.mentions, rows_used):
    words = dataset.document(mention.context_document_id).text.split()
    start, end = mention.start_index, mention.end_index
    pieces.append((" ".join(words[:start]), " ".join(words[start:end + 1]),
                   " ".join(words[end + 1:])))
    by_id = dataset.entities(mention.corpus)
    entities.append([by_id[train.entity_doc_ids[r]] for r in row])
  np.testing.assert_allclose(scores, reranker.score(pieces, entities), atol=1e-4)
  # A longer run resumes from step 6 and reuses the teacher's scores.
  stamp = cache.stat().st_mtime_ns
  distill_config.num_train_steps = 8
  distill.train_and_evaluate(distill_config, str(tmp_path))
  assert cache.stat().st_mtime_ns == stamp
  steps = [r["step"] for r in metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert steps == [2, 3, 4, 6, 8]  # Step 3 is logged with its checkpoint.


def test_link_reranks_with_the_cross_encoder(tiny, cross, tmp_path):
  from zel_jax.recipes.blink import biencoder  # pylint: disable=g-import-not-at-top
  data, model_dir, _ = tiny
  biencoder.train_and_evaluate(tiny_world.tiny_config(data, model_dir, num_train_steps=4),
                               str(tmp_path))
  linker = recipes.open_linker(str(tmp_path), None, "computing")
  reranker = recipes.open_reranker(str(cross[0]))
  records = [{"text": "the router sends packets to the socket", "start": 4, "end": 10},
             {"text": "a compiler reads the parser output", "start": 2, "end": 10}]
  plain = linker.link(records, top_k=5)
  ranked = linker.link(records, top_k=5, reranker=reranker)
  for before, after in zip(plain, ranked):
    # The same five retrieved entities, now in the cross-encoder's order with both scores.
    assert ({e["document_id"] for e in before["entities"]}
            == {e["document_id"] for e in after["entities"]})
    scores = [e["score"] for e in after["entities"]]
    assert scores == sorted(scores, reverse=True)
    retrieval = {e["document_id"]: e["score"] for e in before["entities"]}
    assert all(e["retrieval_score"] == retrieval[e["document_id"]] for e in after["entities"])
  # The reranker's score of an entity is its own: score it directly.
  entity = linker.entity(linker.kb.row_of(ranked[0]["entities"][0]["document_id"]))
  direct = reranker.score([("the ", "router", " sends packets to the socket")], [[entity]])
  assert direct[0, 0] == pytest.approx(ranked[0]["entities"][0]["score"], abs=1e-3)
