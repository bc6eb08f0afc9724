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

    (1 - weight) * CE(softmax(student), gold) + weight * KL(p_T(teacher) || p_T(student))

  with p_T = softmax(scores / temperature). The KL differs from the soft-target
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
  return _mean_over_valid((1.0 - weight) * hard + weight * kl, valid)
