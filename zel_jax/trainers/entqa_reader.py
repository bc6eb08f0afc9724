"""EntQA's reader (Zhang, Hua and Stratos, ICLR 2022, Sec. 2.2-2.3) and the end-to-end
linker it completes: retrieve a passage's candidate entities first (the retriever,
trainers/entqa_retriever.py), then find each candidate's mentions in the passage.

Training reads the retriever's candidates for a subset of training passages
(`config.data.candidates` = the retriever's workdir, whose evaluation wrote
candidates/passages_train.jsonl; its config fixes how documents are cut into passages).
Each passage comes with its top C candidates, the golds that retrieval missed put in place
of the lowest non-gold ones; rows `[CLS] passage [SEP] topic [SEP] title [ENT] description
[SEP]` go through models/entqa.py's Reader and the loss is Eq. 2 (losses.reader_loss).

Inference (Sec. 2.3, `EndToEnd`): every passage's top-K entities from the retriever, the
reader's best spans of each (at most top_p, none less probable than the null span), scored
p_rerank x p_start x p_end; spans mapped back to characters of the document, duplicates
from overlapping passages merged, and those above the threshold gamma kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding
from zel_jax.data import documents as documents_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import features as features_lib
from zel_jax.data import passages as passages_lib
from zel_jax.data import zeshel
from zel_jax.models import entqa
from zel_jax.trainers import entqa_retriever as retriever_lib
from zel_jax.trainers import loop

THRESHOLD_FILE = "threshold.json"

# ------------------------------------------------------------------------------------------
# Model and parameters.


def build_model(config, mesh) -> tuple[entqa.Reader, features_lib.Featurizer]:
  bert_config, featurizer = loop.bert_and_featurizer(config)
  model = entqa.Reader(
      bert_config, dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer


def param_shardings(config, model, mesh, log: bool = False):
  return loop.param_shardings(config, entqa.abstract_params(model), mesh, log)


def random_params(model, shardings, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  init = lambda r: nn.unbox(model.init(r, ids, ids, ids, 0)["params"])
  return jax.jit(init, out_shardings=shardings)(rng)


def pretrained_params(config, model, shardings, rng):
  """The encoder from config.model.pretrained, the span and rank heads fresh."""
  params = random_params(model, shardings, rng)
  params["encoder"] = loop.pretrained_bert(config, model.config, shardings["encoder"],
                                           jax.random.fold_in(rng, 1))
  return params


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  return loop.restore_params(workdir, entqa.abstract_params(model),
                             param_shardings(config, model, mesh), step)


# ------------------------------------------------------------------------------------------
# Data: passages with candidates.


def retriever_config(config):
  """The retriever run's config: it fixes passages, topics and documents."""
  if not config.data.candidates:
    raise ValueError("config.data.candidates is empty: pass the EntQA retriever's workdir "
                     "(--config.data.candidates=W_RETRIEVER)")
  return loop.load_config(config.data.candidates)


def pair_length(config, rconfig) -> int:
  """Rows hold `[CLS] passage [SEP] topic [SEP]` and the entity without its [CLS]."""
  return passage_row_length(rconfig) + int(config.data.entity_length) - 1


def passage_row_length(rconfig) -> int:
  topic = 0 if rconfig.data.topic == "none" else int(rconfig.data.topic_tokens) + 1
  return int(rconfig.data.passage_length) + 2 + topic


@dataclasses.dataclass
class ReaderSet:
  """Passages, each with C candidate entity rows of `table` (-1: empty slot)."""
  pset: retriever_lib.PassageSet
  table: retriever_lib.EntityTable
  rows: np.ndarray           # [P, C]

  def __len__(self) -> int:
    return len(self.pset)


def training_set(config, dataset: zeshel.ZeshelDataset, featurizer) -> ReaderSet:
  """The training passages the retriever wrote candidates for: those with a gold, plus a
  fixed fraction (data.null_passages) of the others so the null span is also learnt where
  a passage names none of its candidates."""
  rconfig = retriever_config(config)
  _, retriever_featurizer = loop.bert_and_featurizer(rconfig)
  check_same_tokenizer(featurizer, retriever_featurizer)
  split = rconfig.data.train_split
  path = retriever_lib.candidates_path(config.data.candidates, split)
  keys = retriever_lib.load_candidates(path, int(config.data.num_candidates))
  docs = retriever_lib.split_documents(rconfig, dataset, split)
  wanted = {k[0] for k in keys}
  docs = [d for d in docs if d.doc_id in wanted]
  worlds = [dataset.world_of(d.doc_id) for d in docs]
  table = retriever_lib.entity_table(dataset, set(worlds), featurizer,
                                     int(config.data.entity_length))
  pset = retriever_lib.passage_set(rconfig, dataset, featurizer, docs, table, worlds)
  listed = np.asarray([pset.key(p) in keys for p in range(len(pset))], bool)
  has_gold = np.asarray([len(g) > 0 for g in pset.golds], bool)
  gold_passages = np.flatnonzero(listed & has_gold)
  null = np.flatnonzero(listed & ~has_gold)
  n_null = min(len(null), int(round(config.data.null_passages * len(gold_passages))))
  null = null[examples_lib.fixed_subset(len(null), n_null, config.seed)] if n_null else null[:0]
  keep = np.sort(np.concatenate([gold_passages, null]))
  keep = keep[examples_lib.fixed_subset(len(keep), int(config.data.max_train_passages),
                                        config.seed)]
  pset = retriever_lib.subset(pset, keep)
  rows = retriever_lib.candidate_rows(keys, pset, table, int(config.data.num_candidates), path)
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


def labels(pset: retriever_lib.PassageSet, rows: np.ndarray, index: np.ndarray
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


def span_mask(pset: retriever_lib.PassageSet, index: np.ndarray) -> np.ndarray:
  """[B, 1+L]: the null position and the passage's real tokens."""
  length = pset.passages.passage_ids.shape[1]
  return (np.arange(length + 1)[None, :] <= pset.passages.num_tokens[index][:, None]
          ).astype(np.int32)


def reader_rows(rset: ReaderSet, index: np.ndarray, rows: np.ndarray, length: int
                ) -> dict[str, np.ndarray]:
  p = rset.pset.passages
  safe = np.maximum(rows, 0)
  return features_lib.cross_features(
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
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
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
  batches = evaluate.sorted_batches(lengths, length, int(config.eval_batch_size), mesh,
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
    rank_lp, best, j0, j1, null = (evaluate.gather(x)[:len(index)] for x in results)
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


class EndToEnd:
  """A trained reader and its retriever, ready to link raw documents (evaluate and link)."""

  def __init__(self, workdir: str, data: str | None = None):
    from zel_jax.trainers import biencoder as biencoder_trainer  # pylint: disable=g-import-not-at-top
    self.workdir = workdir
    self.config = loop.load_config(workdir)
    if self.config.get("trainer") != "entqa_reader":
      raise ValueError(f"{workdir} is not an EntQA reader workdir (configs/entqa_reader.py)")
    self.rconfig = retriever_config(self.config)
    self.dataset = zeshel.ZeshelDataset(data or self.config.data.dir)
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.model, self.featurizer = build_model(self.config, self.mesh)
    self.params, self.step = restore_params(workdir, self.config, self.model, self.mesh)
    self.retriever, self.retriever_featurizer = biencoder_trainer.build_model(self.rconfig,
                                                                             self.mesh)
    self.retriever_params, self.retriever_step = biencoder_trainer.restore_params(
        self.config.data.candidates, self.rconfig, self.retriever, self.mesh)
    check_same_tokenizer(self.featurizer, self.retriever_featurizer)
    self.vectors: dict = {}
    self.tables: dict = {}
    from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
    self.encoders = evaluate.encoders(self.retriever)
    self.read_fn = reader_fn(self.model, int(self.rconfig.data.passage_length),
                             int(self.config.reader.max_span_tokens),
                             4 * int(self.config.reader.top_p))

  def threshold(self, override: float | None = None) -> float:
    """--threshold, else the calibrated gamma in W/threshold.json, else the config's."""
    if override is not None:
      return float(override)
    path = os.path.join(self.workdir, THRESHOLD_FILE)
    if os.path.exists(path):
      with open(path) as f:
        return float(json.load(f)["gamma"])
    return float(self.config.reader.threshold)

  def _tables(self, worlds: Sequence[str]):
    key = tuple(sorted(set(worlds)))
    if key not in self.tables:
      # The retriever and the reader may read entities at different lengths.
      self.tables[key] = (
          retriever_lib.entity_table(self.dataset, key, self.retriever_featurizer,
                                     int(self.rconfig.data.entity_length)),
          retriever_lib.entity_table(self.dataset, key, self.featurizer,
                                     int(self.config.data.entity_length)))
    return self.tables[key]

  def predict(self, docs: Sequence[documents_lib.Document], worlds: Sequence[str],
              top_k: int | None = None, floor: float = 0.0) -> tuple[list[tuple], dict]:
    """Merged predictions [(doc_id, c0, c1, entity_doc_id, score)] scoring above `floor`
    (apply gamma after), and timings."""
    t0 = time.time()
    rtable, table = self._tables(worlds)
    pset = retriever_lib.passage_set(self.rconfig, self.dataset, self.retriever_featurizer,
                                     docs, rtable, worlds)
    k = int(top_k or self.config.reader.top_k)
    rows, _ = retriever_lib.retrieve(self.retriever, self.retriever_params, pset, rtable,
                                          self.rconfig, self.mesh, k, self.vectors,
                                          encoders=self.encoders)
    t1 = time.time()
    # Entity rows are the same in both tables (same worlds, same file order).
    rset = ReaderSet(pset, table, rows)
    answers = read(self.model, self.params, rset, self.config, self.rconfig, self.mesh,
                   top_p=int(self.config.reader.top_p),
                   max_span=int(self.config.reader.max_span_tokens),
                   nested=bool(self.config.reader.nested), fn=self.read_fn)
    merged = [a for a in entqa.merge_predictions(
        answers, one_entity_per_span=bool(self.config.reader.one_entity_per_span))
              if a[4] > floor]
    t2 = time.time()
    timing = {"documents": len(docs), "passages": len(pset), "candidates_per_passage": k,
              "retrieve_seconds": round(t1 - t0, 1), "read_seconds": round(t2 - t1, 1),
              "documents_per_s": round(len(docs) / max(t2 - t0, 1e-9), 2)}
    return merged, timing


# ------------------------------------------------------------------------------------------
# Metrics and the threshold.


def gold_set(docs: Sequence[documents_lib.Document]) -> set[tuple[str, int, int, str]]:
  return {(d.doc_id, s.start, s.end, s.entity) for d in docs for s in d.spans}


def end_to_end_report(gold: set, predicted: Sequence[tuple]) -> dict[str, Any]:
  """InKB micro precision / recall / F1 with strong matching (same character span and same
  entity, GERBIL's strong annotation match) and mention detection alone (same span), in
  percent. gold: {(doc, c0, c1, entity)}; predicted: [(doc, c0, c1, entity, score)]."""
  pred = {(d, c0, c1, e) for d, c0, c1, e, *_ in predicted}
  report: dict[str, Any] = {"gold": len(gold), "predicted": len(pred)}
  for name, g, p in (("inkb_micro", gold, pred),
                     ("md", {x[:3] for x in gold}, {x[:3] for x in pred})):
    hit = len(g & p)
    precision = 100.0 * hit / len(p) if p else 0.0
    recall = 100.0 * hit / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    report.update({f"{name}_p": round(precision, 2), f"{name}_r": round(recall, 2),
                   f"{name}_f1": round(f1, 2), f"{name}_correct": hit})
  return report


def calibrate(gold: set, predicted: Sequence[tuple], grid: Sequence[float] | None = None
              ) -> dict[str, Any]:
  """The gamma of the grid (default: 0.01 .. 0.95 and the scores' own quantiles) with the
  best strong-match F1 on these documents."""
  scores = np.asarray([x[4] for x in predicted], np.float64)
  if grid is None:
    grid = np.unique(np.concatenate([
        np.round(np.arange(0.01, 0.96, 0.01), 2),
        np.quantile(scores, np.linspace(0, 1, 51)) if len(scores) else []]))
  best = None
  for gamma in grid:
    f1 = end_to_end_report(gold, [x for x in predicted if x[4] > gamma])["inkb_micro_f1"]
    if best is None or f1 > best[1]:
      best = (float(gamma), f1)
  if best is None:
    raise ValueError("an empty grid")
  return {"gamma": round(best[0], 6), "f1": best[1], "grid_size": len(grid)}


def evaluate_documents(e2e: EndToEnd, docs: Sequence[documents_lib.Document],
                       worlds: Sequence[str], gamma: float, top_k: int | None = None
                       ) -> dict[str, Any]:
  predicted, timing = e2e.predict(docs, worlds, top_k)
  kept = [x for x in predicted if x[4] > gamma]
  report = end_to_end_report(gold_set(docs), kept)
  report.update(timing, threshold=gamma, step=int(e2e.step))
  return report


def run_calibration(e2e: EndToEnd, docs, worlds, split: str, top_k: int | None = None
                    ) -> dict[str, Any]:
  """Picks gamma on these documents and writes it to W/threshold.json (atomically)."""
  predicted, timing = e2e.predict(docs, worlds, top_k, floor=1e-4)
  result = calibrate(gold_set(docs), predicted)
  result.update(split=split, step=int(e2e.step), documents=len(docs),
                seconds=round(timing["retrieve_seconds"] + timing["read_seconds"], 1))
  if jax.process_index() == 0:
    path = os.path.join(e2e.workdir, THRESHOLD_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
  return result


def split_documents(config, dataset, split: str, max_documents: int = -1, seed: int = 0):
  docs = documents_lib.zeshel_documents(dataset, split, select=config.data.documents)
  docs = [docs[i] for i in examples_lib.fixed_subset(len(docs), max_documents, seed)]
  return docs, [dataset.world_of(d.doc_id) for d in docs]


# ------------------------------------------------------------------------------------------
# Training.


def make_loss_fn(model: entqa.Reader, passage_length: int):
  def loss_fn(params, batch, rng):
    start, end, rank = model.apply({"params": params}, batch["input_ids"],
                                   batch["attention_mask"], batch["token_type_ids"],
                                   passage_length, deterministic=False, rngs={"dropout": rng})
    spans = jnp.broadcast_to(batch["span_mask"][:, None, :], start.shape)
    return losses.reader_loss(start, end, rank, batch["start_labels"], batch["end_labels"],
                              batch["rank_labels"], spans, batch["candidate_valid"],
                              batch["valid"])
  return loss_fn


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  rconfig = retriever_config(config)
  loop.save_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  t0 = time.time()
  train = training_set(config, dataset, featurizer)
  rows = with_golds(train.rows, train.pset.golds)
  retrieved = [np.isin(g, r).mean() for g, r in zip(train.pset.golds, train.rows) if len(g)]
  logging.info("%d training passages (%d with a gold; golds retrieved in the top %d: %.1f%%), "
               "%d candidates each, in %.1fs", len(train), len(retrieved), rows.shape[1],
               100 * float(np.mean(retrieved)) if retrieved else 0.0, rows.shape[1],
               time.time() - t0)
  length = pair_length(config, rconfig)
  passage_length = int(rconfig.data.passage_length)

  def prepare(local, params, epoch):
    del params, epoch
    index = local["example_index"]
    return dict(local, **reader_rows(train, index, rows[index], length),
                **labels(train.pset, rows[index], index),
                span_mask=span_mask(train.pset, index))

  recipe = loop.Recipe(
      abstract_params=entqa.abstract_params(model),
      random_params=lambda shardings, rng: random_params(model, shardings, rng),
      pretrained_params=lambda shardings, rng: pretrained_params(config, model, shardings,
                                                                 rng),
      loss_fn=make_loss_fn(model, passage_length),
      features={"passage": np.arange(len(train), dtype=np.int32)},
      prepare=prepare)
  outcome = loop.run(config, workdir, recipe, mesh)
  if outcome.preempted:
    return {"preempted_at": outcome.step, **outcome.last}

  e2e = EndToEnd(workdir, config.data.dir)
  reports: dict[str, Any] = {}
  if config.evals.calibrate_split:
    docs, worlds = split_documents(config, dataset, config.evals.calibrate_split,
                                   int(config.evals.calibrate_documents), config.seed)
    reports["calibration"] = run_calibration(e2e, docs, worlds, config.evals.calibrate_split)
    logging.info("calibrated gamma %.4f (F1 %.2f on %d %s documents)",
                 reports["calibration"]["gamma"], reports["calibration"]["f1"], len(docs),
                 config.evals.calibrate_split)

  def evaluate_split(split):
    docs, worlds = split_documents(config, dataset, split)
    gamma = reports["calibration"]["gamma"] if "calibration" in reports else e2e.threshold()
    report = evaluate_documents(e2e, docs, worlds, gamma)
    report["split"] = split
    logging.info("%s end-to-end: InKB P/R/F1 %.2f / %.2f / %.2f, MD F1 %.2f over %d documents "
                 "(%.2f documents/s)", split, report["inkb_micro_p"], report["inkb_micro_r"],
                 report["inkb_micro_f1"], report["md_f1"], len(docs), report["documents_per_s"])
    return report

  reports.update(loop.evaluate_splits(config, dataset, workdir, evaluate_split))
  return {**outcome.last, "evals": reports}
