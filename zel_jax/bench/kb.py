"""Changing a knowledge base without retraining: the time to add (and remove) entities in a
large store, against rebuilding it, with an export's retriever.

  python -m zel_jax.bench.kb --export=DIR [--size=100000] [--add=1000] [--store=exact]
      [--rebuild_sample=0]

The store holds `size` entities made from the export's own (bench/featurize.py's perturbed
copies: real descriptions rotated, titles numbered). "rebuild" is what a knowledge base
without incremental updates pays for any change: encode every entity, build the store,
write it. "add" is Linker.add_entities: encode only the new entities, rebuild the store from
the vectors held, and rewrite the knowledge base atomically; "remove" drops entities the
same way without encoding anything. With --rebuild_sample=N only N entities are encoded and
the encoding time is scaled to `size` (reported as such); store building and writing are
always measured at full size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

from absl import app, flags
import numpy as np

from zel_jax import metric_writer, sharding
from zel_jax.bench.featurize import perturbed_copies
from zel_jax.data import examples
from zel_jax.evals import linking, retrieval
from zel_jax.index.entity_kb import STORE_KINDS, EntityKB


def _encode(linker: linking.Linker, titles: Sequence[str], texts: Sequence[str]):
  table = examples.WorldEntities("bench", np.arange(len(titles)).astype(str), list(titles),
                                 list(texts), linker.featurizer.entity_features(
                                     titles, texts, linker.config.data.entity_length))
  return retrieval.entity_vectors(linker._encode_entities, linker.params, linker.featurizer,
                                  table, linker.config, linker.mesh, linker.views)


def bench_kb(export: str, size: int, add: int, store: str = "exact",
             rebuild_sample: int = 0, scratch: str | None = None) -> dict[str, Any]:
  linker = linking.Linker.from_pretrained(export, store)
  titles, texts = perturbed_copies(linker.kb.titles, linker.kb.texts, size + add, seed=0)
  ids = [f"bench-{i}" for i in range(size + add)]
  _encode(linker, titles[:64], texts[:64])  # Compiles every bucket shape outside timings.

  encoded = rebuild_sample if 0 < rebuild_sample < size else size
  t = time.perf_counter()
  vectors, owners = _encode(linker, titles[:encoded], texts[:encoded])
  encode_s = (time.perf_counter() - t) * size / encoded
  if encoded < size:  # Tiled: only the store's size matters for what follows.
    if linker.views != "global":
      raise ValueError("--rebuild_sample needs an export of one vector per entity")
    vectors, owners = np.tile(vectors, (-(-size // encoded), 1))[:size], None
  scratch = scratch or tempfile.mkdtemp(prefix="zel_bench_kb.")
  path = os.path.join(scratch, "kb")
  try:
    t = time.perf_counter()
    kb = EntityKB(ids[:size], titles[:size], texts[:size], vectors, owners, linker.views,
                  store, linker.mesh)
    store_s = time.perf_counter() - t
    t = time.perf_counter()
    kb.save(path)
    save_s = time.perf_counter() - t
    kb_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs)
    linker.kb, linker.kb_path = kb, path
    new = [{"id": ids[i], "title": titles[i], "text": texts[i]} for i in range(size, size + add)]
    t = time.perf_counter()
    linker.add_entities(new)
    add_s = time.perf_counter() - t
    after_add = len(EntityKB.load(path))  # What a restart reads.
    t = time.perf_counter()
    linker.remove_entities([r["id"] for r in new])
    remove_s = time.perf_counter() - t
    after_remove = len(EntityKB.load(path))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  rebuild_s = encode_s + store_s + save_s
  return {"export": export, "store": store, "entities": size, "added": add,
          "dim": int(vectors.shape[1]), "entity_length": int(linker.config.data.entity_length),
          "rebuild_s": round(rebuild_s, 1), "rebuild_encode_s": round(encode_s, 1),
          "rebuild_encode_measured_on": encoded, "store_build_s": round(store_s, 2),
          "write_s": round(save_s, 2), "kb_bytes": kb_bytes, "add_s": round(add_s, 2),
          "remove_s": round(remove_s, 2), "rebuild_over_add": round(rebuild_s / add_s, 1),
          "persisted_after_add": after_add, "persisted_after_remove": after_remove}


def main(argv):
  del argv
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  result = bench_kb(FLAGS.export, FLAGS.size, FLAGS.add, FLAGS.store, FLAGS.rebuild_sample)
  print(json.dumps(result), flush=True)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.DEFINE_string("export", None, "An export folder (python -m zel_jax.export).")
  flags.DEFINE_integer("size", 100_000, "Entities in the store.")
  flags.DEFINE_integer("add", 1000, "Entities added (then removed).")
  flags.DEFINE_enum("store", "exact", list(STORE_KINDS), "The store kind.")
  flags.DEFINE_integer("rebuild_sample", 0, "Encode only this many of `size` for the "
                       "rebuild time and scale it (0: encode all).")
  flags.mark_flags_as_required(["export"])
  app.run(main)
