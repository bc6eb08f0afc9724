"""Frozen multilingual encoder features of the cross-language recipe (trainer.py).

The reference code runs mBERT under no_grad and caches its outputs; so does this: names from
the encoder's lowest layers, contexts from the top, for every mention, KB entity and
translated name pair, computed on the mesh once and cached as .npz files keyed by the
encoder settings and the input files.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import checksums, sharding
from zel_jax.data import crosslang
from zel_jax.evals import fingerprint, inference
from zel_jax.models import bert, bert_io
from zel_jax.recipes.xel.data import XelData

FEATURES_DIR = "features"


class Encoder:
  """The frozen multilingual encoder: name states from its lowest layers, context from the
  top, on the mesh."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    path = bert_io.resolve_pretrained(config.model.pretrained)
    bert_config = bert_io.load_config(path)
    self.tokenizer = bert_io.load_tokenizer(path)
    self.full = bert.BertModel(bert_config, dtype=jnp.dtype(config.model.dtype))
    # The first name_layer layers alone: layer 0 is the embedding output. Flax reads only
    # the parameters a module uses, so both share one parameter tree.
    self.low = bert.BertModel(bert_config.replace(num_layers=int(config.model.name_layer)),
                              dtype=jnp.dtype(config.model.dtype))
    self.params = jax.device_put(bert_io.load_params(path, self.full),
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
    for rows, local_rows, width in inference.sorted_batches(
        arrays["mask"].sum(1), arrays["ids"].shape[1], self.config.eval_batch_size,
        self.mesh, axes, desc=desc):
      batch = sharding.global_batch({k: v[local_rows, :width] for k, v in arrays.items()},
                                    self.mesh, axes)
      result = inference.gather(fn(self.params, batch["ids"], batch["mask"],
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


def cached(directory: str, name: str, key: str, compute) -> dict[str, np.ndarray]:
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
  # The bytes, not size and mtime: a KB copied in with its old timestamp (cp -p, rsync -t)
  # or edited within one clock tick must not reuse the features of the file it replaced.
  return "sha256:" + checksums.file_sha256(path)


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
    self.kb = cached(self.directory, "kb", self.key(kb_path), lambda: {
        "name": self.encoder.names([e.name for e in data.kb], "kb names"),
        "context": self.encoder.texts(entity_texts(config, data.kb),
                                      int(config.model.description_tokens), "kb descriptions")})
    self.mentions: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for (language, split), mentions in data.mentions.items():
      path = str(crosslang.mentions_path(data.root, language, split))
      self.mentions[(language, split)] = cached(
          self.directory, f"mentions_{language}_{split}", self.key(path),
          lambda mentions=mentions, language=language, split=split:
          self.encoder.mentions(mentions, f"{language} {split}"))
    self.pairs = {"source": np.zeros((0, 0), np.float32),
                  "english": np.zeros((0, 0), np.float32)}
    if data.pairs and config.aux.weight > 0:
      # The pairs themselves: another seed or max_pairs samples others of the same count.
      key = self.key(json.dumps(sorted(data.train_languages)) + fingerprint.texts_digest(
          [s for s, _ in data.pairs], [e for _, e in data.pairs]))
      self.pairs = cached(self.directory, "pairs_" + "_".join(sorted(data.train_languages)),
                           key, lambda: {
          "source": self.encoder.names([s for s, _ in data.pairs], "pair sources"),
          "english": self.encoder.names([e for _, e in data.pairs], "pair names")})

  def kb_retrieval(self) -> np.ndarray:
    """The KB names as the encoder embeds them for retrieval (triage.source = "encoder")."""
    if self._kb_retrieval is None:
      cfg = self.config
      self._kb_retrieval = cached(
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
