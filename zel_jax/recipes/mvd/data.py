"""MVD's data: each entity's views (local views of the text, and its global view) as token
tables, a split's mentions with every entity of their worlds, the teacher's input rows, and
the candidates read from a retriever's file."""

from __future__ import annotations

import dataclasses

import numpy as np

from zel_jax.data import candidates as candidates_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import local_views as local_views_lib
from zel_jax.data import zeshel
from zel_jax.recipes.blink import crossencoder as cross_trainer


@dataclasses.dataclass
class ViewTable:
  """Views of a set of entities: token rows, the entity of each view, and each entity's view
  rows ([E, S], -1 past its last view)."""
  features: dict[str, np.ndarray]   # input_ids, attention_mask [V, L]
  entity: np.ndarray                # [V]
  entity_views: np.ndarray          # [E, S]

  @classmethod
  def of(cls, features: dict[str, np.ndarray], entity: np.ndarray, num_entities: int
         ) -> "ViewTable":
    counts = np.bincount(entity, minlength=num_entities)
    width = max(int(counts.max(initial=0)), 1)
    first = np.cumsum(counts) - counts
    slot = np.arange(len(entity)) - first[entity]
    entity_views = np.full((num_entities, width), -1, np.int64)
    entity_views[entity, slot] = np.arange(len(entity))
    return cls({k: features[k] for k in ("input_ids", "attention_mask")},
               np.asarray(entity, np.int64), entity_views)

  def gather(self, entity_rows: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """The views of entity_rows [...] as {prefix_input_ids [..., S, L], prefix_attention_mask,
    prefix_valid [..., S]}; rows of -1 get no valid view."""
    rows = self.entity_views[np.maximum(entity_rows, 0)]
    rows = np.where((entity_rows >= 0)[..., None], rows, -1)
    safe = np.maximum(rows, 0)
    return {f"{prefix}_input_ids": self.features["input_ids"][safe],
            f"{prefix}_attention_mask": self.features["attention_mask"][safe] * (rows >= 0)[
                ..., None],
            f"{prefix}_valid": rows >= 0}


def local_views(featurizer, titles, texts, config, max_views: int, row_featurizer=None
                ) -> ViewTable:
  """Local views chunked by featurizer's tokens, written in row_featurizer's (default: the
  same) tokenization: a teacher with its own tokenizer reads the student's views."""
  feats = local_views_lib.view_features(featurizer, titles, texts, int(config.mvd.view_length),
                                         max_views, int(config.mvd.min_view_tokens),
                                         row_featurizer=row_featurizer)
  return ViewTable.of(feats, feats["entity"], len(titles))


def global_views(featurizer, titles, texts, config) -> ViewTable:
  feats = featurizer.entity_features(titles, texts, int(config.data.entity_length))
  return ViewTable.of(feats, np.arange(len(titles)), len(titles))


def student_tables(featurizer, titles, texts, config) -> dict[str, ViewTable]:
  """The student's views in training by batch prefix: "view" (the first train_views local
  views) and, when trained, "global"."""
  tables = {"view": local_views(featurizer, titles, texts, config,
                                int(config.mvd.train_views))}
  if config.mvd.train_global_view:
    tables["global"] = global_views(featurizer, titles, texts, config)
  return tables


def gather_views(tables: dict[str, ViewTable], rows: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v for prefix, t in tables.items() for k, v in t.gather(rows, prefix).items()}


@dataclasses.dataclass
class MvdData:
  """A split's mentions and every entity of their worlds (global rows, worlds in order)."""
  mentions: list[zeshel.Mention]
  mention_features: dict[str, np.ndarray]   # input_ids, attention_mask [M, Lm]
  worlds: np.ndarray                        # [M]
  gold: np.ndarray                          # [M] global entity rows
  entity_worlds: np.ndarray                 # [E]
  entity_doc_ids: np.ndarray                # [E]
  titles: list[str]
  texts: list[str]

  def row_of(self) -> dict[tuple[str, str], int]:
    return {(w, d): i for i, (w, d) in enumerate(zip(self.entity_worlds.tolist(),
                                                    self.entity_doc_ids.tolist()))}


def mvd_data(config, dataset: zeshel.ZeshelDataset, featurizer, split: str,
             max_mentions: int = -1, seed: int = 0) -> MvdData:
  window = None if config.data.window_words < 0 else config.data.window_words
  worlds = sorted({m.corpus for m in dataset.iter_mentions(split, validate=False)})
  # Entity features at 2 tokens: mention_set needs only the id order; views are made apart.
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, 2) for w in worlds}
  mentions = examples_lib.mention_set(dataset, split, featurizer, config.data.mention_length,
                                      entities, worlds=worlds, window_words=window)
  keep = examples_lib.fixed_subset(len(mentions), max_mentions, seed)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(entities[w].ids) for w in worlds])))
  gold = np.asarray([offsets[w] for w in mentions.worlds], np.int64) + mentions.gold_rows
  return MvdData(
      [mentions.mentions[i] for i in keep],
      {k: v[keep] for k, v in mentions.features.items()}, mentions.worlds[keep], gold[keep],
      np.concatenate([[w] * len(entities[w].ids) for w in worlds]),
      np.concatenate([entities[w].ids for w in worlds]),
      [t for w in worlds for t in entities[w].titles],
      [t for w in worlds for t in entities[w].texts])


def teacher_config(config):
  """The cross-encoder's view of the config: its entity input is one view, its encoder
  config.mvd.teacher_pretrained when one is named."""
  view = config.copy_and_resolve_references()
  if not config.mvd.single_vector_teacher:
    view.data.entity_length = int(config.mvd.view_length)
  if config.mvd.get("teacher_pretrained"):
    view.model.pretrained = config.mvd.teacher_pretrained
  return view


def teacher_rows(mention_features: dict[str, np.ndarray], table: ViewTable, index: np.ndarray,
                 rows: np.ndarray, config, encoder) -> dict[str, np.ndarray]:
  """Cross-encoder inputs [b, K, S, L] of mentions `index` (rows of mention_features, in the
  teacher's tokenization) with the views of their candidate entity rows [b, K], in the pair
  format of the teacher's encoder (a BertConfig); teacher_valid [b, K, S]."""
  views = table.entity_views[np.maximum(rows, 0)]                 # [b, K, S]
  views = np.where((rows >= 0)[..., None], views, -1)
  b, k, s = views.shape
  length = cross_trainer.pair_length(teacher_config(config), encoder)
  feats = cross_trainer.pair_features(mention_features, table.features, index,
                                      views.reshape(b, k * s), length, encoder)
  out = {f"teacher_{name}": v.reshape(b, k, s, -1) for name, v in feats.items()}
  out["teacher_valid"] = views >= 0
  return out


def static_top(path: str, data: MvdData, top: int) -> np.ndarray:
  rows, _ = candidates_lib.candidate_rows(path, [m.mention_id for m in data.mentions],
                                          data.row_of(), top)
  return rows


def teacher_table(featurizer, data: MvdData, config) -> ViewTable:
  if config.mvd.single_vector_teacher:
    return global_views(featurizer, data.titles, data.texts, config)
  return local_views(featurizer, data.titles, data.texts, config, int(config.mvd.train_views))
