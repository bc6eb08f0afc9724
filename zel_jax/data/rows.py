"""Token rows assembled from per-row segments with numpy gathers (the Featurizer's rows,
EntQA's passages) and BLINK's cross-encoder pairs built from featurized mentions and
entities.

A pair is written as the encoder's checkpoint was trained to read two texts: BERT's
`[CLS] a [SEP] b [SEP]` with token types 0 and 1, or RoBERTa-style checkpoints' (MPNet,
XLM-R) `<s> a </s></s> b </s>`, two separators between the texts (`separators`, which the
Featurizer reads off the tokenizer's own pair template); MPNet has no token-type embeddings
and ignores the types.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def assemble(segments: Iterable[tuple], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """Concatenates per-row segments into [N, length] rows.

  Each segment is (source, offset [N], count [N]): row i takes source[i, offset:offset+count]
  when source is an [N, K] array, or `count` copies of it when source is a token id.
  """
  segments = list(segments)
  n = len(segments[0][1])
  cols = np.arange(length)[None, :]
  ids = np.full((n, length), pad_id, np.int32)
  end = np.zeros(n, np.int64)
  for source, offset, count in segments:
    rel = cols - end[:, None]
    inside = (rel >= 0) & (rel < count[:, None])
    if isinstance(source, (int, np.integer)):
      ids[inside] = source
    elif source.shape[1]:
      src = np.clip(rel + offset[:, None], 0, source.shape[1] - 1)
      ids = np.where(inside, np.take_along_axis(source, src, axis=1), ids)
    end = end + count
  if np.any(end > length):
    raise AssertionError(f"rows of {end.max()} tokens exceed max_length {length}")
  return {"input_ids": ids, "attention_mask": (cols < end[:, None]).astype(np.int32)}


def cross_features(mention_ids: np.ndarray, mention_mask: np.ndarray, entity_ids: np.ndarray,
                   entity_mask: np.ndarray, length: int, pad_id: int = 0, separators: int = 1
                   ) -> dict[str, np.ndarray]:
  """BLINK's cross-encoder rows: each mention's input followed by each of its candidates'
  input without the [CLS], `[CLS] ctx_l [Ms] m [Me] ctx_r [SEP] title [ENT] desc [SEP]`
  (with separators=2, RoBERTa-style: `<s> ctx_l [Ms] m [Me] ctx_r </s></s> title [ENT]
  desc </s>`).

  mention_*: [B, Lm] featurized mentions; entity_*: [B, K, Le] their K candidates. Returns
  input_ids, attention_mask and token_type_ids (0 for the mention's tokens, 1 for the
  entity's, BERT's sentence-pair convention) of shape [B, K, length]. A pair longer than
  `length` loses the end of its description and keeps its final separator (the mention's
  own last token). length = Lm + Le - 2 + separators never cuts.
  """
  if separators not in (1, 2):
    raise ValueError(f"a pair has 1 or 2 separators between its texts, got {separators}")
  b, k, le = entity_ids.shape
  m_len = mention_mask.sum(-1).astype(np.int64)                        # [B]
  e_len = entity_mask.sum(-1).astype(np.int64).reshape(b * k)          # [B*K]
  extra = separators - 1                             # separators beyond the mention's own
  head = np.repeat(m_len, k) + extra
  if np.any(head >= length):
    raise ValueError(f"a mention of {int(m_len.max())} tokens leaves no room for its entity "
                     f"in rows of length {length}")
  body = np.maximum(e_len - 1, 0)                  # the entity's tokens after [CLS]
  cut = head + body > length
  kept = np.where(cut, length - head - 1, body)
  sep = np.repeat(np.take_along_axis(mention_ids, (m_len - 1)[:, None], 1)[:, 0], k)
  mentions = np.repeat(mention_ids, k, axis=0)
  zeros = np.zeros(b * k, np.int64)
  out = assemble([(mentions, zeros, head - extra),
                   (sep[:, None], zeros, zeros + extra),
                   (entity_ids.reshape(b * k, le), zeros + 1, kept),
                   (sep[:, None], zeros, cut.astype(np.int64))], length, pad_id)
  cols = np.arange(length)[None, :]
  out["token_type_ids"] = ((cols >= head[:, None]) &
                           (out["attention_mask"] > 0)).astype(np.int32)
  return {name: v.reshape(b, k, length) for name, v in out.items()}
