"""Export a trained retriever and one knowledge base as a self-contained folder.

  python -m zel_jax.export --workdir=W --out=DIR [--data=D --world=NAME] [--store=exact]

The folder (zel_jax/evals/export_io.py) holds the encoder towers as Hugging Face checkpoints
(transformers loads each as a BertModel / MPNetModel), the recipe's config, and the world's
entities with their vectors and store. `zel_jax.evals.linking.Linker.from_pretrained(DIR)`
links with it, and adds or removes entities, without the training workdir; `python -m
zel_jax.link --export=DIR` links a corpus with it. The world's vectors are the ones the
workdir's linker caches (W/stores/), computed once when absent. An EntQA reader's workdir
exports its retriever and the reader itself (reader/), so that raw text is linked too.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from zel_jax import metric_writer, recipes, sharding
from zel_jax.data import zeshel
from zel_jax.evals import export_io
from zel_jax.index.entity_kb import EntityKB, STORE_KINDS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A retriever's training workdir (BLINK, distilled, "
                      "MVD), or an EntQA reader's (exported with its retriever).")
  flags.DEFINE_string("out", None, "The export folder to write (replaced atomically).")
  flags.DEFINE_string("data", None, "ZESHEL-layout folder of the knowledge base (default: "
                      "the config's); a folder with only documents/ will do.")
  flags.DEFINE_string("world", None, "The world whose entities the export links to "
                      "(default: the folder's only world).")
  flags.DEFINE_enum("store", "exact", list(STORE_KINDS), "The store the export keeps: exact "
                    "(the vectors themselves) or scann (saved index); device is built on "
                    "load.")
  flags.DEFINE_bool("untrained", False, "Export the encoder before training (the config's "
                    "pretrained weights), as the untrained baseline uses it.")


def export(workdir: str, out: str, data: str | None = None, world: str | None = None,
           store: str = "exact", untrained: bool = False) -> dict:
  """Writes the export; returns its manifest plus its size in bytes. untrained: the
  workdir's encoder before training (its config's pretrained weights; no checkpoint
  needed), the untrained baseline's."""
  _, config = recipes.for_workdir(workdir)
  if world is None:
    worlds = zeshel.ZeshelDataset(data or config.data.dir).worlds()
    if len(worlds) != 1:
      raise app.UsageError(f"--world: the folder holds the worlds {worlds}; name one")
    world = worlds[0]
  linker = recipes.open_linker(workdir, data, world, "exact", untrained=untrained)
  kb = linker.kb
  if store != "exact":
    kb = EntityKB(kb.ids, kb.titles, kb.texts, kb.vectors, kb.owners, kb.views, store,
                  linker.mesh)
  manifest = export_io.write_export(
      out, linker.config, linker.model, linker.featurizer, linker.params,
      linker.step, kb,
      {"workdir": os.path.abspath(workdir), "world": world,
       "data": os.path.abspath(data or config.data.dir)},
      documents=recipes.documents_exporter(workdir))
  return {**manifest, "bytes": export_io.directory_bytes(out)}


def main(argv):
  del argv
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  FLAGS = flags.FLAGS
  result = export(FLAGS.workdir, FLAGS.out, FLAGS.data, FLAGS.world, FLAGS.store,
                  FLAGS.untrained)
  print(json.dumps({"out": FLAGS.out, "entities": result["entities"], "step": result["step"],
                    "bytes": result["bytes"]}))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
