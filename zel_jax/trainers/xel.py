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
4. Evaluation per language: P/R/F1 and accuracy with NIL (evaluate.nil_link_report), NIL when
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
import jax.numpy as jnp
import numpy as np

from zel_jax import evaluate, losses, sharding
from zel_jax.data import crosslang
from zel_jax.models import bert
from zel_jax.models import xel as xel_model
from zel_jax.trainers import loop

FEATURES_DIR = "features"
THRESHOLDS_FILE = "nil_thresholds.json"
OTHER_TYPE = "<other>"


# ------------------------------------------------------------------------------------------
# The data of a run.


class XelData:
  """The KB, the mentions of every language and split, pairs and type vocabularies."""

  def __init__(self, config):
    root = config.data.dir
    if not root:
      raise ValueError("config.data.dir is empty: pass --config.data.dir=A_CROSSLANG_DIR "
                       "(python -m zel_jax.data.crosslang builds one)")
    self.root = root
    self.kb = crosslang.read_kb(os.path.join(root, "kb.jsonl"))
    self.row_of = {e.id: i for i, e in enumerate(self.kb)}
    available = crosslang.languages_in(root)
    self.train_languages = _languages(config.data.train_languages, available, "train")
    self.eval_languages = _languages(config.data.eval_languages, available, "eval")
    self.mentions: dict[tuple[str, str], list[crosslang.XelMention]] = {}
    for language in sorted(set(self.train_languages) | set(self.eval_languages)):
      for split in crosslang.SPLITS:
        path = crosslang.mentions_path(root, language, split)
        if path.exists():
          self.mentions[(language, split)] = crosslang.read_mentions(path, set(self.row_of))
    self.pairs: list[tuple[str, str]] = []
    for language in self.train_languages:
      path = os.path.join(root, "pairs", f"{language}.jsonl")
      if os.path.exists(path):
        self.pairs += crosslang.read_pairs(path)
    if config.aux.weight > 0 and config.aux.max_pairs > 0:
      order = np.random.default_rng(config.seed).permutation(len(self.pairs))
      self.pairs = [self.pairs[i] for i in order[:config.aux.max_pairs]]
    # Types seen more than min_count times: on KB entities (entity types), on training
    # mentions (mention types). The rest share one column / id.
    counts = collections.Counter(t for e in self.kb for t in e.types)
    kept = sorted(t for t, c in counts.items() if c > config.model.min_type_count)
    self.entity_types = kept + [OTHER_TYPE]
    column = {t: i for i, t in enumerate(kept)}
    self.entity_type_matrix = np.zeros((len(self.kb), len(self.entity_types)), np.float32)
    for i, e in enumerate(self.kb):
      cols = [column[t] for t in e.types if t in column]
      self.entity_type_matrix[i, cols or [len(kept)]] = 1.0
    mention_counts = collections.Counter(
        m.type for lang in self.train_languages
        for m in self.mentions.get((lang, "train"), ()) if m.type)
    self.mention_types = [OTHER_TYPE] + sorted(
        t for t, c in mention_counts.items() if c > config.model.min_type_count)
    self.mention_type_id = {t: i for i, t in enumerate(self.mention_types)}

  def split(self, language: str, split: str) -> list[crosslang.XelMention]:
    return self.mentions.get((language, split), [])

  def gold_rows(self, mentions: Sequence[crosslang.XelMention]) -> np.ndarray:
    return np.asarray([evaluate.NIL_ROW if m.label == crosslang.NIL else self.row_of[m.label]
                       for m in mentions], np.int64)

  def type_ids(self, mentions: Sequence[crosslang.XelMention]) -> np.ndarray:
    return np.asarray([self.mention_type_id.get(m.type, 0) for m in mentions], np.int32)

  def training_counts(self) -> np.ndarray:
    """How often each KB row is the gold of a training mention (popularity, Sec. 7.2)."""
    counts = np.zeros(len(self.kb), np.int64)
    for language in self.train_languages:
      rows = self.gold_rows(self.split(language, "train"))
      np.add.at(counts, rows[rows >= 0], 1)
    return counts


def _languages(spec, available: list[str], what: str) -> list[str]:
  wanted = available if spec in ("all", ("all",), ["all"]) else (
      spec.split(",") if isinstance(spec, str) else list(spec))
  missing = [l for l in wanted if l not in available]
  if missing:
    raise ValueError(f"config.data.{what}_languages: {missing} not among the languages of "
                     f"the data directory {available}")
  return list(wanted)


# ------------------------------------------------------------------------------------------
# Frozen encoder features.


class Encoder:
  """The frozen multilingual encoder: name states from its lowest layers, context from the
  top, on the mesh."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    path = bert.resolve_pretrained(config.model.pretrained)
    bert_config = bert.load_config(path)
    self.tokenizer = bert.load_tokenizer(path)
    self.full = bert.BertModel(bert_config, dtype=jnp.dtype(config.model.dtype))
    # The first name_layer layers alone: layer 0 is the embedding output. Flax reads only
    # the parameters a module uses, so both share one parameter tree.
    self.low = bert.BertModel(bert_config.replace(num_layers=int(config.model.name_layer)),
                              dtype=jnp.dtype(config.model.dtype))
    self.params = jax.device_put(bert.load_params(path, self.full),
                                 jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    pooling = config.model.context_pooling

    def name_states(params, ids, mask, span):
      states = self.low.apply({"params": params}, ids, mask).astype(jnp.float32)
      masked = jnp.where(span[..., None] > 0, states, -jnp.inf)
      return jnp.where(span.sum(1, keepdims=True) > 0, masked.max(1), 0.0)

    def mean_states(params, ids, mask):
      states = self.full.apply({"params": params}, ids, mask).astype(jnp.float32)
      w = mask[..., None].astype(jnp.float32)
      return (states * w).sum(1) / jnp.maximum(w.sum(1), 1.0)

    def context_states(params, ids, mask):
      if pooling == "cls":
        return self.full.apply({"params": params}, ids, mask,
                               first_token_only=True)[:, 0].astype(jnp.float32)
      return mean_states(params, ids, mask)

    def retrieval_states(params, ids, mask):
      pooled = mean_states(params, ids, mask)
      return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    if pooling not in ("cls", "mean"):
      raise ValueError(f"config.model.context_pooling {pooling!r} is not 'cls' or 'mean'")
    self._name = jax.jit(name_states)
    self._context = jax.jit(context_states)
    self._retrieval = jax.jit(retrieval_states)

  def _tokenize(self, texts: Sequence[str], max_tokens: int, spans=None):
    """ids, mask [N, max_tokens] and span [N, max_tokens]: 1 on the subwords that overlap
    each text's character span (all its non-special subwords when spans is None)."""
    enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                         max_length=max_tokens, return_offsets_mapping=True,
                         return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)
    mask = enc["attention_mask"].astype(np.int32)
    offsets = enc["offset_mapping"]
    real = (offsets[..., 1] > offsets[..., 0]) & (mask > 0)
    if spans is None:
      span = real
    else:
      starts = np.asarray([s for s, _ in spans])[:, None]
      ends = np.asarray([e for _, e in spans])[:, None]
      span = real & (offsets[..., 0] < ends) & (offsets[..., 1] > starts)
    return ids, mask, span.astype(np.int32)

  def _run(self, fn, arrays: dict[str, np.ndarray], desc: str, *extra_keys: str) -> np.ndarray:
    axes = self.config.sharding.batch_axes
    out = None
    for rows, local_rows, width in evaluate.sorted_batches(
        arrays["mask"].sum(1), arrays["ids"].shape[1], self.config.eval_batch_size,
        self.mesh, axes, desc=desc):
      batch = sharding.global_batch({k: v[local_rows, :width] for k, v in arrays.items()},
                                    self.mesh, axes)
      result = evaluate.gather(fn(self.params, batch["ids"], batch["mask"],
                                  *(batch[k] for k in extra_keys)))
      if out is None:
        out = np.zeros((len(arrays["ids"]),) + result.shape[1:], np.float32)
      out[rows] = result[:len(rows)]
    return out

  def names(self, names: Sequence[str], desc: str = "names") -> np.ndarray:
    ids, mask, span = self._tokenize(names, int(self.config.model.name_tokens))
    return self._run(self._name, {"ids": ids, "mask": mask, "span": span}, desc, "span")

  def texts(self, texts: Sequence[str], max_tokens: int, desc: str = "texts") -> np.ndarray:
    ids, mask, _ = self._tokenize(texts, max_tokens)
    return self._run(self._context, {"ids": ids, "mask": mask}, desc)

  def mentions(self, mentions: Sequence[crosslang.XelMention], desc: str = "mentions"
               ) -> dict[str, np.ndarray]:
    """name [N, H] (lowest-layer states of the mention's subwords inside its context) and
    context [N, H]. A context too long for context_tokens is cut to a character window
    around the mention first."""
    limit = int(self.config.model.context_tokens)
    width = 4 * limit  # Characters each side: subwords are rarely shorter than 2 characters.
    texts, spans = [], []
    for m in mentions:
      lo = max(0, m.start - width)
      texts.append(m.context[lo:m.end + width])
      spans.append((m.start - lo, m.end - lo))
    ids, mask, span = self._tokenize(texts, limit, spans)
    arrays = {"ids": ids, "mask": mask, "span": span}
    lost = int((span.sum(1) == 0).sum())
    if lost:
      logging.warning("%s: %d mentions lie outside their first %d subwords; their name "
                      "features are zero", desc, lost, limit)
    return {"name": self._run(self._name, arrays, desc + " names", "span"),
            "context": self._run(self._context, {"ids": ids, "mask": mask}, desc)}

  def retrieval(self, texts: Sequence[str], prefix: str, max_tokens: int, desc: str
                ) -> np.ndarray:
    """The encoder as a bi-encoder: L2-normalized mean-pooled embeddings (E5's own use)."""
    ids, mask, _ = self._tokenize([prefix + t for t in texts], max_tokens)
    return self._run(self._retrieval, {"ids": ids, "mask": mask}, desc)


def _cached(directory: str, name: str, key: str, compute) -> dict[str, np.ndarray]:
  """Arrays saved as <directory>/<name>.npz with their key; recomputed when the key differs.
  Written to a temporary file and renamed, so an interrupted run leaves no half file."""
  path = os.path.join(directory, f"{name}.npz")
  digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
  if os.path.exists(path):
    with np.load(path) as f:
      if str(f["key"]) == digest:
        return {k: f[k] for k in f.files if k != "key"}
  arrays = compute()
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp-{os.getpid()}.npz"
    np.savez(tmp, key=np.asarray(digest), **arrays)
    os.replace(tmp, path)
  return arrays


def _file_key(path: str) -> str:
  st = os.stat(path)
  return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def entity_texts(config, kb: Sequence[crosslang.KbEntity]) -> list[str]:
  """What the entity's context vector reads: its description, or "name: description"
  (config.model.entity_context), as a Wikipedia article opens with its title."""
  if config.model.entity_context == "description":
    return [e.description for e in kb]
  if config.model.entity_context == "name+description":
    return [f"{e.name}: {e.description}" for e in kb]
  raise ValueError(f"config.model.entity_context {config.model.entity_context!r} is not "
                   "'description' or 'name+description'")


class Features:
  """Every feature table of a run, from the cache or the encoder."""

  def __init__(self, config, data: XelData, workdir: str, mesh):
    self._encoder = None
    self._kb_retrieval = None
    self.config, self.data, self.workdir, self.mesh = config, data, workdir, mesh
    # Runs that share data and encoder settings may share one cache (config.features_dir).
    self.directory = config.features_dir or os.path.join(workdir, FEATURES_DIR)
    kb_path = os.path.join(data.root, "kb.jsonl")
    self.kb = _cached(self.directory, "kb", self.key(kb_path), lambda: {
        "name": self.encoder.names([e.name for e in data.kb], "kb names"),
        "context": self.encoder.texts(entity_texts(config, data.kb),
                                      int(config.model.description_tokens), "kb descriptions")})
    self.mentions: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for (language, split), mentions in data.mentions.items():
      path = str(crosslang.mentions_path(data.root, language, split))
      self.mentions[(language, split)] = _cached(
          self.directory, f"mentions_{language}_{split}", self.key(path),
          lambda mentions=mentions, language=language, split=split:
          self.encoder.mentions(mentions, f"{language} {split}"))
    self.pairs = {"source": np.zeros((0, 0), np.float32),
                  "english": np.zeros((0, 0), np.float32)}
    if data.pairs and config.aux.weight > 0:
      key = self.key(json.dumps(sorted(data.train_languages)) + str(len(data.pairs)))
      self.pairs = _cached(self.directory, "pairs_" + "_".join(sorted(data.train_languages)),
                           key, lambda: {
          "source": self.encoder.names([s for s, _ in data.pairs], "pair sources"),
          "english": self.encoder.names([e for _, e in data.pairs], "pair names")})

  def kb_retrieval(self) -> np.ndarray:
    """The KB names as the encoder embeds them for retrieval (triage.source = "encoder")."""
    if self._kb_retrieval is None:
      cfg = self.config
      self._kb_retrieval = _cached(
          self.directory, "kb_retrieval",
          self.key(os.path.join(self.data.root, "kb.jsonl")) + cfg.triage.passage_prefix,
          lambda: {"emb": self.encoder.retrieval([e.name for e in self.data.kb],
                                                 cfg.triage.passage_prefix,
                                                 int(cfg.model.name_tokens),
                                                 "kb retrieval")})["emb"]
    return self._kb_retrieval

  @property
  def encoder(self) -> Encoder:
    if self._encoder is None:
      self._encoder = Encoder(self.config, self.mesh)
    return self._encoder

  def key(self, what: str) -> str:
    cfg = self.config.model
    settings = json.dumps([cfg.pretrained, cfg.name_layer, cfg.context_pooling,
                           cfg.context_tokens, cfg.description_tokens, cfg.name_tokens,
                           cfg.entity_context])
    return settings + "|" + (_file_key(what) if os.path.exists(what) else what)


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
  key = features.key(str(crosslang.mentions_path(data.root, language, split))) + json.dumps(
      [config.triage.k, config.triage.query_prefix, config.triage.passage_prefix,
       config.triage.store])
  cached = _cached(features.directory, f"triage_{language}_{split}", key, lambda: _triage(
      config, data, features, mentions, f"{language} {split}"))
  rows, scores = cached["rows"], cached["scores"]
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
  store = evaluate.build_store(config.triage.store, features.kb_retrieval(), features.mesh)
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
    ranker[lo:lo + count] = evaluate.gather(r)[:count]
    nn_scores[lo:lo + count] = evaluate.gather(nn)[:count]
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
        top_row, top_score = evaluate.top_candidates(scores, rows)
        predicted = evaluate.apply_nil_threshold(top_row, top_score,
                                                 thresholds[system][language])
        systems[system] = predicted
      top_row, top_score = evaluate.top_candidates(ranker, rows)
      popular = evaluate.popularity_rerank(ranker, rows, counts, int(config.evals.popularity_top))
      systems["ranker+popularity"] = np.where(
          top_score >= thresholds["ranker"][language], popular, evaluate.NIL_ROW)
      linkable = gold >= 0
      found = (rows == gold[:, None]).any(1)
      per_language[language] = {
          **{system: evaluate.nil_link_report(p, gold) for system, p in systems.items()},
          "triage_recall": round(100.0 * float(found[linkable].mean()), 4)
          if linkable.any() else 0.0,
          "thresholds": {s: thresholds[s][language] for s in ("ranker", "nn")}}
      for system, p in systems.items():
        pooled[system].append((p, gold))
    report = {"languages": per_language,
              "train_languages": list(data.train_languages),
              "all": {system: evaluate.nil_link_report(np.concatenate([p for p, _ in v]),
                                                       np.concatenate([g for _, g in v]))
                      for system, v in pooled.items()}}
    reports[split] = report
    loop.write_report(workdir, f"eval_{split}", report)
    for language, r in per_language.items():
      logging.info("%s %s: ranker F1 %.2f acc %.2f | NN F1 %.2f acc %.2f | +popularity F1 "
                   "%.2f | triage recall %.2f", split, language, r["ranker"]["f1"],
                   r["ranker"]["accuracy"], r["nn"]["f1"], r["nn"]["accuracy"],
                   r["ranker+popularity"]["f1"], r["triage_recall"])
  return reports


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
      top_row, top_score = evaluate.top_candidates(entry[column], entry[0])
      out[system][language] = evaluate.select_nil_threshold(top_row, top_score, entry[3])
  loop.write_report(workdir, THRESHOLDS_FILE[:-len(".json")], out)
  return out


def pair_similarity(source: np.ndarray, english: np.ndarray, seed: int = 0) -> dict[str, Any]:
  """Mean cosine of translated name pairs against the same names paired at random: the
  check that the encoder puts translations closer (FreeDict's pairs, name features)."""
  if len(source) < 2:
    return {"pairs": int(len(source))}
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  source, english = unit(source), unit(english)
  shift = np.random.default_rng(seed).integers(1, len(source), size=len(source))
  shuffled = english[(np.arange(len(source)) + shift) % len(source)]
  return {"pairs": int(len(source)),
          "translated": round(float((source * english).sum(-1).mean()), 4),
          "random": round(float((source * shuffled).sum(-1).mean()), 4)}


# ------------------------------------------------------------------------------------------
# The recipe.


def abstract_params(model: xel_model.XelRanker, hidden: int):
  """Parameter shapes, boxed without logical axes: the ranker is small and replicated."""
  shapes = jax.eval_shape(lambda: xel_model.init_params(model, hidden, jax.random.PRNGKey(0)))
  return jax.tree_util.tree_map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), shapes)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  loop.save_config(config, workdir)
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

  recipe = loop.Recipe(abstract_params=abstract, random_params=random_params,
                       pretrained_params=None, loss_fn=make_loss_fn(model, config),
                       features=training_set(config, data, features),
                       prepare=make_prepare(config, data, features))
  outcome = loop.run(config, workdir, recipe, mesh)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}
  reports = evaluate_all(model, outcome.params, config, data, features, workdir, mesh,
                         tuple(config.evals.splits))
  return {**outcome.last, "pair_similarity": pairs, "evals": reports}


def run_eval(workdir: str, splits: Sequence[str] = ("test",), data_dir: str | None = None
             ) -> dict[str, Any]:
  """Evaluates a trained workdir's latest checkpoint (python -m zel_jax.evaluate)."""
  config = loop.load_config(workdir)
  if data_dir:
    config.data.dir = data_dir
  mesh = sharding.make_mesh(config.mesh)
  data = XelData(config)
  features = Features(config, data, workdir, mesh)
  model = build_model(config, data)
  abstract = abstract_params(model, int(features.kb["name"].shape[1]))
  shardings = loop.param_shardings(config, abstract, mesh)
  params, _ = loop.restore_params(workdir, abstract, shardings)
  return evaluate_all(model, params, config, data, features, workdir, mesh, tuple(splits))
