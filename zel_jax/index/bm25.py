"""BM25 over entity titles and descriptions: the sparse baseline of ZESHEL (Logeswaran et al.,
2019) and BLINK's comparison tables.

Okapi BM25 with Lucene's idf, log(1 + (N - df + 0.5) / (df + 0.5)), k1 = 1.2 and b = 0.75;
documents are `title + text`, terms are lowercased alphanumeric runs. Scoring is one sparse
matrix product: query term counts [Q, V] times the precomputed BM25 weights [V, N].
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import scipy.sparse as sp

_TERM = re.compile(r"[^\W_]+")


def terms(text: str) -> list[str]:
  return _TERM.findall(text.lower())


class BM25:
  """build(texts) -> search(queries, k) -> (scores [Q, k], row indices [Q, k])."""

  def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75):
    if not len(texts):
      raise ValueError("BM25 needs at least one document")
    self.vocab: dict[str, int] = {}
    rows, cols = [], []
    for d, text in enumerate(texts):
      for term in terms(text):
        cols.append(self.vocab.setdefault(term, len(self.vocab)))
        rows.append(d)
    n = len(texts)
    tf = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                       shape=(n, max(len(self.vocab), 1)))
    tf.sum_duplicates()
    length = np.asarray(tf.sum(axis=1)).ravel()
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))
    tf = tf.tocoo()
    weights = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm[tf.row])
    self._weights = sp.csc_matrix((weights.astype(np.float32), (tf.col, tf.row)),
                                  shape=(tf.shape[1], n))
    self.num_documents = n

  def _query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
    rows, cols = [], []
    for q, text in enumerate(queries):
      for term in terms(text):
        col = self.vocab.get(term)
        if col is not None:
          rows.append(q)
          cols.append(col)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                           shape=(len(queries), self._weights.shape[0]))
    matrix.sum_duplicates()
    return matrix

  def search(self, queries: Sequence[str], k: int, batch: int = 1024
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query by BM25; ties broken by document order."""
    k = min(k, self.num_documents)
    all_scores, all_ids = [], []
    for start in range(0, len(queries), batch):
      scores = (self._query_matrix(queries[start:start + batch]) @ self._weights).toarray()
      top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else (
          np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1)))
      top_scores = np.take_along_axis(scores, top, axis=1)
      order = np.lexsort((top, -top_scores), axis=1)
      all_ids.append(np.take_along_axis(top, order, axis=1))
      all_scores.append(np.take_along_axis(top_scores, order, axis=1))
    if not all_ids:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(all_scores), np.concatenate(all_ids)
