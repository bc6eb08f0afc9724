r"""Embed texts with a BERT encoder sharded over the mesh (zel_jax/encode.py).

The smallest end-to-end path through the stack: real pretrained weights -> tokenizer ->
global batch on the mesh -> sharded forward -> pooled, normalized embeddings.

  python -m zel_jax.encode --config=configs/encode.py:runlocal \
      --text="Baibars besieged Antioch." --text="The Mamluk sultan took Antioch."

Variants: `runlocal` (short inputs, small batches), `variant=fsdp` (all devices on one
fsdp axis instead of data parallel).
"""

import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, variant="data")
  config = ml_collections.ConfigDict()

  # Input.
  config.max_length = 128
  config.batch_size = 64  # Global batch; padded up to a multiple of the batch shards.

  # Model.
  config.model = common.encoder("all-MiniLM-L6-v2")
  config.pooling = "mean"  # "cls" or "mean" over non-padding tokens.

  # Mesh and sharding.
  if arg.variant == "fsdp":
    common.mesh_and_sharding(config, mesh=[("fsdp", -1)])
  else:
    common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])

  if arg.runlocal:
    config.max_length = 64
    config.batch_size = 8
  return config
