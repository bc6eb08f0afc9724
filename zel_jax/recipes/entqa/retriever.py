"""EntQA's retriever (Zhang, Hua and Stratos, ICLR 2022, Sec. 2.1): a bi-encoder that
retrieves, for a whole passage of a document, the entities mentioned in it, before any
mention is found.

Passages are windows of L wordpieces with stride S (32 / 16 in the paper) with the
document's topic after a separator, `[CLS] passage [SEP] topic [SEP]`; they go through the
mention tower of BLINK's bi-encoder (models/biencoder.py, so a BLINK run can be the starting
point: `config.init_from`), entities through its entity tower. The loss is the multi-label
NCE of Eq. 1 (losses.multi_label_nce): each gold entity of a passage against N negatives,
never against the passage's other golds; negatives are drawn at random from the passage's
world (90%) and from the current model's top entities (10%, re-mined when an epoch starts).

After training it reports passage-level recall@k (every gold of a passage among its top k)
and micro recall@k over (passage, gold) pairs, and writes each evaluated split's candidates
to `W/candidates/passages_<split>.jsonl` for the reader (recipes/entqa/reader.py).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import examples as examples_lib
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.models import biencoder
from zel_jax.recipes.blink import biencoder as biencoder_trainer
from zel_jax.recipes.entqa import passage_retrieval
from zel_jax.training import checks, loop


# The model is BLINK's bi-encoder: passages take the mention tower.
build_model = biencoder_trainer.build_model
param_shardings = biencoder_trainer.param_shardings
restore_params = biencoder_trainer.restore_params


# ------------------------------------------------------------------------------------------
# Negatives.


def random_negatives(world_rows: np.ndarray, exclude: np.ndarray, n: int,
                     rng: np.random.Generator) -> np.ndarray:
  """n distinct rows of world_rows not in exclude (fewer when the world is that small)."""
  pool_size = len(world_rows) - len(exclude)
  n = max(0, min(n, pool_size))
  picked: list[int] = []
  seen = set(exclude.tolist())
  while len(picked) < n:
    for row in world_rows[rng.integers(0, len(world_rows), 2 * (n - len(picked)) + 4)]:
      if row not in seen:
        seen.add(int(row))
        picked.append(int(row))
        if len(picked) == n:
          break
  return np.asarray(picked, np.int64)


def mine_hard(model, params, pset: passage_retrieval.PassageSet,
              table: passage_retrieval.EntityTable, config, mesh
              ) -> np.ndarray:
  """Hard negatives [P, top]: each passage's best-scoring entities under the current model,
  its golds, cut spans and own document removed; -1 where fewer."""
  top = int(config.negatives.hard_top)
  widest = max((len(e) for e in pset.exclude), default=0)
  rows, _ = passage_retrieval.retrieve(model, params, pset, table, config, mesh, top + widest,
                     desc="mine: passages")
  out = np.full((len(pset), top), -1, np.int64)
  for p in range(len(pset)):
    kept = rows[p][(rows[p] >= 0) & ~np.isin(rows[p], pset.exclude[p])][:top]
    out[p, :len(kept)] = kept
  return out


# ------------------------------------------------------------------------------------------
# Training.


def make_loss_fn(model: biencoder.BiEncoder):
  def loss_fn(params, batch, rng):
    r_p, r_g, r_n = jax.random.split(rng, 3)
    variables = {"params": params}

    def entities(ids, mask, r):
      b, k, length = ids.shape
      return model.apply(variables, ids.reshape(b * k, length), mask.reshape(b * k, length),
                         deterministic=False, method=biencoder.BiEncoder.encode_entities,
                         rngs={"dropout": r}).reshape(b, k, -1)

    passage = model.apply(variables, batch["input_ids"], batch["attention_mask"],
                          deterministic=False, method=biencoder.BiEncoder.encode_mentions,
                          rngs={"dropout": r_p})
    gold = entities(batch["gold_input_ids"], batch["gold_attention_mask"], r_g)
    negative = entities(batch["negative_input_ids"], batch["negative_attention_mask"], r_n)
    return losses.multi_label_nce(passage, gold, batch["gold_index"], batch["gold_valid"],
                                  negative, batch["negative_index"], batch["negative_valid"],
                                  batch["valid"])
  return loss_fn


def _padded(lists: Sequence[np.ndarray], width: int) -> np.ndarray:
  out = np.full((len(lists), width), -1, np.int64)
  for i, x in enumerate(lists):
    out[i, :min(width, len(x))] = x[:width]
  return out


def _check_config(config) -> None:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  if config.data.topic not in passage_retrieval.TOPICS:
    raise ValueError(f"config.data.topic={config.data.topic!r}: one of {passage_retrieval.TOPICS}")
  if not 0.0 <= config.negatives.hard_fraction <= 1.0:
    raise ValueError(f"config.negatives.hard_fraction={config.negatives.hard_fraction}: "
                     "a fraction in [0, 1]")


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  _check_config(config)
  evals_base.check_type(config, ("passages",), "entqa", "passages")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s; %d processes", dict(mesh.shape), jax.process_count())
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)

  t0 = time.time()
  docs = passage_retrieval.split_documents(config, dataset, config.data.train_split)
  worlds = [dataset.world_of(d.doc_id) for d in docs]
  table = passage_retrieval.entity_table(dataset, set(worlds), featurizer,
                                         int(config.data.entity_length))
  everything = passage_retrieval.passage_set(config, dataset, featurizer, docs, table, worlds)
  with_gold = np.flatnonzero([len(g) > 0 for g in everything.golds])
  train = passage_retrieval.subset(everything, with_gold[examples_lib.fixed_subset(
      len(with_gold), int(config.data.max_train_passages), config.seed)])
  g = int(config.data.max_golds)
  logging.info("%d training passages from %d documents (%d with a gold; %d golds each on "
               "average, %d passages with more than %d), %d entities, in %.1fs", len(train),
               len(docs), len(with_gold), np.mean([len(x) for x in train.golds]),
               sum(len(x) > g for x in train.golds), g, len(table), time.time() - t0)
  gold_rows = _padded(train.golds, g)

  num = int(config.negatives.num)
  num_hard = int(round(config.negatives.hard_fraction * num))
  world_rows = {w: table.rows_of_world(w) for w in np.unique(train.worlds)}
  passage_worlds = train.worlds
  state = {"hard": None, "epoch": -1}

  def negatives_of(index: np.ndarray, epoch: int) -> np.ndarray:
    out = np.full((len(index), num), -1, np.int64)
    for i, p in enumerate(index.tolist()):
      hard = np.zeros(0, np.int64)
      if num_hard:
        hard = state["hard"][p][state["hard"][p] >= 0]
        hard = hard[np.random.default_rng((config.seed, epoch, p, 1)).permutation(
            len(hard))][:num_hard]
      rng = np.random.default_rng((config.seed, epoch, p))
      rand = random_negatives(world_rows[passage_worlds[p]],
                              np.union1d(train.exclude[p], hard), num - len(hard), rng)
      both = np.concatenate([hard, rand])
      out[i, :len(both)] = both
    return out

  def prepare(local, params, epoch):
    if num_hard and state["epoch"] != epoch:
      state["hard"], state["epoch"] = mine_hard(model, params, train, table, config,
                                                mesh), epoch
    index = local["example_index"]
    negative = negatives_of(index, epoch)
    gold = gold_rows[index]
    feats = table.features
    return dict(local,
                gold_input_ids=feats["input_ids"][np.maximum(gold, 0)],
                gold_attention_mask=feats["attention_mask"][np.maximum(gold, 0)],
                gold_index=gold.astype(np.int32), gold_valid=gold >= 0,
                negative_input_ids=feats["input_ids"][np.maximum(negative, 0)],
                negative_attention_mask=feats["attention_mask"][np.maximum(negative, 0)],
                negative_index=negative.astype(np.int32), negative_valid=negative >= 0)

  def checkpoint_meta():
    # The negatives mined when this epoch started, so a resumed run draws the same ones.
    if not num_hard or state["hard"] is None:
      return {}
    return {"hard_negatives": state["hard"].tolist(), "hard_negatives_epoch": state["epoch"]}

  def restore_meta(meta, source):
    if num_hard and source == "workdir" and "hard_negatives" in meta:
      state["hard"] = np.asarray(meta["hard_negatives"], np.int64)
      state["epoch"] = int(meta["hard_negatives_epoch"])

  recipe = loop.TrainSpec(
      abstract_params=biencoder.abstract_params(model),
      random_params=lambda shardings, rng: biencoder_trainer.random_params(model, shardings,
                                                                           rng),
      pretrained_params=lambda shardings, rng: biencoder_trainer.pretrained_params(
          config, model, shardings, rng),
      loss_fn=make_loss_fn(model),
      features={"input_ids": train.passages.input_ids,
                "attention_mask": train.passages.attention_mask},
      prepare=prepare, checkpoint_meta=checkpoint_meta, restore_meta=restore_meta)
  evaluator = passages_evaluator(config, workdir, model, featurizer, mesh, dataset)
  return loop.run_and_evaluate(config, workdir, recipe, mesh, evaluator)[1]


def passages_evaluator(config, workdir, model, featurizer, mesh, dataset
                       ) -> evals_base.Evaluator:
  """Recall on config.evals.splits (the training split on a fixed subset of
  evals.max_train_passages passages, for the reader to train on), candidates written
  (config.evals.type "passages")."""
  cache: dict[str, Any] = {"params": None, "vectors": {}}
  tables: dict = {}

  def evaluate_split(params, split):
    if cache["params"] is not params:  # Entity vectors are of one set of parameters.
      cache["params"], cache["vectors"] = params, {}
    docs = passage_retrieval.split_documents(config, dataset, split)
    worlds = [dataset.world_of(d.doc_id) for d in docs]
    key = tuple(sorted(set(worlds)))
    if key not in tables:
      tables[key] = passage_retrieval.entity_table(dataset, key, featurizer,
                                                   int(config.data.entity_length))
    pset = passage_retrieval.passage_set(config, dataset, featurizer, docs, tables[key],
                                         worlds)
    if split == config.data.train_split:
      pset = passage_retrieval.subset(pset, examples_lib.fixed_subset(
          len(pset), int(config.evals.max_train_passages), config.seed))
    report = passage_retrieval.evaluate_passages(
        model, params, pset, tables[key], config, mesh, split, int(config.evals.top_k),
        cache["vectors"], passage_retrieval.candidates_path(workdir, split))
    k = max(x for x in passage_retrieval.KS if x <= int(config.evals.top_k))
    logging.info("%s: passage R@1/R@%d %.2f / %.2f, micro R@%d %.2f over %d passages", split,
                 k, report["passage_recall@1"], report[f"passage_recall@{k}"], k,
                 report[f"recall@{k}"], report["passages_with_gold"])
    return report

  return evals_base.Evaluator("passages", config.evals.splits, evaluate_split,
                              dataset.splits(), with_step=True)


def run_eval(workdir: str, config, data: str, split: str, top_k: int,
             world: str | None = None) -> dict[str, Any]:
  """`zel_jax.evaluate` on a retriever workdir: passage recall@k of a split, candidates
  written to W/candidates/passages_<split>.jsonl."""
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = build_model(config, mesh)
  params, step = restore_params(workdir, config, model, mesh)
  dataset = zeshel.ZeshelDataset(data)
  docs = passage_retrieval.split_documents(config, dataset, split)
  worlds = [dataset.world_of(d.doc_id) for d in docs]
  if world:
    docs = [d for d, w in zip(docs, worlds) if w == world]
    worlds = [world] * len(docs)
  table = passage_retrieval.entity_table(dataset, set(worlds), featurizer,
                                         int(config.data.entity_length))
  pset = passage_retrieval.passage_set(config, dataset, featurizer, docs, table, worlds)
  path = passage_retrieval.candidates_path(workdir, split + (f".{world}" if world else ""))
  report = passage_retrieval.evaluate_passages(model, params, pset, table, config, mesh, split,
                                               top_k, path=path)
  report["step"] = int(step)
  return report
