"""BLINK bi-encoder training (Wu et al., 2020): in-batch negatives over the global batch, or
gold + K hard negatives per mention; one jitted, sharded, donated update per step.

`train_and_evaluate(config, workdir)` is what `python -m zel_jax.train` runs; the pieces
(`build_model`, `load_params`, `make_update`, ...) are importable for notebooks, the evaluator
and the linker.
"""

from __future__ import annotations

import dataclasses
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
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import inference
from zel_jax.index.numpy_store import NumpyStore
from zel_jax.models import biencoder, pretrained
from zel_jax.recipes.blink import evaluators
from zel_jax.training import checks, loop
from zel_jax.training import params as params_lib

# ------------------------------------------------------------------------------------------
# Model, parameters, shardings.


def build_model(config, mesh) -> tuple[biencoder.BiEncoder, features_lib.Featurizer]:
  """The bi-encoder and its featurizer (tokenizer + markers) from config.model / config.data."""
  bert_config, featurizer = pretrained.bert_and_featurizer(config)
  model = biencoder.BiEncoder(
      bert_config, pooling=config.model.pooling, share_towers=config.model.share_towers,
      dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer


def param_shardings(config, model, mesh, log: bool = False):
  return params_lib.param_shardings(config, biencoder.abstract_params(model), mesh, log)


def random_params(model, shardings, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  return params_lib.init_params(model, shardings, rng, ids, ids, ids, ids)


def pretrained_params(config, model, shardings, rng):
  """Each tower starts from config.model.pretrained; marker rows are appended when the
  vocabulary grew (use_unused_markers=False)."""
  return {name: pretrained.pretrained_bert(config, model.config, shardings[name],
                                     jax.random.fold_in(rng, i))
          for i, name in enumerate(biencoder.tower_names(model))}


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  """The trained parameters of a workdir's latest (or given) checkpoint, on `mesh`."""
  return params_lib.restore_params(workdir, biencoder.abstract_params(model),
                             param_shardings(config, model, mesh), step)


# ------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TrainingData:
  """The training split as arrays: per-mention features for the pipeline, and the entity
  table of every training world concatenated (global entity rows) for negatives."""
  features: dict[str, np.ndarray]   # mention_*, entity_* (the gold's tokens), entity_index
  groups: np.ndarray                # [M] world of each mention
  entity_input_ids: np.ndarray      # [E, L] all training-world entities
  entity_attention_mask: np.ndarray
  entity_worlds: np.ndarray         # [E]
  entity_doc_ids: np.ndarray        # [E]
  mention_ids: list[str]

  @property
  def gold(self) -> np.ndarray:
    return self.features["entity_index"]

  def row_of(self) -> dict[tuple[str, str], int]:
    """(world, document id) -> global entity row."""
    return {(w, d): i for i, (w, d) in enumerate(zip(self.entity_worlds.tolist(),
                                                    self.entity_doc_ids.tolist()))}


def training_data(config, dataset: zeshel.ZeshelDataset, featurizer) -> TrainingData:
  window = None if config.data.window_words < 0 else config.data.window_words
  worlds = sorted({m.corpus for m in dataset.iter_mentions(config.data.train_split,
                                                           validate=False)})
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, config.data.entity_length)
              for w in worlds}
  mentions = examples_lib.mention_set(dataset, config.data.train_split, featurizer,
                                      config.data.mention_length, entities,
                                      window_words=window)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(entities[w].ids) for w in worlds])))
  entity_ids = np.concatenate([entities[w].features["input_ids"] for w in worlds])
  entity_mask = np.concatenate([entities[w].features["attention_mask"] for w in worlds])
  global_rows = np.asarray([offsets[w] for w in mentions.worlds], np.int64) + mentions.gold_rows
  feats = {
      "mention_input_ids": mentions.features["input_ids"],
      "mention_attention_mask": mentions.features["attention_mask"],
      "entity_input_ids": entity_ids[global_rows],
      "entity_attention_mask": entity_mask[global_rows],
      "entity_index": global_rows.astype(np.int32),
  }
  return TrainingData(
      feats, mentions.worlds, entity_ids, entity_mask,
      np.concatenate([[w] * len(entities[w].ids) for w in worlds]),
      np.concatenate([entities[w].ids for w in worlds]),
      [m.mention_id for m in mentions.mentions])


def _first_negatives(candidates: np.ndarray, gold: np.ndarray, k: int) -> np.ndarray:
  """The first k candidates of each row that are not the gold; -1 where a row has fewer."""
  out = np.full((len(gold), k), -1, np.int64)
  for i, (row, g) in enumerate(zip(candidates, gold)):
    kept = row[(row != g) & (row >= 0)][:k]
    out[i, :len(kept)] = kept
  return out


def negatives_from_file(path: str, data: TrainingData, k: int, top: int) -> np.ndarray:
  """Hard negatives [M, k] (global entity rows) from a candidates file written by
  zel_jax.evaluate on the training split: the first k non-gold ids of each mention's top."""
  rows, _ = candidates_lib.candidate_rows(path, data.mention_ids, data.row_of(), top)
  return _first_negatives(rows, data.gold, k)


def mine_negatives(model, params, data: TrainingData, config, mesh) -> np.ndarray:
  """Hard negatives [M, k] from the current model: each mention's top entities of its own
  world by exact search, gold removed (BLINK Sec. 5.2.2)."""
  encode_mentions, encode_entities = inference.encoders(model)
  axes = config.sharding.batch_axes
  mention_emb = inference.embed_rows(
      encode_mentions, params, {"input_ids": data.features["mention_input_ids"],
                                "attention_mask": data.features["mention_attention_mask"]},
      mesh, config.eval_batch_size, axes, desc="mine: mentions")
  entity_emb = inference.embed_rows(
      encode_entities, params, {"input_ids": data.entity_input_ids,
                                "attention_mask": data.entity_attention_mask},
      mesh, config.eval_batch_size, axes, desc="mine: entities")
  top = int(config.hard_negatives.top)
  candidates = np.full((len(data.groups), top), -1, np.int64)
  for world in np.unique(data.groups):
    rows = np.flatnonzero(data.entity_worlds == world)
    sel = np.flatnonzero(data.groups == world)
    kk = min(top, len(rows))
    _, found = NumpyStore.build(entity_emb[rows], rows).search(mention_emb[sel], kk)
    candidates[sel, :kk] = found
  return _first_negatives(candidates, data.gold, int(config.hard_negatives.num))


def with_negatives(local: dict[str, np.ndarray], negatives: np.ndarray,
                   data: TrainingData) -> dict[str, np.ndarray]:
  """Adds the tokens of each example's negatives to a batch (gathered on the host)."""
  rows = negatives[local["example_index"]]
  safe = np.maximum(rows, 0)
  return dict(local, negative_input_ids=data.entity_input_ids[safe],
              negative_attention_mask=data.entity_attention_mask[safe],
              negative_index=rows.astype(np.int32), negative_valid=rows >= 0)


# ------------------------------------------------------------------------------------------
# The update.


def make_loss_fn(model: biencoder.BiEncoder, config):
  def loss_fn(params, batch, rng):
    r_mention, r_entity, r_negative = jax.random.split(rng, 3)
    variables = {"params": params}
    mention = model.apply(variables, batch["mention_input_ids"],
                          batch["mention_attention_mask"], deterministic=False,
                          method=biencoder.BiEncoder.encode_mentions,
                          rngs={"dropout": r_mention})
    entity = model.apply(variables, batch["entity_input_ids"], batch["entity_attention_mask"],
                         deterministic=False, method=biencoder.BiEncoder.encode_entities,
                         rngs={"dropout": r_entity})
    if config.loss == "in_batch":
      return losses.in_batch_softmax(mention, entity, batch["entity_index"], batch["valid"])
    if config.loss == "hard_negatives":
      b, k, length = batch["negative_input_ids"].shape
      negative = model.apply(variables, batch["negative_input_ids"].reshape(b * k, length),
                             batch["negative_attention_mask"].reshape(b * k, length),
                             deterministic=False, method=biencoder.BiEncoder.encode_entities,
                             rngs={"dropout": r_negative}).reshape(b, k, -1)
      return losses.hard_negative_softmax(mention, entity, negative, batch["entity_index"],
                                          batch["negative_index"], batch["negative_valid"],
                                          batch["valid"])
    raise ValueError(f"config.loss {config.loss!r} is not 'in_batch' or 'hard_negatives'")
  return loss_fn


# ------------------------------------------------------------------------------------------
# Training.


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains, checkpoints, resumes; then evaluates config.evals.splits. Returns the last
  logged measurements and the evaluation reports."""
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  if config.loss not in ("in_batch", "hard_negatives"):
    raise ValueError(f"config.loss {config.loss!r} is not 'in_batch' or 'hard_negatives'")
  evals_base.check_type(config, ("retrieval",), "blink", "retrieval")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s; %d processes", dict(mesh.shape), jax.process_count())
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)

  t0 = time.time()
  data = training_data(config, dataset, featurizer)
  logging.info("featurized %d training mentions and %d entities in %.1fs", len(data.groups),
               len(data.entity_doc_ids), time.time() - t0)

  hard = config.loss == "hard_negatives"
  mined = hard and not config.hard_negatives.candidates
  state = {"negatives": None, "epoch": -1}
  if hard and not mined:
    state["negatives"] = negatives_from_file(candidates_lib.path_of(
        config.hard_negatives.candidates, config.data.train_split), data,
                                             int(config.hard_negatives.num),
                                             int(config.hard_negatives.top))

  def prepare(local, params, epoch):
    if mined and state["epoch"] != epoch:
      state["negatives"], state["epoch"] = mine_negatives(model, params, data, config,
                                                          mesh), epoch
    return with_negatives(local, state["negatives"], data) if hard else local

  def checkpoint_meta():
    # The negatives mined at the start of this epoch, so a resumed run sees the same ones.
    if not mined or state["negatives"] is None:
      return {}
    return {"negatives": state["negatives"].tolist(), "negatives_epoch": state["epoch"]}

  def restore_meta(meta, source):
    if mined and source == "workdir" and "negatives" in meta:
      state["negatives"] = np.asarray(meta["negatives"], np.int64)
      state["epoch"] = int(meta["negatives_epoch"])

  recipe = loop.TrainSpec(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda shardings, rng: random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: pretrained_params(config, model, shardings,
                                                                 rng),
      loss_fn=make_loss_fn(model, config), features=data.features,
      groups=data.groups if config.data.one_world_per_batch else None,
      prepare=prepare, checkpoint_meta=checkpoint_meta, restore_meta=restore_meta)
  evaluator = evaluators.training_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]


# ------------------------------------------------------------------------------------------
# Shapes of a train step (bench memory).


def biencoder_shapes(config, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{name: (shape, dtype)} of BLINK's in-batch training batch."""
  b, lm, le = batch_size, int(config.data.mention_length), int(config.data.entity_length)
  i32 = np.dtype(np.int32)
  return {"mention_input_ids": ((b, lm), i32), "mention_attention_mask": ((b, lm), i32),
          "entity_input_ids": ((b, le), i32), "entity_attention_mask": ((b, le), i32),
          "entity_index": ((b,), i32), "valid": ((b,), np.dtype(bool))}


def step_shapes(config, mesh, batch_size: int):
  """(loss_fn, abstract params, batch shapes) of the bi-encoder's in-batch step at this
  global batch, built from the encoder's config alone (no weights read)."""
  bert_config = pretrained.encoder_config(config.model.pretrained)
  model = biencoder.BiEncoder(
      bert_config, pooling=config.model.pooling, share_towers=config.model.share_towers,
      dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return (make_loss_fn(model, config), biencoder.abstract_params(model),
          biencoder_shapes(config, batch_size))
