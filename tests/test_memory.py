"""`python -m zel_jax.bench memory`: per-device bytes of a compiled bi-encoder step, from
shapes alone. Sizes are the benchmark's business; here, only that the accounting responds to
what it must (batch, FSDP, rematerialization)."""

import pytest

import tiny_world
from zel_jax import bench, sharding


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  return tiny_world.write_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def _config(tiny_bert, mesh, **model):
  import configs.blink_biencoder as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.model.pretrained = str(tiny_bert)
  config.data.mention_length = config.data.entity_length = 16
  for key, value in model.items():
    config.model[key] = value
  config.mesh = mesh
  return config


def test_step_memory_follows_batch_sharding_and_remat(tiny_bert):
  data_mesh = [("data", 8), ("fsdp", 1)]
  config = _config(tiny_bert, data_mesh)
  mesh = sharding.make_mesh(config.mesh)
  small = bench.step_memory(config, mesh, 16)
  large = bench.step_memory(config, mesh, 4096)
  assert large["bytes"]["temp"] > 2 * small["bytes"]["temp"]
  # Weights and optimizer state do not depend on the batch.
  assert large["bytes"]["arguments"] - small["bytes"]["arguments"] < 0.01 * large["bytes"][
      "arguments"]
  fsdp = _config(tiny_bert, [("data", 1), ("fsdp", 8)])
  sharded = bench.step_memory(fsdp, sharding.make_mesh(fsdp.mesh), 4096)
  # FSDP keeps an eighth of the weights and Adam moments on each device.
  assert sharded["bytes"]["arguments"] < large["bytes"]["arguments"] / 4
  remat = _config(tiny_bert, data_mesh, remat="full")
  assert bench.step_memory(remat, mesh, 4096)["bytes"]["temp"] < large["bytes"]["temp"]


def test_standard_sizes_need_no_checkpoint():
  config = bench._bert_config("bert-large-uncased")  # pylint: disable=protected-access
  assert (config.hidden_size, config.num_layers, config.num_heads) == (1024, 24, 16)
