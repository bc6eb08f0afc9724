"""The cross-language neural ranker of Schumacher, Mayfield and Dredze (2021).

A mention and a candidate English entity are described by multilingual-encoder features
computed once with the encoder frozen (as the reference code does; trainer.py):

  name      max-pool of the mention's subword states in the encoder's lowest layer (the
            mention inside its sentence), and likewise of the entity's name;
  context   [CLS] of the mention's sentence window and of the entity description;
  type      the mention's type (one-hot) and the entity's types (multi-hot; types seen more
            than 100 times), each through an embedding.

Three MLPs map [mention; entity] of each feature to r_s, r_c and r_t; a final MLP on
[r_s; r_c; r_t] ends in one unit and tanh, so scores lie in (-1, 1) and the NIL threshold
lives on a fixed scale. Every hidden layer is Dense -> ReLU -> dropout.

The auxiliary name-matching head of Sec. 7.1 reuses the name MLP: [source name; English
name] -> r_s -> Dense(1) -> tanh.

The parameters are a few million at most and are replicated over the mesh; the batch is
what is sharded.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class MLP(nn.Module):
  """Dense -> ReLU -> dropout for each width in `features`."""
  features: Sequence[int]
  dropout: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    for width in self.features:
      x = nn.relu(nn.Dense(width)(x))
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return x


def _pair(mention: Array, entities: Array, product: bool = False) -> Array:
  """[B, D] mention with [B, C, D] entities -> [B, C, 2D] ([B, C, 3D] with their product)."""
  mention = jnp.broadcast_to(mention[:, None, :], entities.shape[:2] + mention.shape[-1:])
  parts = [mention, entities] + ([mention * entities] if product else [])
  return jnp.concatenate(parts, axis=-1)


class XelRanker(nn.Module):
  """score(mention, candidates) -> [B, C] in (-1, 1).

  Inputs (feature dicts of arrays):
    mention: name [B, H], context [B, H], type [B] int (0: none or rare)
    entities: name [B, C, H], context [B, C, H], types [B, C, T] float multi-hot
  """
  name_layers: Sequence[int] = (512,)
  context_layers: Sequence[int] = (512,)
  type_layers: Sequence[int] = (32,)
  score_layers: Sequence[int] = (512,)
  num_mention_types: int = 1
  num_entity_types: int = 1
  type_dim: int = 16
  dropout: float = 0.2
  use_context: bool = True
  use_types: bool = True
  squash: bool = True  # False: the logits before tanh.
  # Also feed each MLP the elementwise product of the mention's and the entity's vectors
  # (the paper feeds their concatenation only; README, cross-language section).
  product: bool = False

  def setup(self):
    self.name_mlp = MLP(self.name_layers, self.dropout)
    if self.use_context:
      self.context_mlp = MLP(self.context_layers, self.dropout)
    if self.use_types:
      self.mention_type_embed = nn.Embed(self.num_mention_types, self.type_dim)
      # Multi-hot @ table: the sum of the entity's type embeddings.
      self.entity_type_table = self.param(
          "entity_type_embedding", nn.initializers.normal(0.02),
          (self.num_entity_types, self.type_dim))
      self.type_mlp = MLP(self.type_layers, self.dropout)
    self.score_mlp = MLP(self.score_layers, self.dropout)
    self.score_out = nn.Dense(1)
    self.match_out = nn.Dense(1)

  def __call__(self, mention: dict[str, Array], entities: dict[str, Array],
               deterministic: bool = True) -> Array:
    parts = [self.name_mlp(_pair(mention["name"], entities["name"], self.product),
                           deterministic)]
    if self.use_context:
      parts.append(self.context_mlp(
          _pair(mention["context"], entities["context"], self.product), deterministic))
    if self.use_types:
      m_type = self.mention_type_embed(mention["type"])
      e_type = entities["types"].astype(self.entity_type_table.dtype) @ self.entity_type_table
      parts.append(self.type_mlp(_pair(m_type, e_type), deterministic))
    hidden = self.score_mlp(jnp.concatenate(parts, axis=-1), deterministic)
    logits = self.score_out(hidden)[..., 0]
    return jnp.tanh(logits) if self.squash else logits

  def name_match(self, source: Array, english: Array, deterministic: bool = True) -> Array:
    """Sec. 7.1: source names [B, H] against English names [B, C, H] -> [B, C] in (-1, 1)."""
    hidden = self.name_mlp(_pair(source, english, self.product), deterministic)
    logits = self.match_out(hidden)[..., 0]
    return jnp.tanh(logits) if self.squash else logits


def nearest_neighbour_scores(mention_name: Array, entity_names: Array) -> Array:
  """The paper's NN baseline: cosine of the mention's and each candidate's name
  representation. [B, H], [B, C, H] -> [B, C]."""
  m = mention_name / jnp.maximum(jnp.linalg.norm(mention_name, axis=-1, keepdims=True), 1e-12)
  e = entity_names / jnp.maximum(jnp.linalg.norm(entity_names, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("bh,bch->bc", m, e)


def init_params(model: XelRanker, hidden: int, rng: Array, candidates: int = 2):
  """Parameters of `model` for encoder width `hidden` (both heads initialized)."""
  b = 1
  mention = {"name": jnp.zeros((b, hidden)), "context": jnp.zeros((b, hidden)),
             "type": jnp.zeros((b,), jnp.int32)}
  entities = {"name": jnp.zeros((b, candidates, hidden)),
              "context": jnp.zeros((b, candidates, hidden)),
              "types": jnp.zeros((b, candidates, model.num_entity_types))}

  def both(module, mention, entities):
    return module(mention, entities) + module.name_match(mention["name"], entities["name"])
  return model.init(rng, mention, entities, method=both)["params"]
