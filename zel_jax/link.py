"""Linking: mentions in, entities out, with a trained bi-encoder (and optionally BLINK's
second stage, a cross-encoder reranking the retrieved candidates).

  python -m zel_jax.link --workdir=W --data=DIR --world=NAME --input=mentions.jsonl \
      --output=out.jsonl --top-k=16 [--rerank=W_CROSS] [--step=N]
  python -m zel_jax.link --export=DIR --input=docs.jsonl --output=links.jsonl

Each input line is a mention or a text. A mention is a ZESHEL mention record
(context_document_id, start_index, end_index, ...) or raw text with a character span:
{"text": "...", "start": 4, "end": 11} (end exclusive); its output line repeats it and adds
"entities": [{document_id, title, score}, ...], best first. A text is {"text": "...",
"spans": [{"start", "end"}, ...]} or a string with its mentions in [[double brackets]]; its
output line adds "spans": [{start, end, mention, document_id, title, score, entities}] (the
best entity, and the top k). The input is read and the output written chunk by chunk
(--chunk lines), with a progress bar, and the last line printed gives documents/s and
mentions/s. `--text="... [[mention]] ..."` links one sentence and prints the result.

The world's entity store is built once per checkpoint and kept under W/stores/, so repeated
calls load it instead of re-encoding the knowledge base; a store made by other parameters,
encoder settings or entity texts (its fingerprint.json) is re-encoded, never reused. With
--rerank, the top-k retrieved entities are scored by the cross-encoder and returned in its
order; "score" is then the cross-encoder's and "retrieval_score" the bi-encoder's.

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
import re
import sys
import time
from typing import Any, Iterator

from absl import app, flags
import jax
from tqdm import tqdm

from zel_jax import metric_writer, recipes, sharding
from zel_jax.data import guards
from zel_jax.evals import linking


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  return [record for _, record in _iter_jsonl(path)]


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, record) of each non-blank line, read as it goes (a corpus can be large)."""
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield number, guards.loads(line)
        except guards.DuplicateKeyError as e:
          raise ValueError(f"{path}:{number}: field {e.key!r}: {e}") from None
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: malformed JSON: {e.msg}") from None


def _chunks(records: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
  chunk = []
  for item in records:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def define_flags() -> None:
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string("workdir", None, "A retriever's training workdir (any recipe's).")
  flags.DEFINE_integer("step", None, "--workdir: restore this checkpoint step (default: the "
                       "newest intact one).")
  flags.DEFINE_string("export", None, "An export folder (python -m zel_jax.export) instead "
                      "of --workdir/--data/--world.")
  flags.DEFINE_string("data", None, "ZESHEL-layout directory (default: the config's).")
  flags.DEFINE_string("world", None, "The world whose entities to link to.")
  flags.DEFINE_string("input", None, "JSON lines: mentions {text, start, end} (or ZESHEL "
                      "mention records), or texts {text, spans: [{start, end}]} or "
                      "\"... [[marked]] ...\" strings.")
  flags.DEFINE_string("output", None, "Where to write the linked JSON lines.")
  flags.DEFINE_string("text", None, "One text with its mentions in [[double brackets]].")
  flags.DEFINE_integer("top_k", None, "Entities per mention (default 16); for raw text "
                       "(EntQA), candidates read per passage (default: the reader's).")
  flags.DEFINE_alias("top-k", "top_k")
  flags.DEFINE_integer("chunk", 256, "Input lines linked per batch (the output is written "
                       "as it goes).")
  flags.DEFINE_enum("store", None, ["exact", "scann", "device"], "Candidate store (default: "
                    "exact, or the export's).")
  flags.DEFINE_string("rerank", None, "A cross-encoder workdir: rerank the top-k with it.")
  flags.DEFINE_bool("end_to_end", False, "EntQA: --workdir is a reader; --text (or each "
                    "--input line's text) is a whole document whose mentions are found.")
  flags.DEFINE_alias("end-to-end", "end_to_end")
  flags.DEFINE_float("threshold", None, "Raw text (--end_to_end, or an export with EntQA's "
                     "reader): gamma (default: the reader's calibrated one).")


def main(argv):
  sharding.use_cpu_cores_as_devices()
  metric_writer.quiet_library_logs()
  del argv
  if bool(FLAGS.input) == bool(FLAGS.text):
    raise app.UsageError("give exactly one of --input and --text")
  if FLAGS.end_to_end:
    _main_end_to_end()
    return
  if bool(FLAGS.export) == bool(FLAGS.workdir):
    raise app.UsageError("give exactly one of --export and --workdir")
  if FLAGS.export and FLAGS.step is not None:
    raise app.UsageError("--step picks a checkpoint of --workdir; an export holds one")
  if FLAGS.export:
    linker = linking.Linker.from_pretrained(FLAGS.export, FLAGS.store)
  else:
    if not FLAGS.world:
      raise app.UsageError("--workdir needs --world (the world whose entities to link to)")
    linker = recipes.open_linker(FLAGS.workdir, FLAGS.data, FLAGS.world,
                                 FLAGS.store or "exact", step=FLAGS.step)
  reranker = recipes.open_reranker(FLAGS.rerank) if FLAGS.rerank else None
  if FLAGS.text:
    spans = linker.link([FLAGS.text], FLAGS.top_k, reranker, FLAGS.threshold)[0]["spans"]
    for span in spans:
      top = ", ".join(f"{e['title']} ({e['score']:.2f})" for e in span["entities"][:5])
      print(f"{span['mention']!r} -> {top}")
    sys.stdout.flush()
    print(json.dumps({"linked": len(spans), "top": [s["entities"][0] if s["entities"] else
                                                    None for s in spans]}))
    return
  print(json.dumps(link_file(linker, FLAGS.input, FLAGS.output, FLAGS.top_k, reranker,
                             FLAGS.chunk, FLAGS.threshold)))


def link_file(linker: linking.Linker, input_path: str, output: str | None,
              top_k: int | None, reranker=None, chunk: int = 256,
              threshold: float | None = None) -> dict[str, Any]:
  """Links every line of `input_path` in chunks, writing each chunk's lines as they are
  linked (to output + ".tmp", renamed at the end, so a failed run leaves no partial output
  under the final name). Returns counts and rates."""
  start = time.perf_counter()
  documents = mentions = 0
  tmp = output + ".tmp" if output else None
  sink = open(tmp, "w") if tmp else None
  bar = tqdm(desc="linking", unit="doc", mininterval=2.0, disable=jax.process_index() != 0)
  try:
    shown = 0
    for part in _chunks(_iter_jsonl(input_path), chunk):
      try:
        linked = linker.link([record for _, record in part], top_k, reranker, threshold)
      except ValueError as e:
        # Name the file and the line: the linker counts lines within the chunk.
        raise ValueError(f"{input_path}: {_renumbered(str(e), part)}") from None
      for record in linked:
        mentions += len(record["spans"]) if "spans" in record else 1
        if sink is not None:
          sink.write(json.dumps(record) + "\n")
        elif shown < 5:
          shown += 1
          print(json.dumps(record))
      documents += len(linked)
      bar.update(len(linked))
    if sink is not None:
      sink.close()
      os.replace(tmp, output)
  finally:
    bar.close()
    if sink is not None and not sink.closed:
      sink.close()
      os.remove(tmp)
  seconds = time.perf_counter() - start
  return {"documents": documents, "mentions": mentions, "output": output,
          "seconds": round(seconds, 2),
          "documents_per_s": round(documents / seconds, 1) if seconds else None,
          "mentions_per_s": round(mentions / seconds, 1) if seconds else None}


def _renumbered(message: str, part: list[tuple[int, Any]]) -> str:
  """ "input line 3: ..." from the linker (3rd of the chunk) -> "line 1027: ..."."""
  match = re.match(r"input line (\d+): ", message)
  if not match:
    return message
  return f"line {part[int(match.group(1)) - 1][0]}: {message[match.end():]}"


def _main_end_to_end() -> None:
  if not FLAGS.workdir or not FLAGS.world:
    raise app.UsageError("--end_to_end needs --workdir (an EntQA reader) and --world")
  e2e = recipes.open_document_linker(FLAGS.workdir, FLAGS.data, step=FLAGS.step)
  records = _read_jsonl(FLAGS.input) if FLAGS.input else [{"text": FLAGS.text}]
  linked, timing = linking.link_documents(e2e, records, FLAGS.world, FLAGS.threshold,
                                          FLAGS.top_k)
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
  app.run(main)
