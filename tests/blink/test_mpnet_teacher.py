"""BLINK's recipes with an MPNet encoder: a cross-encoder over `<s> mention </s></s> entity
</s>` pairs trains and evaluates, and a BERT student distils from it, each model reading its
own tokenization (tiny 2-layer models with the real tokenizers)."""

import numpy as np
import pytest

import tiny_world
from zel_jax import evaluate, metric_writer
from zel_jax.recipes.blink import crossencoder as trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_mpnet")
  data = tiny_world.write_world(root / "data")
  bi = root / "bi"
  tiny_world.write_candidates(data, bi / "candidates" / "train.jsonl", "train", miss_every=5)
  return data, tiny_world.write_tiny_bert(root / "bert"), tiny_world.write_tiny_mpnet(
      root / "mpnet"), bi


@pytest.fixture(scope="module")
def mpnet_cross(tiny, tmp_path_factory):
  data, _, mpnet_dir, bi = tiny
  workdir = tmp_path_factory.mktemp("mpnet_cross")
  # Without token types a from-scratch 2-layer model tells mention from entity by the
  # separators and relative positions alone: it needs twice BERT's 60 steps to fit.
  config = tiny_world.tiny_cross_config(data, mpnet_dir, bi, num_train_steps=120)
  return workdir, config, trainer.train_and_evaluate(config, str(workdir))


def test_mpnet_pairs_are_written_as_its_tokenizer_writes_them(tiny, mpnet_cross):
  from zel_jax import sharding  # pylint: disable=g-import-not-at-top
  from zel_jax.data import zeshel  # pylint: disable=g-import-not-at-top
  _, config, _ = mpnet_cross
  model, featurizer = trainer.build_model(config, sharding.make_mesh(config.mesh))
  assert model.config.model_type == "mpnet" and model.config.pair_separators == 2
  assert trainer.pair_length(config, model.config) == 12 + 12
  data = trainer.rerank_set(config, zeshel.ZeshelDataset(str(tiny[0])), featurizer, "train",
                            str(tiny[3] / "candidates" / "train.jsonl"))
  rows = trainer.pair_features(data.mention_features, data.entity_features, np.arange(2),
                               data.rows[:2], 24, model.config)
  ids, mask = data.entity_features["input_ids"], data.entity_features["attention_mask"]
  for i in range(2):
    m = int(data.mention_features["attention_mask"][i].sum())
    entity = ids[data.rows[i, 0]][:int(mask[data.rows[i, 0]].sum())]
    # <s> mention </s> + </s> + the entity without its <s> (title [ENT] text </s>), then
    # MPNet's padding id.
    expected = [*data.mention_features["input_ids"][i][:m], 2, *entity[1:]]
    assert expected[0] == 0 and expected[m - 1] == 2 and expected[-1] == 2
    np.testing.assert_array_equal(rows["input_ids"][i, 0, :len(expected)], expected)
    assert (rows["input_ids"][i, 0, len(expected):] == 1).all()
    assert rows["attention_mask"][i, 0].sum() == len(expected)


def test_mpnet_cross_encoder_trains_and_evaluates(mpnet_cross):
  workdir, _, _ = mpnet_cross
  logged = metric_writer.read_jsonl(str(workdir / "metrics.jsonl"))
  first = np.mean([r["loss"] for r in logged[:2]])
  last = np.mean([r["loss"] for r in logged[-3:]])
  assert last < 0.5 * first, (first, last)
  report = evaluate.run(str(workdir), None, "train", "exact", None, None, 100, 0)
  assert report["mentions"] == 48 and report["normalized_accuracy"] > 30.0  # Chance: 25%.


def test_bert_student_distils_from_the_mpnet_teacher(tiny, mpnet_cross, tmp_path):
  from zel_jax.configs import blink_distill as recipe  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.blink import distill  # pylint: disable=g-import-not-at-top
  data, bert_dir, _, bi = tiny
  student = tiny_world.tiny_config(data, bert_dir)
  config = recipe.get_config("runlocal")
  for section in ("data", "model", "optimizer"):
    config[section].update({k: v for k, v in student[section].items() if k in config[section]})
  config.update(batch_size=8, num_train_steps=4, log_every=2, checkpoint_every=4,
                mesh=student.mesh, eval_batch_size=16)
  config.evals.splits = ()
  config.data.candidates = str(bi)
  config.data.num_candidates = 4
  config.data.max_train_mentions = 32
  config.data.one_world_per_batch = False
  config.distill.teacher = str(mpnet_cross[0])
  result = distill.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"])
  with np.load(tmp_path / distill.TEACHER_SCORES) as saved:
    scores = saved["scores"]
  # The teacher's own scores of the same pairs, from its own tokenization.
  assert scores.shape == (32, 4) and np.isfinite(scores).all()
  assert np.std(scores) > 0
