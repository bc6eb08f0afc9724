"""Entity-format tokenization throughput over ZESHEL-layout documents (the featurizer's
benchmark):

  python -m zel_jax.bench.featurize --documents data/foldoc/documents --num 100000
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from typing import Sequence

import numpy as np

from zel_jax.data import features


def perturbed_copies(titles: Sequence[str], texts: Sequence[str], n: int, seed: int = 0
                     ) -> tuple[list[str], list[str]]:
  """n entities made from real ones for benchmarks: entity i is a real description rotated
  by a random number of words (so each starts in a different place and has its own length
  profile) under its title plus a number, keeping the corpus's word statistics."""
  rng = np.random.default_rng(seed)
  words = [t.split(" ") for t in texts]
  pick = rng.integers(0, len(texts), n)
  shift = rng.random(n)
  out_titles, out_texts = [], []
  for i, (j, s) in enumerate(zip(pick, shift)):
    w = words[j]
    k = int(s * len(w))
    out_titles.append(f"{titles[j]} {i}")
    out_texts.append(" ".join(w[k:] + w[:k]))
  return out_titles, out_texts


def entity_throughput(featurizer: features.Featurizer, titles: Sequence[str],
                      descriptions: Sequence[str], max_length: int = 128) -> dict[str, float]:
  """Times entity_features over all entities: {entities, seconds, entities_per_s}."""
  start = time.perf_counter()
  featurizer.entity_features(titles, descriptions, max_length)
  seconds = time.perf_counter() - start
  return {"entities": len(descriptions), "seconds": seconds,
          "entities_per_s": len(descriptions) / seconds}


def _read_documents(path: str) -> tuple[list[str], list[str]]:
  files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
  titles, texts = [], []
  for name in files:
    with open(name, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          doc = json.loads(line)
          titles.append(doc["title"])
          texts.append(doc["text"])
  return titles, texts


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description="Entity-format tokenization throughput over ZESHEL-layout documents.")
  parser.add_argument("--documents", required=True,
                      help="a documents/<world>.json file or a folder of them")
  parser.add_argument("--num", type=int, default=0,
                      help="entities to make by perturbing the real ones (0: the real ones)")
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--tokenizer", default="all-MiniLM-L6-v2")
  parser.add_argument("--grow_vocab", action="store_true",
                      help="append the markers to the vocabulary instead of [unusedN]")
  parser.add_argument("--direct", action="store_true",
                      help="tokenize whole texts instead of distinct words")
  args = parser.parse_args(argv)
  titles, texts = _read_documents(args.documents)
  if args.num:
    titles, texts = perturbed_copies(titles, texts, args.num)
  featurizer = features.Featurizer.from_pretrained(
      args.tokenizer, use_unused_markers=not args.grow_vocab, word_cache=not args.direct)
  result = entity_throughput(featurizer, titles, texts, args.max_length)
  print(json.dumps({**result, "max_length": args.max_length, "word_cache": featurizer.word_cache,
                    "documents": args.documents}))


if __name__ == "__main__":
  main()
