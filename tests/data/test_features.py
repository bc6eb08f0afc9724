"""BLINK input formats: exact sequences, the balanced truncation rule, both marker modes."""

import json

import numpy as np
import pytest

from zel_jax.bench import featurize
from zel_jax.data import features
from zel_jax.models import bert_io


@pytest.fixture(scope="module")
def feat(minilm_path):
  return features.Featurizer(bert_io.load_tokenizer(minilm_path))


@pytest.fixture(scope="module")
def feat_direct(minilm_path):
  return features.Featurizer(bert_io.load_tokenizer(minilm_path), word_cache=False)


@pytest.fixture(scope="module")
def feat_grown(minilm_path):
  return features.Featurizer(bert_io.load_tokenizer(minilm_path), use_unused_markers=False)


def _reference_mention(tok, left, mention, right, length):
  """BLINK's get_context_representation written plainly, one row, with its two fixes (the
  mention cut to length - 4, a quota of 0 keeping nothing)."""
  m = ["[unused0]"] + tok.tokenize(mention)[:length - 4] + ["[unused1]"]
  lt, rt = tok.tokenize(left), tok.tokenize(right)
  lq = (length - len(m)) // 2 - 1
  rq = length - len(m) - lq - 2
  if len(lt) <= lq:
    if len(rt) > rq:
      rq += lq - len(lt)
  elif len(rt) <= rq:
    lq += rq - len(rt)
  kept_left = lt[max(len(lt) - lq, 0):] if lq > 0 else []
  tokens = ["[CLS]"] + kept_left + m + rt[:max(rq, 0)] + ["[SEP]"]
  ids = tok.convert_tokens_to_ids(tokens)
  return ids + [0] * (length - len(ids))


def _reference_entity(tok, title, desc, length):
  tokens = (tok.tokenize(title) + ["[unused2]"] + tok.tokenize(desc))[:length - 2]
  ids = tok.convert_tokens_to_ids(["[CLS]"] + tokens + ["[SEP]"])
  return ids + [0] * (length - len(ids))


def _numbers(lo, n):
  return " ".join(str(i) for i in range(lo, lo + n))


def _ids(feat, text):
  return feat.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_mention_equals_tokenizing_the_concatenated_string(feat):
  left = "The Fifth Doctor travelled with"
  mention = "Tegan Jovanka"
  right = ", an air stewardess from Brisbane."
  out = feat.mention_features([left], [mention], [right], 64)
  whole = feat.tokenizer(f"{left} [unused0] {mention} [unused1] {right}")["input_ids"]
  assert len(whole) < 64
  np.testing.assert_array_equal(out["input_ids"][0], whole + [0] * (64 - len(whole)))
  np.testing.assert_array_equal(out["attention_mask"][0],
                                [1] * len(whole) + [0] * (64 - len(whole)))
  assert out["input_ids"].dtype == np.int32 and out["attention_mask"].dtype == np.int32
  assert feat.tokenizer.convert_ids_to_tokens(whole)[:3] == ["[CLS]", "the", "fifth"]
  assert whole.count(1) == 1 and whole.count(2) == 1  # [unused0], [unused1]


def test_entity_equals_tokenizing_the_concatenated_string(feat):
  title, desc = "Corellia / Legends", "Corellia was the capital planet of the Corellian system."
  out = feat.entity_features([title], [desc], 32)
  whole = feat.tokenizer(f"{title} [unused2] {desc}")["input_ids"]
  np.testing.assert_array_equal(out["input_ids"][0], whole + [0] * (32 - len(whole)))
  assert out["attention_mask"][0].sum() == len(whole)


def test_numbers_are_single_tokens(feat):
  # The crafted-length tests below rely on this.
  assert len(_ids(feat, _numbers(100, 60))) == 60
  assert len(_ids(feat, _numbers(1900, 60))) == 60


@pytest.mark.parametrize("case", ["near_start", "near_end", "both_long", "both_short"])
def test_balanced_truncation_crafted(feat, case):
  cls, sep, ms, me = 101, 102, 1, 2
  doctor = _ids(feat, "doctor")
  assert len(doctor) == 1
  n_left, n_right = {"near_start": (2, 50), "near_end": (50, 1), "both_long": (50, 50),
                     "both_short": (3, 4)}[case]
  left, right = _numbers(100, n_left), _numbers(1900, n_right)
  # L = 16, one mention token: m = 3, left quota (16 - 3) // 2 - 1 = 5, right quota 6.
  row = feat.mention_features([left], ["doctor"], [right], 16)["input_ids"][0].tolist()
  L, R = _ids(feat, left), _ids(feat, right)
  expected = {
      "near_start": L + [ms] + doctor + [me] + R[:6 + (5 - 2)],  # Right takes left's spare 3.
      "near_end": L[-(5 + (6 - 1)):] + [ms] + doctor + [me] + R,  # Left takes right's 5.
      "both_long": L[-5:] + [ms] + doctor + [me] + R[:6],
      "both_short": L + [ms] + doctor + [me] + R,
  }[case]
  expected = [cls] + expected + [sep]
  assert row == expected + [0] * (16 - len(expected))
  if case != "both_short":
    assert len(expected) == 16


def test_odd_budget_gives_the_extra_token_to_the_right(feat):
  # L = 17, two mention tokens: m = 4, budget 17 - 4 - 2 = 11 -> left 5, right 6.
  row = feat.mention_features([_numbers(100, 40)], ["doctor who"], [_numbers(1900, 40)],
                              17)["input_ids"][0].tolist()
  assert row[1:6] == _ids(feat, _numbers(135, 5))
  assert row[6] == 1 and row[9] == 2
  assert row[10:16] == _ids(feat, _numbers(1900, 6))
  assert row[16] == 102


def test_long_mention_is_cut_and_context_dropped(feat):
  mention = _numbers(300, 30)
  row = feat.mention_features([_numbers(100, 40)], [mention], [_numbers(1900, 40)],
                              16)["input_ids"][0].tolist()
  # Mention cut to 16 - 4 = 12 tokens; both quotas are 0, so no context at all (BLINK's
  # `context_left[-0:]` would have kept all 40 left tokens here).
  assert row == [101, 1] + _ids(feat, _numbers(300, 12)) + [2, 102]


def test_shortest_length(feat):
  out = feat.mention_features(["left"], ["doctor"], ["right"], 4)
  assert out["input_ids"].tolist() == [[101, 1, 2, 102]]


def _random_pieces(text, rng, n):
  words = text.split(" ")
  out = []
  for _ in range(n):
    start = int(rng.integers(0, len(words)))
    end = min(len(words) - 1, start + int(rng.integers(0, 12)))
    out.append(features.mention_pieces(words, start, end))
  return out


def test_matches_reference_on_real_text(feat, feat_direct, shared_data):
  docs = [json.loads(line) for path in sorted((shared_data / "zeshel_excerpt" / "documents")
                                              .glob("*.json"))
          for line in path.open(encoding="utf-8")]
  rng = np.random.default_rng(0)
  pieces = [p for d in docs for p in _random_pieces(d["text"], rng, 3)]
  pieces += [("", "Fifth Doctor", d["text"]) for d in docs[:3]]  # Mentions at the very start.
  pieces += [(d["text"], "Nyssa", "") for d in docs[:3]]  # And at the very end.
  lefts, mentions, rights = zip(*pieces)
  for length in (8, 32, 128):
    expected = [_reference_mention(feat.tokenizer, l, m, r, length) for l, m, r in pieces]
    for f in (feat, feat_direct):
      got = f.mention_features(lefts, mentions, rights, length)
      np.testing.assert_array_equal(got["input_ids"], expected)
      np.testing.assert_array_equal(got["attention_mask"], np.array(expected) != 0)
  titles = [d["title"] for d in docs] + ["a title much longer " * 10]
  texts = [d["text"] for d in docs] + ["short"]
  for length in (2, 3, 16, 128):
    expected = [_reference_entity(feat.tokenizer, t, x, length) for t, x in zip(titles, texts)]
    for f in (feat, feat_direct):
      np.testing.assert_array_equal(f.entity_features(titles, texts, length)["input_ids"],
                                    expected)


ODD_TEXTS = [
    "", " ", "  two  spaces  between ", "tab\tand\nnewline", "Café naïve résumé",
    "\u0301accent first", "中文字符 mixed with text", "control\x00\x07chars", "\x00 \x00 \x00 a b c",
    "literal [unused0] marker and foo[unused1]bar", "x" * 150 + " long word", "UPPER lower",
    "trailing space ", " leading space", "a\u00a0b nbsp", "emoji 🙂 here", "punct,inside.words!",
]


@pytest.mark.parametrize("keep", ["first", "last"])
@pytest.mark.parametrize("max_tokens", [1, 2, 5, 64])
def test_word_cache_equals_direct_tokenization(feat, feat_direct, keep, max_tokens):
  assert feat.word_cache and not feat_direct.word_cache
  a = feat.encode_pieces(ODD_TEXTS, max_tokens, keep)
  b = feat_direct.encode_pieces(ODD_TEXTS, max_tokens, keep)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  for i, text in enumerate(ODD_TEXTS):
    full = _ids(feat, text)
    kept = full[:max_tokens] if keep == "first" else full[max(0, len(full) - max_tokens):]
    assert a[0][i, :a[1][i]].tolist() == kept, text
    assert a[1][i] == len(kept)


def test_cut_text_short_of_tokens_is_redone(feat):
  # Two words that yield no tokens come first: the 2-word cut gives nothing, the text gives 2.
  ids, counts = feat.encode_pieces(["\x00 \x00 alpha beta gamma"], 2, "first")
  assert counts.tolist() == [2] and ids.tolist() == [_ids(feat, "alpha beta")]


def test_entity_truncation(feat):
  title = _numbers(100, 20)
  desc = _numbers(1900, 20)
  T, D = _ids(feat, title), _ids(feat, desc)
  rows = feat.entity_features([title, title, _numbers(100, 13), _numbers(100, 14)],
                              [desc, desc, desc, desc], 0 + 16)["input_ids"].tolist()
  # 14 content tokens: a 20-token title fills them, pushing out [ENT] and the description.
  assert rows[0] == [101] + T[:14] + [102]
  # A 13-token title leaves room for [ENT] only; a 14-token one not even that.
  assert rows[2] == [101] + T[:13] + [3, 102]
  assert rows[3] == [101] + T[:14] + [102]
  short = feat.entity_features(["ab"], [desc], 10)["input_ids"][0].tolist()
  assert short == [101] + _ids(feat, "ab") + [3] + D[:10 - 3 - len(_ids(feat, "ab"))] + [102]
  no_title = feat.entity_features(None, [desc], 8)["input_ids"][0].tolist()
  assert no_title == [101] + D[:6] + [102]


def test_grown_vocabulary_markers(feat_grown, feat):
  assert (feat_grown.mention_start_id, feat_grown.mention_end_id,
          feat_grown.entity_title_id) == (30522, 30523, 30524)
  assert feat_grown.vocab_size == 30525
  assert (feat.mention_start_id, feat.mention_end_id, feat.entity_title_id) == (1, 2, 3)
  assert feat.vocab_size == 30522
  row = feat_grown.mention_features(["in the"], ["tardis"], ["today"], 16)["input_ids"][0]
  unused = feat.mention_features(["in the"], ["tardis"], ["today"], 16)["input_ids"][0]
  assert row.tolist() == [{1: 30522, 2: 30523}.get(t, t) for t in unused.tolist()]
  assert (row >= 30522).sum() == 2
  ent = feat_grown.entity_features(["Tardis"], ["a time machine"], 16)["input_ids"][0]
  assert ent.tolist().count(30524) == 1 and (ent >= 30522).sum() == 1


def test_deterministic_and_padding(feat, minilm_path):
  lefts = ["one two three", "", "a b c d e f g h i j k l m n o p"]
  mentions = ["alpha", "beta gamma", "delta"]
  rights = ["", "x y z", "q r s t u v w"]
  a = feat.mention_features(lefts, mentions, rights, 12)
  b = feat.mention_features(lefts, mentions, rights, 12)
  other = features.Featurizer(bert_io.load_tokenizer(minilm_path))
  c = other.mention_features(lefts, mentions, rights, 12)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a[k], c[k])
  mask = a["attention_mask"]
  lengths = mask.sum(1)
  # The mask is a prefix of ones, and exactly the non-pad positions.
  np.testing.assert_array_equal(mask, np.arange(12)[None, :] < lengths[:, None])
  np.testing.assert_array_equal(mask.astype(bool), a["input_ids"] != 0)
  assert a["input_ids"][np.arange(3), lengths - 1].tolist() == [102] * 3
  assert a["input_ids"].shape == (3, 12)


def test_from_tokens_on_real_mentions(feat, shared_data):
  root = shared_data / "zeshel_excerpt"
  docs = {}
  for path in (root / "documents").glob("*.json"):
    for line in path.open(encoding="utf-8"):
      d = json.loads(line)
      docs[d["document_id"]] = d["text"].split(" ")
  mentions = [json.loads(line) for line in (root / "mentions" / "sample.json").open()]
  out = feat.mention_features_from_tokens(
      [docs[m["context_document_id"]] for m in mentions], [m["start_index"] for m in mentions],
      [m["end_index"] for m in mentions], 64)
  for row, m in zip(out["input_ids"].tolist(), mentions):
    inside = row[row.index(1) + 1:row.index(2)]
    assert inside == _ids(feat, m["text"])
  words = _numbers(100, 200).split(" ")
  left, mention, right = features.mention_pieces(words, 150, 151, window_words=128)
  assert left.split(" ") == words[22:150] and mention == "250 251"
  assert right.split(" ") == words[152:]


def test_errors(feat):
  with pytest.raises(ValueError, match="empty mention"):
    feat.mention_features(["a"], [""], ["b"], 16)
  with pytest.raises(ValueError, match="outside"):
    features.mention_pieces(["a", "b"], 1, 2)
  with pytest.raises(ValueError, match="max_length >= 4"):
    feat.mention_features(["a"], ["b"], ["c"], 3)
  with pytest.raises(ValueError, match="titles"):
    feat.entity_features(["a"], ["b", "c"], 16)


def test_throughput_reports_entities_per_second(feat, shared_data):
  titles, texts = featurize._read_documents(str(shared_data / "zeshel_excerpt" / "documents"))
  titles, texts = featurize.perturbed_copies(titles, texts, 2000, seed=1)
  assert len(set(texts)) > 1000  # Rotations make distinct descriptions.
  result = featurize.entity_throughput(feat, titles, texts, 128)
  assert result["entities"] == 2000 and result["entities_per_s"] > 0
