"""BLINK cross-encoder training and scoring (Wu et al., 2020, Sec. 3.2): each mention with its
K candidates from the bi-encoder's candidates file, softmax cross-entropy over the K scores,
the gold put in place of the last candidate where retrieval missed it (training only).

`score_candidates` runs a trained cross-encoder over any mentions' candidates; the evaluator,
the linker's reranking and distillation's teacher use it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import features as features_lib
from zel_jax.data import rows as rows_lib
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import inference, metrics, retrieval
from zel_jax.models import bert, crossencoder, pretrained
from zel_jax.training import checks, loop
from zel_jax.training import params as params_lib


# ------------------------------------------------------------------------------------------
# Model and parameters.


def build_model(config, mesh) -> tuple[crossencoder.CrossEncoder, features_lib.Featurizer]:
  bert_config, featurizer = pretrained.bert_and_featurizer(config)
  model = crossencoder.CrossEncoder(
      bert_config, dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer


def param_shardings(config, model, mesh, log: bool = False):
  return params_lib.param_shardings(config, crossencoder.abstract_params(model), mesh, log)


def random_params(model, shardings, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  return params_lib.init_params(model, shardings, rng, ids, ids, ids)


def pretrained_params(config, model, shardings, rng):
  """The encoder from config.model.pretrained (marker rows appended if the vocabulary grew),
  the score layer freshly initialized."""
  params = random_params(model, shardings, rng)
  params["encoder"] = pretrained.pretrained_bert(config, model.config, shardings["encoder"],
                                           jax.random.fold_in(rng, 1))
  return params


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  return params_lib.restore_params(workdir, crossencoder.abstract_params(model),
                             param_shardings(config, model, mesh), step)


# ------------------------------------------------------------------------------------------
# Data: mentions with their candidates.


@dataclasses.dataclass
class RerankSet:
  """A split's mentions, each with K candidates as rows of one entity table covering every
  world of the split."""
  mentions: list[zeshel.Mention]
  mention_features: dict[str, np.ndarray]   # input_ids, attention_mask [M, Lm]
  worlds: np.ndarray                        # [M]
  gold: np.ndarray                          # [M] entity rows
  rows: np.ndarray                          # [M, K] candidate entity rows, -1: empty slot
  retriever_scores: np.ndarray              # [M, K]
  entity_features: dict[str, np.ndarray]    # input_ids, attention_mask [E, Le]
  entity_worlds: np.ndarray                 # [E]
  entity_doc_ids: np.ndarray                # [E]

  def __len__(self) -> int:
    return len(self.mentions)



def pair_features(mention_features: dict[str, np.ndarray],
                  entity_features: dict[str, np.ndarray], index: np.ndarray,
                  rows: np.ndarray, length: int, encoder: bert.BertConfig
                  ) -> dict[str, np.ndarray]:
  """Cross-encoder inputs [len(index), K, length] for mentions `index` and their candidate
  entity rows [len(index), K] (-1 slots take row 0 and are masked by the caller), in the
  encoder's pair format."""
  safe = np.maximum(rows, 0)
  return rows_lib.cross_features(
      mention_features["input_ids"][index], mention_features["attention_mask"][index],
      entity_features["input_ids"][safe], entity_features["attention_mask"][safe], length,
      pad_id=encoder.pad_token_id, separators=encoder.pair_separators)


def rerank_set(config, dataset: zeshel.ZeshelDataset, featurizer, split: str,
               candidates_path: str, max_mentions: int = -1, seed: int = 0,
               world: str | None = None) -> RerankSet:
  """The mentions of `split` (a fixed random subset of max_mentions when > 0; one world's
  when given) with the first config.data.num_candidates candidates of each."""
  window = None if config.data.window_words < 0 else config.data.window_words
  worlds = sorted({m.corpus for m in dataset.iter_mentions(split, validate=False)})
  if world is not None:
    worlds = [w for w in worlds if w == world]
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, config.data.entity_length)
              for w in worlds}
  mentions = examples_lib.mention_set(dataset, split, featurizer, config.data.mention_length,
                                      entities, worlds=worlds, window_words=window)
  keep = examples_lib.fixed_subset(len(mentions), max_mentions, seed)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(entities[w].ids) for w in worlds])))
  entity_worlds = np.concatenate([[w] * len(entities[w].ids) for w in worlds])
  entity_doc_ids = np.concatenate([entities[w].ids for w in worlds])
  row_of = {(w, d): i for i, (w, d) in enumerate(zip(entity_worlds.tolist(),
                                                     entity_doc_ids.tolist()))}
  kept = [mentions.mentions[i] for i in keep]
  rows, scores = candidates_lib.candidate_rows(candidates_path, [m.mention_id for m in kept],
                                               row_of, int(config.data.num_candidates))
  gold = (np.asarray([offsets[w] for w in mentions.worlds[keep]], np.int64)
          + mentions.gold_rows[keep])
  return RerankSet(
      kept, {k: v[keep] for k, v in mentions.features.items()}, mentions.worlds[keep], gold,
      rows, scores,
      {k: np.concatenate([entities[w].features[k] for w in worlds])
       for k in ("input_ids", "attention_mask")},
      entity_worlds, entity_doc_ids)


def pair_length(config, encoder: bert.BertConfig) -> int:
  """Rows hold the mention, the encoder's extra pair separator (RoBERTa-style: `</s></s>`)
  and the entity without its [CLS]."""
  return (int(config.data.mention_length) + int(config.data.entity_length) - 2
          + encoder.pair_separators)


# ------------------------------------------------------------------------------------------
# Scoring.


def scorer(model: crossencoder.CrossEncoder):
  """Jitted (params, ids, mask, types) [B, K, L] -> float32 scores [B, K]."""
  return jax.jit(lambda params, ids, mask, types: model.apply({"params": params}, ids, mask,
                                                              types))


def score_candidates(model, params, mention_features: dict[str, np.ndarray],
                     entity_features: dict[str, np.ndarray], rows: np.ndarray, config, mesh,
                     batch_size: int, desc: str = "rerank", bucket: int = 8) -> np.ndarray:
  """Cross-encoder scores [M, K] of every mention's candidate rows into entity_features
  (-inf in empty slots).

  Mentions go longest pair first in global batches of `batch_size` mentions on the mesh,
  each cut to its longest pair rounded up to `bucket` tokens (inference.sorted_batches).
  """
  score = scorer(model)
  batch_axes = config.sharding.batch_axes
  length = pair_length(config, model.config)
  pair_tokens = (mention_features["attention_mask"].sum(1)[:, None]
                 + entity_features["attention_mask"][np.maximum(rows, 0)].sum(2) - 2
                 + model.config.pair_separators)
  out = np.full(rows.shape, -np.inf, np.float32)
  batches = inference.sorted_batches(np.minimum(pair_tokens.max(1), length), length, batch_size,
                                    mesh, batch_axes, bucket, desc)
  for index, mine, width in batches:
    feats = pair_features(mention_features, entity_features, mine, rows[mine], length,
                          model.config)
    batch = sharding.global_batch({name: np.ascontiguousarray(v[..., :width])
                                   for name, v in feats.items()}, mesh, batch_axes)
    scores = score(params, batch["input_ids"], batch["attention_mask"],
                   batch["token_type_ids"])
    out[index] = inference.gather(scores).astype(np.float32)[:len(index)]
  out[rows < 0] = -np.inf
  return out


def evaluate_rerank(model, params, data: RerankSet, config, mesh, split: str,
                    candidates_path: str | None = None) -> dict[str, Any]:
  """Scores every mention's candidates and reports BLINK's accuracies; writes the reranked
  candidates (best first, cross-encoder scores) when candidates_path is given."""
  t0 = time.time()
  scores = score_candidates(model, params, data.mention_features, data.entity_features,
                            data.rows, config, mesh, config.eval_batch_size,
                            desc=f"{split} rerank")
  report = metrics.rerank_report(scores, data.rows, data.gold, data.worlds,
                                  [m.category for m in data.mentions])
  report.update(split=split, num_candidates=int(data.rows.shape[1]),
                seconds=round(time.time() - t0, 1))
  if candidates_path:
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.take_along_axis(data.rows, order, 1)
    retrieval.write_candidates(candidates_path, data.mentions, data.entity_doc_ids, rows,
                              np.take_along_axis(scores, order, 1))
    report["candidates"] = candidates_path
  return report


def rerank_evaluator(config, workdir: str, model, featurizer, mesh,
                     dataset: zeshel.ZeshelDataset, *, splits=None, source: str | None = None,
                     world: str | None = None) -> evals_base.Evaluator:
  """BLINK's accuracies of the cross-encoder over `source`'s candidates (a bi-encoder
  workdir or candidates file; default config.data.candidates); the reranked candidates to
  W/candidates/<split>[.<world>].jsonl."""
  suffix = f".{world}" if world else ""

  def evaluate_split(params, split):
    path = candidates_lib.path_of(source or config.data.candidates, split, world)
    data = rerank_set(config, dataset, featurizer, split, path, world=world)
    return evaluate_rerank(
        model, params, data, config, mesh, split,
        candidates_path=os.path.join(workdir, "candidates", f"{split}{suffix}.jsonl"))

  return evals_base.Evaluator(
      "rerank", splits if splits is not None else config.evals.splits, evaluate_split,
      dataset.splits())


# ------------------------------------------------------------------------------------------
# Training.


def make_loss_fn(model: crossencoder.CrossEncoder):
  def loss_fn(params, batch, rng):
    scores = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                         batch["token_type_ids"], deterministic=False, rngs={"dropout": rng})
    return losses.candidate_softmax(scores, batch["label"], batch["candidate_valid"],
                                    batch["valid"])
  return loss_fn


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  if not config.data.candidates:
    raise ValueError("config.data.candidates is empty: pass the bi-encoder's workdir "
                     "(--config.data.candidates=W_BI) whose evaluation wrote "
                     "candidates/<split>.jsonl")
  evals_base.check_type(config, ("rerank",), "blink", "rerank")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  t0 = time.time()
  split = config.data.train_split
  train = rerank_set(config, dataset, featurizer, split,
                     candidates_lib.path_of(config.data.candidates, split),
                     int(config.data.max_train_mentions), config.seed)
  rows, labels = candidates_lib.with_gold(train.rows, train.gold)
  logging.info("%d training mentions with %d candidates (gold retrieved for %.1f%%) in %.1fs",
               len(train), rows.shape[1],
               100 * float((train.rows == train.gold[:, None]).any(1).mean()),
               time.time() - t0)
  length = pair_length(config, model.config)

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    feats = pair_features(train.mention_features, train.entity_features, index, rows[index],
                          length, model.config)
    return dict(local, **feats, candidate_valid=rows[index] >= 0)

  recipe = loop.TrainSpec(
      abstract_params=crossencoder.abstract_params(model),
      random_params=lambda shardings, rng: random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: pretrained_params(config, model, shardings,
                                                                 rng),
      loss_fn=make_loss_fn(model),
      features={"label": labels},
      prepare=prepare)
  evaluator = rerank_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]
