"""EntQA's reader (Zhang, Hua and Stratos, 2022, Sec. 3.2) and the decoding of its output.

The reader sees one row per (passage, candidate entity),

  [CLS] passage [SEP] topic [SEP] title [ENT] description [SEP]

with passage token j at row position j (1..L), and asks the entity's question of the passage:
where does it start, where does it end (position 0, [CLS], is the null answer: no mention of
this entity here), and how likely is this candidate among the passage's K (reranking).

Parameters: {"encoder": <bert>, "span": {"kernel": [hidden, 2], "bias": [2]},
"rank": {"kernel": [hidden, 1], "bias": [1]}}. "encoder" is the tree of a CrossEncoder's
"encoder" and of a BiEncoder tower, so a trained one can be copied in.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax.models import bert

_NEG = -1e9  # As losses._NEG: masked logits stay finite, so a softmax never yields NaN.


class Reader(nn.Module):
  config: bert.BertConfig
  dtype: Any = jnp.float32
  remat: str | None = None
  activation_sharding: Any = None

  def setup(self):
    self.encoder = bert.BertModel(self.config, dtype=self.dtype, remat=self.remat,
                                  activation_sharding=self.activation_sharding)
    self.dropout = bert.Dropout(self.config.hidden_dropout)
    head = lambda n: nn.Dense(
        n, dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.config.initializer_range), ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))
    self.span = head(2)
    self.rank = head(1)

  def __call__(self, ids, mask, token_types, passage_length: int,
               deterministic: bool = True):
    """ids, mask, token_types: [..., T] (e.g. [B, K, T]) -> float32
    (start_logits [..., 1+L], end_logits [..., 1+L], rank_logits [...]), L = passage_length.

    The logits are raw: positions past a short passage's last token ([SEP], topic) are not
    masked here. Callers pass one span_mask ([CLS] and the passage's real tokens) to both
    losses.reader_loss and top_spans, so training and decoding exclude the same positions.
    """
    lead, length = ids.shape[:-1], ids.shape[-1]
    if not 0 <= passage_length < length:
      raise ValueError(f"passage_length {passage_length} does not fit rows of {length} tokens "
                       "after [CLS]")
    flat = lambda x: x.reshape(-1, length)
    hidden = self.encoder(flat(ids), flat(mask), flat(token_types),
                          deterministic=deterministic)
    # The heads read [CLS] and the passage only; dropout before them as in CrossEncoder (the
    # reference reader applies none; the paper does not say).
    hidden = self.dropout(hidden[:, :passage_length + 1], deterministic=deterministic)
    hidden = hidden.astype(jnp.float32)
    span = self.span(hidden)  # [N, 1+L, 2]
    rank = self.rank(hidden[:, 0])[:, 0]
    shape = (*lead, passage_length + 1)
    return span[..., 0].reshape(shape), span[..., 1].reshape(shape), rank.reshape(lead)


def abstract_params(model: Reader) -> Any:
  """Boxed parameter shapes (with logical axes), allocating nothing."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids, 0))["params"]


# ------------------------------------------------------------------------------------------
# Decoding: on device, the best spans of every candidate; on the host, the answers.


def masked_log_softmax(logits: jax.Array, keep: jax.Array | None) -> jax.Array:
  """log softmax over the last axis, slots outside `keep` excluded (their value ~ -1e9)."""
  logits = logits.astype(jnp.float32)
  if keep is not None:
    logits = jnp.where(keep.astype(bool), logits, _NEG)
  return jax.nn.log_softmax(logits, axis=-1)


def top_spans(start_logits: jax.Array, end_logits: jax.Array, span_mask: jax.Array,
              max_span: int, k: int):
  """The k best spans of every candidate by log p_start(j0) + log p_end(j1), with p_start,
  p_end softmaxes over the positions span_mask allows, among the spans

    1 <= j0 <= j1 < j0 + max_span,  j0, j1 allowed,

  and the null span's log p_start(0) + log p_end(0).

  start_logits, end_logits, span_mask: [..., 1+L]. Returns (scores [..., k] best first,
  starts [..., k], ends [..., k], null_scores [...]). Where a candidate has fewer than k
  spans the rest score -inf. Jittable (max_span, k static). The band is [1+L, max_span]
  (start, length), not the [1+L, 1+L] square, so memory grows with L * max_span.
  """
  positions = start_logits.shape[-1]
  start_lp = masked_log_softmax(start_logits, span_mask)
  end_lp = masked_log_softmax(end_logits, span_mask)
  starts = np.repeat(np.arange(positions), max_span)
  ends = starts + np.tile(np.arange(max_span), positions)
  in_band = (starts >= 1) & (ends < positions)
  ends = np.where(in_band, ends, 0)  # Any in-range index; these spans score -inf.
  keep = span_mask.astype(bool)
  allowed = in_band & keep[..., starts] & keep[..., ends]
  scores = jnp.where(allowed, start_lp[..., starts] + end_lp[..., ends], -jnp.inf)
  best, index = jax.lax.top_k(scores, min(k, scores.shape[-1]))
  return (best, jnp.asarray(starts)[index], jnp.asarray(ends)[index],
          start_lp[..., 0] + end_lp[..., 0])


def decode_spans(span_scores, span_starts, span_ends, null_scores, rank_logprobs,
                 top_p: int = 3, nested: bool = False,
                 candidate_valid=None) -> list[tuple[int, int, int, float]]:
  """One passage's answers from top_spans' arrays ([K, k], [K]) and its candidates' log
  p_rerank [K] (masked_log_softmax of rank_logits over the valid candidates).

  For each candidate, its spans best first, stopping at the first span less probable than
  the candidate's null span, keeping at most top_p. With nested=False a span that contains,
  or lies inside, a span already kept for the same candidate is skipped (it does not count
  towards top_p); partly overlapping spans are both kept, as the reference's filter_span
  does. candidate_valid [K] skips empty slots.

  Returns [(candidate, j0, j1, score)] best first, score = p_rerank * p_start * p_end.
  """
  span_scores = np.asarray(span_scores, np.float64)
  span_starts, span_ends = np.asarray(span_starts), np.asarray(span_ends)
  null_scores = np.asarray(null_scores, np.float64)
  rank_logprobs = np.asarray(rank_logprobs, np.float64)
  out = []
  for c in range(span_scores.shape[0]):
    if candidate_valid is not None and not candidate_valid[c]:
      continue
    kept: list[tuple[int, int]] = []
    # Stable: ties keep top_k's order.
    for i in np.argsort(-span_scores[c], kind="stable"):
      score = span_scores[c, i]
      if not score >= null_scores[c]:  # Also stops at the -inf padding.
        break
      j0, j1 = int(span_starts[c, i]), int(span_ends[c, i])
      if not nested and any(a <= j0 <= j1 <= b or j0 <= a <= b <= j1 for a, b in kept):
        continue
      kept.append((j0, j1))
      out.append((c, j0, j1, float(np.exp(rank_logprobs[c] + score))))
      if len(kept) == top_p:
        break
  return sorted(out, key=lambda p: (-p[3], p[0], p[1], p[2]))


def merge_predictions(preds: Iterable[tuple[Hashable, int, int, Hashable, float]],
                      one_entity_per_span: bool = True) -> list:
  """Document-level predictions from passage-level ones [(doc, c0, c1, entity, score)],
  character spans of overlapping passages already mapped into their document.

  The same (doc, c0, c1, entity) read in two passages is one prediction at its best score;
  with one_entity_per_span, a span linked to several entities keeps the best one (the first
  seen on a tie). The threshold gamma is the caller's to apply after this merge, so that a
  span's best score decides. Returns the survivors in order of first appearance.
  """
  best: dict[tuple, float] = {}
  for doc, c0, c1, entity, score in preds:
    key = (doc, c0, c1, entity)
    if key not in best or score > best[key]:
      best[key] = score
  if one_entity_per_span:
    by_span: dict[tuple, tuple] = {}
    for (doc, c0, c1, entity), score in best.items():
      if (doc, c0, c1) not in by_span or score > by_span[(doc, c0, c1)][1]:
        by_span[(doc, c0, c1)] = (entity, score)
    return [(doc, c0, c1, entity, score)
            for (doc, c0, c1), (entity, score) in by_span.items()]
  return [(*key, score) for key, score in best.items()]
