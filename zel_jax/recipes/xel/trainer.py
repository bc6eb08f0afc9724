"""Cross-language linking (Schumacher, Mayfield and Dredze, 2021): the neural ranker.

  python -m zel_jax.train --config=configs/xel.py:runlocal --workdir=W \\
      --config.data.dir=data/xel

1. Features, once, with the multilingual encoder frozen (the reference code runs mBERT under
   no_grad and caches its outputs): for every mention, the lowest-layer states of its
   subwords inside its context, max-pooled (name) and the context's [CLS] (context); for
   every KB entity, the same of its name and its description; for every translated name pair,
   both names. Cached under W/features/ (recomputed when the encoder settings change).
2. Triage: each mention's candidates come from a given candidate file
   (DATA/candidates/<lang>/<split>.jsonl) or from the encoder used as a bi-encoder (its own
   mean-pooled embeddings of "query: mention" against "passage: name", in a candidate store
   of zel_jax.index), written to W/candidates/<lang>/<split>.jsonl.
3. Training: hinge between the gold and the highest-scoring of n negatives drawn at random
   from the KB (losses.max_negative_hinge), NIL mentions left out, plus lambda times the same
   hinge on translated name pairs through the name MLP and a matching layer (Sec. 7.1).
4. Evaluation per language: P/R/F1 and accuracy with NIL (nil.nil_link_report), NIL when
   the best candidate scores below the language's threshold (config.nil.thresholds, else
   chosen on dev and kept in W/nil_thresholds.json), for the ranker, the nearest-neighbour
   name baseline and popularity re-ranking (Sec. 7.2); micro over all languages as "all".
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import numpy as np

from zel_jax import losses, sharding, workdir_io
from zel_jax.data import crosslang
from zel_jax.evals import base as evals_base
from zel_jax.evals import inference, retrieval
from zel_jax.recipes.xel import model as xel_model
from zel_jax.recipes.xel import nil
from zel_jax.recipes.xel.data import XelData
from zel_jax.recipes.xel.features import Features, cached, pair_similarity
from zel_jax.training import checks, loop
from zel_jax.training import params as params_lib

THRESHOLDS_FILE = "nil_thresholds.json"


# ------------------------------------------------------------------------------------------
# Triage.


def candidates(config, data: XelData, features: Features, language: str, split: str,
               workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """Candidate rows [M, k] (-1 empty) and triage scores of one language's split."""
  mentions = data.split(language, split)
  k = int(config.triage.k)
  rows = np.full((len(mentions), k), -1, np.int64)
  scores = np.full((len(mentions), k), -np.inf, np.float32)
  if config.triage.source == "file":
    path = crosslang.candidates_path(data.root, language, split)
    given = crosslang.read_candidates(path)
    for i, m in enumerate(mentions):
      if m.id not in given:
        raise KeyError(f"{path}: no candidates for mention {m.id!r}")
      ids, s = given[m.id]
      known = [(data.row_of[c], v) for c, v in zip(ids, s) if c in data.row_of][:k]
      rows[i, :len(known)] = [r for r, _ in known]
      scores[i, :len(known)] = [v for _, v in known]
    return rows, scores
  if config.triage.source != "encoder":
    raise ValueError(f"config.triage.source {config.triage.source!r} is not 'encoder' or "
                     "'file'")
  path = os.path.join(workdir, "candidates", language, f"{split}.jsonl")
  # The cached rows index the KB: keyed by its file as well as the mentions' and settings.
  key = (features.key(str(crosslang.mentions_path(data.root, language, split)))
         + features.key(os.path.join(data.root, "kb.jsonl")) + json.dumps(
             [config.triage.k, config.triage.query_prefix, config.triage.passage_prefix,
              config.triage.store]))
  found = cached(features.directory, f"triage_{language}_{split}", key, lambda: _triage(
      config, data, features, mentions, f"{language} {split}"))
  rows, scores = found["rows"], found["scores"]
  if jax.process_index() == 0:
    crosslang.write_jsonl(path, ({"id": m.id, "candidates": [data.kb[r].id for r in row
                                                             if r >= 0],
                                  "scores": [round(float(s), 5) for r, s in zip(row, sc)
                                             if r >= 0]}
                                 for m, row, sc in zip(mentions, rows, scores)))
  return rows, scores


def _triage(config, data: XelData, features: Features, mentions, desc: str):
  queries = features.encoder.retrieval([m.text for m in mentions], config.triage.query_prefix,
                                       int(config.model.name_tokens), desc + " retrieval")
  store = retrieval.build_store(config.triage.store, features.kb_retrieval(), features.mesh)
  k = min(int(config.triage.k), len(data.kb))
  found_scores, found = store.search(queries, k)
  rows = np.full((len(mentions), int(config.triage.k)), -1, np.int64)
  scores = np.full(rows.shape, -np.inf, np.float32)
  rows[:, :k], scores[:, :k] = np.asarray(found), np.asarray(found_scores)
  return {"rows": rows, "scores": scores}


# ------------------------------------------------------------------------------------------
# Training.


def build_model(config, data: XelData) -> xel_model.XelRanker:
  cfg = config.model
  return xel_model.XelRanker(
      name_layers=tuple(cfg.name_layers), context_layers=tuple(cfg.context_layers),
      type_layers=tuple(cfg.type_layers), score_layers=tuple(cfg.score_layers),
      num_mention_types=len(data.mention_types), num_entity_types=len(data.entity_types),
      type_dim=int(cfg.type_dim), dropout=float(cfg.dropout), use_context=bool(cfg.use_context),
      use_types=bool(cfg.use_types), product=bool(cfg.pair_product))


def _entity_block(features: Features, data: XelData, rows: np.ndarray) -> dict[str, np.ndarray]:
  safe = np.maximum(rows, 0)
  return {"name": features.kb["name"][safe], "context": features.kb["context"][safe],
          "types": data.entity_type_matrix[safe]}


def training_set(config, data: XelData, features: Features) -> dict[str, np.ndarray]:
  """Per training mention (NIL ones left out, as in the reference code): its features and
  its gold row."""
  names, contexts, types, gold = [], [], [], []
  for language in data.train_languages:
    mentions = data.split(language, "train")
    rows = data.gold_rows(mentions)
    keep = rows >= 0
    feats = features.mentions[(language, "train")]
    names.append(feats["name"][keep])
    contexts.append(feats["context"][keep])
    types.append(data.type_ids(mentions)[keep])
    gold.append(rows[keep])
  if not gold or not sum(len(g) for g in gold):
    raise ValueError(f"no linked training mentions in {data.train_languages} under "
                     f"{data.root}")
  return {"mention_name": np.concatenate(names), "mention_context": np.concatenate(contexts),
          "mention_type": np.concatenate(types), "gold": np.concatenate(gold)}


def make_prepare(config, data: XelData, features: Features):
  """Adds to each batch its n random negatives per mention (never the gold) and, with the
  auxiliary loss on, a batch of translated name pairs with n random English names each.
  Draws are seeded by the batch's example indices and epoch, so a resumed run draws the
  same."""
  n = int(config.negatives.num)
  num_entities = len(data.kb)
  pairs = features.pairs
  num_pairs = len(pairs["source"])

  def prepare(local, params, epoch):
    del params
    seed = int.from_bytes(hashlib.sha256(
        np.asarray(local["example_index"]).tobytes() + str(epoch).encode()).digest()[:8],
        "little")
    rng = np.random.default_rng([config.seed, seed])
    gold = local["gold"]
    negatives = rng.integers(0, num_entities - 1, size=(len(gold), n))
    negatives = negatives + (negatives >= gold[:, None])  # Skips the gold: uniform over rest.
    rows = np.concatenate([gold[:, None], negatives], axis=1)
    batch = {k: v for k, v in local.items() if k != "gold"}
    for key, value in _entity_block(features, data, rows).items():
      batch[f"entity_{key}"] = value
    if num_pairs and config.aux.weight > 0:
      picked = rng.integers(0, num_pairs, size=len(gold))
      others = rng.integers(0, num_pairs - 1, size=(len(gold), n))
      others = others + (others >= picked[:, None])
      batch["aux_source"] = pairs["source"][picked]
      batch["aux_english"] = pairs["english"][np.concatenate([picked[:, None], others], 1)]
    return batch

  return prepare


def make_loss_fn(model: xel_model.XelRanker, config):
  margin, weight = float(config.negatives.margin), float(config.aux.weight)
  if config.negatives.loss_on == "logit":
    # The hinge on the value before tanh (scores and thresholds stay tanh's): on tanh's own
    # output the gold-versus-max-negative hinge drives every score to +1, where tanh's
    # gradient vanishes (README, cross-language section).
    model = model.clone(squash=False)
  elif config.negatives.loss_on != "score":
    raise ValueError(f"config.negatives.loss_on {config.negatives.loss_on!r} is not 'logit' "
                     "or 'score'")

  def loss_fn(params, batch, rng):
    r_main, r_aux = jax.random.split(rng)
    mention = {"name": batch["mention_name"], "context": batch["mention_context"],
               "type": batch["mention_type"]}
    entities = {"name": batch["entity_name"], "context": batch["entity_context"],
                "types": batch["entity_types"]}
    scores = model.apply({"params": params}, mention, entities, deterministic=False,
                         rngs={"dropout": r_main})
    loss = losses.max_negative_hinge(scores[:, 0], scores[:, 1:], margin, batch["valid"])
    if weight > 0 and "aux_source" in batch:
      matched = model.apply({"params": params}, batch["aux_source"], batch["aux_english"],
                            deterministic=False, method=xel_model.XelRanker.name_match,
                            rngs={"dropout": r_aux})
      loss = loss + weight * losses.max_negative_hinge(matched[:, 0], matched[:, 1:], margin,
                                                       batch["valid"])
    return loss

  return loss_fn


# ------------------------------------------------------------------------------------------
# Evaluation.


def score_candidates(model, params, config, data: XelData, features: Features, language: str,
                     split: str, rows: np.ndarray, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Ranker and nearest-neighbour scores [M, k] of each mention's candidates (-inf empty).

  The ranker's are the final unit's values before tanh: tanh is monotone, so rankings and
  NIL decisions are the same as on tanh's output, but trained logits reach values where
  float32 tanh is exactly 1.0 and candidates would tie."""
  mentions = data.split(language, split)
  feats = features.mentions[(language, split)]
  types = data.type_ids(mentions)
  model = model.clone(squash=False)

  @jax.jit
  def both(params, m_name, m_context, m_type, e_name, e_context, e_types):
    mention = {"name": m_name, "context": m_context, "type": m_type}
    entities = {"name": e_name, "context": e_context, "types": e_types}
    return (model.apply({"params": params}, mention, entities),
            xel_model.nearest_neighbour_scores(m_name, e_name))

  ranker = np.full(rows.shape, -np.inf, np.float32)
  nn_scores = np.full(rows.shape, -np.inf, np.float32)
  size = int(config.eval_batch_size)
  axes = config.sharding.batch_axes
  shards = int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))
  size = -(-size // shards) * shards
  for lo in range(0, len(mentions), size):
    idx = np.arange(lo, lo + size)
    idx = np.minimum(idx, len(mentions) - 1)
    block = _entity_block(features, data, rows[idx])
    batch = sharding.global_batch({
        "m_name": feats["name"][idx], "m_context": feats["context"][idx], "m_type": types[idx],
        "e_name": block["name"], "e_context": block["context"], "e_types": block["types"]},
        mesh, axes)
    r, nn = both(params, **batch)
    count = min(size, len(mentions) - lo)
    ranker[lo:lo + count] = inference.gather(r)[:count]
    nn_scores[lo:lo + count] = inference.gather(nn)[:count]
  empty = rows < 0
  ranker[empty], nn_scores[empty] = -np.inf, -np.inf
  return ranker, nn_scores


def evaluate_all(model, params, config, data: XelData, features: Features, workdir: str,
                 mesh, splits: Sequence[str]) -> dict[str, Any]:
  """Thresholds from dev (unless the config gives them), then a report per split."""
  scored = {}
  for language in data.eval_languages:
    for split in set(splits) | {"dev"}:
      if not data.split(language, split):
        continue
      rows, _ = candidates(config, data, features, language, split, workdir)
      ranker, nn = score_candidates(model, params, config, data, features, language, split,
                                    rows, mesh)
      scored[(language, split)] = (rows, ranker, nn, data.gold_rows(data.split(language, split)))
  thresholds = _thresholds(config, data, scored, workdir)
  counts = data.training_counts()
  reports = {}
  for split in splits:
    per_language, pooled = {}, collections.defaultdict(list)
    for language in data.eval_languages:
      if (language, split) not in scored:
        continue
      rows, ranker, nn, gold = scored[(language, split)]
      systems = {}
      for system, scores in (("ranker", ranker), ("nn", nn)):
        top_row, top_score = nil.top_candidates(scores, rows)
        predicted = nil.apply_nil_threshold(top_row, top_score,
                                                 thresholds[system][language])
        systems[system] = predicted
      top_row, top_score = nil.top_candidates(ranker, rows)
      popular = nil.popularity_rerank(ranker, rows, counts, int(config.evals.popularity_top))
      systems["ranker+popularity"] = np.where(
          top_score >= thresholds["ranker"][language], popular, nil.NIL_ROW)
      linkable = gold >= 0
      found = (rows == gold[:, None]).any(1)
      per_language[language] = {
          **{system: nil.nil_link_report(p, gold) for system, p in systems.items()},
          "triage_recall": round(100.0 * float(found[linkable].mean()), 4)
          if linkable.any() else 0.0,
          "thresholds": {s: thresholds[s][language] for s in ("ranker", "nn")}}
      for system, p in systems.items():
        pooled[system].append((p, gold))
    report = {"languages": per_language,
              "train_languages": list(data.train_languages),
              "all": {system: nil.nil_link_report(np.concatenate([p for p, _ in v]),
                                                       np.concatenate([g for _, g in v]))
                      for system, v in pooled.items()}}
    reports[split] = report
    workdir_io.write_report(workdir, f"eval_{split}", report)
    for language, r in per_language.items():
      logging.info("%s %s: ranker F1 %.2f acc %.2f | NN F1 %.2f acc %.2f | +popularity F1 "
                   "%.2f | triage recall %.2f", split, language, r["ranker"]["f1"],
                   r["ranker"]["accuracy"], r["nn"]["f1"], r["nn"]["accuracy"],
                   r["ranker+popularity"]["f1"], r["triage_recall"])
  return reports


class XelEvaluator(evals_base.Evaluator):
  """Linking with NIL per language and pooled (config.evals.type "xel"): the splits are
  evaluated together, since the NIL thresholds come from dev first (evaluate_all); each
  split's report is written to W/eval_<split>.json."""

  def __init__(self, model, config, data: XelData, features: Features, workdir: str, mesh,
               splits: Sequence[str]):
    super().__init__("xel", splits, None)
    self.model, self.config, self.data, self.features = model, config, data, features
    self.workdir, self.mesh = workdir, mesh

  def run(self, params, step: int) -> dict[str, Any]:
    del step
    return evaluate_all(self.model, params, self.config, self.data, self.features,
                        self.workdir, self.mesh, self.splits)


def parse_thresholds(spec: str) -> dict[str, float]:
  """"de=0.1,fr=-0.2" -> {"de": 0.1, "fr": -0.2}."""
  out = {}
  for part in (spec or "").split(","):
    if not part.strip():
      continue
    language, eq, value = part.partition("=")
    try:
      out[language.strip()] = float(value)
    except ValueError:
      eq = ""
    if not eq:
      raise ValueError(f"config.nil.thresholds: {part!r} is not LANGUAGE=NUMBER")
  return out


def _thresholds(config, data: XelData, scored, workdir: str) -> dict[str, dict[str, float]]:
  """Per system and language: config.nil.thresholds[language] for the ranker when given,
  else the accuracy-maximizing threshold on dev (-inf, never NIL, without a dev split)."""
  given = parse_thresholds(config.nil.thresholds)
  out: dict[str, dict[str, float]] = {"ranker": {}, "nn": {}}
  for language in data.eval_languages:
    for system, column in (("ranker", 1), ("nn", 2)):
      if system == "ranker" and language in given:
        out[system][language] = float(given[language])
        continue
      if (language, "dev") not in scored:
        out[system][language] = -float("inf")
        continue
      entry = scored[(language, "dev")]
      top_row, top_score = nil.top_candidates(entry[column], entry[0])
      out[system][language] = nil.select_nil_threshold(top_row, top_score, entry[3])
  workdir_io.write_report(workdir, THRESHOLDS_FILE[:-len(".json")], out)
  return out


# ------------------------------------------------------------------------------------------
# The recipe.


def abstract_params(model: xel_model.XelRanker, hidden: int):
  """Parameter shapes, boxed without logical axes: the ranker is small and replicated."""
  shapes = jax.eval_shape(lambda: xel_model.init_params(model, hidden, jax.random.PRNGKey(0)))
  return jax.tree_util.tree_map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), shapes)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  evals_base.check_type(config, ("xel",), "xel", "xel")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  t0 = time.time()
  data = XelData(config)
  features = Features(config, data, workdir, mesh)
  logging.info("features of %d entities, %d mention sets and %d name pairs in %.1fs "
               "(entity types %s; mention types %s)", len(data.kb), len(features.mentions),
               len(features.pairs["source"]), time.time() - t0, data.entity_types,
               data.mention_types)
  pairs = pair_similarity(features.pairs["source"], features.pairs["english"], config.seed)
  if "translated" in pairs:
    logging.info("name features of %d translated pairs: mean cosine %.4f, of random pairs "
                 "%.4f", pairs["pairs"], pairs["translated"], pairs["random"])
  model = build_model(config, data)
  hidden = int(features.kb["name"].shape[1])
  abstract = abstract_params(model, hidden)

  def random_params(shardings, rng):
    return jax.jit(lambda r: xel_model.init_params(model, hidden, r),
                   out_shardings=shardings)(rng)

  recipe = loop.TrainSpec(abstract_params=abstract, random_params=random_params,
                       pretrained_params=None, loss_fn=make_loss_fn(model, config),
                       features=training_set(config, data, features),
                       prepare=make_prepare(config, data, features))
  evaluator = XelEvaluator(model, config, data, features, workdir, mesh,
                           tuple(config.evals.splits))
  outcome = loop.run(config, workdir, recipe, mesh, evaluator)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}
  reports = evaluator.run(outcome.params, outcome.step)
  return {**outcome.last, "pair_similarity": pairs, "evals": reports}


def run_eval(workdir: str, splits: Sequence[str] = ("test",), data_dir: str | None = None
             ) -> dict[str, Any]:
  """Evaluates a trained workdir's latest checkpoint (python -m zel_jax.evaluate)."""
  config = workdir_io.load_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  mesh = sharding.make_mesh(config.mesh)
  data = XelData(config)
  features = Features(config, data, workdir, mesh)
  model = build_model(config, data)
  abstract = abstract_params(model, int(features.kb["name"].shape[1]))
  shardings = params_lib.param_shardings(config, abstract, mesh)
  params, _ = params_lib.restore_params(workdir, abstract, shardings)
  return evaluate_all(model, params, config, data, features, workdir, mesh, tuple(splits))


def evaluate(workdir: str, config, request: evals_base.EvalRequest) -> dict[str, Any]:
  """The recipe's `zel_jax.evaluate`: one split's report (its other flags do not apply)."""
  del config
  return run_eval(workdir, (request.split,), request.data)[request.split]
