"""MVD with a teacher of another encoder than its student (an MPNet cross-encoder teacher, a
BERT bi-encoder student; tiny 2-layer models with the real tokenizers): the joint stage
builds the teacher the warm-up was trained with, the teacher reads the student's views and
the mentions in its own tokenization, and a joint stage that would build the wrong teacher
is refused before anything runs."""

import numpy as np
import pytest

import tiny_world
from zel_jax import metric_writer
from zel_jax.recipes.mvd import data as mvd_data
from zel_jax.recipes.mvd import trainer as mvd


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  root = tmp_path_factory.mktemp("mvd_mixed")
  data = tiny_world.write_world(root / "data", sentences=3)
  bert_dir = tiny_world.write_tiny_bert(root / "bert")
  mpnet_dir = tiny_world.write_tiny_mpnet(root / "mpnet")
  retriever = root / "retriever"
  mvd.train_and_evaluate(tiny_world.tiny_mvd_config(data, bert_dir, "retriever",
                                                    **{"evals.splits": ("train",)}),
                         str(retriever))
  teacher = root / "teacher"
  mvd.train_and_evaluate(tiny_world.tiny_mvd_config(
      data, mpnet_dir, "teacher", num_train_steps=6, **{"mvd.candidates": str(retriever)}),
      str(teacher))
  return data, bert_dir, mpnet_dir, retriever, teacher


def _joint_config(stages, **overrides):
  data, bert_dir, _, retriever, teacher = stages
  return tiny_world.tiny_mvd_config(
      data, bert_dir, "joint",
      **{"mvd.retriever": str(retriever), "mvd.teacher": str(teacher), "num_train_steps": 4,
         "checkpoint_every": 4, "mvd.refresh_every": 4, **overrides})


def test_joint_stage_refuses_a_teacher_of_another_encoder(stages, tmp_path):
  with pytest.raises(ValueError, match=r"was trained with the encoder .*mpnet.* "
                                       r"--config\.mvd\.teacher_pretrained="):
    mvd.train_and_evaluate(_joint_config(stages), str(tmp_path / "joint"))
  assert not (tmp_path / "joint").exists()  # Refused before the workdir was touched.


def test_mpnet_teacher_distils_into_a_bert_student(stages, tmp_path):
  from zel_jax import sharding  # pylint: disable=g-import-not-at-top
  from zel_jax.data import zeshel  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.blink import biencoder as bi_trainer  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.blink import crossencoder as cross_trainer  # pylint: disable=g-import-not-at-top
  config = _joint_config(stages, **{"mvd.teacher_pretrained": str(stages[2])})
  result = mvd.train_and_evaluate(config, str(tmp_path))
  logged = metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert len(logged) == 2 and all(np.isfinite(r["loss"]) for r in logged)
  assert np.isfinite(result["loss"])

  # The rows the teacher read: the student's views, index for index, in MPNet's tokens.
  mesh = sharding.make_mesh(config.mesh)
  _, featurizer = bi_trainer.build_model(config, mesh)
  teacher, t_featurizer = cross_trainer.build_model(mvd_data.teacher_config(config), mesh)
  assert teacher.config.model_type == "mpnet"
  dataset = zeshel.ZeshelDataset(config.data.dir)
  data = mvd_data.mvd_data(config, dataset, featurizer, "train")
  student_views = mvd_data.local_views(featurizer, data.titles, data.texts, config, 3)
  teacher_views = mvd_data.local_views(featurizer, data.titles, data.texts, config, 3,
                                       row_featurizer=t_featurizer)
  np.testing.assert_array_equal(teacher_views.entity_views, student_views.entity_views)
  assert (teacher_views.features["input_ids"][:, 0] == 0).all()        # MPNet's <s>
  assert (student_views.features["input_ids"][:, 0] == 101).all()      # BERT's [CLS]
  t_mentions = mvd_data.mvd_data(config, dataset, t_featurizer, "train").mention_features
  rows = mvd_data.teacher_rows(t_mentions, teacher_views, np.arange(2),
                               np.asarray([[data.gold[0]], [data.gold[1]]]), config,
                               teacher.config)
  first = rows["teacher_input_ids"][0, 0, 0]
  m = int(t_mentions["attention_mask"][0].sum())
  assert first[0] == 0 and list(first[m - 1:m + 1]) == [2, 2]  # <s> mention </s></s> view
