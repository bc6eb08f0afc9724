"""Mesh construction, sharding rules, sharded init and the sharded forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from zel_jax.configs import common
from zel_jax import sharding
from zel_jax.models import bert, bert_io

RULES = [tuple(r) for r in common.LOGICAL_RULES]


def test_make_mesh_fills_minus_one():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert dict(sharding.make_mesh([("fsdp", -1)]).shape) == {"fsdp": 8}
  with pytest.raises(ValueError, match="needs 6 devices, there are 8"):
    sharding.make_mesh([("data", 3), ("fsdp", 2)])
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh([("data", -1), ("fsdp", -1)])


def test_logical_rules_first_match_and_divisibility():
  mesh = sharding.make_mesh([("fsdp", -1)])
  # 30522 does not divide by 8: vocab falls through, embed takes fsdp.
  assert sharding.logical_spec(("vocab", "embed"), (30522, 384), RULES, mesh) == P(None, "fsdp")
  assert sharding.logical_spec(("vocab", "embed"), (32000, 384), RULES, mesh) == P("fsdp", None)
  # One mesh axis per array: the second dim cannot reuse fsdp.
  assert sharding.logical_spec(("embed", "mlp"), (384, 1536), RULES, mesh) == P("fsdp", None)
  # An explicit None rule replicates.
  assert sharding.logical_spec(("kv",), (64,), RULES, mesh) == P(None)
  tp = sharding.make_mesh([("fsdp", 4), ("model", 2)])
  assert sharding.logical_spec(("embed", "heads", "kv"), (384, 12, 32), RULES, tp) == P(
      "fsdp", "model", None)


def test_param_regex_rules_take_precedence_and_are_checked():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  model = bert.BertModel(bert.BertConfig(vocab_size=64, hidden_size=32, num_layers=1,
                                         num_heads=4, intermediate_size=64))
  abstract = bert.abstract_params(model)
  specs = sharding.param_specs(abstract, mesh, RULES, [(r"intermediate/kernel$", (None, "data"))])
  assert specs["layer_0"]["intermediate"]["kernel"] == P(None, "data")
  assert specs["layer_0"]["output"]["kernel"] == P("fsdp", None)
  with pytest.raises(ValueError, match=r"token_type_embeddings/embedding \(2, 32\).*2 is not "
                     r"divisible by 4"):
    sharding.param_specs(abstract, mesh, RULES, [(r"token_type", ("data", None))])
  with pytest.raises(ValueError, match=r"mesh has no axis \['model'\]"):
    sharding.param_specs(abstract, mesh, RULES, [(r"kernel$", ("model",))])


def test_sharded_init_never_builds_on_one_device():
  mesh = sharding.make_mesh([("fsdp", -1)])
  model = bert.BertModel(bert.BertConfig(vocab_size=128, hidden_size=64, num_layers=2,
                                         num_heads=4, intermediate_size=128))
  ids = jnp.zeros((2, 8), jnp.int32)
  init = lambda rng: model.init(rng, ids, ids)["params"]
  params, shardings = sharding.sharded_init(init, jax.random.PRNGKey(0), mesh, RULES)
  emb = params["word_embeddings"]["embedding"]
  assert emb.sharding.spec == P("fsdp", None)
  assert emb.addressable_shards[0].data.shape == (16, 64)
  # Same values as a plain, unsharded init.
  plain = nn.unbox(init(jax.random.PRNGKey(0)))
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(params)


@pytest.fixture(scope="module")
def minilm_inputs():
  tokenizer = bert_io.load_tokenizer("all-MiniLM-L6-v2")
  texts = ["Baibars besieged Antioch in 1268.", "FOLDOC", "a free dictionary of computing",
           "Mamluk", "x", "The Doctor travels in the TARDIS with companions.",
           "Ophidian wrestled Amasis", "Mistfall"]
  enc = tokenizer(texts, padding="max_length", max_length=24, truncation=True,
                  return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


@pytest.mark.parametrize("mesh_axes", [[("data", 4), ("fsdp", 2)], [("fsdp", 8)]],
                         ids=["data4xfsdp2", "fsdp8"])
def test_sharded_forward_equals_single_device(mesh_axes, minilm_path, minilm_inputs):
  ids, mask = minilm_inputs
  model, params = bert_io.from_pretrained(minilm_path)
  single = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))

  mesh = sharding.make_mesh(mesh_axes)
  abstract = bert.abstract_params(model)
  specs = sharding.param_specs(abstract, mesh, RULES)
  print(f"parameter specs on {dict(mesh.shape)}:\n" + sharding.spec_table(abstract, specs))
  sharded_params = bert_io.load_params(minilm_path, model, sharding.to_shardings(specs, mesh))
  kernel = sharded_params["layer_0"]["intermediate"]["kernel"]
  fsdp = mesh.shape["fsdp"]
  assert kernel.sharding.spec == P("fsdp", None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(384 // fsdp, 1536)}
  emb = sharded_params["word_embeddings"]["embedding"]
  assert emb.addressable_shards[0].data.size * fsdp == emb.size  # Split, not replicated.

  batch = sharding.global_batch({"ids": ids, "mask": mask}, mesh)
  batch_spec = ("data", "fsdp") if "data" in mesh.shape else "fsdp"
  assert batch["ids"].sharding.spec == P(batch_spec)
  pinned = model.clone(activation_sharding=sharding.activation_sharding(mesh))
  out = jax.jit(pinned.apply)({"params": sharded_params}, batch["ids"], batch["mask"])
  assert out.sharding.spec[0] == batch_spec
  error = np.abs(np.asarray(out) - single)
  real = mask.astype(bool)
  print(f"{dict(mesh.shape)}: max abs difference {error[real].max():.3g} on real tokens, "
        f"{error.max():.3g} including padding positions")
  assert error[real].max() <= 1e-5
  # Padding positions carry no information and are numerically looser (see README).
  assert error.max() <= 1e-4


def test_global_batch_rejects_indivisible_batch():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  with pytest.raises(ValueError, match="does not divide over 8 batch shards"):
    sharding.global_batch({"x": np.zeros((6, 3))}, mesh)
