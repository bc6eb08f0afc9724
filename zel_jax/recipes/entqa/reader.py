"""EntQA's reader (Zhang, Hua and Stratos, ICLR 2022, Sec. 2.2-2.3) and the end-to-end
linker it completes: retrieve a passage's candidate entities first (the retriever,
recipes/entqa/retriever.py), then find each candidate's mentions in the passage.

Training reads the retriever's candidates for a subset of training passages
(`config.data.candidates` = the retriever's workdir, whose evaluation wrote
candidates/passages_train.jsonl; its config fixes how documents are cut into passages).
Each passage comes with its top C candidates, the golds that retrieval missed put in place
of the lowest non-gold ones; rows `[CLS] passage [SEP] topic [SEP] title [ENT] description
[SEP]` go through model.py's Reader and the loss is Eq. 2 (losses.reader_loss).

Inference (Sec. 2.3, `EndToEnd`): every passage's top-K entities from the retriever, the
reader's best spans of each (at most top_p, none less probable than the null span), scored
p_rerank x p_start x p_end; spans mapped back to characters of the document, duplicates
from overlapping passages merged, and those above the threshold gamma kept.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import sharding, workdir_io
from zel_jax.data import examples as examples_lib
from zel_jax.data import features as features_lib
from zel_jax.data import rows as rows_lib
from zel_jax.data import zeshel
from zel_jax.evals import inference
from zel_jax.models import pretrained
from zel_jax.recipes.entqa import model as entqa
from zel_jax.recipes.entqa import passage_retrieval
from zel_jax.recipes.entqa import passages as passages_lib
from zel_jax.training import params as params_lib

# ------------------------------------------------------------------------------------------
# Model and parameters.


def build_model(config, mesh) -> tuple[entqa.Reader, features_lib.Featurizer]:
  bert_config, featurizer = pretrained.bert_and_featurizer(config)
  model = entqa.Reader(
      bert_config, dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer


def param_shardings(config, model, mesh, log: bool = False):
  return params_lib.param_shardings(config, entqa.abstract_params(model), mesh, log)


def random_params(model, shardings, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  return params_lib.init_params(model, shardings, rng, ids, ids, ids, 0)


def pretrained_params(config, model, shardings, rng):
  """The encoder from config.model.pretrained, the span and rank heads fresh."""
  params = random_params(model, shardings, rng)
  params["encoder"] = pretrained.pretrained_bert(config, model.config, shardings["encoder"],
                                           jax.random.fold_in(rng, 1))
  return params


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  return params_lib.restore_params(workdir, entqa.abstract_params(model),
                             param_shardings(config, model, mesh), step)


# ------------------------------------------------------------------------------------------
# Data: passages with candidates.


def retriever_config(config):
  """The retriever run's config: it fixes passages, topics and documents."""
  if not config.data.candidates:
    raise ValueError("config.data.candidates is empty: pass the EntQA retriever's workdir "
                     "(--config.data.candidates=W_RETRIEVER)")
  return workdir_io.load_config(config.data.candidates)


def pair_length(config, rconfig) -> int:
  """Rows hold `[CLS] passage [SEP] topic [SEP]` and the entity without its [CLS]."""
  return passage_row_length(rconfig) + int(config.data.entity_length) - 1


def passage_row_length(rconfig) -> int:
  topic = 0 if rconfig.data.topic == "none" else int(rconfig.data.topic_tokens) + 1
  return int(rconfig.data.passage_length) + 2 + topic


@dataclasses.dataclass
class ReaderSet:
  """Passages, each with C candidate entity rows of `table` (-1: empty slot)."""
  pset: passage_retrieval.PassageSet
  table: passage_retrieval.EntityTable
  rows: np.ndarray           # [P, C]

  def __len__(self) -> int:
    return len(self.pset)


def training_set(config, dataset: zeshel.ZeshelDataset, featurizer) -> ReaderSet:
  """The training passages the retriever wrote candidates for: those with a gold, plus a
  fixed fraction (data.null_passages) of the others so the null span is also learnt where
  a passage names none of its candidates."""
  rconfig = retriever_config(config)
  _, retriever_featurizer = pretrained.bert_and_featurizer(rconfig)
  check_same_tokenizer(featurizer, retriever_featurizer)
  split = rconfig.data.train_split
  path = passage_retrieval.candidates_path(config.data.candidates, split)
  keys = passage_retrieval.load_candidates(path, int(config.data.num_candidates))
  docs = passage_retrieval.split_documents(rconfig, dataset, split)
  wanted = {k[0] for k in keys}
  docs = [d for d in docs if d.doc_id in wanted]
  worlds = [dataset.world_of(d.doc_id) for d in docs]
  table = passage_retrieval.entity_table(dataset, set(worlds), featurizer,
                                     int(config.data.entity_length))
  pset = passage_retrieval.passage_set(rconfig, dataset, featurizer, docs, table, worlds)
  listed = np.asarray([pset.key(p) in keys for p in range(len(pset))], bool)
  has_gold = np.asarray([len(g) > 0 for g in pset.golds], bool)
  gold_passages = np.flatnonzero(listed & has_gold)
  null = np.flatnonzero(listed & ~has_gold)
  n_null = min(len(null), int(round(config.data.null_passages * len(gold_passages))))
  null = null[examples_lib.fixed_subset(len(null), n_null, config.seed)] if n_null else null[:0]
  keep = np.sort(np.concatenate([gold_passages, null]))
  keep = keep[examples_lib.fixed_subset(len(keep), int(config.data.max_train_passages),
                                        config.seed)]
  pset = passage_retrieval.subset(pset, keep)
  rows = passage_retrieval.candidate_rows(keys, pset, table, int(config.data.num_candidates), path)
  return ReaderSet(pset, table, rows)


def with_golds(rows: np.ndarray, golds: Sequence[np.ndarray]) -> np.ndarray:
  """Training lists: each gold retrieval missed takes the place of the lowest-ranked
  non-gold candidate (the reference fills its K with golds first)."""
  rows = rows.copy()
  for p, gold in enumerate(golds):
    missing = [g for g in gold.tolist() if g not in rows[p]]
    if not missing:
      continue
    free = [c for c in range(rows.shape[1] - 1, -1, -1) if rows[p, c] not in gold]
    for c, g in zip(free, missing):
      rows[p, c] = g
  return rows


def labels(pset: passage_retrieval.PassageSet, rows: np.ndarray, index: np.ndarray
           ) -> dict[str, np.ndarray]:
  """Eq. 2's targets for passages `index` and their candidate rows [B, C]: a gold
  candidate's span starts and ends (row positions j + 1), position 0 (null) for the others;
  rerank targets over the golds. A candidate whose mention the passage cuts in two is
  neither gold nor negative there: it is dropped (candidate_valid False)."""
  b, c = rows.shape
  length = pset.passages.passage_ids.shape[1]
  start = np.zeros((b, c, length + 1), np.int32)
  end = np.zeros((b, c, length + 1), np.int32)
  rank = np.zeros((b, c), np.int32)
  valid = rows >= 0
  for i, p in enumerate(index.tolist()):
    spans: dict[int, list[tuple[int, int]]] = {}
    for j0, j1, row in pset.gold_spans[p]:
      spans.setdefault(row, []).append((j0, j1))
    cut = set(pset.exclude[p].tolist()) - set(spans)
    for k in range(c):
      row = int(rows[i, k])
      if row < 0:
        continue
      if row in spans:
        rank[i, k] = 1
        for j0, j1 in spans[row]:
          start[i, k, j0 + 1] = 1
          end[i, k, j1 + 1] = 1
      elif row in cut:
        valid[i, k] = False
      else:
        start[i, k, 0] = end[i, k, 0] = 1
  return {"start_labels": start, "end_labels": end, "rank_labels": rank,
          "candidate_valid": valid}


def span_mask(pset: passage_retrieval.PassageSet, index: np.ndarray) -> np.ndarray:
  """[B, 1+L]: the null position and the passage's real tokens."""
  length = pset.passages.passage_ids.shape[1]
  return (np.arange(length + 1)[None, :] <= pset.passages.num_tokens[index][:, None]
          ).astype(np.int32)


def reader_rows(rset: ReaderSet, index: np.ndarray, rows: np.ndarray, length: int
                ) -> dict[str, np.ndarray]:
  p = rset.pset.passages
  safe = np.maximum(rows, 0)
  return rows_lib.cross_features(
      p.input_ids[index], p.attention_mask[index],
      rset.table.features["input_ids"][safe], rset.table.features["attention_mask"][safe],
      length)


# ------------------------------------------------------------------------------------------
# Inference.


def reader_fn(model: entqa.Reader, passage_length: int, max_span: int, k: int):
  """Jitted (params, ids, mask, types, span_mask, candidate_valid) [B, C, ...] -> (rank
  log-probs [B, C], the k best spans' log-probs, starts, ends [B, C, k], null [B, C])."""
  def fn(params, ids, mask, types, spans, candidate_valid):
    start, end, rank = model.apply({"params": params}, ids, mask, types, passage_length)
    best, j0, j1, null = entqa.top_spans(start, end, spans[:, None, :] * jnp.ones_like(
        start, jnp.int32), max_span, k)
    return entqa.masked_log_softmax(rank, candidate_valid), best, j0, j1, null
  return jax.jit(fn)


def _cut_by_window_edge(passages: passages_lib.Passages, p: int, j0: int, j1: int) -> bool:
  """Whether passage-relative span [j0, j1] touches an edge of window p that is not an edge
  of its document: it may be the visible part of a longer mention. Consecutive windows
  overlap by L - S tokens, so any mention that short that touches one window's inner edge
  lies wholly inside the neighbouring window, which reads it whole."""
  d = int(passages.document[p])
  n_doc = int(passages.document_tokens[d + 1] - passages.document_tokens[d])
  start, n = int(passages.token_start[p]), int(passages.num_tokens[p])
  return (j0 == 0 and start > 0) or (j1 == n - 1 and start + n < n_doc)


def read(model, params, rset: ReaderSet, config, rconfig, mesh, *, top_p: int,
         max_span: int, nested: bool, fn=None, desc: str = "read") -> list[tuple]:
  """Passage answers [(doc_id, c0, c1, entity_doc_id, score)] before merging. fn: a
  reader_fn to reuse (its compiled shapes survive between calls)."""
  length = pair_length(config, rconfig)
  passage_length = int(rconfig.data.passage_length)
  fn = fn or reader_fn(model, passage_length, max_span, 4 * top_p)
  p = rset.pset.passages
  entity_tokens = rset.table.features["attention_mask"].sum(1)
  pair_tokens = (p.attention_mask.sum(1)[:, None]
                 + np.where(rset.rows >= 0, entity_tokens[np.maximum(rset.rows, 0)], 1) - 1)
  # The reader reads positions 0..L: rows are never cut shorter than the passage part.
  lengths = np.maximum(np.minimum(pair_tokens.max(1), length), passage_length + 2)
  out = []
  batches = inference.sorted_batches(lengths, length, int(config.eval_batch_size), mesh,
                                    config.sharding.batch_axes, 8, desc)
  for index, mine, width in batches:
    rows = rset.rows[mine]
    feats = reader_rows(rset, mine, rows, length)
    batch = sharding.global_batch(
        {**{name: np.ascontiguousarray(v[..., :width]) for name, v in feats.items()},
         "span_mask": span_mask(rset.pset, mine), "candidate_valid": rows >= 0},
        mesh, config.sharding.batch_axes)
    results = fn(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                 batch["span_mask"], batch["candidate_valid"])
    rank_lp, best, j0, j1, null = (inference.gather(x)[:len(index)] for x in results)
    for i, passage in enumerate(index.tolist()):
      out.extend(passage_answers(rset, passage, rank_lp[i], best[i], j0[i], j1[i], null[i],
                                 top_p, nested))
  return out


def passage_answers(rset: ReaderSet, passage: int, rank_lp, best, j0, j1, null, top_p: int,
                    nested: bool) -> list[tuple]:
  """One passage's answers from reader_fn's outputs (row positions: passage token j is at
  j + 1) as (doc_id, c0, c1, entity_doc_id, score) in its document's characters; a span
  at a window's inner edge is left to the neighbouring window (_cut_by_window_edge)."""
  p = rset.pset.passages
  doc_id = rset.pset.documents[p.document[passage]].doc_id
  out = []
  for c, s0, s1, score in entqa.decode_spans(best, j0, j1, null, rank_lp, top_p=top_p,
                                             nested=nested,
                                             candidate_valid=rset.rows[passage] >= 0):
    if _cut_by_window_edge(p, passage, s0 - 1, s1 - 1):
      continue
    c0, c1 = passages_lib.token_span_to_chars(p, passage, s0 - 1, s1 - 1)
    out.append((doc_id, c0, c1, str(rset.table.doc_ids[rset.rows[passage, c]]), score))
  return out


def check_same_tokenizer(reader_featurizer, retriever_featurizer) -> None:
  """Passages are cut, and candidates keyed, in the retriever's wordpieces."""
  if reader_featurizer.tokenizer.get_vocab() != retriever_featurizer.tokenizer.get_vocab():
    raise ValueError("the reader and its retriever tokenize differently (model.pretrained "
                     "vocabularies differ): passages are cut in the retriever's wordpieces, "
                     "so both must share one tokenizer")
