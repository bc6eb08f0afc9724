"""Candidate files: each mention's top entities from a retriever, the input of the reranker
and of distillation.

`zel_jax.evaluate` writes one JSON object per line,

  {"mention_id", "world", "label_document_id", "candidates": [document ids, best first],
   "scores": [the retriever's scores]}

to <workdir>/candidates/<split>.jsonl (<split>.<world>.jsonl with --world); a reranker's
evaluation writes the same layout with its own scores, best first.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from zel_jax.data import guards


def path_of(workdir_or_file: str, split: str, world: str | None = None) -> str:
  """A candidates file given either itself or the workdir whose evaluation wrote it.

  With a world, a workdir's file of that world (<split>.<world>.jsonl, what `zel_jax.evaluate
  --world` writes) when there is one, else its file of every world (<split>.jsonl); where
  neither exists, the error names both.
  """
  if not os.path.isdir(workdir_or_file):
    return workdir_or_file
  guards.plain_name(split, "split")
  if world:
    guards.plain_name(world, "world")
  every = os.path.join(workdir_or_file, "candidates", f"{split}.jsonl")
  if not world:
    return every
  one = os.path.join(workdir_or_file, "candidates", f"{split}.{world}.jsonl")
  if os.path.exists(one):
    return one
  if os.path.exists(every):
    return every
  raise FileNotFoundError(
      f"{one}: no candidates file (nor {every}); write it with python -m zel_jax.evaluate "
      f"--workdir={workdir_or_file} --split={split} --world={world}")


def read(path: str) -> dict[str, tuple[str, list[str], list[float]]]:
  """mention_id -> (world, candidate document ids, scores)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no candidates file; write it with python -m "
                            "zel_jax.evaluate --workdir=<bi-encoder workdir> --split=<split>")
  out = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        ids = [str(d) for d in record["candidates"]]
        scores = [float(s) for s in record.get("scores", [0.0] * len(ids))]
        if len(scores) != len(ids):
          raise ValueError(f"{len(ids)} candidates but {len(scores)} scores")
        out[str(record["mention_id"])] = (str(record["world"]), ids, scores)
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}:{number}: not a candidates record ({e})") from None
  return out


def candidate_rows(path: str, mention_ids: Sequence[str],
                   row_of: Mapping[tuple[str, str], int], top: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The first `top` candidates of each mention as entity rows ([M, top], -1 where a list is
  shorter) and their scores (-inf there). row_of maps (world, document id) to a row."""
  by_mention = read(path)
  missing = [m for m in mention_ids if m not in by_mention]
  if missing:
    raise ValueError(f"{path}: no candidates for {len(missing)} of {len(mention_ids)} "
                     f"mentions (e.g. {missing[:3]}); was it written for this split and "
                     "these worlds?")
  rows = np.full((len(mention_ids), top), -1, np.int64)
  scores = np.full((len(mention_ids), top), -np.inf, np.float32)
  for i, mention_id in enumerate(mention_ids):
    world, ids, values = by_mention[mention_id]
    unknown = [d for d in ids[:top] if (world, d) not in row_of]
    if unknown:
      raise ValueError(f"{path}: mention {mention_id}: candidates {unknown[:3]} are not "
                       f"entities of world {world!r}")
    rows[i, :min(top, len(ids))] = [row_of[(world, d)] for d in ids[:top]]
    scores[i, :min(top, len(values))] = values[:top]
  return rows, scores


def with_gold(rows: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Training lists: where retrieval missed the gold, it replaces the last filled candidate
  (BLINK's rule for training the cross-encoder). Returns (rows, label positions)."""
  rows = rows.copy()
  hit = rows == gold[:, None]
  found = hit.any(1)
  labels = np.where(found, hit.argmax(1), 0)
  filled = (rows >= 0).sum(1)
  if np.any(filled == 0):
    raise ValueError("a mention has no candidates at all")
  last = filled - 1
  missed = np.flatnonzero(~found)
  rows[missed, last[missed]] = gold[missed]
  labels[missed] = last[missed]
  return rows, labels.astype(np.int32)


def sample_with_gold(top_rows: np.ndarray, gold: np.ndarray, k: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """MVD's dynamic hard negatives: each mention's gold and k - 1 negatives drawn at random,
  without replacement, from its retrieved top-N (top_rows [M, N], -1 for empty slots), the
  gold never among them. The gold sits at a random position so that position carries no
  signal. Returns rows [M, k] (-1 where a list has too few negatives) and label positions [M].
  """
  if k < 1:
    raise ValueError(f"k must be at least 1 (the gold), got {k}")
  m = len(gold)
  rows = np.full((m, k), -1, np.int64)
  labels = rng.integers(0, k, m)
  for i in range(m):
    pool = top_rows[i][(top_rows[i] >= 0) & (top_rows[i] != gold[i])]
    pool = pool[np.sort(np.unique(pool, return_index=True)[1])]
    negatives = rng.choice(pool, size=min(k - 1, len(pool)), replace=False)
    others = [j for j in range(k) if j != labels[i]]
    rows[i, labels[i]] = gold[i]
    rows[i, others[:len(negatives)]] = negatives
  return rows, labels
