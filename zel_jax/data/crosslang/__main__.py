"""python -m zel_jax.data.crosslang (see cli.py)."""

import sys

from zel_jax.data.crosslang import cli

sys.exit(cli.main())
