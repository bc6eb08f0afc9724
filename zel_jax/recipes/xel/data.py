"""The data of a cross-language run: the KB, the mentions of every language and split, the
translated name pairs and the type vocabularies (XelData)."""

from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np

from zel_jax.data import crosslang
from zel_jax.recipes.xel import nil

OTHER_TYPE = "<other>"


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
    return np.asarray([nil.NIL_ROW if m.label == crosslang.NIL else self.row_of[m.label]
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
