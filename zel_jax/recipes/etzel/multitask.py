"""Stage two of Sui et al. (2022): the hierarchical multi-task candidate generator.

A BLINK bi-encoder whose towers carry typing layers (T1) under linking layers (T2)
(typing_model.TypeAwareBiEncoder); loss = in-batch softmax over s(m, e) = f_m . f_e +
u_m . u_e, plus the mention's and the entity's multi-label type losses, whose targets are
the gold entity's types extracted by stage one (DATA/types/<world>.json, written by
configs/etzel_typing.py). The workdir evaluates and links as a bi-encoder's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.models import biencoder, pretrained
from zel_jax.recipes.blink import biencoder as biencoder_trainer
from zel_jax.recipes.blink import evaluators
from zel_jax.recipes.etzel import types as typing_data
from zel_jax.recipes.etzel import typing_model
from zel_jax.training import checks, loop


def build_model(config, mesh):
  bert_config, featurizer = pretrained.bert_and_featurizer(config)
  vocabulary = typing_data.TypeVocabulary.load(config.typing.vocabulary)
  model = typing_model.TypeAwareBiEncoder(
      bert_config, pooling="cls", share_towers=False, dtype=jnp.dtype(config.model.dtype),
      remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes),
      num_types=len(vocabulary), typing_layers=config.typing.typing_layers,
      linking_layers=config.typing.linking_layers)
  return model, featurizer


# The type-aware model is a BiEncoder: BLINK's trainer shards, initializes and restores it.
param_shardings = biencoder_trainer.param_shardings
random_params = biencoder_trainer.random_params
restore_params = biencoder_trainer.restore_params


def pretrained_params(config, model, shardings, rng):
  """Both BERT towers from config.model.pretrained; the type heads random; the typing and
  linking layers random, or (config.typing.layers_init = "top_layer") copies of their
  tower's last pretrained layer, so that f starts close to u instead of adding a random
  f_m . f_e, about as large as the signal, to every score."""
  params = random_params(model, shardings, rng)
  for i, side in enumerate(("mention", "entity")):
    params[side] = pretrained.pretrained_bert(config, model.config, shardings[side],
                                        jax.random.fold_in(rng, i + 1))
    if config.typing.layers_init == "top_layer":
      top = params[side][f"layer_{model.config.num_layers - 1}"]
      for stack in (f"{side}_typing", f"{side}_linking"):
        # Fresh buffers for each copy: the update donates its parameters, and one buffer
        # under two names would be donated twice.
        params[stack] = {name: jax.tree_util.tree_map(
            lambda x, s: jax.device_put(jnp.array(x, copy=True), s), top,
            shardings[stack][name]) for name in params[stack]}
    elif config.typing.layers_init != "random":
      raise ValueError(f"config.typing.layers_init {config.typing.layers_init!r} is not "
                       "'top_layer' or 'random'")
  return params


def entity_type_rows(config, data: biencoder_trainer.TrainingData) -> np.ndarray:
  """[E, K] type indices (-1 padding) of every training entity, from the extracted-types
  files; an entity missing from its world's file is an error naming the file."""
  index = typing_data.TypeVocabulary.load(config.typing.vocabulary).index
  labels, paths = {}, {}
  for world in np.unique(data.entity_worlds):
    path = paths[world] = typing_data.types_path(config.data.dir, world, config.typing.types_dir)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path}: no extracted types for world {world!r}; train the typing model first "
          "(python -m zel_jax.train --config=configs/etzel_typing.py ...), which writes them")
    labels[world] = dict(typing_data.read_types(path, index))
  rows = []
  for world, doc in zip(data.entity_worlds.tolist(), data.entity_doc_ids.tolist()):
    if doc not in labels[world]:
      raise KeyError(f"{paths[world]}: no row for entity {doc!r}")
    rows.append(labels[world][doc])
  width = int(config.typing.max_labels)
  out = np.full((len(rows), width), -1, np.int32)
  for i, row in enumerate(rows):
    ids = [index[t] for t in row][:width]
    out[i, :len(ids)] = ids
  return out


def make_loss_fn(model: typing_model.TypeAwareBiEncoder, config):
  w_mention, w_entity = float(config.typing.mention_weight), float(config.typing.entity_weight)

  def loss_fn(params, batch, rng):
    r_mention, r_entity = jax.random.split(rng)
    variables = {"params": params}
    mention, mention_types = model.apply(
        variables, batch["mention_input_ids"], batch["mention_attention_mask"],
        deterministic=False, method=typing_model.TypeAwareBiEncoder.encode_mentions_with_types,
        rngs={"dropout": r_mention})
    entity, entity_types = model.apply(
        variables, batch["entity_input_ids"], batch["entity_attention_mask"],
        deterministic=False, method=typing_model.TypeAwareBiEncoder.encode_entities_with_types,
        rngs={"dropout": r_entity})
    # The mention's types are its gold entity's, the entity in the same row.
    return (losses.in_batch_softmax(mention, entity, batch["entity_index"], batch["valid"])
            + w_mention * losses.multi_label_bce(mention_types, batch["types"], batch["valid"])
            + w_entity * losses.multi_label_bce(entity_types, batch["types"], batch["valid"]))
  return loss_fn


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  evals_base.check_type(config, ("retrieval",), "etzel", "retrieval")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  t0 = time.time()
  data = biencoder_trainer.training_data(config, dataset, featurizer)
  types = entity_type_rows(config, data)
  features = dict(data.features, types=types[data.gold])
  logging.info("featurized %d training mentions and %d entities (%.2f types each) in %.1fs",
               len(data.groups), len(types), float((types >= 0).sum(1).mean()),
               time.time() - t0)
  recipe = loop.TrainSpec(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda shardings, rng: random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: pretrained_params(config, model, shardings,
                                                                 rng),
      loss_fn=make_loss_fn(model, config), features=features,
      groups=data.groups if config.data.one_world_per_batch else None)
  evaluator = evaluators.training_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]
