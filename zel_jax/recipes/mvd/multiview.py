"""MVD's multi-view scoring (Liu et al., ACL 2023) on top of the BLINK towers.

The student is a bi-encoder (models.biencoder): its entity tower encodes each view on its own,
`[CLS] title [ENT] chunk [SEP]` for a local view and the whole entity input for the global
view, and an entity scores a mention at its best view (Eq. 3, losses.max_over_views). The
teacher is a cross-encoder (models.crossencoder) reading `[CLS] mention [SEP] view [SEP]` once
per view, a candidate again scored at its best view. Both work on view tensors with any
leading shape: [batch, views, length] in-batch, [batch, candidates, views, length] over
candidates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zel_jax.models import biencoder, crossencoder


def encode_mentions(model: biencoder.BiEncoder, params, input_ids, attention_mask, rng,
                    deterministic: bool = False) -> jax.Array:
  """[b, Lm] -> [b, D]."""
  return model.apply({"params": params}, input_ids, attention_mask,
                     deterministic=deterministic, method=biencoder.BiEncoder.encode_mentions,
                     rngs={"dropout": rng})


def encode_views(model: biencoder.BiEncoder, params, input_ids, attention_mask, rng,
                 deterministic: bool = False) -> jax.Array:
  """Views [..., L] through the entity tower -> [..., D] (the leading axes flattened into one
  batch, so every view of every candidate is one row of the sharded batch)."""
  lead, length = input_ids.shape[:-1], input_ids.shape[-1]
  out = model.apply({"params": params}, input_ids.reshape(-1, length),
                    attention_mask.reshape(-1, length), deterministic=deterministic,
                    method=biencoder.BiEncoder.encode_entities, rngs={"dropout": rng})
  return out.reshape(*lead, -1)


def student_views(model: biencoder.BiEncoder, params, batch, rng, with_global: bool,
                  deterministic: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The mention [b, D] and the views of `batch` [b, ..., S', D] with their validity
  [b, ..., S']. With `with_global` the global view (batch["global_*"], one per entity, its
  own length) is view 0 and the local views (batch["view_*"]) follow, so one max over the
  view axis is the score of an entity over all its views."""
  r_mention, r_view, r_global = jax.random.split(rng, 3)
  mention = encode_mentions(model, params, batch["mention_input_ids"],
                            batch["mention_attention_mask"], r_mention, deterministic)
  views = encode_views(model, params, batch["view_input_ids"], batch["view_attention_mask"],
                       r_view, deterministic)
  valid = batch["view_valid"].astype(bool)
  if with_global:
    whole = encode_views(model, params, batch["global_input_ids"],
                         batch["global_attention_mask"], r_global, deterministic)
    views = jnp.concatenate([whole, views], axis=-2)
    valid = jnp.concatenate([batch["global_valid"].astype(bool), valid], axis=-1)
  return mention, views, valid


def candidate_view_scores(mention: jax.Array, views: jax.Array) -> jax.Array:
  """mention [b, D] . views [b, K, S, D] -> [b, K, S] in float32."""
  return jnp.einsum("bd,bksd->bks", mention, views, preferred_element_type=jnp.float32)


def teacher_scores(model: crossencoder.CrossEncoder, params, batch, rng,
                   deterministic: bool = False) -> jax.Array:
  """The teacher's score of every (mention, view) pair: batch["teacher_*"] [b, K, S, L] ->
  [b, K, S]."""
  return model.apply({"params": params}, batch["teacher_input_ids"],
                     batch["teacher_attention_mask"], batch["teacher_token_type_ids"],
                     deterministic=deterministic, rngs={"dropout": rng})
