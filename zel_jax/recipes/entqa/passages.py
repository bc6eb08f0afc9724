"""Passages (EntQA, Zhang et al., 2022): a document's wordpieces cut into windows of L tokens
every S tokens (the paper's 32 / 16), each a row `[CLS] passage [SEP] topic [SEP]` with the
document's title as topic, keeping the character offsets of every wordpiece so that spans read
off a passage map back to the document text. See `passage_features` and `passage_golds`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from zel_jax.data import features
from zel_jax.data import rows as rows_lib


def _check_windows(length: int, stride: int) -> None:
  if length < 1:
    raise ValueError(f"passage length must be positive, got {length}")
  if not 0 < stride <= length:
    raise ValueError(f"stride must be in (0, length={length}], got {stride} (a larger stride "
                     f"would skip tokens)")


def _window_counts(n: np.ndarray, length: int, stride: int) -> np.ndarray:
  """len(window_starts(n_i, length, stride)) for every n_i, vectorized."""
  n = np.asarray(n, np.int64)
  more = -(-np.maximum(n - length, 0) // stride)  # ceil((n - length) / stride), at least 0
  return np.where(n > 0, 1 + more, 0)


def window_starts(n: int, length: int, stride: int) -> np.ndarray:
  """First tokens of the windows over n tokens: 0, stride, 2 * stride, ... up to and including
  the first window that reaches the end (start + length >= n); none when n == 0.

  Consecutive windows share length - stride tokens, so every span of at most
  length - stride + 1 tokens lies wholly inside some window. Returns int64 [W].
  """
  _check_windows(length, stride)
  if n < 0:
    raise ValueError(f"a document cannot have {n} tokens")
  return np.arange(int(_window_counts(n, length, stride)), dtype=np.int64) * stride


@dataclasses.dataclass
class Passages:
  """P windows of L wordpieces over D documents, in document order (a document with no
  wordpiece has no passage).

  input_ids, attention_mask  int32 [P, Lq]: `[CLS] passage [SEP] topic [SEP]`, or
                             `[CLS] passage [SEP]` without a topic; passage token j sits at row
                             position j + 1.
  passage_ids                int32 [P, L]: the passage's wordpieces alone, pad id past
                             num_tokens.
  document                   int32 [P]: index of the passage's document in the input texts.
  token_start                int64 [P]: index of the window's first wordpiece in its document.
  num_tokens                 int64 [P]: wordpieces in the window (L except at a document's end).
  char_offsets               int32 [P, L, 2]: each wordpiece's character span [start, end) in
                             its document's text; -1 past num_tokens.
  token_offsets              int32 [T, 2]: the character spans of every document's wordpieces,
                             documents one after the other (passage_golds aligns spans on them).
  document_tokens            int64 [D + 1]: document d's wordpieces are
                             token_offsets[document_tokens[d]:document_tokens[d + 1]].
  """
  input_ids: np.ndarray
  attention_mask: np.ndarray
  passage_ids: np.ndarray
  document: np.ndarray
  token_start: np.ndarray
  num_tokens: np.ndarray
  char_offsets: np.ndarray
  token_offsets: np.ndarray
  document_tokens: np.ndarray

  def __len__(self) -> int:
    return len(self.document)

  @property
  def num_documents(self) -> int:
    return len(self.document_tokens) - 1

  def document_offsets(self, d: int) -> np.ndarray:
    """Character spans [T_d, 2] of document d's wordpieces."""
    if not 0 <= d < self.num_documents:
      raise IndexError(f"document {d} out of range for {self.num_documents} documents")
    return self.token_offsets[self.document_tokens[d]:self.document_tokens[d + 1]]


def passage_features(featurizer: features.Featurizer, texts: Sequence[str],
                     topics: Sequence[str | None] | None = None, *, length: int = 32,
                     stride: int = 16, topic_tokens: int = 8) -> Passages:
  """Every document cut into windows of `length` wordpieces every `stride` (window_starts),
  each followed by the first `topic_tokens` wordpieces of its document's topic (EntQA appends
  the title after a separator; L = 32, S = 16). A None or empty topic gives
  `[CLS] passage [SEP]` padded to the same width Lq = length + 2 + topic_tokens + 1 (without
  topics, Lq = length + 2).
  """
  _check_windows(length, stride)
  texts = list(texts)
  if topics is not None:
    topics = ["" if t is None else t for t in topics]
    if len(topics) != len(texts):
      raise ValueError(f"{len(topics)} topics for {len(texts)} texts")
    if topic_tokens < 1:
      raise ValueError(f"topic_tokens must be positive, got {topic_tokens}")
  ids, offsets, counts = featurizer._encode_flat(texts)  # pylint: disable=protected-access
  document_tokens = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  windows = _window_counts(counts, length, stride)
  p = int(windows.sum())
  document = np.repeat(np.arange(len(texts), dtype=np.int32), windows)
  token_start = (np.arange(p) - np.repeat(np.cumsum(windows) - windows, windows)) * stride
  num_tokens = np.minimum(length, counts[document] - token_start)
  cols = np.arange(length)
  inside = cols[None, :] < num_tokens[:, None]
  # Index 0 stands in for the pad positions; the where() below discards what it reads.
  flat = np.where(inside, (document_tokens[document] + token_start)[:, None] + cols[None, :], 0)
  passage_ids = np.where(inside, ids[flat], featurizer.pad_id).astype(np.int32)
  char_offsets = np.where(inside[..., None], offsets[flat], -1).astype(np.int32)

  zeros = np.zeros(p, np.int64)
  ones = np.ones(p, np.int64)
  segments = [(featurizer.cls_id, zeros, ones), (passage_ids, zeros, num_tokens),
              (featurizer.sep_id, zeros, ones)]
  row_length = length + 2
  if topics is not None:
    topic_ids, topic_n = featurizer.encode_pieces(topics, topic_tokens, keep="first")
    topic_n = topic_n[document]
    segments += [(topic_ids[document], zeros, topic_n),
                 (featurizer.sep_id, zeros, (topic_n > 0).astype(np.int64))]
    row_length += topic_tokens + 1
  rows = rows_lib.assemble(segments, row_length, featurizer.pad_id)
  return Passages(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                  passage_ids=passage_ids, document=document,
                  token_start=token_start.astype(np.int64),
                  num_tokens=num_tokens.astype(np.int64), char_offsets=char_offsets,
                  token_offsets=offsets, document_tokens=document_tokens)


def char_span_to_tokens(offsets: np.ndarray, c0: int, c1: int) -> tuple[int, int] | None:
  """The inclusive wordpiece span (t0, t1) whose characters are exactly [c0, c1): c0 must
  start token t0 and c1 end token t1. None when the span cuts a wordpiece or ends between
  tokens (on whitespace, or on characters the normalizer drops).

  offsets: [T, 2] character spans of a text's wordpieces, in order (encode_with_offsets).
  """
  if not 0 <= c0 < c1:
    raise ValueError(f"character span [{c0}, {c1}) is empty or negative")
  offsets = np.asarray(offsets)
  t0 = int(np.searchsorted(offsets[:, 0], c0, side="left"))
  t1 = int(np.searchsorted(offsets[:, 1], c1, side="right")) - 1
  if t0 >= len(offsets) or t1 < t0 or offsets[t0, 0] != c0 or offsets[t1, 1] != c1:
    return None
  return t0, t1


def token_span_to_chars(passages: Passages, p: int, j0: int, j1: int) -> tuple[int, int]:
  """The character span [c0, c1) in its document of passage p's inclusive wordpiece span
  [j0, j1] (passage-relative: j is at row position j + 1)."""
  n = int(passages.num_tokens[p])
  if not 0 <= j0 <= j1 < n:
    raise ValueError(f"token span [{j0}, {j1}] outside passage {p} of {n} tokens")
  return int(passages.char_offsets[p, j0, 0]), int(passages.char_offsets[p, j1, 1])


def passage_golds(passages: Passages, doc_spans: Sequence[Sequence[tuple[int, int, int]]]
                  ) -> tuple[list[tuple[int, int, int, int]], np.ndarray, dict[str, int]]:
  """Gold spans per passage.

  doc_spans[d]: (c0, c1, entity_row) character spans (end exclusive) of document d.

  Returns
    golds    (p, j0, j1, entity_row), sorted: j0/j1 the passage-relative inclusive wordpieces
             of a span wholly inside window p (a span inside two overlapping windows is gold
             in both);
    partial  object [P]: for each passage the sorted tuple of entity rows whose span the
             window cuts and that are not gold there; they are neither gold nor negative;
    counts   spans; unaligned (not on wordpiece boundaries, left out); outside (aligned but
             inside no window, e.g. longer than length - stride + 1 tokens); gold_spans
             (inside at least one window); golds (len(golds)); cut (span-window pairs).
  """
  if len(doc_spans) != passages.num_documents:
    raise ValueError(f"spans for {len(doc_spans)} documents, passages of "
                     f"{passages.num_documents}")
  if np.any(np.diff(passages.document) < 0):
    raise ValueError("passages are not in document order (align spans before taking subsets)")
  first = np.searchsorted(passages.document, np.arange(passages.num_documents + 1))
  golds: list[tuple[int, int, int, int]] = []
  cut: list[set] = [set() for _ in range(len(passages))]
  counts = dict.fromkeys(("spans", "unaligned", "outside", "gold_spans", "golds", "cut"), 0)
  for d, spans in enumerate(doc_spans):
    if not spans:
      continue
    offsets = passages.document_offsets(d)
    lo, hi = int(first[d]), int(first[d + 1])
    starts = passages.token_start[lo:hi]
    ends = starts + passages.num_tokens[lo:hi]  # exclusive
    for c0, c1, row in spans:
      counts["spans"] += 1
      span = char_span_to_tokens(offsets, c0, c1)
      if span is None:
        counts["unaligned"] += 1
        continue
      t0, t1 = span
      inside = (starts <= t0) & (t1 < ends)
      touches = (starts <= t1) & (t0 < ends)
      for k in np.flatnonzero(inside):
        golds.append((lo + int(k), t0 - int(starts[k]), t1 - int(starts[k]), int(row)))
      for k in np.flatnonzero(touches & ~inside):
        cut[lo + int(k)].add(int(row))
        counts["cut"] += 1
      if inside.any():
        counts["gold_spans"] += 1
      else:
        counts["outside"] += 1
  golds.sort()
  gold_rows: list[set] = [set() for _ in range(len(passages))]
  for p, _, _, row in golds:
    gold_rows[p].add(row)
  partial = np.empty(len(passages), dtype=object)
  for p in range(len(passages)):
    partial[p] = tuple(sorted(cut[p] - gold_rows[p]))
  counts["golds"] = len(golds)
  return golds, partial, counts
