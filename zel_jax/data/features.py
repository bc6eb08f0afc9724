"""Token features in BLINK's input formats (Wu et al., 2020), batched and vectorised.

  mention: [CLS] ctx_left [Ms] mention [Me] ctx_right [SEP]
  entity:  [CLS] title [ENT] description [SEP]

Markers are atomic tokens: by default `[unused0]` (mention start), `[unused1]` (mention end)
and `[unused2]` (title separator), as in BLINK, so the embedding table keeps its size; with
`use_unused_markers=False` they are new tokens appended to the vocabulary (ids >= 30522 for
BERT) and the encoder's table must grow to `Featurizer.vocab_size` rows.

Truncation follows BLINK's `get_context_representation` / `get_candidate_representation`.
Each piece (left context, mention, right context; title, description) is tokenized on its own,
without special tokens. For a mention with maximum length L:

  1. mention tokens are cut to their first L - 4 (2 markers + [CLS] + [SEP] must fit);
     m = len(mention tokens) + 2 (the markers);
  2. left_quota = (L - m) // 2 - 1 and right_quota = L - m - left_quota - 2, i.e. of the
     budget B = L - m - 2 context tokens the left side gets B // 2 and the right the rest;
  3. if the left context is no longer than its quota and the right one is longer than its
     quota, the right quota grows by the left's unused tokens; symmetrically, if the left is
     longer and the right is not, the left quota grows by the right's unused tokens;
  4. the LAST left_quota tokens of the left context and the FIRST right_quota tokens of the
     right context are kept (a quota of 0 keeps nothing).

Two departures from the released BLINK code, both where it breaks: BLINK only cuts the mention
in its later (ELQ) revision, without which a long mention fails an assertion; and with a quota
of 0 its slice `context_left[-0:]` keeps the whole left context and overflows L. An empty
mention string (for which BLINK silently drops the markers) is an error here.

For an entity with maximum length L: `title [ENT] description` is cut to its first L - 2 tokens
(a title of L - 2 tokens or more pushes out the separator and the description).

BLINK's ZESHEL converter lowercases mention and context; with an uncased vocabulary the
tokenizer does the same, so nothing is lowercased here. Its converter also keeps at most 128
whitespace words on each side of a mention: `mention_pieces(..., window_words=128)`.

Speed: BERT tokenization (BertNormalizer + BertPreTokenizer + WordPiece) of a space-separated
text is the concatenation of the tokenizations of its space-separated words: the normalizer is
character-local and the pre-tokenizer splits at every space. So each batch is split into words
once, each distinct word is tokenized once (one batched call to the Rust tokenizer), and rows
are assembled with numpy gathers; only the first (or last) `max_tokens` words of a text are
looked at, and a row whose cut-down text yields too few tokens is redone in full. Tokenizers
without that property take the direct path: one batched Rust call over the (cut) texts.

EntQA's passages and MVD's local views are built from these rows in `zel_jax.recipes.entqa.passages`
and `zel_jax.data.local_views`.
"""

from __future__ import annotations

import itertools
import json
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from zel_jax.data.rows import assemble
from zel_jax.models import bert_io

MENTION_START = "[Ms]"
MENTION_END = "[Me]"
ENTITY_TITLE = "[ENT]"
MARKERS = (MENTION_START, MENTION_END, ENTITY_TITLE)

# Rows per tokenizer call: bounds the memory of the flat per-token arrays (about 40 bytes per
# token) while keeping each Rust batch large enough to use all cores.
_CHUNK = 16384


class Featurizer:
  """Turns strings into BLINK-format input_ids / attention_mask arrays.

  Registers the three markers on `tokenizer` (bert_io.add_marker_tokens). Not thread-safe: one
  private copy of the Rust tokenizer is reconfigured (truncation direction) per call.
  """

  def __init__(self, tokenizer, *, use_unused_markers: bool = True, word_cache: bool = True):
    self.tokenizer = tokenizer
    self.marker_tokens = bert_io.add_marker_tokens(tokenizer, MARKERS,
                                                   use_unused=use_unused_markers)
    ids = tokenizer.convert_tokens_to_ids([self.marker_tokens[m] for m in MARKERS])
    self.mention_start_id, self.mention_end_id, self.entity_title_id = (int(i) for i in ids)
    self.cls_id = int(tokenizer.cls_token_id)
    self.sep_id = int(tokenizer.sep_token_id)
    self.pad_id = int(tokenizer.pad_token_id)
    # Separators between the two texts of a pair in the tokenizer's own template: BERT's
    # `[CLS] a [SEP] b [SEP]` has 1, RoBERTa-style `<s> a </s></s> b </s>` (MPNet) 2.
    self.pair_separators = max(1, tokenizer("a", "b")["input_ids"].count(self.sep_id) - 1)
    # A private copy: the shared tokenizer's truncation/padding settings stay untouched.
    self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    self._backend.no_truncation()
    self._backend.no_padding()
    self.word_cache = word_cache and _splits_at_spaces(self._backend)

  @classmethod
  def from_pretrained(cls, name_or_path: str, **kwargs) -> "Featurizer":
    return cls(bert_io.load_tokenizer(name_or_path), **kwargs)

  @property
  def vocab_size(self) -> int:
    """Rows the encoder's embedding table needs (grows with use_unused_markers=False)."""
    return len(self.tokenizer)

  # --------------------------------------------------------------------------------------
  # Pieces -> token ids.

  def encode_pieces(self, texts: Sequence[str], max_tokens: int, keep: str = "first"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of each text (no special tokens), only the first or last `max_tokens` of them.

    Returns ids [N, max_tokens] int32, right-padded with the pad id, and counts [N]: the
    number of real tokens, min(len(tokenization), max_tokens).
    """
    if keep not in ("first", "last"):
      raise ValueError(f"keep must be 'first' or 'last', not {keep!r}")
    if max_tokens < 1:
      raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    texts = list(texts)
    ids = np.full((len(texts), max_tokens), self.pad_id, np.int32)
    counts = np.zeros(len(texts), np.int64)
    for lo in range(0, len(texts), _CHUNK):
      chunk = texts[lo:lo + _CHUNK]
      if self.word_cache:
        words, cut = _cut_words(chunk, max_tokens, keep)
        chunk_ids, chunk_counts = self._encode_by_words(words, max_tokens, keep)
      else:
        cut_texts, cut = _cut_texts(chunk, max_tokens, keep)
        chunk_ids, chunk_counts = self._encode_direct(cut_texts, max_tokens, keep)
      # A cut text that came up short (words that yield no token) lost tokens that the full
      # text has: redo those rows uncut.
      redo = np.flatnonzero(cut & (chunk_counts < max_tokens))
      if redo.size:
        full = [chunk[i] for i in redo]
        if self.word_cache:
          redone = self._encode_by_words([t.split(" ") for t in full], max_tokens, keep)
        else:
          redone = self._encode_direct(full, max_tokens, keep)
        chunk_ids[redo], chunk_counts[redo] = redone
      ids[lo:lo + len(chunk)] = chunk_ids
      counts[lo:lo + len(chunk)] = chunk_counts
    return ids, counts

  def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Wordpieces of each whole text (no special tokens) and where they come from.

    Returns per text (ids int32 [T], offsets int32 [T, 2]): token t covers the characters
    text[offsets[t, 0]:offsets[t, 1]] (Python string indices into the raw text, before the
    normalizer lowercases or strips accents).
    """
    ids, offsets, counts = self._encode_flat(texts)
    if not len(counts):
      return []
    cuts = np.cumsum(counts)[:-1]
    return list(zip(np.split(ids, cuts), np.split(offsets, cuts)))

  def _encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """encode_with_offsets as flat arrays: ids [T], offsets [T, 2], tokens per text [N]."""
    texts = list(texts)
    ids, offsets, counts = [], [], []
    for lo in range(0, len(texts), _CHUNK):
      # Not encode_batch_fast: in tokenizers 0.23 it tracks no offsets (all are (0, 0)).
      encodings = self._backend.encode_batch(texts[lo:lo + _CHUNK], add_special_tokens=False)
      n = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
      total = int(n.sum())
      ids.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32,
                             total))
      flat = itertools.chain.from_iterable(itertools.chain.from_iterable(
          e.offsets for e in encodings))
      offsets.append(np.fromiter(flat, np.int32, 2 * total).reshape(total, 2))
      counts.append(n)
    if not texts:
      return np.zeros(0, np.int32), np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(offsets), np.concatenate(counts)

  def _encode_direct(self, texts: list, max_tokens: int, keep: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    self._backend.enable_truncation(max_tokens, direction="right" if keep == "first" else "left")
    try:
      encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
    finally:
      self._backend.no_truncation()
    rows = [e.ids for e in encodings]
    return _pad_rows(rows, max_tokens, self.pad_id)

  def _encode_by_words(self, rows: list, max_tokens: int, keep: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Like _encode_direct for texts given as lists of their space-separated words."""
    n = len(rows)
    words_per_row = np.fromiter(map(len, rows), np.int64, n)
    words = list(itertools.chain.from_iterable(rows))
    # dict.fromkeys and map over a bound method run in C: no Python bytecode per word.
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    codes = np.fromiter(map(vocab.__getitem__, words), np.int64, len(words))
    encodings = self._backend.encode_batch_fast(list(vocab), add_special_tokens=False)
    word_len = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    word_tokens = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32,
                              word_len.sum())
    word_start = np.cumsum(word_len) - word_len

    # Expand each word occurrence to its tokens, in text order.
    occ_len = word_len[codes]
    total = int(occ_len.sum())
    occ_first = np.cumsum(occ_len) - occ_len  # Index of each occurrence's first token.
    within = np.arange(total) - np.repeat(occ_first, occ_len)
    tokens = word_tokens[np.repeat(word_start[codes], occ_len) + within]
    row_of_occ = np.repeat(np.arange(n), words_per_row)
    row_tokens = np.bincount(row_of_occ, weights=occ_len, minlength=n).astype(np.int64)
    row_first = np.cumsum(row_tokens) - row_tokens
    row = np.repeat(np.arange(n), row_tokens)
    pos = np.arange(total) - row_first[row]
    if keep == "last":
      pos = pos - np.maximum(row_tokens - max_tokens, 0)[row]
    keep_mask = (pos >= 0) & (pos < max_tokens)
    ids = np.full((n, max_tokens), self.pad_id, np.int32)
    ids[row[keep_mask], pos[keep_mask]] = tokens[keep_mask]
    return ids, np.minimum(row_tokens, max_tokens)

  # --------------------------------------------------------------------------------------
  # BLINK formats.

  def mention_features(self, contexts_left: Sequence[str], mentions: Sequence[str],
                       contexts_right: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """[CLS] ctx_left [Ms] mention [Me] ctx_right [SEP], truncated as in the module docstring.

    Returns input_ids and attention_mask, int32 [N, max_length].
    """
    if max_length < 4:
      raise ValueError(f"a mention needs max_length >= 4 ([CLS] [Ms] [Me] [SEP]), got "
                       f"{max_length}")
    if not len(contexts_left) == len(mentions) == len(contexts_right):
      raise ValueError(f"{len(contexts_left)} left contexts, {len(mentions)} mentions, "
                       f"{len(contexts_right)} right contexts")
    empty = [i for i, m in enumerate(mentions) if not m]
    if empty:
      raise ValueError(f"empty mention text at row(s) {empty[:10]}")
    big_l = max_length
    # Counts are capped at max_length; every quota is at most max_length - 4, so a capped
    # count compares with a quota exactly as the full count would.
    left, left_n = self.encode_pieces(contexts_left, big_l, keep="last")
    mention, mention_n = self.encode_pieces(mentions, max(big_l - 4, 1), keep="first")
    mention_n = np.minimum(mention_n, big_l - 4)
    right, right_n = self.encode_pieces(contexts_right, big_l, keep="first")

    left_keep, right_keep = _balance(left_n, right_n, big_l - mention_n - 4)
    ones = np.ones(len(mentions), np.int64)
    zeros = np.zeros(len(mentions), np.int64)
    return assemble([
        (self.cls_id, zeros, ones),
        (left, left_n - left_keep, left_keep),  # The last left_keep of the left tokens.
        (self.mention_start_id, zeros, ones),
        (mention, zeros, mention_n),
        (self.mention_end_id, zeros, ones),
        (right, zeros, right_keep),
        (self.sep_id, zeros, ones),
    ], big_l, self.pad_id)

  def mention_features_from_tokens(self, documents: Sequence[Sequence[str]],
                                   starts: Sequence[int], ends: Sequence[int], max_length: int,
                                   window_words: int | None = None) -> dict[str, np.ndarray]:
    """Mentions given as inclusive whitespace-token spans [start, end] of their documents
    (ZESHEL's convention). See `mention_pieces` for window_words."""
    pieces = [mention_pieces(doc, s, e, window_words) for doc, s, e in
              zip(documents, starts, ends, strict=True)]
    lefts, mentions, rights = zip(*pieces) if pieces else ((), (), ())
    return self.mention_features(lefts, mentions, rights, max_length)

  def typing_features(self, contexts_left: Sequence[str], mentions: Sequence[str],
                      contexts_right: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """`[CLS] mention [SEP] ctx_left mention ctx_right [SEP]`, the input of BERT entity
    typing (`[SEP][SEP]` in the middle for RoBERTa-style pairs): the mention (its first
    (max_length - 3) // 4 tokens) then its sentence, the context budget balanced around the
    mention as in `mention_features`.

    Returns input_ids, attention_mask and token_type_ids (1 on the sentence), [N, max_length].
    """
    if max_length < 7:
      raise ValueError(f"a typing input needs max_length >= 7, got {max_length}")
    if not len(contexts_left) == len(mentions) == len(contexts_right):
      raise ValueError(f"{len(contexts_left)} left contexts, {len(mentions)} mentions, "
                       f"{len(contexts_right)} right contexts")
    cap = (max_length - 3) // 4
    mention, mention_n = self.encode_pieces(mentions, cap, keep="first")
    left, left_n = self.encode_pieces(contexts_left, max_length, keep="last")
    right, right_n = self.encode_pieces(contexts_right, max_length, keep="first")
    seps = self.pair_separators
    left_keep, right_keep = _balance(left_n, right_n, max_length - 2 - seps - 2 * mention_n)
    ones = np.ones(len(mentions), np.int64)
    zeros = np.zeros(len(mentions), np.int64)
    out = assemble([
        (self.cls_id, zeros, ones), (mention, zeros, mention_n),
        (self.sep_id, zeros, ones * seps), (left, left_n - left_keep, left_keep),
        (mention, zeros, mention_n), (right, zeros, right_keep), (self.sep_id, zeros, ones),
    ], max_length, self.pad_id)
    first = (mention_n + 1 + seps)[:, None]
    out["token_type_ids"] = ((np.arange(max_length)[None] >= first) &
                             (out["attention_mask"] > 0)).astype(np.int32)
    return out

  def pair_features(self, firsts: Sequence[str], seconds: Sequence[str], max_length: int
                    ) -> dict[str, np.ndarray]:
    """`[CLS] first [SEP] second [SEP]` (a type and its description; a title and a chunk of
    its description; `[SEP][SEP]` in the middle for RoBERTa-style pairs): the first text
    whole up to half the row, the second filling the rest.

    Returns input_ids, attention_mask and token_type_ids (1 on the second), [N, max_length].
    """
    return self.chunked_pair_features(firsts, seconds, max_length, max_chunks=1)[0]

  def chunked_pair_features(self, firsts: Sequence[str], seconds: Sequence[str],
                            max_length: int, max_chunks: int
                            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`[CLS] first [SEP] chunk [SEP]` for each consecutive chunk of the second text's tokens
    (type extraction reads a title and its description this way, 128 tokens a row): a row
    per chunk, at most max_chunks per text, every text at least one row. Returns the
    pair_features-style arrays [R, max_length] and owner [R], the text of each row."""
    if max_length < 3 + self.pair_separators or max_chunks < 1:
      raise ValueError(f"max_length {max_length} (>= {3 + self.pair_separators}) and "
                       f"max_chunks {max_chunks} (>= 1)")
    if len(firsts) != len(seconds):
      raise ValueError(f"{len(firsts)} first texts for {len(seconds)} second texts")
    seps = self.pair_separators
    first, first_n = self.encode_pieces(firsts, max(1, (max_length - 2 - seps) // 2),
                                        keep="first")
    room = max_length - 2 - seps - first_n                           # [N] chunk sizes
    second, second_n = self.encode_pieces(seconds, int(room.max(initial=1)) * max_chunks,
                                          keep="first")
    chunks = np.clip(-(-second_n // room), 1, max_chunks)            # ceil, at least one
    owner = np.repeat(np.arange(len(firsts)), chunks)
    index = np.arange(len(owner)) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    offset = index * room[owner]
    keep = np.clip(second_n[owner] - offset, 0, room[owner])
    ones = np.ones(len(owner), np.int64)
    zeros = np.zeros(len(owner), np.int64)
    out = assemble([(self.cls_id, zeros, ones), (first[owner], zeros, first_n[owner]),
                     (self.sep_id, zeros, ones * seps), (second[owner], offset, keep),
                     (self.sep_id, zeros, ones)], max_length, self.pad_id)
    out["token_type_ids"] = ((np.arange(max_length)[None] >= (first_n[owner] + 1 + seps
                                                              )[:, None]) &
                             (out["attention_mask"] > 0)).astype(np.int32)
    return out, owner

  def entity_features(self, titles: Sequence[str] | None, descriptions: Sequence[str],
                      max_length: int) -> dict[str, np.ndarray]:
    """[CLS] title [ENT] description [SEP] (or [CLS] description [SEP] when titles is None),
    cut to its first max_length - 2 content tokens.

    Returns input_ids and attention_mask, int32 [N, max_length].
    """
    if max_length < 2:
      raise ValueError(f"an entity needs max_length >= 2 ([CLS] [SEP]), got {max_length}")
    content = max_length - 2
    n = len(descriptions)
    zeros = np.zeros(n, np.int64)
    ones = np.ones(n, np.int64)
    if titles is None:
      desc, desc_n = self.encode_pieces(descriptions, max(content, 1), keep="first")
      segments = [(desc, zeros, np.minimum(desc_n, content))]
    else:
      if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} descriptions")
      cap = max(content, 1)
      title, title_n = self.encode_pieces(titles, cap, keep="first")
      desc, desc_n = self.encode_pieces(descriptions, cap, keep="first")
      title_keep = np.minimum(title_n, content)
      sep_keep = (title_n < content).astype(np.int64)
      desc_keep = np.clip(content - title_n - 1, 0, desc_n)
      segments = [(title, zeros, title_keep), (self.entity_title_id, zeros, sep_keep),
                  (desc, zeros, desc_keep)]
    return assemble([(self.cls_id, zeros, ones), *segments, (self.sep_id, zeros, ones)],
                     max_length, self.pad_id)


def mention_pieces(tokens: Sequence[str], start: int, end: int,
                   window_words: int | None = None) -> tuple[str, str, str]:
  """(left context, mention, right context) strings of the inclusive token span [start, end].

  window_words keeps at most that many words on each side, as BLINK's ZESHEL converter does
  with 128; None keeps the whole document (truncation then happens on tokens alone).
  """
  if not 0 <= start <= end < len(tokens):
    raise ValueError(f"mention span [{start}, {end}] outside a document of {len(tokens)} "
                     f"tokens")
  lo = 0 if window_words is None else max(0, start - window_words)
  hi = len(tokens) if window_words is None else min(len(tokens), end + 1 + window_words)
  return (" ".join(tokens[lo:start]), " ".join(tokens[start:end + 1]),
          " ".join(tokens[end + 1:hi]))


def _splits_at_spaces(backend) -> bool:
  """Whether tokenizing a text equals concatenating the tokenizations of its space-separated
  words: true of BERT's normalizer + pre-tokenizer + WordPiece with no added token that
  could span or strip a space."""
  spec = json.loads(backend.to_str())
  if (spec.get("normalizer") or {}).get("type") != "BertNormalizer":
    return False
  if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
    return False
  if spec.get("model", {}).get("type") != "WordPiece":
    return False
  for token in spec.get("added_tokens", []):
    if (any(c.isspace() for c in token["content"]) or token.get("lstrip")
        or token.get("rstrip") or token.get("single_word")):
      return False
  return True


def _cut_words(texts: list, max_words: int, keep: str) -> tuple[list, np.ndarray]:
  """The first (or last) max_words space-separated words of each text (as lists), and which
  texts were cut. Every word yields at least one token unless it is empty or made only of characters the
  normalizer drops, so max_words words almost always cover max_tokens tokens; the caller
  redoes the rows where they do not.
  """
  out = []
  cut = np.zeros(len(texts), bool)
  for i, text in enumerate(texts):
    parts = text.split(" ", max_words) if keep == "first" else text.rsplit(" ", max_words)
    if len(parts) > max_words:
      cut[i] = True
      parts = parts[:max_words] if keep == "first" else parts[1:]
    out.append(parts)
  return out, cut


def _cut_texts(texts: list, max_words: int, keep: str) -> tuple[list, np.ndarray]:
  rows, cut = _cut_words(texts, max_words, keep)
  return [" ".join(r) for r in rows], cut


def _balance(left_n: np.ndarray, right_n: np.ndarray, room: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
  """Tokens kept left and right of a mention when `room` tokens are free: half each (the
  right side takes the odd one), a side that needs less giving the rest to the other."""
  left_quota = room // 2
  right_quota = room - left_quota
  right_grows = (left_n <= left_quota) & (right_n > right_quota)
  left_grows = (left_n > left_quota) & (right_n <= right_quota)
  right_quota, left_quota = (np.where(right_grows, right_quota + left_quota - left_n,
                                      right_quota),
                             np.where(left_grows, left_quota + right_quota - right_n,
                                      left_quota))
  return np.minimum(left_n, left_quota), np.minimum(right_n, right_quota)


def _pad_rows(rows: list, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  counts = np.fromiter((len(r) for r in rows), np.int64, len(rows))
  flat = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(counts.sum()))
  ids = np.full((len(rows), width), pad_id, np.int32)
  row = np.repeat(np.arange(len(rows)), counts)
  col = np.arange(flat.size) - np.repeat(np.cumsum(counts) - counts, counts)
  ids[row, col] = flat
  return ids, counts
