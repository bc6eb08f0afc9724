"""Linking with NIL (cross-language linking; Schumacher et al. 2021). Entities are rows >= 0;
NIL_ROW stands for "no entity" in gold and predictions alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from zel_jax.evals.metrics import f1


NIL_ROW = -1


def top_candidates(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(best row, its score) of each mention; (NIL_ROW, -inf) for a mention without
  candidates. scores, rows [M, K], rows -1 in empty slots."""
  scores = np.where(rows >= 0, scores, -np.inf)
  best = np.argmax(scores, axis=1)
  top_score = np.take_along_axis(scores, best[:, None], 1)[:, 0]
  top_row = np.where(np.isfinite(top_score), np.take_along_axis(rows, best[:, None], 1)[:, 0],
                     NIL_ROW)
  return top_row, top_score


def apply_nil_threshold(top_row: np.ndarray, top_score: np.ndarray, threshold: float
                        ) -> np.ndarray:
  """NIL where the best candidate scores below the threshold (or there is none)."""
  return np.where(top_score >= threshold, top_row, NIL_ROW)


def nil_link_report(predicted: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
  """Percentages: precision = correct links / links predicted, recall = correct links / gold
  links, F1; accuracy = mentions whose prediction equals the gold, NIL counting as a label
  (the TAC-KBP micro-average); the counts beside them."""
  predicted, gold = np.asarray(predicted), np.asarray(gold)
  linked, linkable = predicted != NIL_ROW, gold != NIL_ROW
  correct_links = int(((predicted == gold) & linked).sum())
  p = correct_links / max(int(linked.sum()), 1)
  r = correct_links / max(int(linkable.sum()), 1)
  pct = lambda x: round(100.0 * x, 4)
  return {"precision": pct(p), "recall": pct(r), "f1": pct(f1(p, r)),
          "accuracy": pct(float((predicted == gold).mean()) if len(gold) else 0.0),
          "mentions": int(len(gold)), "gold_nil": int((~linkable).sum()),
          "predicted_nil": int((~linked).sum())}


def select_nil_threshold(top_row: np.ndarray, top_score: np.ndarray, gold: np.ndarray
                         ) -> float:
  """The threshold that maximizes accuracy (NIL included) on these mentions, among -inf
  (never NIL) and each mention's top score; ties go to the lowest threshold."""
  candidates = np.concatenate([[-np.inf], np.unique(top_score[np.isfinite(top_score)])])
  best, best_accuracy = -np.inf, -1.0
  for t in candidates:
    accuracy = float((apply_nil_threshold(top_row, top_score, t) == gold).mean())
    if accuracy > best_accuracy:
      best, best_accuracy = float(t), accuracy
  return best


def popularity_rerank(scores: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                      top: int = 10) -> np.ndarray:
  """Sec. 7.2: among each mention's `top` best-scoring candidates, the one most often gold in
  training (counts[row]); the best-scoring one when none occurs there; ties go to the
  higher-scoring candidate. Returns rows [M] (NIL_ROW without candidates)."""
  scores = np.where(rows >= 0, scores, -np.inf)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
  ranked = np.take_along_axis(rows, order, 1)
  ranked_scores = np.take_along_axis(scores, order, 1)
  popularity = np.where(np.isfinite(ranked_scores) & (ranked >= 0),
                        counts[np.maximum(ranked, 0)], -1)
  pick = np.argmax(popularity, axis=1)  # The first maximum: the best-ranked among equals.
  chosen = np.take_along_axis(ranked, pick[:, None], 1)[:, 0]
  return np.where(np.isfinite(ranked_scores[:, 0]), chosen, NIL_ROW)
