"""Prints the parameter digest (evals/fingerprint.params_digest) of a fixed tree sharded over
every device of the run, for the multi-process test in tests/infra/test_multihost.py.

  python tests/digest_worker.py [--coordinator_address=H:P --num_processes=N --process_id=I]

The tree comes from a fixed seed; each process builds only its own shards
(jax.make_array_from_callback), as a restored multi-host checkpoint holds them. Process 0
prints "digest <hex>".
"""

import argparse

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from zel_jax import sharding, train
from zel_jax.evals import fingerprint


def tree() -> dict:
  """The parameters, as host numpy arrays: float32, bfloat16 and int32 leaves."""
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": rng.normal(size=(64, 24)).astype(np.float32),
                    "bias": rng.normal(size=(24,)).astype(np.float32)},
          "embed": rng.normal(size=(16, 8)).astype(jax.numpy.bfloat16),
          "count": np.arange(8, dtype=np.int32)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  sharding.use_cpu_cores_as_devices()  # $ZEL_CPU_DEVICES devices per process.
  train.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  mesh = sharding.make_mesh([("fsdp", -1)])

  def place(x):
    spec = P("fsdp") if x.shape[0] % jax.device_count() == 0 else P()
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec),
                                        lambda index: x[index])

  params = jax.tree_util.tree_map(place, tree())
  digest = fingerprint.params_digest(params)
  if jax.process_index() == 0:
    print(f"digest {digest} processes {jax.process_count()} devices {jax.device_count()}",
          flush=True)


if __name__ == "__main__":
  main()
