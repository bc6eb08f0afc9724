"""`python -m zel_jax.bench memory`: per-device bytes of a compiled bi-encoder step, from
shapes alone. Sizes are the benchmark's business; here, only that the accounting responds to
what it must (batch, FSDP, rematerialization)."""

import pytest

import tiny_world
from zel_jax import sharding
from zel_jax.bench import memory
from zel_jax.models import pretrained


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  return tiny_world.write_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def _config(tiny_bert, mesh, **model):
  from zel_jax.configs import blink_biencoder as recipe  # pylint: disable=g-import-not-at-top
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
  small = memory.step_memory(config, mesh, 16)
  large = memory.step_memory(config, mesh, 4096)
  assert large["bytes"]["temp"] > 2 * small["bytes"]["temp"]
  # Weights and optimizer state do not depend on the batch.
  assert large["bytes"]["arguments"] - small["bytes"]["arguments"] < 0.01 * large["bytes"][
      "arguments"]
  fsdp = _config(tiny_bert, [("data", 1), ("fsdp", 8)])
  sharded = memory.step_memory(fsdp, sharding.make_mesh(fsdp.mesh), 4096)
  # FSDP keeps an eighth of the weights and Adam moments on each device.
  assert sharded["bytes"]["arguments"] < large["bytes"]["arguments"] / 4
  remat = _config(tiny_bert, data_mesh, remat="full")
  assert memory.step_memory(remat, mesh, 4096)["bytes"]["temp"] < large["bytes"]["temp"]


def test_standard_sizes_need_no_checkpoint():
  config = pretrained.encoder_config("bert-large-uncased")
  assert (config.hidden_size, config.num_layers, config.num_heads) == (1024, 24, 16)


def test_mvd_joint_step_memory_follows_candidates(tiny_bert):
  from zel_jax.configs import mvd as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal,stage=joint")
  config.model.pretrained = str(tiny_bert)
  config.data.mention_length = config.mvd.view_length = config.data.entity_length = 16
  config.mesh = [("data", 8), ("fsdp", 1)]
  mesh = sharding.make_mesh(config.mesh)
  eight = memory.step_memory(config, mesh, 64)
  config.mvd.num_candidates = 32
  thirty_two = memory.step_memory(config, mesh, 64)
  # The student's views and the teacher's pairs are per candidate: 4x the candidates, more
  # than twice the activations; the weights (student + teacher) stay, only the batch grows.
  assert thirty_two["bytes"]["temp"] > 2 * eight["bytes"]["temp"]
  assert 0 < thirty_two["bytes"]["arguments"] - eight["bytes"]["arguments"] < 0.02 * eight[
      "bytes"]["arguments"]
  bi_config = _config(tiny_bert, [("data", 8), ("fsdp", 1)])
  biencoder = memory.step_memory(bi_config, mesh, 64)
  # The student is a two-tower bi-encoder like BLINK's; the teacher adds a third encoder's
  # weights and Adam moments.
  assert eight["bytes"]["arguments"] > 1.4 * biencoder["bytes"]["arguments"]
  config.mvd.stage = "teacher"
  with pytest.raises(ValueError, match="stage=teacher"):
    memory.step_memory(config, mesh, 64)
