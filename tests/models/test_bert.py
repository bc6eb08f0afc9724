"""The Flax BERT against transformers' PyTorch BertModel on the real MiniLM-L6 weights, and
checkpoint conversion errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from zel_jax.models import bert, bert_io

SENTENCES = [
    "Baibars besieged Antioch in 1268 and the city fell after a short siege.",
    "FOLDOC",
    "The [unused0] mention [unused1] markers stay atomic.",
]


@pytest.fixture(scope="module")
def minilm():
  model, params = bert_io.from_pretrained("all-MiniLM-L6-v2")
  tokenizer = bert_io.load_tokenizer("all-MiniLM-L6-v2")
  return model, params, tokenizer


def _batch(tokenizer, length=None):
  kw = dict(padding="max_length", max_length=length) if length else dict(padding=True)
  enc = tokenizer(SENTENCES, return_tensors="np", **kw)
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def test_parity_with_pytorch_bert(minilm, minilm_path):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import BertModel as TorchBert  # pylint: disable=g-import-not-at-top

  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)
  assert (mask == 0).any(), "the batch must contain padding"
  token_types = np.zeros_like(ids)
  token_types[0, 5:] = 1  # Segment embeddings are exercised too.
  ours = np.asarray(model.apply({"params": params}, ids, mask, token_types))

  reference = TorchBert.from_pretrained(minilm_path).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       token_type_ids=torch.tensor(token_types, dtype=torch.long)
                       ).last_hidden_state.numpy()
  assert ours.shape == theirs.shape == (3, ids.shape[1], 384)
  error = np.abs(ours - theirs)
  print(f"MiniLM-L6 parity: max abs error {error.max():.3g} over all positions, "
        f"{error[mask.astype(bool)].max():.3g} over real tokens")
  assert error.max() <= 1e-4


def test_padding_does_not_change_real_tokens(minilm):
  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)
  short = np.asarray(model.apply({"params": params}, ids, mask))
  ids_long, mask_long = _batch(tokenizer, length=ids.shape[1] + 7)
  long = np.asarray(model.apply({"params": params}, ids_long, mask_long))
  keep = mask.astype(bool)
  np.testing.assert_allclose(long[:, :ids.shape[1]][keep], short[keep], atol=1e-5)


def test_bf16_compute_keeps_fp32_params(minilm):
  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)
  bf16 = model.clone(dtype=jnp.bfloat16)
  out = bf16.apply({"params": params}, ids, mask)
  ref = model.apply({"params": params}, ids, mask)
  assert out.dtype == jnp.bfloat16
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
  # bf16 keeps about 3 significant digits; the states still agree closely in direction.
  a, b = np.asarray(out, np.float32)[mask == 1], np.asarray(ref)[mask == 1]
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cos.min() > 0.99


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_same_values_and_grads(minilm, policy):
  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)

  def loss(p, m):
    return jnp.mean(m.apply({"params": p}, ids, mask) ** 2)

  g_ref = jax.grad(loss)(params, model)
  g_remat = jax.grad(loss)(params, model.clone(remat=policy))
  for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dropout_only_when_training(minilm):
  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)
  eval_a = model.apply({"params": params}, ids, mask)
  eval_b = model.apply({"params": params}, ids, mask)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply({"params": params}, ids, mask, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(1)})
  assert np.abs(np.asarray(train) - np.asarray(eval_a)).max() > 1e-2


def test_packed_dropout_keeps_the_rate_and_scales_exactly():
  x = jnp.ones((64, 3, 1001))  # An odd last axis: one 16-bit draw of the last word unused.
  drop = bert.Dropout(rate=0.1)
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  kept = y[y != 0]
  np.testing.assert_allclose(kept, 65536 / 58982, rtol=1e-6)  # 1 / P(keep), exactly.
  assert abs(kept.size / y.size - 58982 / 65536) < 3e-3   # 192k draws: about 4 sigma.
  other = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.array_equal(y != 0, np.asarray(other) != 0)
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
  with pytest.raises(ValueError, match="dropout rate"):
    bert.Dropout(rate=1.0).apply({}, x, deterministic=False,
                                 rngs={"dropout": jax.random.key(0)})


def test_every_param_has_logical_axes(minilm):
  model, _, _ = minilm
  boxed = bert.abstract_params(model)
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
  allowed = {"vocab", "embed", "mlp", "heads", "kv", None}
  for leaf in leaves:
    assert hasattr(leaf, "names"), leaf
    assert len(leaf.names) == len(leaf.value.shape)
    assert set(leaf.names) <= allowed
  assert any("vocab" in leaf.names for leaf in leaves)


def _copy_checkpoint(src, dst, edit):
  os.makedirs(dst)
  for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), dst)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  save_file(edit(tensors), os.path.join(dst, "model.safetensors"))
  return dst


def test_bert_prefix_and_gamma_beta_names_load(minilm, minilm_path, tmp_path):
  model, params, _ = minilm

  def rename(tensors):
    out = {}
    for k, v in tensors.items():
      k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                    "LayerNorm.beta")
      out["bert." + k] = v
    out["cls.predictions.bias"] = np.zeros(4, np.float32)  # A pre-training head: ignored.
    return out

  path = _copy_checkpoint(minilm_path, str(tmp_path / "prefixed"), rename)
  _, loaded = bert_io.from_pretrained(path)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_missing_unexpected_and_misshaped_tensors_are_named(minilm_path, tmp_path):
  def damage(tensors):
    del tensors["encoder.layer.3.output.dense.bias"]
    tensors["encoder.layer.2.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    tensors["encoder.layer.1.intermediate.dense.weight"] = np.zeros((100, 384), np.float32)
    return tensors

  path = _copy_checkpoint(minilm_path, str(tmp_path / "damaged"), damage)
  with pytest.raises(ValueError) as err:
    bert_io.from_pretrained(path)
  message = str(err.value)
  assert "model.safetensors" in message
  assert "missing tensors: layer_3/output/bias (from 'encoder.layer.3.output.dense.bias')" in message
  assert "unexpected tensors: encoder.layer.2.attention.self.rotary.weight" in message
  assert ("shape mismatch: 'encoder.layer.1.intermediate.dense.weight' (100, 384)" in message
          and "expects (384, 1536)" in message)


def test_bad_config_named(minilm_path, tmp_path):
  path = _copy_checkpoint(minilm_path, str(tmp_path / "badcfg"), lambda t: t)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"hidden_size": 384}, f)
  with pytest.raises(ValueError, match=r"config.json: missing field\(s\) \['vocab_size'"):
    bert_io.from_pretrained(path)


def test_markers_reuse_unused_rows(minilm):
  _, _, tokenizer = minilm
  tokenizer = bert_io.load_tokenizer("all-MiniLM-L6-v2")
  size = len(tokenizer)
  markers = bert_io.add_marker_tokens(tokenizer, ["[Ms]", "[Me]", "[ENT]"])
  assert markers == {"[Ms]": "[unused0]", "[Me]": "[unused1]", "[ENT]": "[unused2]"}
  assert len(tokenizer) == size
  ids = tokenizer(f"a {markers['[Ms]']} b {markers['[Me]']}")["input_ids"]
  assert ids == [101, 1037, 1, 1038, 2, 102]  # [unused0] is id 1, [unused1] id 2: one each.


def test_markers_grow_the_embedding_table(minilm):
  model, params, _ = minilm
  tokenizer = bert_io.load_tokenizer("all-MiniLM-L6-v2")
  markers = bert_io.add_marker_tokens(tokenizer, ["[Ms]", "[Me]", "[ENT]"], use_unused=False)
  assert len(tokenizer) == 30522 + 3
  ids = tokenizer(f"x {markers['[Ms]']} y {markers['[Me]']} title {markers['[ENT]']} text",
                  return_tensors="np")
  assert {30522, 30523, 30524} <= set(ids["input_ids"][0].tolist())
  grown = bert_io.grow_embeddings(params, len(tokenizer), jax.random.PRNGKey(0))
  table = grown["word_embeddings"]["embedding"]
  assert table.shape == (30525, 384)
  np.testing.assert_array_equal(table[:30522], params["word_embeddings"]["embedding"])
  bigger = model.clone(config=model.config.replace(vocab_size=len(tokenizer)))
  out = bigger.apply({"params": grown}, ids["input_ids"], ids["attention_mask"])
  assert np.isfinite(np.asarray(out)).all()


def test_first_token_only_equals_full_cls(minilm):
  model, params, tokenizer = minilm
  ids, mask = _batch(tokenizer)
  full = np.asarray(model.apply({"params": params}, ids, mask))
  first = np.asarray(model.apply({"params": params}, ids, mask, first_token_only=True))
  assert first.shape == (3, 1, 384)
  np.testing.assert_allclose(first[:, 0], full[:, 0], atol=2e-5)
  remat = model.clone(remat="full")
  np.testing.assert_allclose(
      np.asarray(remat.apply({"params": params}, ids, mask, first_token_only=True)), first,
      atol=1e-5)
