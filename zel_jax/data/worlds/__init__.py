"""The zero-shot benchmark: worlds built from Debian documentation, with world-disjoint splits.

    python -m zel_jax.data.worlds --out=data/worlds

Each world is one source (a Debian package, or two for the man pages) read by the builder of
its format into a ZESHEL-layout world (`pages.build_world`). Like ZESHEL (8 training worlds,
4 for tuning, 4 for testing, none sharing entities), every mention of a world goes to its
world's split, so test mentions link into knowledge bases no model saw in training.

The split was fixed before any model was run. Only these packages may be used to build, train
or tune anything: every other Debian package stays unseen, for independent evaluation.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
  world: str
  split: str               # "train", "val" or "test"
  packages: tuple[str, ...]
  builder: str             # module under zel_jax.data.worlds whose build(root, world) reads it


SOURCES = (
    Source("dict-foldoc", "train", ("dict-foldoc",), "dictd_world"),
    Source("dict-gcide", "train", ("dict-gcide",), "dictd_world"),
    Source("vim-runtime", "train", ("vim-runtime",), "vim_help"),
    Source("perl-doc", "train", ("perl-doc",), "pod"),
    Source("manpages", "train", ("manpages", "manpages-dev"), "manpages"),
    Source("cmake-doc", "train", ("cmake-doc",), "html_docs"),
    Source("postgresql-doc-15", "train", ("postgresql-doc-15",), "html_docs"),
    Source("git-doc", "train", ("git-doc",), "html_docs"),
    Source("sqlite3-doc", "val", ("sqlite3-doc",), "html_docs"),
    Source("gnuplot-doc", "val", ("gnuplot-doc",), "html_docs"),
    Source("erlang-doc", "val", ("erlang-doc",), "html_docs"),
    Source("python3.11-doc", "test", ("python3.11-doc",), "html_docs"),
    Source("rust-doc", "test", ("rust-doc",), "html_docs"),
    Source("apache2-doc", "test", ("apache2-doc",), "html_docs"),
)

SPLITS = ("train", "val", "test")


def worlds_of(split: str) -> list[str]:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; the benchmark's splits are {SPLITS}")
  return [s.world for s in SOURCES if s.split == split]


def source(world: str) -> Source:
  for s in SOURCES:
    if s.world == world:
      return s
  raise KeyError(f"{world!r} is not a benchmark world; worlds: {[s.world for s in SOURCES]}")
