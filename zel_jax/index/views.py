"""Entity search over a store of views (MVD): a store whose rows are views carries each
view's entity id, so ids repeat; an entity's score is its best view's (MVD Eq. 3) and each
entity is returned once. Works with every store kind, since it only calls `search`."""

from __future__ import annotations

import numpy as np

from zel_jax.index.base import CandidateStore, missing_id


def first_unique(scores: np.ndarray, ids: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per row of best-first view hits, the first k distinct ids (the best view of each
  entity). Returns scores [Q, k], ids [Q, k] (missing_id and -inf past the distinct ones)
  and the number of distinct ids found per row [Q]."""
  q = len(ids)
  out_ids = np.full((q, k), missing_id(ids.dtype), ids.dtype)
  out_scores = np.full((q, k), -np.inf, np.float32)
  found = np.zeros(q, np.int64)
  filler = missing_id(ids.dtype)
  for i in range(q):
    row = ids[i]
    hit = (row != filler) & (row == row)  # row == row drops a NaN filler of float ids.
    _, first = np.unique(row[hit], return_index=True)
    keep = np.flatnonzero(hit)[np.sort(first)][:k]
    found[i] = len(keep)
    out_ids[i, :len(keep)] = row[keep]
    out_scores[i, :len(keep)] = scores[i, keep]
  return out_scores, out_ids, found


def search_entities(store: CandidateStore, queries: np.ndarray, k: int,
                    num_entities: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Top-k distinct entities per query from a store of views: fetches views best first,
  doubling how many until each query has k distinct entities (or the store is exhausted).
  num_entities (default: the distinct ids in the store) caps k."""
  if num_entities is None:
    num_entities = len(np.unique(store.ids))
  k = min(k, num_entities)
  fetch = min(len(store), 2 * k)
  scores, ids, found = first_unique(*store.search(queries, fetch), k)
  while fetch < len(store) and (found < k).any():
    fetch = min(len(store), 2 * fetch)
    short = np.flatnonzero(found < k)
    s, i, f = first_unique(*store.search(queries[short], fetch), k)
    scores[short], ids[short], found[short] = s, i, f
  return scores, ids
