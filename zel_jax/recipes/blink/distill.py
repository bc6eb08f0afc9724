"""Cross-encoder -> bi-encoder knowledge distillation (BLINK, Wu et al., 2020, Sec. 5.4).

The student is a bi-encoder (usually started from a trained one with config.init_from); each
training mention comes with K candidates from a retriever's candidates file, the gold put in
place of the last one where retrieval missed it. The teacher, a trained cross-encoder
(config.distill.teacher), scores every (mention, candidate) pair once before training; the
scores are kept in the workdir so a resumed run does not score again. The student's score
of a candidate is mention . entity, and the loss is losses.distillation over the K scores.

Evaluation, linking and stores treat the workdir as a bi-encoder's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from zel_jax import losses, sharding, workdir_io
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import fingerprint
from zel_jax.models import biencoder
from zel_jax.recipes.blink import biencoder as bi_trainer
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.blink import evaluators
from zel_jax.training import checks, loop

TEACHER_SCORES = "teacher_scores.npz"


def _fingerprint(mention_ids, rows: np.ndarray, teacher_step, teacher_params, teacher_config,
                 data: cross_trainer.RerankSet) -> str:
  """What the teacher's scores depend on: the mentions and candidate rows, the teacher's
  checkpoint (its step and a digest of its parameters: another run may end at the same
  step), its model settings, and the exact inputs it reads (the token ids of the mentions
  and entities: their texts, the tokenizer and the input lengths)."""
  h = hashlib.sha256()
  h.update(json.dumps([list(mention_ids), str(teacher_step),
                       fingerprint.params_digest(teacher_params),
                       teacher_config.model.to_dict()], sort_keys=True, default=str).encode())
  h.update(np.ascontiguousarray(rows, np.int64).tobytes())
  for features in (data.mention_features, data.entity_features):
    for name in sorted(features):
      h.update(name.encode())
      h.update(np.ascontiguousarray(features[name]).tobytes())
  return h.hexdigest()


def teacher_scores(config, workdir: str, dataset: zeshel.ZeshelDataset, mention_ids,
                   rows: np.ndarray, mesh) -> np.ndarray:
  """The teacher's scores [M, K] of the training candidates `rows`, from the workdir's cache
  when it was made for the same mentions, candidates, inputs and teacher (_fingerprint)."""
  teacher_dir = config.distill.teacher
  teacher_config = workdir_io.load_config(teacher_dir)
  if teacher_config.get("trainer") != "crossencoder":
    raise ValueError(f"config.distill.teacher={teacher_dir!r} is not a cross-encoder workdir "
                     f"(its trainer is {teacher_config.get('trainer')!r})")
  model, featurizer = cross_trainer.build_model(teacher_config, mesh)
  params, step = cross_trainer.restore_params(teacher_dir, teacher_config, model, mesh)
  # The teacher reads the same candidates with its own input lengths.
  teacher_config.data.num_candidates = rows.shape[1]
  data = cross_trainer.rerank_set(
      teacher_config, dataset, featurizer, config.data.train_split,
      candidates_lib.path_of(config.data.candidates, config.data.train_split),
      int(config.data.max_train_mentions), config.seed)
  if [m.mention_id for m in data.mentions] != list(mention_ids):
    raise AssertionError("teacher and student read different training mentions")
  cache = os.path.join(workdir, TEACHER_SCORES)
  key = _fingerprint(mention_ids, rows, step, params, teacher_config, data)
  if os.path.exists(cache):
    with np.load(cache) as saved:
      if str(saved["fingerprint"]) == key:
        logging.info("teacher scores from %s", cache)
        return saved["scores"]
    logging.warning("%s was made for other mentions, candidates, entity or mention texts, "
                    "or another teacher checkpoint; scoring again", cache)
  t0 = time.time()
  scores = cross_trainer.score_candidates(model, params, data.mention_features,
                                          data.entity_features, rows, teacher_config, mesh,
                                          teacher_config.eval_batch_size, desc="teacher")
  logging.info("teacher (step %d) scored %d pairs in %.1fs", step, int((rows >= 0).sum()),
               time.time() - t0)
  if jax.process_index() == 0:
    tmp = cache + ".tmp.npz"
    np.savez(tmp, scores=scores, fingerprint=np.asarray(key))
    os.replace(tmp, cache)
  return scores


def make_loss_fn(model: biencoder.BiEncoder, config):
  weight, temperature = float(config.distill.weight), float(config.distill.temperature)

  def loss_fn(params, batch, rng):
    r_mention, r_entity = jax.random.split(rng)
    variables = {"params": params}
    mention = model.apply(variables, batch["mention_input_ids"],
                          batch["mention_attention_mask"], deterministic=False,
                          method=biencoder.BiEncoder.encode_mentions,
                          rngs={"dropout": r_mention})
    b, k, length = batch["candidate_input_ids"].shape
    entity = model.apply(variables, batch["candidate_input_ids"].reshape(b * k, length),
                         batch["candidate_attention_mask"].reshape(b * k, length),
                         deterministic=False, method=biencoder.BiEncoder.encode_entities,
                         rngs={"dropout": r_entity}).reshape(b, k, -1)
    student = jax.numpy.einsum("bd,bkd->bk", mention, entity,
                               preferred_element_type=jax.numpy.float32)
    return losses.distillation(student, batch["teacher_scores"], batch["label"],
                               weight=weight, temperature=temperature,
                               candidate_valid=batch["candidate_valid"], valid=batch["valid"])
  return loss_fn


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  for field, hint in (("data.dir", "A_ZESHEL_DIRECTORY"), ("data.candidates", "W_BI"),
                      ("distill.teacher", "W_CROSS")):
    section, name = field.split(".")
    if not config[section][name]:
      raise ValueError(f"config.{field} is empty: pass --config.{field}={hint}")
  evals_base.check_type(config, ("retrieval",), "blink", "retrieval")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = bi_trainer.build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  split = config.data.train_split
  train = cross_trainer.rerank_set(
      config, dataset, featurizer, split,
      candidates_lib.path_of(config.data.candidates, split),
      int(config.data.max_train_mentions), config.seed)
  rows, labels = candidates_lib.with_gold(train.rows, train.gold)
  mention_ids = [m.mention_id for m in train.mentions]
  teacher = teacher_scores(config, workdir, dataset, mention_ids, rows, mesh)
  logging.info("distilling over %d mentions x %d candidates; teacher accuracy on them %.1f%%",
               len(train), rows.shape[1],
               100 * float((np.argmax(teacher, 1) == labels).mean()))

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    cand = rows[index]
    safe = np.maximum(cand, 0)
    return dict(local,
                mention_input_ids=train.mention_features["input_ids"][index],
                mention_attention_mask=train.mention_features["attention_mask"][index],
                candidate_input_ids=train.entity_features["input_ids"][safe],
                candidate_attention_mask=train.entity_features["attention_mask"][safe],
                candidate_valid=cand >= 0,
                teacher_scores=np.where(cand >= 0, teacher[index], 0.0).astype(np.float32))

  recipe = loop.TrainSpec(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda shardings, rng: bi_trainer.random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: bi_trainer.pretrained_params(
          config, model, shardings, rng),
      loss_fn=make_loss_fn(model, config), features={"label": labels}, prepare=prepare)
  evaluator = evaluators.training_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]
