"""Ultra-fine entity typing as a hierarchical auxiliary task for candidate generation
(Sui et al., COLING 2022).

`EntityTyper` (stage one): X = BERT(`[CLS] mention [SEP] context [SEP]`); label-wise attention
with fixed type embeddings V (the [CLS] of `[CLS] type [SEP] description [SEP]`, computed
once): G = V X^T, a_l = softmax over the real tokens of G_l, z_l = sum_i a_li x_i, and the
label's logit y_l = w_l . z_l + b_l (a per-label output layer, as the reference code does).
Parameters: {"encoder": <bert>, "type_embeddings": V [T, H] (never updated: the trainer
freezes it and the model stops its gradient), "type_kernel": [T, H], "type_bias": [T]}.

`TypeAwareBiEncoder` (stage two): per tower u = BERT(T) (token states); t = T1(u), transformer
layers over the tokens of each example with its padding mask; f = T2((u + t) / 2); type
logits from t[CLS]; score(m, e) = f_m . f_e + u_m . u_e at [CLS]. The embeddings it returns are
[u[CLS]; f[CLS]], so the score is their dot product and every store, the evaluator and the
linker work unchanged. (The reference code ran its extra layers as PyTorch
`nn.TransformerEncoderLayer` on [batch, tokens, hidden] without `batch_first`, so they
attended across the batch, and without a padding mask; here they attend over tokens.)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax.models import bert, biencoder


def label_wise_logits(type_embeddings: jax.Array, hidden: jax.Array, mask: jax.Array,
                      kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """Label-wise attention logits [B, T].

  type_embeddings V [T, H]; hidden X [B, L, H]; mask [B, L] (0 at padding); kernel [T, H],
  bias [T]. y_bl = sum_i softmax_i(V_l . x_bi) (w_l . x_bi) + b_l = w_l . z_bl + b_l, which
  never builds the [B, T, H] tensor of the z_bl.
  """
  x = hidden.astype(jnp.float32)
  g = jnp.einsum("th,blh->btl", type_embeddings.astype(jnp.float32), x)
  g = jnp.where(mask[:, None, :] > 0, g, -1e30)
  a = jax.nn.softmax(g, axis=-1)
  s = jnp.einsum("th,blh->btl", kernel.astype(jnp.float32), x)
  return (a * s).sum(-1) + bias.astype(jnp.float32)


def prior_bias_init(num_types: int):
  """Output biases of log(1 / T): every type starts at probability about 1/T, near the rate
  at which a type is gold (a few of 10,331), instead of 1/2. With biases at zero the first
  thousands of steps of every multi-label loss go to pushing all types down, and, in the
  multi-task model, push the shared encoder with them."""
  value = -float(np.log(max(num_types, 2) - 1))
  return nn.with_logical_partitioning(nn.initializers.constant(value), ("vocab",))


class EntityTyper(nn.Module):
  config: bert.BertConfig
  num_types: int
  dtype: Any = jnp.float32
  remat: str | None = None
  activation_sharding: Any = None

  def setup(self):
    self.encoder = bert.BertModel(self.config, dtype=self.dtype, remat=self.remat,
                                  activation_sharding=self.activation_sharding)
    shape = (self.num_types, self.config.hidden_size)
    init = lambda axes: nn.with_logical_partitioning(
        nn.initializers.normal(stddev=self.config.initializer_range), axes)
    self.type_embeddings = self.param("type_embeddings", init(("vocab", "embed")), shape)
    self.type_kernel = self.param("type_kernel", init(("vocab", "embed")), shape)
    self.type_bias = self.param("type_bias", prior_bias_init(self.num_types), (self.num_types,))

  def __call__(self, input_ids, attention_mask, token_type_ids=None,
               deterministic: bool = True):
    hidden = self.encoder(input_ids, attention_mask, token_type_ids,
                          deterministic=deterministic)
    return label_wise_logits(jax.lax.stop_gradient(self.type_embeddings), hidden,
                             attention_mask, self.type_kernel, self.type_bias)


class TokenLayers(nn.Module):
  """Transformer layers over each example's tokens (padding masked), BERT's layer shape."""
  config: bert.BertConfig
  num_layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool, first_only: bool = False):
    for i in range(self.num_layers):
      last = first_only and i == self.num_layers - 1
      # No relative-position bias: these layers are new, above the encoder's last.
      x = bert.BertLayer(self.config, dtype=self.dtype, name=f"layer_{i}")(
          x, attention_mask, None, deterministic, last)
    return x


class TypeAwareBiEncoder(biencoder.BiEncoder):
  """The hierarchical multi-task candidate generator (module docstring). Parameters:
  {"mention", "entity"} BERT towers, and per side "<side>_typing" (T1), "<side>_linking"
  (T2), "<side>_type_head" (Dense to the type vocabulary)."""
  num_types: int = 0
  typing_layers: int = 1
  linking_layers: int = 1

  def setup(self):
    if self.share_towers or self.pooling != "cls":
      raise ValueError("the type-aware bi-encoder has two towers pooled at [CLS]")
    super().setup()
    layers = lambda n: TokenLayers(self.config, n, dtype=self.dtype)
    head = lambda: nn.Dense(
        self.num_types, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=self.config.initializer_range), ("embed", "vocab")),
        bias_init=prior_bias_init(self.num_types))
    self.mention_typing, self.mention_linking = layers(self.typing_layers), layers(
        self.linking_layers)
    self.entity_typing, self.entity_linking = layers(self.typing_layers), layers(
        self.linking_layers)
    self.mention_type_head, self.entity_type_head = head(), head()

  def _encode(self, side, ids, mask, deterministic):
    u = getattr(self, side)(ids, mask, deterministic=deterministic)
    t = getattr(self, f"{side}_typing")(u, mask, deterministic)
    f = getattr(self, f"{side}_linking")((u + t) / 2, mask, deterministic, first_only=True)
    embedding = jnp.concatenate([u[:, 0], f[:, 0]], axis=-1)
    type_logits = getattr(self, f"{side}_type_head")(t[:, 0]).astype(jnp.float32)
    return embedding, type_logits

  def encode_mentions(self, ids, mask, deterministic: bool = True):
    return self._encode("mention", ids, mask, deterministic)[0]

  def encode_entities(self, ids, mask, deterministic: bool = True):
    return self._encode("entity", ids, mask, deterministic)[0]

  def encode_mentions_with_types(self, ids, mask, deterministic: bool = True):
    return self._encode("mention", ids, mask, deterministic)

  def encode_entities_with_types(self, ids, mask, deterministic: bool = True):
    return self._encode("entity", ids, mask, deterministic)

  def __call__(self, mention_ids, mention_mask, entity_ids, entity_mask,
               deterministic: bool = True):
    return (self.encode_mentions_with_types(mention_ids, mention_mask, deterministic),
            self.encode_entities_with_types(entity_ids, entity_mask, deterministic))


def abstract_params(model: EntityTyper) -> Any:
  """Boxed parameter shapes (with logical axes) of the typer, allocating nothing (the
  type-aware bi-encoder's are biencoder.abstract_params)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]
