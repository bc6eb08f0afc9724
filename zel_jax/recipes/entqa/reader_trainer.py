"""Training EntQA's reader (Eq. 2): each training passage with its top C retrieved
candidates (missed golds put in place of the lowest non-gold ones), then the threshold gamma
calibrated on config.evals.calibrate_split and the end-to-end evaluation of config.evals.splits.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.recipes.entqa import end_to_end, reader
from zel_jax.recipes.entqa import model as entqa
from zel_jax.training import checks, loop


def make_loss_fn(model: entqa.Reader, passage_length: int):
  def loss_fn(params, batch, rng):
    start, end, rank = model.apply({"params": params}, batch["input_ids"],
                                   batch["attention_mask"], batch["token_type_ids"],
                                   passage_length, deterministic=False, rngs={"dropout": rng})
    spans = jnp.broadcast_to(batch["span_mask"][:, None, :], start.shape)
    return losses.reader_loss(start, end, rank, batch["start_labels"], batch["end_labels"],
                              batch["rank_labels"], spans, batch["candidate_valid"],
                              batch["valid"])
  return loss_fn


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  rconfig = reader.retriever_config(config)
  evals_base.check_type(config, ("end_to_end",), "entqa", "end_to_end")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = reader.build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  t0 = time.time()
  train = reader.training_set(config, dataset, featurizer)
  rows = reader.with_golds(train.rows, train.pset.golds)
  retrieved = [np.isin(g, r).mean() for g, r in zip(train.pset.golds, train.rows) if len(g)]
  logging.info("%d training passages (%d with a gold; golds retrieved in the top %d: %.1f%%), "
               "%d candidates each, in %.1fs", len(train), len(retrieved), rows.shape[1],
               100 * float(np.mean(retrieved)) if retrieved else 0.0, rows.shape[1],
               time.time() - t0)
  length = reader.pair_length(config, rconfig)
  passage_length = int(rconfig.data.passage_length)

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    return dict(local, **reader.reader_rows(train, index, rows[index], length),
                **reader.labels(train.pset, rows[index], index),
                span_mask=reader.span_mask(train.pset, index))

  recipe = loop.TrainSpec(
      abstract_params=entqa.abstract_params(model),
      random_params=lambda shardings, rng: reader.random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: reader.pretrained_params(config, model, shardings,
                                                                 rng),
      loss_fn=make_loss_fn(model, passage_length),
      features={"passage": np.arange(len(train), dtype=np.int32)},
      prepare=prepare)
  evaluator = end_to_end.DocumentsEvaluator(config, workdir, dataset)
  outcome = loop.run(config, workdir, recipe, mesh, evaluator)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}

  reports: dict[str, Any] = {}
  if config.evals.calibrate_split:
    e2e = evaluator.linker(outcome.params, outcome.step)
    docs, worlds = end_to_end.split_documents(config, dataset, config.evals.calibrate_split,
                                              int(config.evals.calibrate_documents),
                                              config.seed)
    reports["calibration"] = end_to_end.run_calibration(e2e, docs, worlds,
                                                        config.evals.calibrate_split)
    logging.info("calibrated gamma %.4f (F1 %.2f on %d %s documents)",
                 reports["calibration"]["gamma"], reports["calibration"]["f1"], len(docs),
                 config.evals.calibrate_split)
  # The splits at the gamma just written to W/threshold.json (else the config's).
  reports.update(evals_base.evaluate_and_write(evaluator, outcome.params, outcome.step,
                                               workdir))
  return {**outcome.last, "evals": reports}
