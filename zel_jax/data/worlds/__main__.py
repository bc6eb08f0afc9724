"""Builds the zero-shot benchmark: every world of `SOURCES`, then world-disjoint splits.

    python -m zel_jax.data.worlds --out=data/worlds [--worlds=dict-foldoc,rust-doc]

Idempotent and resumable: each package is downloaded once (OUT/.cache/debs), each world is
built once into OUT/.cache/built/<world>/ and rebuilt only when its packages or the code that
builds it changed; the split files are assembled from the built worlds on every run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from zel_jax.data.worlds import SOURCES, assemble


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.worlds",
      description="Build the zero-shot benchmark's worlds from Debian documentation packages.")
  parser.add_argument("--out", required=True, help="output folder (ZESHEL layout)")
  parser.add_argument("--worlds", default="",
                      help="comma-separated worlds to build (default: all); the split files "
                           "then hold only these")
  parser.add_argument("--seed", type=int, default=0, help="seed of the per-world mention caps")
  for split, cap in assemble.DEFAULT_CAPS.items():
    parser.add_argument(f"--max_{split}_mentions", type=int, default=cap,
                        help=f"at most this many {split} mentions per world (0: no cap)")
  parser.add_argument("--packages", default="",
                      help="a folder of already downloaded .deb files to use before apt-get")
  args = parser.parse_args(argv)
  worlds = [w for w in args.worlds.split(",") if w] or [s.world for s in SOURCES]
  caps = {split: getattr(args, f"max_{split}_mentions") for split in assemble.DEFAULT_CAPS}
  summary = assemble.build_benchmark(args.out, worlds, caps=caps, seed=args.seed,
                                     packages_dir=args.packages or None)
  for world, row in summary["worlds"].items():
    print(f"{world:18s} {row['split']:5s} entities {row['entities']:7d}  mentions "
          f"{row['mentions_kept']:6d} of {row['mentions']:6d}  dropped links "
          f"{sum(row['links_dropped'].values()):6d}")
  print(f"wrote {args.out}: " + ", ".join(f"{s} {n} mentions"
                                          for s, n in summary["split_mentions"].items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
