"""BLINK's cross-encoder (Wu et al., 2020, Sec. 3.2): one BERT over the concatenation of a
mention's input and a candidate entity's input without its [CLS],

  [CLS] ctx_l [Ms] m [Me] ctx_r [SEP] title [ENT] description [SEP]

whose [CLS] state goes through a linear layer to one score per (mention, candidate); a
mention's K candidates are K rows, scored together and normalized by a softmax over K.

Parameters: {"encoder": <bert>, "score": {"kernel": [hidden, 1], "bias": [1]}}.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zel_jax.models import bert


class CrossEncoder(nn.Module):
  config: bert.BertConfig
  dtype: Any = jnp.float32
  remat: str | None = None
  activation_sharding: Any = None

  def setup(self):
    self.encoder = bert.BertModel(self.config, dtype=self.dtype, remat=self.remat,
                                  activation_sharding=self.activation_sharding)
    self.dropout = bert.Dropout(self.config.hidden_dropout)
    self.score = nn.Dense(
        1, dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.config.initializer_range), ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))

  def __call__(self, ids, mask, token_types, deterministic: bool = True):
    """ids, mask, token_types: [..., L] (e.g. [B, K, L]) -> float32 scores [...]."""
    lead, length = ids.shape[:-1], ids.shape[-1]
    flat = lambda x: x.reshape(-1, length)
    # Only [CLS] is read, so the last layer computes position 0 alone.
    hidden = self.encoder(flat(ids), flat(mask), flat(token_types),
                          deterministic=deterministic, first_token_only=True)
    # Dropout before the score layer as in BLINK's code; it scores the raw [CLS] state as the
    # paper writes (y_cls W), where the code goes through BERT's tanh pooler first.
    cls = self.dropout(hidden[:, 0], deterministic=deterministic)
    return self.score(cls.astype(jnp.float32))[:, 0].reshape(lead)


def abstract_params(model: CrossEncoder) -> Any:
  """Boxed parameter shapes (with logical axes), allocating nothing."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids))["params"]
