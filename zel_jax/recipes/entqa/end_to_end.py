"""EntQA end to end (Sec. 2.3): a trained reader with its retriever linking raw documents
(`EndToEnd`), its InKB micro P/R/F1 with strong matching and mention-detection F1, the
threshold gamma calibrated on held-out documents, the exact-title-match baseline, and the
end-to-end evaluator of training and `zel_jax.evaluate --end_to_end` alike."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np

from zel_jax import sharding, workdir_io
from zel_jax.data import documents as documents_lib
from zel_jax.data import examples as examples_lib
from zel_jax.data import zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import inference
from zel_jax.recipes.blink import biencoder as biencoder_trainer
from zel_jax.recipes.entqa import model as entqa
from zel_jax.recipes.entqa import passage_retrieval, reader

THRESHOLD_FILE = "threshold.json"


def workdir_threshold(workdir: str, config) -> float:
  """The calibrated gamma in W/threshold.json, else the config's."""
  path = os.path.join(workdir, THRESHOLD_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return float(json.load(f)["gamma"])
  return float(config.reader.threshold)


def read_and_merge(model, params, rset: reader.ReaderSet, config, rconfig, mesh, fn,
                   floor: float) -> list[tuple]:
  """The reader's answers for each passage's candidates, merged across overlapping passages
  (one entity per span when the config says so), those scoring above `floor`."""
  answers = reader.read(model, params, rset, config, rconfig, mesh,
                        top_p=int(config.reader.top_p),
                        max_span=int(config.reader.max_span_tokens),
                        nested=bool(config.reader.nested), fn=fn)
  return [a for a in entqa.merge_predictions(
      answers, one_entity_per_span=bool(config.reader.one_entity_per_span)) if a[4] > floor]


class EndToEnd:
  """A trained reader and its retriever, ready to link raw documents (evaluate and link)."""

  def __init__(self, workdir: str, data: str | None = None, params=None, step: int = 0):
    """params: the reader's (during training); by default its workdir's checkpoint."""
    self.workdir = workdir
    self.config = workdir_io.load_config(workdir)
    if self.config.get("trainer") != "entqa_reader":
      raise ValueError(f"{workdir} is not an EntQA reader workdir (configs/entqa_reader.py)")
    self.rconfig = reader.retriever_config(self.config)
    self.dataset = zeshel.ZeshelDataset(data or self.config.data.dir)
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.model, self.featurizer = reader.build_model(self.config, self.mesh)
    if params is None:
      params, step = reader.restore_params(workdir, self.config, self.model, self.mesh)
    self.params, self.step = params, step
    self.retriever, self.retriever_featurizer = biencoder_trainer.build_model(self.rconfig,
                                                                             self.mesh)
    self.retriever_params, self.retriever_step = biencoder_trainer.restore_params(
        self.config.data.candidates, self.rconfig, self.retriever, self.mesh)
    reader.check_same_tokenizer(self.featurizer, self.retriever_featurizer)
    self.vectors: dict = {}
    self.tables: dict = {}
    self.encoders = inference.encoders(self.retriever)
    self.read_fn = reader.reader_fn(self.model, int(self.rconfig.data.passage_length),
                             int(self.config.reader.max_span_tokens),
                             4 * int(self.config.reader.top_p))

  def threshold(self, override: float | None = None) -> float:
    """--threshold, else the calibrated gamma in W/threshold.json, else the config's."""
    if override is not None:
      return float(override)
    return workdir_threshold(self.workdir, self.config)

  def title_of(self, world: str, entity_id: str) -> str:
    return self.dataset.entities(world)[entity_id].title

  def _tables(self, worlds: Sequence[str]):
    key = tuple(sorted(set(worlds)))
    if key not in self.tables:
      # The retriever and the reader may read entities at different lengths.
      self.tables[key] = (
          passage_retrieval.entity_table(self.dataset, key, self.retriever_featurizer,
                                     int(self.rconfig.data.entity_length)),
          passage_retrieval.entity_table(self.dataset, key, self.featurizer,
                                     int(self.config.data.entity_length)))
    return self.tables[key]

  def predict(self, docs: Sequence[documents_lib.Document], worlds: Sequence[str],
              top_k: int | None = None, floor: float = 0.0) -> tuple[list[tuple], dict]:
    """Merged predictions [(doc_id, c0, c1, entity_doc_id, score)] scoring above `floor`
    (apply gamma after), and timings."""
    t0 = time.time()
    rtable, table = self._tables(worlds)
    pset = passage_retrieval.passage_set(self.rconfig, self.dataset, self.retriever_featurizer,
                                     docs, rtable, worlds)
    k = int(top_k or self.config.reader.top_k)
    rows, _ = passage_retrieval.retrieve(self.retriever, self.retriever_params, pset, rtable,
                                          self.rconfig, self.mesh, k, self.vectors,
                                          encoders=self.encoders)
    t1 = time.time()
    # Entity rows are the same in both tables (same worlds, same file order).
    merged = read_and_merge(self.model, self.params, reader.ReaderSet(pset, table, rows),
                            self.config, self.rconfig, self.mesh, self.read_fn, floor)
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


def title_match(dataset: zeshel.ZeshelDataset, docs, worlds: Sequence[str],
                exclude_self: bool = True) -> list[tuple]:
  """The end-to-end baseline: every exact (case-sensitive) occurrence of an entity title in a
  document's words, longest title first, left to right, without overlaps; a title shared by
  several entities links to the first in file order, and a document never links to itself.
  Returns [(doc_id, c0, c1, entity_id, 1.0)]."""
  titles: dict[str, tuple[dict[tuple[str, ...], str], int]] = {}
  out = []
  for doc, world in zip(docs, worlds):
    if world not in titles:
      table: dict[tuple[str, ...], str] = {}
      for entity in dataset.iter_entities(world):
        words = tuple(zeshel.tokenize(entity.title))
        if words:
          table.setdefault(words, entity.document_id)
      titles[world] = (table, max((len(t) for t in table), default=0))
    table, longest = titles[world]
    spans = documents_lib.word_char_spans(doc.text)
    words = [doc.text[a:b] for a, b in spans]
    i = 0
    while i < len(words):
      for n in range(min(longest, len(words) - i), 0, -1):
        entity = table.get(tuple(words[i:i + n]))
        if entity is not None and not (exclude_self and entity == doc.doc_id):
          out.append((doc.doc_id, spans[i][0], spans[i + n - 1][1], entity, 1.0))
          i += n
          break
      else:
        i += 1
  return out


# ------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_end_to_end(workdir: str, config, request: evals_base.EvalRequest
                        ) -> dict[str, Any]:
  """End-to-end linking of a split's documents (or a GERBIL-style JSON-lines file) with an
  EntQA reader workdir: InKB micro P/R/F1 with strong matching and mention detection F1.
  calibrate: pick gamma on these documents and write it to W/threshold.json instead. split
  None: "test", or the config's evals.calibrate_split when calibrating; calibrating on a
  split of config.evals.splits (those reported) is refused."""
  data, input_path, world = request.data, request.input, request.world
  split = request.split if request.split_given else None
  calibrate, baseline, documents = request.calibrate, request.baseline, request.documents
  top_k = request.top_k if request.top_k_given else None
  if config.get("trainer") != "entqa_reader":
    raise ValueError(f"--end_to_end needs an EntQA reader workdir (configs/entqa_reader.py); "
                     f"{workdir} holds a {config.get('trainer')!r} run")
  dataset = zeshel.ZeshelDataset(data or config.data.dir)
  if split is None:
    split = (config.evals.calibrate_split or "val") if calibrate else "test"
  if calibrate and not input_path and split in config.evals.splits:
    raise ValueError(f"--calibrate on split {split!r}, one of the splits results are reported "
                     f"on ({list(config.evals.splits)}): pick gamma on another (--split=val)")
  if input_path:
    if not world:
      raise ValueError("--input documents need --world: the world whose entities they name")
    kb = {e.document_id for e in dataset.iter_entities(world)}
    docs, counts = documents_lib.read_gerbil_jsonl(input_path, kb)
    worlds, source = [world] * len(docs), input_path
  else:
    if documents:
      config.data.documents = documents
    docs, worlds = split_documents(config, dataset, split, request.max_documents,
                                                config.seed)
    if world:
      keep = [i for i, w in enumerate(worlds) if w == world]
      docs, worlds = [docs[i] for i in keep], [worlds[i] for i in keep]
    counts, source = {"documents": len(docs)}, split
  if baseline == "title_match":
    t0 = time.time()
    predicted = title_match(dataset, docs, worlds)
    report = end_to_end_report(gold_set(docs), predicted)
    report.update(baseline="title_match", documents=len(docs),
                  documents_per_s=round(len(docs) / max(time.time() - t0, 1e-9), 2))
  elif baseline:
    raise ValueError(f"--baseline={baseline}: end-to-end evaluation has the title_match "
                     "baseline only")
  else:
    e2e = EndToEnd(workdir, data)
    if calibrate:
      report = run_calibration(e2e, docs, worlds, source, top_k)
    else:
      report = evaluate_documents(e2e, docs, worlds, e2e.threshold(request.threshold),
                                  top_k)
  report.update(source=source, input_counts=counts)
  return report


class DocumentsEvaluator(evals_base.Evaluator):
  """InKB P/R/F1 on config.evals.splits at the workdir's threshold (config.evals.type
  "end_to_end"): the reader's parameters are the ones evaluated, its retriever the one it
  trained with (built once)."""

  def __init__(self, config, workdir: str, dataset: zeshel.ZeshelDataset):
    super().__init__("end_to_end", config.evals.splits, self._evaluate_split,
                     dataset.splits(), with_step=True)
    self.config, self.workdir, self.dataset = config, workdir, dataset
    self._linker: EndToEnd | None = None

  def linker(self, params, step: int = 0) -> EndToEnd:
    """The end-to-end linker with these reader parameters."""
    if self._linker is None:
      self._linker = EndToEnd(self.workdir, self.config.data.dir, params=params, step=step)
    self._linker.params, self._linker.step = params, step
    return self._linker

  def _evaluate_split(self, params, split):
    e2e = self.linker(params, self._linker.step if self._linker else 0)
    docs, worlds = split_documents(self.config, self.dataset, split)
    report = evaluate_documents(e2e, docs, worlds, e2e.threshold())
    report["split"] = split
    logging.info("%s end-to-end: InKB P/R/F1 %.2f / %.2f / %.2f, MD F1 %.2f over %d documents "
                 "(%.2f documents/s)", split, report["inkb_micro_p"], report["inkb_micro_r"],
                 report["inkb_micro_f1"], report["md_f1"], len(docs), report["documents_per_s"])
    return report
