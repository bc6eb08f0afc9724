"""ZESHEL records -> feature arrays: the glue between zeshel.py and features.py that trainers,
the evaluator and the linker share.

A `WorldEntities` holds one world's entities in file order with their BLINK entity features;
`MentionSet` holds a split's mentions (optionally one world's) with their mention features
and the row of each mention's gold entity in its world's table.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from zel_jax.data import features as features_lib
from zel_jax.data import zeshel


@dataclasses.dataclass
class WorldEntities:
  world: str
  ids: np.ndarray        # [N] document ids (str), file order
  titles: list[str]
  texts: list[str]
  features: dict[str, np.ndarray]  # input_ids, attention_mask [N, L]

  def row_of(self) -> dict[str, int]:
    return {doc_id: i for i, doc_id in enumerate(self.ids.tolist())}


@dataclasses.dataclass
class MentionSet:
  mentions: list[zeshel.Mention]
  worlds: np.ndarray      # [M] str
  gold_rows: np.ndarray   # [M] int: row of the gold entity in its world's WorldEntities
  features: dict[str, np.ndarray]  # input_ids, attention_mask [M, L]

  def __len__(self) -> int:
    return len(self.mentions)


def world_entities(dataset: zeshel.ZeshelDataset, world: str,
                   featurizer: features_lib.Featurizer, max_length: int) -> WorldEntities:
  ids, titles, texts = [], [], []
  for entity in dataset.iter_entities(world):
    ids.append(entity.document_id)
    titles.append(entity.title)
    texts.append(entity.text)
  return WorldEntities(world, np.asarray(ids), titles, texts,
                       featurizer.entity_features(titles, texts, max_length))


def mention_set(dataset: zeshel.ZeshelDataset, split: str, featurizer: features_lib.Featurizer,
                max_length: int, entities: dict[str, WorldEntities],
                worlds: Iterable[str] | None = None,
                window_words: int | None = None) -> MentionSet:
  """The mentions of `split` (of `worlds` only, if given) with features and gold rows.

  `entities` must hold every world the kept mentions belong to. No mention to keep is an
  error naming the split's file.
  """
  keep = None if worlds is None else set(worlds)
  rows = {w: e.row_of() for w, e in entities.items()}
  mentions, lefts, spans, rights, gold = [], [], [], [], []
  for mention in dataset.iter_mentions(split):
    if keep is not None and mention.corpus not in keep:
      continue
    if mention.corpus not in rows:
      raise KeyError(f"mention {mention.mention_id!r}: no entities loaded for world "
                     f"{mention.corpus!r}")
    left, span, right = dataset.mention_tokens(mention)
    if window_words is not None:
      left, right = left[-window_words:] if window_words else [], right[:window_words]
    mentions.append(mention)
    lefts.append(" ".join(left))
    spans.append(" ".join(span))
    rights.append(" ".join(right))
    gold.append(rows[mention.corpus][mention.label_document_id])
  if not mentions:
    # Training on nothing fails later without saying why, and an evaluation of nothing
    # reports recall 0/0: neither is a result.
    raise zeshel.ZeshelFormatError(
        f"{dataset.mentions_path(split)}: split {split!r} has no mentions"
        + ("" if keep is None else f" of the worlds {sorted(keep)}")
        + ": training and evaluation need at least one")
  feats = featurizer.mention_features(lefts, spans, rights, max_length)
  return MentionSet(mentions, np.asarray([m.corpus for m in mentions]),
                    np.asarray(gold, np.int64), feats)


def mention_queries(dataset: zeshel.ZeshelDataset, mentions: Sequence[zeshel.Mention],
                    context_words: int) -> list[str]:
  """Text queries for a sparse retriever: the mention plus `context_words` words each side."""
  queries = []
  for mention in mentions:
    left, span, right = dataset.mention_tokens(mention)
    window = (left[-context_words:] if context_words else []) + span + right[:context_words]
    queries.append(" ".join(window))
  return queries


def fixed_subset(n: int, max_rows: int, seed: int) -> np.ndarray:
  """Sorted row indices of a fixed random subset of max_rows of n rows (all when max_rows
  <= 0 or >= n). Recipes that must read the same mentions (a teacher and its student) call
  it with the same seed."""
  if 0 < max_rows < n:
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
  return np.arange(n)
