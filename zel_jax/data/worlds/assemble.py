"""Fetch, build and cache each world, then write the benchmark's world-disjoint splits.

Layout written under OUT (the ZESHEL layout, so every recipe reads it unchanged):

  documents/<world>.json          every entity of the world (none dropped by the caps)
  mentions/{train,val,test}.json  the mentions of the split's worlds, at most `caps[split]`
                                  per world, sampled with a seeded hash (stable everywhere)
  benchmark.json                  per world: split, packages, counts, categories, dropped links
  .cache/debs, .cache/built       downloaded packages and built worlds, reused across runs

Train and val files never hold a test world's entity or text: an entity of a train or val
world whose text is also the text of an entity of a later split (val, test) is removed from
its world with the mentions that touch it, and counted (`overlap_removed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Iterable

from tqdm import tqdm

from zel_jax.data import debian, zeshel
from zel_jax.data.worlds import SPLITS, pages, source

DEFAULT_CAPS = {"train": 8000, "val": 1000, "test": 3000}
# Texts shorter than this are too generic to call one world's text a copy of another's.
_MIN_OVERLAP_TOKENS = 8
_HERE = pathlib.Path(__file__).resolve().parent


def _fingerprint(builder: str, debs: Iterable[str]) -> str:
  """Changes when the packages or the code that turns them into the world change."""
  digest = hashlib.sha256()
  family = builder.split("_")[0]
  files = sorted({_HERE / "pages.py", _HERE / f"{builder}.py", *_HERE.glob(f"{family}_*.py"),
                  _HERE.parent / "zeshel.py", _HERE.parent / "dictd.py"})
  for path in files:
    digest.update(path.name.encode() + b"\x00" + path.read_bytes())
  for deb in sorted(os.path.basename(d) for d in debs):
    digest.update(deb.encode() + b"\x00")
  return digest.hexdigest()[:16]


def _fetch(package: str, debs_dir: pathlib.Path, packages_dir: str | None) -> str:
  for directory in filter(None, (packages_dir, str(debs_dir))):
    found = sorted(pathlib.Path(directory).glob(f"{package}_*.deb"))
    if found:
      return str(found[-1])
  return debian.download_deb(package, str(debs_dir))


def _entity_record(e: zeshel.Entity) -> dict[str, Any]:
  return {"document_id": e.document_id, "title": e.title, "text": e.text}


def build_one(world: str, cache: pathlib.Path, packages_dir: str | None = None) -> pathlib.Path:
  """Builds one world into `cache/built/<world>/` unless an up-to-date build is there."""
  src = source(world)
  debs = [_fetch(p, cache / "debs", packages_dir) for p in src.packages]
  fingerprint = _fingerprint(src.builder, debs)
  built = cache / "built" / world
  stats_path = built / "stats.json"
  if stats_path.is_file():
    if json.loads(stats_path.read_text()).get("fingerprint") == fingerprint:
      return built
  start = time.time()
  builder = importlib.import_module(f"zel_jax.data.worlds.{src.builder}")
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    for deb in debs:
      debian.extract_deb(deb, tmp)
    result: pages.World = builder.build(pathlib.Path(tmp), world)
  zeshel.write_json_lines(built / "documents.json", map(_entity_record, result.entities))
  zeshel.write_json_lines(built / "mentions.json", map(dataclasses.asdict, result.mentions))
  stats = dict(result.stats, fingerprint=fingerprint, packages=[os.path.basename(d) for d in debs],
               build_seconds=round(time.time() - start, 1))
  # Written last: its presence says the world's files are complete.
  zeshel.write_json(stats_path, stats)
  return built


def _normalized(text: str) -> str:
  return " ".join(text.split()).casefold()


def sample_mentions(mentions: list[dict[str, Any]], cap: int, seed: int) -> list[dict[str, Any]]:
  """At most `cap` mentions, chosen by a seeded hash of their ids, kept in file order."""
  if cap <= 0 or len(mentions) <= cap:
    return list(mentions)

  def rank(m: dict[str, Any]) -> str:
    return hashlib.sha256(f"{seed}\x00{m['mention_id']}".encode()).hexdigest()

  chosen = {m["mention_id"] for m in sorted(mentions, key=rank)[:cap]}
  return [m for m in mentions if m["mention_id"] in chosen]


def cross_split_copies(documents: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
  """Per world, the ids of its entities whose text is also an entity text of a world in a
  later split (train < val < test): these leave the earlier world, so no train or val file
  holds a test world's text."""
  later: dict[str, set[str]] = {split: set() for split in SPLITS}
  for world, records in documents.items():
    split = source(world).split
    texts = {_normalized(d["text"]) for d in records
             if len(d["text"].split()) >= _MIN_OVERLAP_TOKENS}
    for earlier in SPLITS[:SPLITS.index(split)]:
      later[earlier] |= texts
  return {world: {d["document_id"] for d in records
                  if _normalized(d["text"]) in later[source(world).split]}
          for world, records in documents.items()}


def _read(path: pathlib.Path) -> list[dict[str, Any]]:
  return [record for _, record in zeshel.json_records(path)]


def build_benchmark(out: str, worlds: list[str], caps: dict[str, int] | None = None,
                    seed: int = 0, packages_dir: str | None = None) -> dict[str, Any]:
  """Builds (or reuses) every world in `worlds` and writes OUT's split files; returns the
  summary also written to OUT/benchmark.json."""
  caps = dict(DEFAULT_CAPS, **(caps or {}))
  out_dir = pathlib.Path(out)
  cache = out_dir / ".cache"
  cache.mkdir(parents=True, exist_ok=True)
  order = sorted(worlds, key=lambda w: (SPLITS.index(source(w).split), worlds.index(w)))
  built: dict[str, pathlib.Path] = {}
  for world in tqdm(order, desc="worlds", unit="world"):
    built[world] = build_one(world, cache, packages_dir)

  documents = {w: _read(built[w] / "documents.json") for w in order}
  removed_by_world = cross_split_copies(documents)

  summary: dict[str, Any] = {"caps": caps, "seed": seed, "worlds": {}}
  split_records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
  for world in order:
    split = source(world).split
    stats = json.loads((built[world] / "stats.json").read_text())
    removed = removed_by_world[world]
    kept_documents = [d for d in documents[world] if d["document_id"] not in removed]
    mentions = [m for m in _read(built[world] / "mentions.json")
                if m["context_document_id"] not in removed and m["label_document_id"] not in removed]
    chosen = sample_mentions(mentions, caps[split], seed)
    split_records[split] += chosen
    zeshel.write_json_lines(out_dir / "documents" / f"{world}.json", kept_documents)
    categories = {c: sum(m["category"] == c for m in chosen) for c in zeshel.CATEGORIES}
    summary["worlds"][world] = {
        "split": split,
        "packages": stats["packages"],
        "entities": len(kept_documents),
        "overlap_removed": len(removed),
        "mentions": len(mentions),
        "mentions_kept": len(chosen),
        "mean_entity_tokens": stats["mean_entity_tokens"],
        "links": stats["links"],
        "links_dropped": stats["links_dropped"],
        "category_share": {c: round(n / len(chosen), 4) if chosen else 0.0
                           for c, n in categories.items()},
        "top_unresolved": stats["top_unresolved"][:10],
        "build_seconds": stats["build_seconds"],
    }
  for split, records in split_records.items():
    zeshel.write_json_lines(out_dir / "mentions" / f"{split}.json", records)
  # A world built before but not asked for now must not linger beside the new split files.
  for path in (out_dir / "documents").glob("*.json"):
    if path.stem not in worlds:
      path.unlink()
  summary["split_mentions"] = {s: len(r) for s, r in split_records.items()}
  zeshel.write_json(out_dir / "benchmark.json", summary)
  return summary
