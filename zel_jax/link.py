"""Linking: mentions in, entities out, with a trained bi-encoder (and optionally BLINK's
second stage, a cross-encoder reranking the retrieved candidates).

  python -m zel_jax.link --workdir=W --data=DIR --world=NAME --input=mentions.jsonl \
      --output=out.jsonl --top-k=16 [--rerank=W_CROSS]

Each input line is either a ZESHEL mention record (context_document_id, start_index,
end_index, ...) or raw text with a character span: {"text": "...", "start": 4, "end": 11}
(end exclusive). Each output line repeats the input and adds "entities": [{document_id,
title, score}, ...], best first. `--text="... [[mention]] ..."` links one sentence whose
mention is marked with double brackets, and prints the result.

The world's entity store is built once per checkpoint and kept under W/stores/, so repeated
calls load it instead of re-encoding the knowledge base. With --rerank, the top-k retrieved
entities are scored by the cross-encoder and returned in its order; "score" is then the
cross-encoder's and "retrieval_score" the bi-encoder's.

EntQA end to end (`--end-to-end`, --workdir an EntQA reader): the input is whole documents,
`--text="..."` or JSON lines {"text", "id"?, "topic"?}; the retriever finds each passage's
candidate entities, the reader their mentions, and each output line repeats the input and
adds "spans": [{start, end, mention, document_id, title, score}] (character offsets into
the text, end exclusive) for the spans scoring above the threshold gamma.

  python -m zel_jax.link --end-to-end --workdir=W_READ --world=foldoc \
      --text="Emacs is an editor written in Lisp."
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import app, flags
import jax

from zel_jax import metric_writer, recipes, sharding
from zel_jax.evals import linking


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: malformed JSON: {e.msg}") from None
  return records


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string("workdir", None, "A retriever's training workdir (any recipe's).")
  flags.DEFINE_string("data", None, "ZESHEL-layout directory (default: the config's).")
  flags.DEFINE_string("world", None, "The world whose entities to link to.")
  flags.DEFINE_string("input", None, "JSON lines of mentions.")
  flags.DEFINE_string("output", None, "Where to write the linked JSON lines.")
  flags.DEFINE_string("text", None, "One text with its mention in [[double brackets]].")
  flags.DEFINE_integer("top_k", 16, "Entities per mention.")
  flags.DEFINE_alias("top-k", "top_k")
  flags.DEFINE_enum("store", "exact", ["exact", "scann", "device"], "Candidate store.")
  flags.DEFINE_string("rerank", None, "A cross-encoder workdir: rerank the top-k with it.")
  flags.DEFINE_bool("end_to_end", False, "EntQA: --workdir is a reader; --text (or each "
                    "--input line's text) is a whole document whose mentions are found.")
  flags.DEFINE_alias("end-to-end", "end_to_end")
  flags.DEFINE_float("threshold", None, "--end_to_end: gamma (default: the reader's "
                     "calibrated one).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  del argv
  if bool(FLAGS.input) == bool(FLAGS.text):
    raise app.UsageError("give exactly one of --input and --text")
  if FLAGS.end_to_end:
    _main_end_to_end()
    return
  linker = recipes.open_linker(FLAGS.workdir, FLAGS.data, FLAGS.world, FLAGS.store)
  records = _read_jsonl(FLAGS.input) if FLAGS.input else [linking.marked_text(FLAGS.text)]
  reranker = recipes.open_reranker(FLAGS.rerank) if FLAGS.rerank else None
  linked = linker.link(records, FLAGS.top_k, reranker)
  if FLAGS.output:
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w") as f:
      for record in linked:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, FLAGS.output)
  for record in linked[:5] if FLAGS.output else linked:
    top = ", ".join(f"{e['title']} ({e['score']:.2f})" for e in record["entities"][:5])
    print(f"{record['mention']!r} -> {top}")
  sys.stdout.flush()
  print(json.dumps({"linked": len(linked), "output": FLAGS.output,
                    "top": [r["entities"][0] if r["entities"] else None for r in linked[:3]]}))


def _main_end_to_end() -> None:
  e2e = recipes.open_document_linker(FLAGS.workdir, FLAGS.data)
  records = _read_jsonl(FLAGS.input) if FLAGS.input else [{"text": FLAGS.text}]
  top_k = FLAGS.top_k if FLAGS["top_k"].present else None
  linked, timing = linking.link_documents(e2e, records, FLAGS.world, FLAGS.threshold, top_k)
  if FLAGS.output and jax.process_index() == 0:
    tmp = FLAGS.output + ".tmp"
    with open(tmp, "w") as f:
      for record in linked:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, FLAGS.output)
  for record in linked[:5] if FLAGS.output else linked:
    for span in record["spans"]:
      print(f"{span['mention']!r} [{span['start']}:{span['end']}] -> {span['title']} "
            f"({span['score']:.3f})")
  sys.stdout.flush()
  print(json.dumps({"documents": len(linked), "spans": sum(len(r["spans"]) for r in linked),
                    "output": FLAGS.output, **timing}))


FLAGS = flags.FLAGS


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir", "world"])
  app.run(main)
