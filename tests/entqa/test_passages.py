"""EntQA passages: windows, row layout, character offsets, gold alignment, and the documents
they come from (ZESHEL layout, GERBIL JSON lines)."""

import json

import numpy as np
import pytest

from dictd_fixture import ENTRIES, write_database
from zel_jax.data import documents, features, foldoc, zeshel
from zel_jax.recipes.entqa import passages as passages_lib
from zel_jax.models import bert_io

# 24 words that are one wordpiece each (checked in _single_pieces), so token = word index.
WORDS = ("the cat sat on a mat and then it ran to the big red house near our old green tree "
         "while we all sang").split()


@pytest.fixture(scope="module")
def feat(minilm_path):
  return features.Featurizer(bert_io.load_tokenizer(minilm_path))


def _encode(feat, text):
  return feat.tokenizer(text, add_special_tokens=False)["input_ids"]


def _char_span(words, w0, w1):
  """Characters of words[w0..w1] (inclusive) in " ".join(words)."""
  c0 = sum(len(w) + 1 for w in words[:w0])
  return c0, c0 + len(" ".join(words[w0:w1 + 1]))


# -- windows ---------------------------------------------------------------------------------


def _check_windows(n, length, stride):
  starts = passages_lib.window_starts(n, length, stride)
  assert starts.dtype == np.int64
  if n == 0:
    assert starts.size == 0
    return
  assert starts[0] == 0 and np.all(np.diff(starts) == stride)
  assert starts[-1] + length >= n  # the last window reaches the end ...
  assert len(starts) == 1 or starts[-2] + length < n  # ... and is the first that does
  covered = np.zeros(n, bool)
  for s in starts:
    covered[s:s + length] = True
  assert covered.all()
  ends = np.minimum(starts + length, n)
  assert np.all(ends[:-1] - starts[1:] == length - stride)  # consecutive overlap
  width = length - stride + 1
  for a in range(n - width + 1):
    for w in range(1, width + 1):
      if a + w <= n:
        assert np.any((starts <= a) & (a + w <= ends)), (n, length, stride, a, w)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 48, 100])
def test_window_starts_paper_shape(n):
  _check_windows(n, 32, 16)
  expected = {0: [], 1: [0], 31: [0], 32: [0], 33: [0, 16], 48: [0, 16],
              100: [0, 16, 32, 48, 64, 80]}  # 64 + 32 = 96 < 100: one more
  assert passages_lib.window_starts(n, 32, 16).tolist() == expected[n]


def test_window_starts_random():
  rng = np.random.default_rng(0)
  for _ in range(200):
    length = int(rng.integers(1, 20))
    stride = int(rng.integers(1, length + 1))
    _check_windows(int(rng.integers(0, 80)), length, stride)


@pytest.mark.parametrize("length,stride", [(8, 0), (8, 9), (0, 1), (4, -1)])
def test_window_starts_rejects_bad_shapes(length, stride):
  with pytest.raises(ValueError, match="stride|length"):
    passages_lib.window_starts(10, length, stride)


# -- passage rows ----------------------------------------------------------------------------

TEXTS = [
    " ".join(WORDS),
    "",  # no wordpiece, no passage
    "Lisp < language > A functional language ; see Scheme and S - expressions . Lisp ' s "
    "dialects include Common LISP , PDP-11 and IBM's {x} on the Café naïve machine .",
]


def test_passage_rows_with_and_without_topic(feat):
  topics = ["Common Lisp machine language", "ignored", ""]
  length, stride, topic_tokens = 8, 4, 3
  out = passages_lib.passage_features(feat, TEXTS, topics, length=length, stride=stride,
                                  topic_tokens=topic_tokens)
  bare = passages_lib.passage_features(feat, TEXTS, None, length=length, stride=stride)
  width = 1 + length + 1 + topic_tokens + 1
  assert out.input_ids.shape == (len(out), width) and bare.input_ids.shape == (len(out),
                                                                                length + 2)
  assert out.input_ids.dtype == out.attention_mask.dtype == np.int32
  assert out.passage_ids.dtype == out.document.dtype == out.char_offsets.dtype == np.int32
  assert out.token_start.dtype == out.num_tokens.dtype == np.int64
  doc_ids = [_encode(feat, t) for t in TEXTS]
  expected_docs = [d for d, ids in enumerate(doc_ids)
                   for _ in passages_lib.window_starts(len(ids), length, stride)]
  assert out.document.tolist() == expected_docs and 1 not in expected_docs
  assert out.num_documents == 3
  topic = _encode(feat, topics[0])[:topic_tokens]
  assert len(topic) == topic_tokens and len(_encode(feat, topics[0])) > topic_tokens
  mid_word = 0
  for p in range(len(out)):
    d, start, n = int(out.document[p]), int(out.token_start[p]), int(out.num_tokens[p])
    window = doc_ids[d][start:start + length]
    assert n == len(window) > 0
    assert out.passage_ids[p].tolist() == window + [feat.pad_id] * (length - n)
    # The passage is the document's text between its first and last wordpiece, re-encoded
    # alike unless the window starts inside a word ("##sp" would come back as "sp").
    c0, c1 = out.char_offsets[p, 0, 0], out.char_offsets[p, n - 1, 1]
    if feat.tokenizer.convert_ids_to_tokens(window[0]).startswith("##"):
      mid_word += 1
      assert c0 > 0 and not TEXTS[d][c0 - 1].isspace()
    else:
      assert _encode(feat, TEXTS[d][c0:c1]) == window
    assert np.all(out.char_offsets[p, n:] == -1) and np.all(out.char_offsets[p, :n] >= 0)
    head = [feat.cls_id] + window + [feat.sep_id]
    row = head + (topic + [feat.sep_id] if d == 0 else [])  # document 2 has an empty topic
    assert out.input_ids[p].tolist() == row + [feat.pad_id] * (width - len(row))
    assert out.attention_mask[p].tolist() == [1] * len(row) + [0] * (width - len(row))
    assert bare.input_ids[p].tolist() == head + [feat.pad_id] * (length + 2 - len(head))
    assert out.input_ids[p, 1 + 2] == window[2]  # passage token j at row position j + 1
  assert 0 < mid_word < len(out)  # both kinds of window were checked


def test_passage_features_rejects_bad_arguments(feat):
  with pytest.raises(ValueError, match="2 topics for 3 texts"):
    passages_lib.passage_features(feat, TEXTS, ["a", "b"])
  with pytest.raises(ValueError, match="stride"):
    passages_lib.passage_features(feat, TEXTS, length=8, stride=9)
  empty = passages_lib.passage_features(feat, ["", " "], ["t", "u"])
  assert len(empty) == 0 and empty.input_ids.shape == (0, 32 + 2 + 8 + 1)


# -- offsets ---------------------------------------------------------------------------------

OFFSET_TEXTS = ["Café naïve", "PDP-11 IBM's {x}", TEXTS[2], "x  y\tz\nSTRÖM ångström"]


def test_encode_with_offsets_matches_the_tokenizer(feat):
  encoded = feat.encode_with_offsets(OFFSET_TEXTS)
  for text, (ids, offsets) in zip(OFFSET_TEXTS, encoded):
    reference = feat.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids.dtype == offsets.dtype == np.int32 and offsets.shape == (len(ids), 2)
    assert ids.tolist() == reference["input_ids"]
    assert [tuple(o) for o in offsets.tolist()] == reference["offset_mapping"]
    assert np.all(offsets[:, 0] < offsets[:, 1])
  assert feat.encode_with_offsets([]) == []
  _, offsets = encoded[0]
  assert [OFFSET_TEXTS[0][a:b] for a, b in offsets] == ["Café", "naïve"]  # raw, not "cafe"


def test_offsets_round_trip(feat):
  for text, (_, offsets) in zip(OFFSET_TEXTS, feat.encode_with_offsets(OFFSET_TEXTS)):
    for t0 in range(len(offsets)):
      for t1 in range(t0, len(offsets)):
        c0, c1 = int(offsets[t0, 0]), int(offsets[t1, 1])
        assert passages_lib.char_span_to_tokens(offsets, c0, c1) == (t0, t1), (text, t0, t1)
  _, offsets = feat.encode_with_offsets(["Café naïve"])[0]
  assert passages_lib.char_span_to_tokens(offsets, 5, 8) is None  # "naï": ends inside a word
  assert passages_lib.char_span_to_tokens(offsets, 1, 4) is None  # "afé": starts inside one
  assert passages_lib.char_span_to_tokens(offsets, 4, 10) is None  # " naïve": starts on a space
  assert passages_lib.char_span_to_tokens(offsets, 0, 5) is None  # "Café ": ends after a space
  with pytest.raises(ValueError, match="empty"):
    passages_lib.char_span_to_tokens(offsets, 3, 3)
  _, offsets = feat.encode_with_offsets(["PDP-11"])[0]
  assert passages_lib.char_span_to_tokens(offsets, 0, 3) == (0, 1)  # "PD" "##P": wordpieces
  assert passages_lib.char_span_to_tokens(offsets, 0, 1) is None

  passages = passages_lib.passage_features(feat, OFFSET_TEXTS, length=4, stride=2)
  for p in range(len(passages)):
    d, start = int(passages.document[p]), int(passages.token_start[p])
    n = int(passages.num_tokens[p])
    for j0 in range(n):
      for j1 in range(j0, n):
        c0, c1 = passages_lib.token_span_to_chars(passages, p, j0, j1)
        assert passages_lib.char_span_to_tokens(passages.document_offsets(d), c0, c1) == (
            start + j0, start + j1)
    with pytest.raises(ValueError, match="outside passage"):
      passages_lib.token_span_to_chars(passages, p, 0, n)


# -- gold spans per passage ------------------------------------------------------------------


def test_passage_golds(feat):
  text = " ".join(WORDS)
  assert len(_encode(feat, text)) == len(WORDS)  # one wordpiece a word
  second = "a red cat"
  passages = passages_lib.passage_features(feat, [text, "", second], length=8, stride=4)
  assert passages.token_start.tolist() == [0, 4, 8, 12, 16, 0]  # 24 tokens; one for doc 2
  spans = [
      [(*_char_span(WORDS, 5, 6), 10),    # inside windows 0 (0-7) and 1 (4-11)
       (*_char_span(WORDS, 6, 9), 11),    # inside window 1, cut by windows 0 and 2
       (*_char_span(WORDS, 3, 8), 12),    # 6 > 8 - 4 + 1 tokens: cut by 0-2, outside
       (*_char_span(WORDS, 13, 13), 11),  # entity 11 again, inside windows 2 (8-15) and 3
       (1, 3, 13)],                       # "he": not on token boundaries
      [],
      [(2, 9, 14)],                       # "red cat" in document 2
  ]
  golds, partial, counts = passages_lib.passage_golds(passages, spans)
  assert golds == sorted([(0, 5, 6, 10), (1, 1, 2, 10), (1, 2, 5, 11), (2, 5, 5, 11),
                          (3, 1, 1, 11), (5, 1, 2, 14)])
  assert partial.dtype == object and partial.shape == (len(passages),)
  # Entity 11 is cut by window 2 but gold there through its other span: not partial.
  assert [tuple(x) for x in partial] == [(11, 12), (12,), (12,), (), (), ()]
  assert counts == {"spans": 6, "unaligned": 1, "outside": 1, "gold_spans": 4, "golds": 6,
                    "cut": 5}
  for p, j0, j1, row in golds:
    c0, c1 = passages_lib.token_span_to_chars(passages, p, j0, j1)
    assert (c0, c1, row) in spans[passages.document[p]]
  with pytest.raises(ValueError, match="spans for 2 documents"):
    passages_lib.passage_golds(passages, spans[:2])


# -- documents from a ZESHEL-layout world ----------------------------------------------------

# Entries without cross-references: documents that hold no mention.
PLAIN_ENTRIES = [(f"plain {i}", f"plain {i}\n\n   An entry with no references, number {i}.\n\n")
                 for i in range(6)]


@pytest.fixture
def lisp_world(tmp_path):
  directory = write_database(tmp_path / "db", "plain", entries=ENTRIES + PLAIN_ENTRIES)
  out = tmp_path / "out"
  foldoc.build_world(directory, "test", out, world="lisp_world")
  return out


def test_zeshel_documents_spans_match_mentions(lisp_world):
  with zeshel.ZeshelDataset(lisp_world) as ds:
    total = 0
    for split in ds.splits():
      mentions = list(ds.iter_mentions(split))
      docs = documents.zeshel_documents(ds, split)
      assert len({d.doc_id for d in docs}) == len(docs)
      assert {d.doc_id for d in docs} == {m.context_document_id for m in mentions}
      expected = {(m.context_document_id, m.text, m.label_document_id) for m in mentions}
      found = set()
      for d in docs:
        assert d.text == ds.document(d.doc_id).text and d.topic == ds.document(d.doc_id).title
        assert d.spans and list(d.spans) == sorted(d.spans, key=lambda s: (s.start, s.end))
        for s in d.spans:
          found.add((d.doc_id, d.text[s.start:s.end], s.entity))
      assert found == expected
      total += len(found)
    assert total == 16


def test_zeshel_documents_dictd_split_keeps_documents_without_mentions(lisp_world):
  with zeshel.ZeshelDataset(lisp_world) as ds:
    all_ids = [e.document_id for e in ds.iter_entities("lisp_world")]
    with_mentions = {m.context_document_id for s in ds.splits() for m in ds.iter_mentions(s)}
    seen = []
    for split in ("train", "val", "test"):
      docs = documents.zeshel_documents(ds, split, select="dictd_split")
      by_mentions = {d.doc_id: d for d in documents.zeshel_documents(ds, split)}
      assert [d.doc_id for d in docs] == [i for i in all_ids if foldoc.split_of(i) == split]
      for d in docs:
        assert d == by_mentions[d.doc_id] if d.doc_id in with_mentions else not d.spans
      seen += [d.doc_id for d in docs]
  assert sorted(seen) == sorted(all_ids)
  assert len(set(all_ids) - with_mentions) == len(PLAIN_ENTRIES)
  with pytest.raises(ValueError, match="select"):
    documents.zeshel_documents(lisp_world, "test", select="everything")


def _write_zeshel(root, text, mention_text, start, end):
  (root / "documents").mkdir(parents=True)
  (root / "mentions").mkdir()
  (root / "documents" / "w.json").write_text(
      json.dumps({"document_id": "D", "title": "t", "text": text}) + "\n" +
      json.dumps({"document_id": "E", "title": "e", "text": "e"}) + "\n")
  (root / "mentions" / "test.json").write_text(json.dumps({
      "mention_id": "M1", "context_document_id": "D", "label_document_id": "E",
      "start_index": start, "end_index": end, "text": mention_text, "corpus": "w"}) + "\n")
  return root


def test_zeshel_documents_whitespace_runs_and_mismatch(tmp_path):
  root = _write_zeshel(tmp_path / "a", "one  two\tthree\n four", "two three", 1, 2)
  [doc] = documents.zeshel_documents(root, "test")
  assert doc.spans == (documents.GoldSpan(5, 14, "E"),) and doc.text[5:14] == "two\tthree"
  root = _write_zeshel(tmp_path / "b", "one two three", "two four", 1, 2)
  with zeshel.ZeshelDataset(root, text_mismatch="warn") as ds:
    with pytest.warns(zeshel.ZeshelFormatWarning), pytest.raises(ValueError, match="'M1'"):
      documents.zeshel_documents(ds, "test")


def test_zeshel_documents_feed_passage_golds(lisp_world, feat):
  with zeshel.ZeshelDataset(lisp_world) as ds:
    rows = {e.document_id: i for i, e in enumerate(ds.iter_entities("lisp_world"))}
    docs = [d for s in ds.splits() for d in documents.zeshel_documents(ds, s)]
  passages = passages_lib.passage_features(feat, [d.text for d in docs], [d.topic for d in docs],
                                       length=8, stride=4)
  spans = [[(s.start, s.end, rows[s.entity]) for s in d.spans] for d in docs]
  golds, _, counts = passages_lib.passage_golds(passages, spans)
  assert counts["spans"] == counts["gold_spans"] == 16
  assert counts["unaligned"] == counts["outside"] == 0
  for p, j0, j1, row in golds:
    c0, c1 = passages_lib.token_span_to_chars(passages, p, j0, j1)
    assert (c0, c1, row) in spans[passages.document[p]]


# -- GERBIL JSON lines -----------------------------------------------------------------------


def test_gerbil_round_trip_and_nil(tmp_path):
  docs = [
      documents.Document("d1", "Café naïve PDP-11", "Cafés",
                         (documents.GoldSpan(0, 4, "E1"), documents.GoldSpan(11, 17, "E2"))),
      documents.Document("d2", "no gold here", None, ()),
  ]
  path = tmp_path / "sub" / "gold.jsonl"
  documents.write_gerbil_jsonl(path, docs)
  back, counts = documents.read_gerbil_jsonl(path)
  assert back == docs
  assert counts == {"documents": 2, "labels": 2, "spans": 2, "nil": 0}
  assert "topic" not in json.loads(path.read_text(encoding="utf-8").splitlines()[1])
  back, counts = documents.read_gerbil_jsonl(path, kb_ids={"E2"})
  assert back[0].spans == (documents.GoldSpan(11, 17, "E2"),)
  assert counts == {"documents": 2, "labels": 2, "spans": 1, "nil": 1}
  # Labels in any order come back sorted.
  path.write_text(json.dumps({"id": "x", "text": "ab cd", "labels": [[3, 5, "B"], [0, 2, "A"]]})
                  + "\n")
  [doc], _ = documents.read_gerbil_jsonl(path)
  assert [s.entity for s in doc.spans] == ["A", "B"]


def test_gerbil_write_is_atomic(tmp_path):
  path = tmp_path / "gold.jsonl"
  path.write_text("old\n")

  def failing():
    yield documents.Document("d", "t", None, ())
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    documents.write_gerbil_jsonl(path, failing())
  assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["gold.jsonl"]


GOOD = {"id": "good", "text": "abc def", "labels": [[0, 3, "E"]]}


@pytest.mark.parametrize("line,field,message", [
    ("{not json", None, "malformed JSON"),
    (json.dumps({"text": "abc", "labels": []}), "id", "missing"),
    (json.dumps({"id": "d", "labels": []}), "text", "missing"),
    (json.dumps({"id": "d", "text": "abc"}), "labels", "missing"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[0, 4, "E"]]}), "labels",
     "label 0: span [0, 4) outside the text of 3"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[-1, 2, "E"]]}), "labels", "outside"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[2, 2, "E"]]}), "labels",
     "label 0: start 2 is not before end 2"),
    (json.dumps({"id": "d", "text": "abc def", "labels": [[0, 3, "E"], [4, 7, "F"],
                                                          [2, 5, "G"]]}),
     "labels", "label 2 [2, 5) overlaps label 0 [0, 3)"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[True, 2, "E"]]}), "labels",
     "start must be an integer"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[0, 2]]}), "labels",
     "expected [start, end, entity_id]"),
    (json.dumps({"id": "d", "text": "abc", "labels": [[0, 2, ""]]}), "labels", "entity_id"),
    (json.dumps({"id": "d", "text": "abc", "topic": 3, "labels": []}), "topic",
     "expected str"),
    (json.dumps(GOOD), "id", "duplicate id 'good' (first at line 1)"),
])
def test_gerbil_errors_name_path_line_field(tmp_path, line, field, message):
  path = tmp_path / "gold.jsonl"
  path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
  with pytest.raises(zeshel.ZeshelFormatError) as error:
    documents.read_gerbil_jsonl(path)
  where = f"{path}:3: " + (f"field {field!r}: " if field else "")
  assert str(error.value).startswith(where), str(error.value)
  assert message in str(error.value)


def test_cli_writes_gerbil_file(lisp_world, tmp_path, capsys):
  out = tmp_path / "test.jsonl"
  assert documents.main(["--data", str(lisp_world), "--split", "test", "--out", str(out),
                         "--select", "dictd_split"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  docs, counts = documents.read_gerbil_jsonl(out)
  assert docs == documents.zeshel_documents(lisp_world, "test", select="dictd_split")
  assert summary["documents"] == counts["documents"] == len(docs)
  assert summary["spans"] == counts["spans"]
  assert summary["without_spans"] == sum(not d.spans for d in docs)
