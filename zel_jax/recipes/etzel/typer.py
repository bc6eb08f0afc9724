"""Stage one of Sui et al. (2022): the ultra-fine entity typing model, its UFET metrics, and
type extraction over every entity of a knowledge base (what stage two learns from).

Training data: UFET crowd files in their released layout (config.typing.ufet_train), or, where
there are none, distant labels read off the KB's own descriptions (types.py): each
training mention typed with its gold entity's labels, and each training context document
typed from `title [SEP] description`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding, workdir_io
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import inference, metrics
from zel_jax.models import bert, pretrained
from zel_jax.recipes.etzel import types as typing_data
from zel_jax.recipes.etzel import typing_model
from zel_jax.training import checks, loop
from zel_jax.training import params as params_lib

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------------
# Model and parameters.


def build_model(config, mesh):
  bert_config, featurizer = pretrained.bert_and_featurizer(config)
  vocabulary = typing_data.TypeVocabulary.load(config.typing.vocabulary)
  model = typing_model.EntityTyper(
      bert_config, num_types=len(vocabulary), dtype=jnp.dtype(config.model.dtype),
      remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer, vocabulary


def param_shardings(config, model, mesh, log: bool = False):
  return params_lib.param_shardings(config, typing_model.abstract_params(model), mesh, log)


def random_params(model, shardings, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  return params_lib.init_params(model, shardings, rng, ids, ids)


def type_embeddings(model, encoder_params, featurizer, vocabulary, config, mesh) -> np.ndarray:
  """V: the [CLS] state of `[CLS] type [SEP] description [SEP]` for every type, from the
  encoder as loaded (computed once; the checkpoint then carries it)."""
  descriptions, from_wordnet = typing_data.type_descriptions(
      vocabulary, config.typing.wordnet or None)
  logging.info("type descriptions: %d of %d from WordNet glosses, the rest the label itself",
               from_wordnet, len(vocabulary))
  feats = featurizer.pair_features([typing_data.type_text(t) for t in vocabulary.labels],
                                   descriptions, config.typing.type_length)
  encoder = bert.BertModel(model.config, dtype=model.dtype)
  encode = jax.jit(lambda p, ids, mask: encoder.apply(
      {"params": p}, ids, mask, first_token_only=True)[:, 0].astype(jnp.float32))
  return inference.embed_rows(encode, encoder_params, feats, mesh, config.eval_batch_size,
                             config.sharding.batch_axes, desc="type embeddings")


def pretrained_params(config, model, featurizer, vocabulary, shardings, mesh, rng):
  """The encoder from config.model.pretrained, V computed with it, the output layer random."""
  params = random_params(model, shardings, rng)
  params["encoder"] = pretrained.pretrained_bert(config, model.config, shardings["encoder"],
                                           jax.random.fold_in(rng, 1))
  table = type_embeddings(model, params["encoder"], featurizer, vocabulary, config, mesh)
  params["type_embeddings"] = jax.device_put(table, shardings["type_embeddings"])
  return params


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  return params_lib.restore_params(workdir, typing_model.abstract_params(model),
                             param_shardings(config, model, mesh), step)


# ------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TypingSet:
  """Featurized typing examples: input_ids, attention_mask, token_type_ids [N, L] and labels
  [N, K] (type indices, -1 padding); kinds [N] is "mention" or "entity"."""
  features: dict[str, np.ndarray]
  kinds: np.ndarray

  def __len__(self) -> int:
    return len(self.kinds)


def label_rows(label_lists, index: dict[str, int], width: int | None = None) -> np.ndarray:
  width = width or max([len(x) for x in label_lists] + [1])
  rows = np.full((len(label_lists), width), -1, np.int32)
  for i, labels in enumerate(label_lists):
    ids = [index[y] for y in labels][:width]
    rows[i, :len(ids)] = ids
  return rows


def entity_description(entity: zeshel.Entity) -> str:
  """An entity's text without the title it opens with (ZESHEL and FOLDOC texts repeat it)."""
  return zeshel.strip_title(entity.text, entity.title)


def world_labels(dataset: zeshel.ZeshelDataset, world: str, index: dict[str, int]
                 ) -> dict[str, list[str]]:
  """Distant labels of every entity of a world, from its own description."""
  return {e.document_id: typing_data.distant_labels(e.text, index, e.title)
          for e in dataset.iter_entities(world)}


def kb_typing_set(config, dataset: zeshel.ZeshelDataset, split: str, featurizer,
                  index: dict[str, int], labels: dict[str, dict[str, list[str]]]) -> TypingSet:
  """Distantly labelled examples of a split: its mentions (labels of their gold entity) and
  its context documents (labels of their own description); unlabelled ones are left out."""
  mentions, entities, seen = [], [], set()
  for mention in dataset.iter_mentions(split):
    if mention.corpus not in labels:
      labels[mention.corpus] = world_labels(dataset, mention.corpus, index)
    world = labels[mention.corpus]
    gold = world.get(mention.label_document_id, [])
    if gold:
      mentions.append((mention, gold))
    key = (mention.corpus, mention.context_document_id)
    if key not in seen:
      seen.add(key)
      own = world.get(mention.context_document_id, [])
      if own:
        entities.append((dataset.document(mention.context_document_id), own))
  lefts, spans, rights = [], [], []
  window = int(config.data.get("window_words", -1))
  for mention, _ in mentions:
    left, span, right = dataset.mention_tokens(mention)
    if window >= 0:
      left, right = left[len(left) - window:] if window else [], right[:window]
    lefts.append(" ".join(left))
    spans.append(" ".join(span))
    rights.append(" ".join(right))
  length = config.typing.mention_length
  feats_m = featurizer.typing_features(lefts, spans, rights, length)
  feats_e = featurizer.pair_features([e.title for e, _ in entities],
                                     [entity_description(e) for e, _ in entities], length)
  width = max([len(y) for _, y in mentions + entities] + [1])
  feats = {k: np.concatenate([feats_m[k], feats_e[k]]) for k in FEATURES}
  feats["labels"] = label_rows([y for _, y in mentions + entities], index, width)
  return TypingSet(feats, np.asarray(["mention"] * len(mentions) + ["entity"] * len(entities)))


def ufet_typing_set(config, path: str, featurizer, vocabulary) -> TypingSet:
  examples = typing_data.read_ufet(path, vocabulary)
  feats = featurizer.typing_features([e.left for e in examples], [e.mention for e in examples],
                                     [e.right for e in examples], config.typing.mention_length)
  feats["labels"] = label_rows([e.labels for e in examples], vocabulary.index)
  return TypingSet(feats, np.asarray(["mention"] * len(examples)))


def typing_set(config, dataset, split, featurizer, vocabulary, labels) -> TypingSet:
  ufet = config.typing.get(f"ufet_{split}", "")
  if ufet:
    return ufet_typing_set(config, ufet, featurizer, vocabulary)
  return kb_typing_set(config, dataset, split, featurizer, vocabulary.index, labels)


# ------------------------------------------------------------------------------------------
# Prediction and metrics.


def typing_report(gold: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]]
                  ) -> dict[str, float]:
  """Ultra-fine entity typing metrics (Choi et al., 2018), percentages. Macro: precision
  averaged over the examples with a prediction, recall over the examples with gold types,
  F1 of the two; micro: over all (example, type) pairs."""
  p_sum = r_sum = 0.0
  p_n = r_n = hits = n_pred = n_gold = 0
  for g, y in zip(gold, predicted, strict=True):
    g, y = set(g), set(y)
    both = len(g & y)
    hits, n_pred, n_gold = hits + both, n_pred + len(y), n_gold + len(g)
    if y:
      p_sum, p_n = p_sum + both / len(y), p_n + 1
    if g:
      r_sum, r_n = r_sum + both / len(g), r_n + 1
  macro_p, macro_r = p_sum / max(p_n, 1), r_sum / max(r_n, 1)
  micro_p, micro_r = hits / max(n_pred, 1), hits / max(n_gold, 1)
  pct = lambda x: round(100.0 * x, 4)
  return {"macro_p": pct(macro_p), "macro_r": pct(macro_r),
          "macro_f1": pct(metrics.f1(macro_p, macro_r)), "micro_p": pct(micro_p),
          "micro_r": pct(micro_r), "micro_f1": pct(metrics.f1(micro_p, micro_r))}


def top_types_fn(model, k: int):
  """Jitted (params, ids, mask, token types) -> the k most probable types (probabilities,
  indices): only k values per row leave the devices."""
  def top(params, ids, mask, types):
    logits = model.apply({"params": params}, ids, mask, types)
    return jax.lax.top_k(jax.nn.sigmoid(logits), k)
  return jax.jit(top)


def predict_top(top, params, feats: dict[str, np.ndarray], config, mesh, k: int,
                desc: str = "typing") -> tuple[np.ndarray, np.ndarray]:
  """Each row's k most probable types with `top` (top_types_fn): (probabilities [N, k]
  descending, type indices [N, k]), on the mesh in length-sorted global batches."""
  n = len(feats["input_ids"])
  probs, index = np.zeros((n, k), np.float32), np.zeros((n, k), np.int32)
  axes = config.sharding.batch_axes
  for rows, local, width in inference.sorted_batches(
      feats["attention_mask"].sum(1), feats["input_ids"].shape[1], config.eval_batch_size,
      mesh, axes, desc=desc):
    batch = sharding.global_batch({name: feats[name][local, :width] for name in FEATURES},
                                  mesh, axes)
    p, i = top(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    probs[rows] = inference.gather(p)[:len(rows)]
    index[rows] = inference.gather(i)[:len(rows)]
  return probs, index


def decode(probs: np.ndarray, index: np.ndarray, threshold: float) -> list[list[int]]:
  """Types above threshold, and always the most probable one (UFET's decoding)."""
  return [[int(t) for p, t in zip(pr, ix) if p > threshold] or [int(ix[0])]
          for pr, ix in zip(probs, index)]


def union_over_rows(owner: np.ndarray, chosen: list[list[int]], n: int) -> list[list[int]]:
  """Each text's types: the union of its rows' (sorted)."""
  found: list[set[int]] = [set() for _ in range(n)]
  for row, types in zip(owner.tolist(), chosen, strict=True):
    found[row].update(types)
  return [sorted(f) for f in found]


def evaluate_typing(model, params, data: TypingSet, config, mesh, vocabulary
                    ) -> dict[str, Any]:
  """UFET metrics at config.typing.threshold, over all examples and per kind."""
  k = int(config.typing.max_types)
  probs, index = predict_top(top_types_fn(model, k), params, data.features, config, mesh, k)
  predicted = decode(probs, index, float(config.typing.threshold))
  gold = [[int(t) for t in row if t >= 0] for row in data.features["labels"]]
  report = {"examples": len(data), **typing_report(gold, predicted)}
  for kind in np.unique(data.kinds):
    rows = np.flatnonzero(data.kinds == kind)
    report[kind] = {"examples": len(rows),
                    **typing_report([gold[i] for i in rows],
                                             [predicted[i] for i in rows])}
  labels = vocabulary.labels
  report["sample"] = [{"gold": [labels[t] for t in gold[i]],
                       "predicted": [labels[t] for t in predicted[i]]}
                      for i in np.linspace(0, len(gold) - 1, min(8, len(gold))).astype(int)]
  return report


# ------------------------------------------------------------------------------------------
# Extraction over a knowledge base.


def extract_world(model, params, featurizer, vocabulary, dataset: zeshel.ZeshelDataset,
                  world: str, config, mesh, out_path: str | None = None) -> dict[str, Any]:
  """Types of every entity of `world`: `title [SEP] description` in rows of
  config.typing.extract_length tokens, types above config.typing.extract_threshold plus the
  most probable one, union over the rows. Entities are read and featurized
  config.typing.extract_block at a time and the file written as they go (a temporary file
  renamed at the end, by process 0) to config.typing.types_dir/<world>.json, by default
  DATA/types/<world>.json. Returns counts for the report."""
  out_path = out_path or str(typing_data.types_path(dataset.data_dir, world,
                                                    config.typing.types_dir))
  counts = {"entities": 0, "rows": 0, "types": 0}
  k = int(config.typing.max_types)
  top = top_types_fn(model, k)  # One compile per row width for the whole world.

  def blocks() -> Iterator[list[zeshel.Entity]]:
    block = []
    for entity in dataset.iter_entities(world):
      block.append(entity)
      if len(block) == config.typing.extract_block:
        yield block
        block = []
    if block:
      yield block

  def rows():
    for block in blocks():
      feats, owner = featurizer.chunked_pair_features(
          [e.title for e in block], [entity_description(e) for e in block],
          config.typing.extract_length, config.typing.extract_chunks)
      probs, index = predict_top(top, params, feats, config, mesh, k, desc=f"extract: {world}")
      found = union_over_rows(owner, decode(probs, index,
                                            float(config.typing.extract_threshold)), len(block))
      counts["rows"] += len(owner)
      for entity, types in zip(block, found):
        counts["entities"] += 1
        counts["types"] += len(types)
        yield entity.document_id, [vocabulary.labels[t] for t in types]

  if jax.process_index() == 0:
    typing_data.write_types(out_path, rows())
  else:
    for _ in rows():  # Every process runs the same batches (their devices take part).
      pass
  counts["path"] = out_path
  counts["types_per_entity"] = counts["types"] / max(counts["entities"], 1)
  return counts


def _extraction_worlds(config, dataset: zeshel.ZeshelDataset) -> list[str]:
  """Every world, or with config.typing.extract_splits only the worlds whose mentions are in
  those splits (stage two trains on the train worlds' types alone: a benchmark of many worlds
  need not type its test knowledge bases)."""
  splits = tuple(config.typing.get("extract_splits", ()))
  if not splits:
    return dataset.worlds()
  return sorted({m.corpus for split in splits if split in dataset.splits()
                 for m in dataset.iter_mentions(split, validate=False)})


# ------------------------------------------------------------------------------------------
# Training.


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  if "type_embeddings" not in tuple(config.optimizer.frozen):
    raise ValueError("config.optimizer.frozen must hold 'type_embeddings' (V is fixed)")
  evals_base.check_type(config, ("typing",), "etzel", "typing")
  checks.prepare_workdir(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer, vocabulary = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  labels: dict[str, dict[str, list[str]]] = {}
  t0 = time.time()
  train = typing_set(config, dataset, config.data.train_split, featurizer, vocabulary, labels)
  logging.info("typing examples: %d (%d mentions, %d entities) in %.1fs", len(train),
               int((train.kinds == "mention").sum()), int((train.kinds == "entity").sum()),
               time.time() - t0)

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                         batch["token_type_ids"], deterministic=False, rngs={"dropout": rng})
    return losses.multi_label_bce(logits, batch["labels"], batch["valid"])

  recipe = loop.TrainSpec(
      abstract_params=typing_model.abstract_params(model),
      random_params=lambda shardings, rng: random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: pretrained_params(
          config, model, featurizer, vocabulary, shardings, mesh, rng),
      loss_fn=loss_fn, features=train.features)
  evaluator = typing_evaluator(config, model, featurizer, vocabulary, mesh, dataset, labels)
  outcome = loop.run(config, workdir, recipe, mesh, evaluator)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}

  reports = evals_base.evaluate_and_write(evaluator, outcome.params, outcome.step, workdir)
  extracted = {}
  for world in (_extraction_worlds(config, dataset) if config.typing.extract else []):
    extracted[world] = extract_world(model, outcome.params, featurizer, vocabulary, dataset,
                                     world, config, mesh)
    logging.info("extracted types of %s: %s", world, extracted[world])
  if extracted:
    workdir_io.write_report(workdir, "extracted_types", extracted)
  return {**outcome.last, "evals": reports, "extracted": extracted}


def typing_evaluator(config, model, featurizer, vocabulary, mesh, dataset, labels
                     ) -> evals_base.Evaluator:
  """UFET metrics on config.evals.splits (config.evals.type "typing")."""
  return evals_base.Evaluator(
      "typing", config.evals.splits, lambda params, split: evaluate_typing(
          model, params, typing_set(config, dataset, split, featurizer, vocabulary, labels),
          config, mesh, vocabulary), dataset.splits())


def run_eval(workdir: str, config, data: str, split: str) -> dict[str, Any]:
  """zel_jax.evaluate on a typing workdir: UFET metrics on `split`."""
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer, vocabulary = build_model(config, mesh)
  params, step = restore_params(workdir, config, model, mesh)
  dataset = zeshel.ZeshelDataset(data)
  evaluator = typing_evaluator(config, model, featurizer, vocabulary, mesh, dataset, {})
  report = evaluator.evaluate_split(params, split)
  report["step"] = int(step)
  return report
