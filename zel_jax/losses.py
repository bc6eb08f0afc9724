"""Training objectives as pure functions of arrays, one per objective in the papers.

All take an optional `valid` mask over the batch so that padded rows of a fixed-shape batch
(the last batch of an epoch, an uneven world) contribute nothing, and return the mean loss over
valid rows. Scores are computed in float32 whatever the embeddings' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e9  # Large and finite: a fully masked row must not produce NaN gradients.


def _mean_over_valid(per_example: jax.Array, valid: jax.Array | None) -> jax.Array:
  if valid is None:
    return per_example.mean()
  w = valid.astype(jnp.float32)
  return (per_example * w).sum() / jnp.maximum(w.sum(), 1.0)


def in_batch_softmax(mention_emb: jax.Array, entity_emb: jax.Array,
                     entity_ids: jax.Array | None = None,
                     valid: jax.Array | None = None) -> jax.Array:
  """BLINK's bi-encoder loss (Wu et al., 2020, Sec. 3.1): each mention's gold entity against
  the gold entities of every other mention of the **global** batch, softmax cross-entropy.

  mention_emb, entity_emb: [B, D], row i of entity_emb is mention i's gold entity. On arrays
  sharded over the batch the compiler gathers the entity side: every mention sees all B.
  entity_ids [B]: where the same entity is gold for two mentions, it is not a negative of
  either (it would be a false negative); padded rows (valid=False) are nobody's negative.
  """
  scores = jnp.einsum("md,ed->me", mention_emb, entity_emb,
                      preferred_element_type=jnp.float32)
  return _in_batch_from_scores(scores, entity_ids, valid)


def in_batch_view_softmax(mention_emb: jax.Array, view_emb: jax.Array, view_valid: jax.Array,
                          entity_ids: jax.Array | None = None,
                          valid: jax.Array | None = None) -> jax.Array:
  """MVD's warm-up loss: in_batch_softmax where mention i's score for entity j is the best of
  j's views (Eq. 3). view_emb [B, S, D] are the views of each mention's gold entity,
  view_valid [B, S] marks the real ones."""
  scores = jnp.einsum("md,esd->mes", mention_emb, view_emb, preferred_element_type=jnp.float32)
  return _in_batch_from_scores(
      max_over_views(scores, jnp.broadcast_to(view_valid[None], scores.shape)), entity_ids,
      valid)


def _in_batch_from_scores(scores: jax.Array, entity_ids: jax.Array | None,
                          valid: jax.Array | None) -> jax.Array:
  b = scores.shape[0]
  diagonal = jnp.eye(b, dtype=bool)
  keep = jnp.ones((b, b), bool)
  if entity_ids is not None:
    keep = ~(entity_ids[:, None] == entity_ids[None, :]) | diagonal
  if valid is not None:
    keep = keep & valid[None, :].astype(bool)
  scores = jnp.where(keep, scores, _NEG)
  log_probs = jax.nn.log_softmax(scores, axis=-1)
  return _mean_over_valid(-jnp.diagonal(log_probs), valid)


def hard_negative_softmax(mention_emb: jax.Array, gold_emb: jax.Array, negative_emb: jax.Array,
                          gold_ids: jax.Array, negative_ids: jax.Array,
                          negative_valid: jax.Array | None = None,
                          valid: jax.Array | None = None) -> jax.Array:
  """Softmax over the gold entity and K hard negatives per mention (BLINK Sec. 5.2.2).

  mention_emb, gold_emb: [B, D]; negative_emb: [B, K, D]; gold_ids [B]; negative_ids [B, K].
  A negative equal to the gold is never counted (candidate lists often contain the gold), a
  negative repeated within one mention's list counts once, and negative_valid [B, K] drops
  padding slots of short candidate lists.
  """
  gold = jnp.einsum("bd,bd->b", mention_emb, gold_emb, preferred_element_type=jnp.float32)
  neg = jnp.einsum("bd,bkd->bk", mention_emb, negative_emb,
                   preferred_element_type=jnp.float32)
  k = negative_ids.shape[1]
  keep = negative_ids != gold_ids[:, None]
  # Keep only the first occurrence of each id within a row.
  same = negative_ids[:, :, None] == negative_ids[:, None, :]
  earlier = jnp.tril(jnp.ones((k, k), bool), k=-1)
  keep = keep & ~jnp.any(same & earlier[None], axis=-1)
  if negative_valid is not None:
    keep = keep & negative_valid.astype(bool)
  scores = jnp.concatenate([gold[:, None], jnp.where(keep, neg, _NEG)], axis=1)
  return _mean_over_valid(-jax.nn.log_softmax(scores, axis=-1)[:, 0], valid)


def candidate_softmax(scores: jax.Array, labels: jax.Array,
                      candidate_valid: jax.Array | None = None,
                      valid: jax.Array | None = None) -> jax.Array:
  """BLINK's cross-encoder loss (Sec. 3.2): softmax cross-entropy over each mention's K
  candidates, the gold at position labels[b].

  scores [B, K] (float32); labels [B] int; candidate_valid [B, K] masks empty slots (a world
  with fewer than K entities); valid [B] masks padded rows.
  """
  scores = scores.astype(jnp.float32)
  if candidate_valid is not None:
    scores = jnp.where(candidate_valid.astype(bool), scores, _NEG)
  log_probs = jax.nn.log_softmax(scores, axis=-1)
  gold = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  return _mean_over_valid(-gold, valid)


def distillation(student_scores: jax.Array, teacher_scores: jax.Array, labels: jax.Array,
                 *, weight: float, temperature: float,
                 candidate_valid: jax.Array | None = None,
                 valid: jax.Array | None = None) -> jax.Array:
  """Knowledge distillation of the cross-encoder into the bi-encoder (BLINK Sec. 5.4, after
  Hinton et al., 2015) over each mention's K candidates:

    (1 - weight) * CE(softmax(student), gold) + weight * T^2 * KL(p_T(teacher) || p_T(student))

  with p_T = softmax(scores / T), T the temperature. The soft term's gradients shrink as 1/T^2,
  so Hinton et al. scale it by T^2 to keep the weight's meaning the same at every temperature.
  The KL differs from the soft-target
  cross-entropy only by the teacher's entropy, a constant: same gradients, and a value that
  is 0 when the student matches. The teacher gets no gradient.
  """
  student = student_scores.astype(jnp.float32)
  teacher = jax.lax.stop_gradient(teacher_scores.astype(jnp.float32))
  if candidate_valid is not None:
    keep = candidate_valid.astype(bool)
    student = jnp.where(keep, student, _NEG)
    teacher = jnp.where(keep, teacher, _NEG)
  hard = -jnp.take_along_axis(jax.nn.log_softmax(student, axis=-1),
                              labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
  log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
  # Masked slots have p_teacher = 0 exactly (exp of -1e9 / T underflows), so they add 0.
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
  return _mean_over_valid((1.0 - weight) * hard + weight * temperature ** 2 * kl, valid)


# ------------------------------------------------------------------------------------------
# MVD (Liu et al., 2023): multi-view scores [B, C, S], C candidates of S views each.


def max_over_views(scores: jax.Array, view_valid: jax.Array) -> jax.Array:
  """An entity's score is its best view's (MVD Eq. 3): [B, C, S] -> [B, C]. Padding views
  (view_valid False) never win; a candidate without any valid view scores _NEG."""
  return jnp.max(jnp.where(view_valid.astype(bool), scores.astype(jnp.float32), _NEG), axis=-1)


def _kl(log_p: jax.Array, log_q: jax.Array, keep: jax.Array) -> jax.Array:
  """KL(p || q) over the last axis, slots outside `keep` counting for neither."""
  return jnp.sum(jnp.where(keep, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


def mvd_alignment(student: jax.Array, teacher: jax.Array, view_valid: jax.Array,
                  candidate_valid: jax.Array | None = None,
                  valid: jax.Array | None = None,
                  relevant_view: bool = True) -> tuple[jax.Array, jax.Array]:
  """MVD's two distillation terms, teacher -> student (the teacher gets no gradient here; it
  learns from its own gold loss):

  cross-alignment (Eq. 5-7): over each mention's C candidates, KL(P_t || P_s) with
    P_t = softmax_c(max_v teacher[c, v]) and P_s = softmax_c(student[c, v*_c]), v*_c the view
    the **teacher** scores highest for candidate c (the relevant view);
  self-alignment (Eq. 8-9): inside each candidate, over its views, KL(Q_t || Q_s) with
    Q_t = softmax_v(teacher[c, v]) and Q_s = softmax_v(student[c, v]); averaged over the
    valid candidates of a mention.

  relevant_view=False reads the student at its own best view instead (the ablation "w/o
  relevant-view alignment"). student, teacher [B, C, S]; view_valid [B, C, S];
  candidate_valid [B, C]; valid [B].
  Returns (cross, self), each the mean over valid mentions.
  """
  view_valid = view_valid.astype(bool)
  if candidate_valid is None:
    candidate_valid = jnp.any(view_valid, axis=-1)
  candidate_valid = candidate_valid.astype(bool) & jnp.any(view_valid, axis=-1)
  student = jnp.where(view_valid, student.astype(jnp.float32), _NEG)
  teacher = jax.lax.stop_gradient(jnp.where(view_valid, teacher.astype(jnp.float32), _NEG))

  chosen = jnp.argmax(teacher, axis=-1)  # [B, C]: the teacher's relevant view.
  teacher_entity = jnp.where(candidate_valid, jnp.max(teacher, axis=-1), _NEG)
  at = (jnp.take_along_axis(student, chosen[..., None], axis=-1)[..., 0] if relevant_view
        else jnp.max(student, axis=-1))
  student_entity = jnp.where(candidate_valid, at, _NEG)
  cross = _kl(jax.nn.log_softmax(teacher_entity, axis=-1),
              jax.nn.log_softmax(student_entity, axis=-1), candidate_valid)

  per_candidate = _kl(jax.nn.log_softmax(teacher, axis=-1),
                      jax.nn.log_softmax(student, axis=-1), view_valid)  # [B, C]
  weight = candidate_valid.astype(jnp.float32)
  self_ = (per_candidate * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1.0)
  return _mean_over_valid(cross, valid), _mean_over_valid(self_, valid)


def multi_label_bce(logits: jax.Array, labels: jax.Array,
                    valid: jax.Array | None = None) -> jax.Array:
  """Multi-label binary cross-entropy over every type (UFET; Sui et al. 2022's typing losses):
  mean over the T types of each example, then over valid examples.

  logits [B, T]; labels [B, K] type indices, -1 padding (an example's K-or-fewer types).
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32).max(axis=1)
  x = logits.astype(jnp.float32)
  # log(1 + e^x) - x * y, written to stay finite for large |x|.
  per_type = jnp.maximum(x, 0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return _mean_over_valid(per_type.mean(-1), valid)


# ------------------------------------------------------------------------------------------
# EntQA (Zhang, Hua and Stratos, 2022): a passage has several gold entities.


def _first_occurrence(ids: jax.Array) -> jax.Array:
  """[B, N] ids -> [B, N] bool, True where the id did not occur earlier in its row."""
  n = ids.shape[1]
  same = ids[:, :, None] == ids[:, None, :]
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
  return ~jnp.any(same & earlier[None], axis=-1)


def multi_label_nce(passage_emb: jax.Array, gold_emb: jax.Array, gold_ids: jax.Array,
                    gold_valid: jax.Array, negative_emb: jax.Array, negative_ids: jax.Array,
                    negative_valid: jax.Array | None = None,
                    valid: jax.Array | None = None) -> jax.Array:
  """EntQA's retriever loss (Eq. 1), a multi-label NCE: for a passage x with gold entities
  E(x) and negatives N(x),

    L(x) = - sum_{g in E(x)} log( exp(s_g) / (exp(s_g) + sum_{n in N(x)} exp(s_n)) ),

  s = <passage, entity>. Each gold is normalized over itself and the negatives only: the
  other golds are in no gold's denominator, so a passage is never pushed to rank one of its
  golds below another. Mean of L over valid passages.

  passage_emb [B, D]; gold_emb [B, G, D] with gold_ids, gold_valid [B, G] (E(x) is a set:
  a repeated gold id counts once); negative_emb [B, N, D] with negative_ids [B, N]. A
  negative whose id is any valid gold of its passage is dropped (it would be a false
  negative), a negative repeated in a row counts once, negative_valid [B, N] drops padding
  slots, valid [B] padded passages.
  """
  gold = jnp.einsum("bd,bgd->bg", passage_emb, gold_emb, preferred_element_type=jnp.float32)
  neg = jnp.einsum("bd,bnd->bn", passage_emb, negative_emb,
                   preferred_element_type=jnp.float32)
  gold_valid = gold_valid.astype(bool) & _first_occurrence(gold_ids)
  is_gold = jnp.any((negative_ids[:, :, None] == gold_ids[:, None, :]) & gold_valid[:, None],
                    axis=-1)
  keep = ~is_gold & _first_occurrence(negative_ids)
  if negative_valid is not None:
    keep = keep & negative_valid.astype(bool)
  # With every negative masked the denominator is exp(s_g) alone (+ e^-1e9): loss 0.
  negatives = jax.nn.logsumexp(jnp.where(keep, neg, _NEG), axis=-1)  # [B]
  per_gold = jnp.logaddexp(gold, negatives[:, None]) - gold
  per_passage = jnp.where(gold_valid, per_gold, 0.0).sum(-1)
  return _mean_over_valid(per_passage, valid)


def _sum_gold_nll(logits: jax.Array, labels: jax.Array, allowed: jax.Array | None) -> jax.Array:
  """-sum over the multi-hot gold positions of log softmax(logits) over the allowed
  positions of the last axis."""
  logits = logits.astype(jnp.float32)
  if allowed is not None:
    logits = jnp.where(allowed.astype(bool), logits, _NEG)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.where(labels.astype(bool), log_probs, 0.0).sum(-1)


def reader_loss(start_logits: jax.Array, end_logits: jax.Array, rank_logits: jax.Array,
                start_labels: jax.Array, end_labels: jax.Array, rank_labels: jax.Array,
                span_mask: jax.Array | None = None,
                candidate_valid: jax.Array | None = None,
                valid: jax.Array | None = None) -> jax.Array:
  """EntQA's reader loss (Eq. 2) for a passage x and its K candidates e_1..e_K:

    L(x) = - sum_k sum_{s in S_k} log p_start(s | x, e_k)
           - sum_k sum_{t in T_k} log p_end(t | x, e_k)
           - sum_{k: e_k in E(x)} log p_rerank(e_k | x, e_1..e_K)

  p_start, p_end: softmax of start_logits, end_logits [B, K, 1+L] over the positions that
  span_mask [B, K, 1+L] allows; position 0 is [CLS], the null span. S_k, T_k are the
  multi-hot start_labels, end_labels [B, K, 1+L]: the starts and ends of all of e_k's gold
  spans in x when e_k is gold, {0} when it is not (the caller sets position 0; a row of
  zeros contributes nothing). p_rerank: softmax of rank_logits [B, K] over the valid
  candidates, rank_labels [B, K] multi-hot over E(x). candidate_valid [B, K] drops empty
  candidate slots from every term; valid [B] padded passages. Mean of L over valid passages.

  Several golds (spans or entities) each add their own -log p, every one normalized over all
  positions or candidates, other golds included: the reference code's `sum_log`, its default
  for both the span and the rank terms. Summing over positions rather than over spans, a
  start shared by two gold spans counts once; gold spans never share one where they do not
  overlap. The paper adds the three terms; the reference code
  averages them, (start + end + rank) / 3, a constant factor that rescales the gradient only.
  """
  span_terms = (_sum_gold_nll(start_logits, start_labels, span_mask)
                + _sum_gold_nll(end_logits, end_labels, span_mask))  # [B, K]
  if candidate_valid is not None:
    span_terms = jnp.where(candidate_valid.astype(bool), span_terms, 0.0)
  rank_labels = rank_labels.astype(bool)
  if candidate_valid is not None:
    rank_labels = rank_labels & candidate_valid.astype(bool)
  rank = _sum_gold_nll(rank_logits, rank_labels, candidate_valid)  # [B]
  return _mean_over_valid(span_terms.sum(-1) + rank, valid)


# ------------------------------------------------------------------------------------------
# Cross-language ranking (Schumacher, Mayfield and Dredze, 2021).


def max_negative_hinge(positive: jax.Array, negatives: jax.Array, margin: float = 1.0,
                       valid: jax.Array | None = None,
                       negative_valid: jax.Array | None = None) -> jax.Array:
  """max(0, margin - s(gold) + max_j s(negative_j)): the gold against the highest-scoring of
  its n sampled negatives.

  positive [B]; negatives [B, n]; negative_valid [B, n] masks negatives out (a row without
  any valid negative contributes 0).
  """
  neg = negatives.astype(jnp.float32)
  if negative_valid is not None:
    neg = jnp.where(negative_valid, neg, _NEG)
  per_example = jnp.maximum(0.0, margin - positive.astype(jnp.float32) + neg.max(axis=-1))
  return _mean_over_valid(per_example, valid)
