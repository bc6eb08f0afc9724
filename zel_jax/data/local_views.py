"""Multi-view entities (MVD, Liu et al., 2023): an entity's local views are chunks of the
sentences of its description, each a row `[CLS] title [ENT] chunk [SEP]` in BLINK's entity
format (`zel_jax.data.features`)."""

from __future__ import annotations

import itertools
import re
from typing import Sequence

import numpy as np

from zel_jax.data import features


# A sentence ends at . ! or ? (closing quotes or brackets may follow, and ZESHEL's tokenized
# text puts spaces around all of them) when the next word starts like a sentence does.
_SENTENCE_END = re.compile(
    r"[.!?]+(?:\s?[\"')\]”’])*(?=\s+(?:[\"'(\[“‘]\s?)*[A-Z0-9])")
# Words after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e eg ie no vol fig inc ltd co jan feb mar apr "
    "jun jul aug sep sept oct nov dec approx cf al".split())


def split_sentences(text: str) -> list[str]:
  """Sentences of `text`, without NLTK: splits after a terminator followed by whitespace and
  an upper-case letter, digit or opening quote, except after an abbreviation or a single
  letter (an initial). " ".join(split_sentences(t)) equals t with its whitespace runs
  collapsed: no text is lost or reordered."""
  words = text.split()
  if not words:
    return []
  flat = " ".join(words)
  sentences, start = [], 0
  for match in _SENTENCE_END.finditer(flat):
    if match.group(0).startswith(".") and _ends_with_abbreviation(flat[start:match.start()]):
      continue
    sentences.append(flat[start:match.end()].strip())
    start = match.end()
  rest = flat[start:].strip()
  if rest:
    sentences.append(rest)
  return sentences


def _ends_with_abbreviation(before: str) -> bool:
  last = before.rstrip().rsplit(" ", 1)[-1].lower() if before.strip() else ""
  return len(last) == 1 and last.isalpha() or last.rstrip(".") in _ABBREVIATIONS


def view_chunks(sentences: Sequence[str], token_counts: Sequence[int],
                min_tokens: int = 5) -> list[str]:
  """MVD's local-view texts: consecutive sentences joined until a chunk has more than
  `min_tokens` tokens; a short remainder joins the chunk before it (no text is dropped)."""
  chunks, current, count = [], [], 0
  for sentence, n in zip(sentences, token_counts, strict=True):
    current.append(sentence)
    count += int(n)
    if count > min_tokens:
      chunks.append(" ".join(current))
      current, count = [], 0
  if current:
    if chunks:
      chunks[-1] = " ".join([chunks[-1], *current])
    else:
      chunks.append(" ".join(current))
  return chunks


def view_features(featurizer: features.Featurizer, titles: Sequence[str],
                  descriptions: Sequence[str], max_length: int = 40, max_views: int = 0,
                  min_tokens: int = 5, row_featurizer: features.Featurizer | None = None
                  ) -> dict[str, np.ndarray]:
  """The local views of every entity, `[CLS] title [ENT] chunk [SEP]` cut to max_length
  (MVD's 40), from view_chunks over split_sentences of its description; the first max_views
  of each entity when max_views > 0 (MVD trains with 10 and searches with all). An entity
  with an empty description has one view: its title. Chunks are counted in featurizer's
  tokens and written in row_featurizer's (default: featurizer), so that a model with another
  tokenizer reads the same views.

  Returns input_ids, attention_mask [V, max_length] int32, entity [V] int64 (each view's
  entity row, non-decreasing) and views_per_entity [N] int64.
  """
  if len(titles) != len(descriptions):
    raise ValueError(f"{len(titles)} titles for {len(descriptions)} descriptions")
  per_entity = [split_sentences(d) for d in descriptions]
  flat = list(itertools.chain.from_iterable(per_entity))
  # Counts capped at max_length: enough to compare with min_tokens, and a view is cut there.
  _, counts = featurizer.encode_pieces(flat, max(max_length, min_tokens + 1)) if flat else (
      None, np.zeros(0, np.int64))
  chunk_texts, chunk_titles, entity = [], [], []
  at = 0
  for row, (title, sentences) in enumerate(zip(titles, per_entity)):
    chunks = view_chunks(sentences, counts[at:at + len(sentences)], min_tokens) or [""]
    at += len(sentences)
    if max_views > 0:
      chunks = chunks[:max_views]
    chunk_texts.extend(chunks)
    chunk_titles.extend([title] * len(chunks))
    entity.extend([row] * len(chunks))
  feats = (row_featurizer or featurizer).entity_features(chunk_titles, chunk_texts, max_length)
  entity = np.asarray(entity, np.int64)
  feats["entity"] = entity
  feats["views_per_entity"] = np.bincount(entity, minlength=len(titles)).astype(np.int64)
  return feats
