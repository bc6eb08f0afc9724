"""Metrics shared by the recipes, as percentages: recall@k of the gold among each mention's
candidates (micro, macro over worlds, per world, per ZESHEL category), BLINK's reranking
accuracies, and F1."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


KS = (1, 2, 4, 8, 16, 32, 50, 64, 100)


def gold_ranks(candidate_rows: np.ndarray, gold_rows: np.ndarray) -> np.ndarray:
  """0-based rank of each mention's gold among its K candidates; K (= not found) if absent,
  which recall_report counts as a hit at no k: it reports no k above K."""
  hit = candidate_rows == gold_rows[:, None]
  return np.where(hit.any(1), hit.argmax(1), candidate_rows.shape[1])


def _recalls(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
  if len(ranks) == 0:
    return {f"recall@{k}": float("nan") for k in ks}
  return {f"recall@{k}": round(100.0 * float(np.mean(ranks < k)), 4) for k in ks}


def recall_report(ranks: np.ndarray, worlds: Sequence[str], categories: Sequence[str | None],
                  ks: Sequence[int] = KS, *, retrieved: int) -> dict[str, Any]:
  """Micro recall@k over all mentions, macro (the mean over worlds of each world's recall),
  per world and per category; percentages.

  retrieved: K, the candidates retrieved per mention (gold_ranks' K). recall@k is reported
  for k <= K only: a gold missed in the top K may or may not be in a top k > K, so those
  are not measured and their keys are absent everywhere (micro, macro, per world, per
  category); the report's "retrieved" says K. Readers of a report must expect that."""
  ks = [k for k in ks if k <= retrieved]
  ranks = np.asarray(ranks)
  worlds = np.asarray(worlds)
  categories = np.asarray([c or "NONE" for c in categories])
  report: dict[str, Any] = {**_recalls(ranks, ks), "mentions": int(len(ranks)),
                            "retrieved": int(retrieved)}
  per_world = {str(w): {**_recalls(ranks[worlds == w], ks),
                        "mentions": int((worlds == w).sum())} for w in sorted(set(worlds))}
  report["macro"] = {key: round(float(np.mean([v[key] for v in per_world.values()])), 4)
                     for key in _recalls(ranks[:1], ks)} if per_world else {}
  report["per_world"] = per_world
  report["per_category"] = {str(c): {**_recalls(ranks[categories == c], ks),
                                     "mentions": int((categories == c).sum())}
                            for c in sorted(set(categories))}
  return report


def f1(p: float, r: float) -> float:
  return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _accuracies(predicted_rows: np.ndarray, rows: np.ndarray, gold: np.ndarray
                ) -> dict[str, float]:
  correct = predicted_rows == gold
  found = (rows == gold[:, None]).any(1)
  pct = lambda x: round(100.0 * float(np.mean(x)), 4) if len(x) else 0.0
  return {"normalized_accuracy": pct(correct[found]), "unnormalized_accuracy": pct(correct),
          "candidate_recall": pct(found), "retriever_accuracy": pct(rows[:, 0] == gold)}


def rerank_report(scores: np.ndarray, rows: np.ndarray, gold: np.ndarray,
                  worlds: Sequence[str], categories: Sequence[str | None]) -> dict[str, Any]:
  """BLINK's reranking metrics, percentages: normalized accuracy (over the mentions whose
  gold is among their candidates), unnormalized accuracy (over all mentions), with the
  candidates' recall and the retriever's own accuracy@1 on the same candidates beside them;
  micro, macro over worlds (BLINK's headline numbers), per world and per category.

  scores [M, K] (-inf in empty slots), rows [M, K] entity rows (-1: empty), gold [M].
  """
  rows, gold = np.asarray(rows), np.asarray(gold)
  worlds = np.asarray(worlds)
  categories = np.asarray([c or "NONE" for c in categories])
  best = np.argmax(np.where(rows >= 0, scores, -np.inf), axis=1)
  predicted = np.take_along_axis(rows, best[:, None], 1)[:, 0]

  def part(mask):
    return {**_accuracies(predicted[mask], rows[mask], gold[mask]), "mentions": int(mask.sum())}

  report: dict[str, Any] = part(np.ones(len(gold), bool))
  per_world = {str(w): part(worlds == w) for w in sorted(set(worlds))}
  report["macro"] = {key: round(float(np.mean([v[key] for v in per_world.values()])), 4)
                     for key in ("normalized_accuracy", "unnormalized_accuracy",
                                 "candidate_recall", "retriever_accuracy")} if per_world else {}
  report["per_world"] = per_world
  report["per_category"] = {str(c): part(categories == c) for c in sorted(set(categories))}
  return report
