"""python -m zel_jax.data.crosslang: build a cross-language linking set from FreeDict and
WordNet, or convert the reference code's Wikipedia pickle or TAC-KBP 2015 files."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from zel_jax.data import crosslang
from zel_jax.data.crosslang import freedict, reference


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zel_jax.data.crosslang",
      description="Build a cross-language linking set from FreeDict and WordNet (dictd), or "
                  "convert the reference code's Wikipedia pickle or TAC-KBP 2015 files.")
  parser.add_argument("--freedict", help="folder with freedict-<xxx>-eng.index/.dict.dz")
  parser.add_argument("--wordnet", help="folder with wn.index, wn.dict.dz")
  parser.add_argument("--wiki_pickle", help="the reference code's wiki_<lang>.pkl (read "
                      "only with --trust_pickle)")
  parser.add_argument("--trust_pickle", action="store_true",
                      help="read --wiki_pickle: loading a pickle EXECUTES CODE from the file "
                      "(any program it names); give it only for a file you trust as a program")
  parser.add_argument("--tac_gold", help="tac_kbp_2015_tedl_*_gold_standard_entity_mentions.tab")
  parser.add_argument("--tac_source", help="folder holding the TAC documents (DOCID*)")
  parser.add_argument("--kb", help="--tac_gold: the KB (Freebase) as kb.jsonl")
  parser.add_argument("--languages", default="de,es,fr,it,nl,pt")
  parser.add_argument("--out", required=True)
  parser.add_argument("--max_mentions", type=int, default=4000)
  parser.add_argument("--nil_share", type=float, default=0.2)
  parser.add_argument("--kb_size", type=int, default=12000)
  parser.add_argument("--max_pairs", type=int, default=20000)
  args = parser.parse_args(argv)
  if args.wiki_pickle:
    if not args.trust_pickle:
      # Refused before the file is opened: no code of it runs.
      parser.error(f"--wiki_pickle {args.wiki_pickle}: loading a pickle executes code from "
                   "the file; add --trust_pickle only if you trust it as a program")
    language = args.languages.split(",")[0]
    kb, mentions = reference.read_wiki_pickle(args.wiki_pickle, language, trust_pickle=True)
    stats = reference.convert_reference(args.out, kb, mentions)
  elif args.tac_gold:
    if not (args.tac_source and args.kb):
      parser.error("--tac_gold needs --tac_source and --kb")
    kb = crosslang.read_kb(args.kb)
    mentions = reference.read_tac_kbp(args.tac_gold, args.tac_source, {e.id for e in kb})
    stats = reference.convert_reference(args.out, kb, mentions)
  elif args.freedict and args.wordnet:
    stats = freedict.build(args.freedict, args.wordnet, args.languages.split(","), args.out,
                  max_mentions=args.max_mentions, nil_share=args.nil_share,
                  kb_size=args.kb_size, max_pairs=args.max_pairs)
  else:
    parser.error("give --freedict and --wordnet, --wiki_pickle, or --tac_gold")
  print(json.dumps(stats, ensure_ascii=False))
  return 0
