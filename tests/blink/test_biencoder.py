"""The bi-encoder recipe end to end on a tiny world and a tiny BERT, on the fake 8-device mesh:
losses, training, kill/resume, hard negatives, evaluation and linking."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_world
from zel_jax import losses, metric_writer, recipes
from zel_jax.data import pipeline, zeshel
from zel_jax.models import biencoder
from zel_jax.recipes.blink import biencoder as trainer
from zel_jax.training import loop
from zel_jax.evals import metrics
from zel_jax.evals import retrieval


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  return (tiny_world.write_world(root / "data"), tiny_world.write_tiny_bert(root / "bert"))


# -- losses ---------------------------------------------------------------------------------


def test_in_batch_softmax_by_hand():
  m = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  e = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  scores = np.asarray(m @ e.T)
  expected = np.mean([np.log(np.exp(scores[i]).sum()) - scores[i, i] for i in range(3)])
  np.testing.assert_allclose(losses.in_batch_softmax(m, e), expected, rtol=1e-5)
  # Entities 0 and 2 are the same entity: neither is the other's negative.
  ids = jnp.array([7, 8, 7])
  keep = [[0, 1], [0, 1, 2], [1, 2]]
  expected = np.mean([np.log(np.exp(scores[i, keep[i]]).sum()) - scores[i, i]
                      for i in range(3)])
  np.testing.assert_allclose(losses.in_batch_softmax(m, e, ids), expected, rtol=1e-5)
  # A padded row is nobody's negative and adds no loss term.
  valid = jnp.array([True, True, False])
  expected = np.mean([np.log(np.exp(scores[i, :2]).sum()) - scores[i, i] for i in range(2)])
  np.testing.assert_allclose(losses.in_batch_softmax(m, e, valid=valid), expected, rtol=1e-5)


def test_hard_negative_softmax_by_hand():
  m = jnp.array([[1.0, 0.0]])
  gold = jnp.array([[1.0, 0.0]])
  neg = jnp.array([[[0.5, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 3.0]]])
  # Negative 1 is the gold itself, negative 2 repeats negative 0, negative 3 is padding.
  neg_ids = jnp.array([[5, 9, 5, 6]])
  neg_valid = jnp.array([[True, True, True, False]])
  got = losses.hard_negative_softmax(m, gold, neg, jnp.array([9]), neg_ids, neg_valid)
  expected = np.log(np.exp(1.0) + np.exp(0.5)) - 1.0
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# -- training -------------------------------------------------------------------------------


def _params(workdir, config):
  from zel_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.mesh)
  model, _ = trainer.build_model(config, mesh)
  params, step = trainer.restore_params(str(workdir), config, model, mesh)
  return jax.tree_util.tree_map(np.asarray, params), step


def test_trains_on_the_mesh_and_loss_falls(tiny, tmp_path):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=30)
  result = trainer.train_and_evaluate(config, str(tmp_path))
  logged = metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in logged] == list(range(2, 31, 2))
  assert {"loss", "learning_rate", "grad_norm", "examples_per_s"} <= set(logged[0])
  first = np.mean([r["loss"] for r in logged[:2]])
  last = np.mean([r["loss"] for r in logged[-3:]])
  assert last < 0.6 * first, (first, last)
  assert result["loss"] == logged[-1]["loss"]
  assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "config.json").exists()
  params, step = _params(tmp_path, config)
  assert step == 30


def test_killed_run_resumes_to_the_same_parameters(tiny, tmp_path, monkeypatch):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir)
  trainer.train_and_evaluate(config, str(tmp_path / "straight"))

  real_next = pipeline.BatchIterator.__next__
  calls = {"n": 0}

  def dying_next(self):
    calls["n"] += 1
    if calls["n"] == 7:  # Step 7 never runs; the last checkpoint is step 4.
      raise KeyboardInterrupt("killed")
    return real_next(self)

  monkeypatch.setattr(pipeline.BatchIterator, "__next__", dying_next)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, str(tmp_path / "killed"))
  monkeypatch.setattr(pipeline.BatchIterator, "__next__", real_next)
  assert sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                if p.name.isdigit()) == [4]
  trainer.train_and_evaluate(config, str(tmp_path / "killed"))

  straight, _ = _params(tmp_path / "straight", config)
  resumed, step = _params(tmp_path / "killed", config)
  assert step == 12
  for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_nan_guard_stops_before_saving(tiny, tmp_path):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=4)
  config.optimizer.learning_rate = float("inf")
  with pytest.raises(FloatingPointError, match=r"loss is nan at step \d"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_first_negatives_never_gold():
  candidates = np.array([[3, 1, 4, 1, 5], [2, 7, 1, -1, -1]])
  got = trainer._first_negatives(candidates, np.array([1, 2]), 3)
  np.testing.assert_array_equal(got, [[3, 4, 5], [7, 1, -1]])


def test_hard_negative_training_runs(tiny, tmp_path):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=4, loss="hard_negatives")
  config.hard_negatives.num = 3
  config.hard_negatives.top = 6
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"])


# -- evaluation -----------------------------------------------------------------------------


def test_recall_report_by_hand():
  ranks = np.array([0, 3, 100, 1, 0])
  report = metrics.recall_report(ranks, ["a", "a", "a", "b", "b"],
                                  ["HIGH_OVERLAP", "LOW_OVERLAP", "LOW_OVERLAP", None,
                                   "HIGH_OVERLAP"], ks=(1, 2, 4, 64), retrieved=100)
  assert report["recall@1"] == 40.0 and report["recall@2"] == 60.0
  assert report["recall@4"] == 80.0 and report["recall@64"] == 80.0
  assert report["per_world"]["a"]["recall@4"] == round(200 / 3, 4)
  assert report["macro"]["recall@1"] == round((100 / 3 + 50) / 2, 4)
  assert report["per_category"]["HIGH_OVERLAP"]["recall@1"] == 100.0
  assert report["per_category"]["LOW_OVERLAP"]["recall@64"] == 50.0
  assert report["per_category"]["NONE"]["mentions"] == 1
  np.testing.assert_array_equal(metrics.gold_ranks(np.array([[4, 2, 9], [1, 1, 1]]),
                                                    np.array([9, 5])), [2, 3])


class _PerfectEncoder:
  """Embeds a mention by the first token after its start marker and an entity by the first
  token of its title: in the tiny world, the mention word is its gold entity's title."""

  # The evaluator calls the model's own encode methods; apply() tells them apart by name.
  encode_mentions = biencoder.BiEncoder.encode_mentions
  encode_entities = biencoder.BiEncoder.encode_entities

  def __init__(self, model, marker_id, dim=4096):
    self._model, self._marker, self._dim = model, marker_id, dim

  def __getattr__(self, name):
    return getattr(self._model, name)

  def apply(self, variables, ids, mask, method=None, **kwargs):
    del variables, mask, kwargs
    if method.__name__ == "encode_mentions":
      pos = jnp.argmax(ids == self._marker, axis=1) + 1
    else:
      pos = jnp.ones(ids.shape[0], jnp.int32)
    token = jnp.take_along_axis(ids, pos[:, None], axis=1)[:, 0]
    return jax.nn.one_hot(token % self._dim, self._dim)


def test_perfect_encoder_scores_exactly_100(tiny):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir)
  from zel_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = trainer.build_model(config, mesh)
  perfect = _PerfectEncoder(model, featurizer.mention_start_id)
  for store in ("exact", "device"):
    report = retrieval.evaluate_biencoder(perfect, {}, featurizer, zeshel.ZeshelDataset(data),
                                         "test", config, mesh, store=store, top_k=4)
    assert report["recall@1"] == 100.0 and report["macro"]["recall@1"] == 100.0, store
    assert report["mentions"] == 16


def test_bm25_baseline_on_tiny_world(tiny, tmp_path):
  data, _ = tiny
  report = retrieval.evaluate_bm25(zeshel.ZeshelDataset(data), "test", top_k=8,
                                  candidates_path=str(tmp_path / "c.jsonl"))
  assert report["mentions"] == 16 and report["recall@8"] > 0
  lines = [json.loads(l) for l in open(tmp_path / "c.jsonl")]
  assert len(lines) == 16 and len(lines[0]["candidates"]) == 8
  assert lines[0]["scores"] == sorted(lines[0]["scores"], reverse=True)


# -- linking --------------------------------------------------------------------------------


def test_link_on_the_real_excerpt(tiny, tmp_path, shared_data):
  data, model_dir = tiny
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_world.tiny_config(data, model_dir, num_train_steps=2),
                             str(workdir))
  excerpt = shared_data / "zeshel_excerpt"
  records = [json.loads(l) for l in open(excerpt / "mentions" / "sample.json")]
  records = [r for r in records if r["corpus"] == "starwars"]
  linker = recipes.open_linker(str(workdir), str(excerpt), "starwars")
  linked = linker.link(records + [{"text": "Luke flew an X-wing", "start": 13, "end": 19}],
                       top_k=3)
  titles = {e.title for e in zeshel.ZeshelDataset(excerpt).iter_entities("starwars")}
  assert len(linked) == len(records) + 1
  assert linked[0]["mention"] == records[0]["text"] and linked[-1]["mention"] == "X-wing"
  for result in linked:
    assert len(result["entities"]) == 3
    assert {e["title"] for e in result["entities"]} <= titles
    scores = [e["score"] for e in result["entities"]]
    assert scores == sorted(scores, reverse=True)
  stores = list((workdir / "stores").iterdir())
  assert len(stores) == 1  # Built once, cached for the next linker.
  again = recipes.open_linker(str(workdir), str(excerpt), "starwars").link(records, top_k=3)
  assert ([e["document_id"] for e in again[0]["entities"]] ==
          [e["document_id"] for e in linked[0]["entities"]])
  np.testing.assert_allclose([e["score"] for e in again[0]["entities"]],
                             [e["score"] for e in linked[0]["entities"]], atol=1e-3)
  with pytest.raises(ValueError, match="input line 1: span"):
    linker.link([{"text": "short", "start": 3, "end": 40}])


def test_gradient_accumulation_equals_the_unaccumulated_step():
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  x = jnp.arange(8)
  np.testing.assert_array_equal(loop._microbatches(x, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])
  # A loss that is a mean over examples: two microbatches of 4 accumulate to exactly the
  # step on the whole batch of 8 (loss, gradient and the parameters after the update).
  def loss_fn(params, batch, rng):
    del rng
    residual = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return jnp.mean(residual ** 2)

  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
  params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.3)}
  optimizer = optax.sgd(0.1)  # Plain SGD: the update is proportional to the gradient.
  results = {}
  for accum in (1, 2, 4):
    update = loop.make_update(loss_fn, optimizer, lambda step: 0.1,
                              ml_collections.ConfigDict({"grad_accum_steps": accum}))
    results[accum] = jax.jit(update)(params, optimizer.init(params), 0, batch,
                                     jax.random.PRNGKey(0))
  for accum in (2, 4):
    new_params, _, measured = results[accum]
    np.testing.assert_allclose(measured["loss"], results[1][2]["loss"], rtol=1e-6)
    np.testing.assert_allclose(measured["grad_norm"], results[1][2]["grad_norm"], rtol=1e-5)
    for name in params:
      np.testing.assert_allclose(new_params[name], results[1][0][name], rtol=1e-5)
  assert not np.allclose(results[1][0]["w"], params["w"])  # The step did move them.


def test_gradient_accumulation_trains_the_bi_encoder(tiny, tmp_path):
  data, model_dir = tiny
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=4, grad_accum_steps=2)
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"]) and result["grad_norm"] > 0


def test_hard_negatives_from_the_workdir_that_wrote_the_candidates(tiny, tmp_path):
  # `hard_negatives.candidates` names a retriever's workdir (its train split's file) or a file.
  data, model_dir = tiny
  path = tmp_path / "retriever" / "candidates" / "train.jsonl"
  path.parent.mkdir(parents=True)
  tiny_world.write_candidates(data, str(path), "train", k=6)
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=2, loss="hard_negatives")
  config.hard_negatives.num = 3
  config.hard_negatives.top = 6
  config.hard_negatives.candidates = str(tmp_path / "retriever")
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result["loss"])
