"""BLINK's bi-encoder (Wu et al., 2020): a mention tower and an entity tower, each a BERT,
pooled to one vector; score(m, e) = dot product.

Parameters: {"mention": <bert>, "entity": <bert>} with separate towers (BLINK's default), or
{"encoder": <bert>} when `share_towers` is set.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zel_jax.models import bert


def pool(hidden: jax.Array, mask: jax.Array, how: str) -> jax.Array:
  """[batch, length, hidden] -> [batch, hidden]: the [CLS] state or the mean over tokens."""
  if how == "cls":
    return hidden[:, 0]
  if how == "mean":
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1)
  raise ValueError(f"pooling {how!r} is not 'cls' or 'mean'")


class BiEncoder(nn.Module):
  config: bert.BertConfig
  pooling: str = "cls"
  share_towers: bool = False
  dtype: Any = jnp.float32
  remat: str | None = None
  activation_sharding: Any = None

  def setup(self):
    # Submodules take their attribute names: params {"mention", "entity"} or {"encoder"}.
    make = lambda: bert.BertModel(self.config, dtype=self.dtype, remat=self.remat,
                                  activation_sharding=self.activation_sharding)
    if self.share_towers:
      self.encoder = make()
    else:
      self.mention = make()
      self.entity = make()

  def _embed(self, side, ids, mask, deterministic):
    tower = self.encoder if self.share_towers else getattr(self, side)
    hidden = tower(ids, mask, deterministic=deterministic,
                   first_token_only=self.pooling == "cls")
    return pool(hidden, mask, self.pooling)

  def encode_mentions(self, ids, mask, deterministic: bool = True):
    return self._embed("mention", ids, mask, deterministic)

  def encode_entities(self, ids, mask, deterministic: bool = True):
    return self._embed("entity", ids, mask, deterministic)

  def __call__(self, mention_ids, mention_mask, entity_ids, entity_mask,
               deterministic: bool = True):
    return (self.encode_mentions(mention_ids, mention_mask, deterministic),
            self.encode_entities(entity_ids, entity_mask, deterministic))


def tower_names(model: BiEncoder) -> tuple[str, ...]:
  return ("encoder",) if model.share_towers else ("mention", "entity")


def abstract_params(model: BiEncoder) -> Any:
  """Boxed parameter shapes (with logical axes), allocating nothing."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids, ids))["params"]
