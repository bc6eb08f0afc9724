"""dictd databases written here in the real format, and their conversion to a ZESHEL world."""

import collections
import json
import pathlib

import pytest

from dictd_fixture import ENTRIES, EXPECTED_MENTIONS, TEXTS, b64, write_database
from zel_jax.data import dictd, foldoc, zeshel


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the reader ------------------------------------------------------------------------------


def test_base64_numbers():
  assert [dictd.decode_base64_number(s) for s in ("A", "B", "/", "BA", "Gb9L")] == [
      0, 1, 63, 64, ((6 * 64 + 27) * 64 + 61) * 64 + 11]
  for n in (0, 5, 63, 64, 4095, 123456789):
    assert dictd.decode_base64_number(b64(n)) == n
  with pytest.raises(ValueError, match="not a dictd base64 digit"):
    dictd.decode_base64_number("A=")


@pytest.mark.parametrize("fmt", ["dictzip", "gzip", "plain"])
def test_reader(tmp_path, fmt):
  directory = write_database(tmp_path / "db", fmt)
  with dictd.DictdDatabase.open(directory, "test") as db:
    if fmt == "dictzip":
      assert db._payload._chunk_len == 64  # the chunk table is used, not a full inflate
    assert db.metadata("short") == "Test dictionary"
    assert db.metadata("url") == "http://example.com/test"
    assert not any(h.startswith("00-database") for h in db.headwords())
    assert "00-database-short" not in db
    pairs = list(db)
    assert len(pairs) == len(db) == 11  # 8 entries, 3 of them with an alias line
    by_title = dict(ENTRIES)
    for headword, body in pairs:
      assert body == by_title[dictd.split_header(body)[0][0]]
    # Lookup ignores case and whitespace runs; an alias finds its entry.
    assert db.lookup("COMMON   lisp") == [by_title["Common Lisp"]]
    assert db.lookup("sexp") == [by_title["S-expression"]]
    assert db.lookup("no such word") == []
    entries = list(db.entries())
    assert [e.text for e in entries] == [text for _, text in ENTRIES]
    assert entries[1].headwords == ("functional", "functional programming")


def test_split_header_wordnet_style():
  text = "person\n    n 1: a human being [syn: {person}, {individual}]\n"
  assert dictd.split_header(text) == (["person"], text[len("person\n"):])
  assert dictd.split_header("Lisp\nLISP\n\n   body\n") == (["Lisp", "LISP"], "\n   body\n")


def test_bad_index_line_names_file_and_line(tmp_path):
  directory = write_database(tmp_path / "db", "plain")
  index = directory / "test.index"
  lines = index.read_text().splitlines()
  lines[4] = "broken\tB@\tC"
  index.write_text("\n".join(lines) + "\n")
  with pytest.raises(dictd.DictdFormatError, match=r"test\.index:5: .*'@'"):
    dictd.DictdDatabase.open(directory, "test")


# -- conversion to a ZESHEL world ------------------------------------------------------------


@pytest.fixture
def world(tmp_path):
  directory = write_database(tmp_path / "db", "dictzip")
  out = tmp_path / "out"
  stats = foldoc.build_world(directory, "test", out, world="lisp_world")
  return out, stats


def test_converted_documents(world):
  out, stats = world
  documents = read_jsonl(out / "documents" / "lisp_world.json")
  assert [d["title"] for d in documents] == [
      "Lisp", "functional programming", "function", "library", "Lisp machine",
      "Scheme (language)", "S-expression", "Common Lisp"]
  by_title = {d["title"]: d for d in documents}
  for title, text in TEXTS.items():
    assert by_title[title]["text"] == text
  for d in documents:
    assert "{" not in d["text"].replace("{ x | x in S }", "")
    assert d["text"] == " ".join(d["text"].split())
    assert len(d["document_id"]) == 16 and d["document_id"] == d["document_id"].upper()
  assert len({d["document_id"] for d in documents}) == len(documents)
  assert stats["entities"] == len(documents) == 8


def test_converted_mentions_labels_and_categories(world):
  out, _ = world
  documents = {d["document_id"]: d for d in read_jsonl(out / "documents" / "lisp_world.json")}
  found = set()
  for split in ("train", "val", "test"):
    for m in read_jsonl(out / "mentions" / f"{split}.json"):
      tokens = documents[m["context_document_id"]]["text"].split(" ")
      assert " ".join(tokens[m["start_index"]:m["end_index"] + 1]) == m["text"]
      assert m["corpus"] == "lisp_world"
      assert m["context_document_id"] != m["label_document_id"]
      found.add((documents[m["context_document_id"]]["title"], m["text"],
                 documents[m["label_document_id"]]["title"], m["category"]))
  assert found == EXPECTED_MENTIONS


def test_split_is_by_context_document(world):
  out, stats = world
  split_of_context = {}
  counts = collections.Counter()
  for split in ("train", "val", "test"):
    for m in read_jsonl(out / "mentions" / f"{split}.json"):
      assert split_of_context.setdefault(m["context_document_id"], split) == split
      assert foldoc.split_of(m["context_document_id"]) == split
      counts[split] += 1
  assert stats["mentions"] == {s: counts[s] for s in ("train", "val", "test")}
  # The shares over many documents are 80/10/10.
  shares = collections.Counter(foldoc.split_of(f"{i:016X}") for i in range(20000))
  assert abs(shares["train"] / 20000 - 0.8) < 0.02
  assert abs(shares["val"] / 20000 - 0.1) < 0.01
  assert abs(shares["test"] / 20000 - 0.1) < 0.01


def test_stats(world):
  out, stats = world
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["references"] == 21
  assert stats["external_references"] == 1
  assert stats["unresolved_dropped"] == 2
  assert dict(stats["top_unresolved"]) == {"imperative programming": 1, "ANSI": 1}
  assert stats["self_references_dropped"] == 2
  assert stats["mentions_total"] == 16
  assert stats["resolved_by"] == {"exact": 9, "case": 2, "plural": 3, "whitespace": 2}
  assert stats["categories"] == {"HIGH_OVERLAP": 7, "MULTIPLE_CATEGORIES": 1,
                                 "AMBIGUOUS_SUBSTRING": 2, "LOW_OVERLAP": 6}


def test_round_trip_through_zeshel_reader(world):
  out, stats = world
  with zeshel.ZeshelDataset(out, text_mismatch="error") as ds:
    assert ds.worlds() == ["lisp_world"]
    assert sorted(ds.splits()) == ["test", "train", "val"]
    entities = ds.entities("lisp_world")
    n = 0
    for split in ds.splits():
      for m in ds.iter_mentions(split):  # validated: ids, span, text, label world
        _, span, _ = ds.mention_tokens(m)
        assert " ".join(span) == m.text
        title = entities[m.label_document_id].title  # as written; categories are of tokens
        assert m.category == zeshel.category_of(m.text, " ".join(zeshel.tokenize(title)))
        n += 1
    assert n == stats["mentions_total"]


def test_cli_prints_stats_last(tmp_path, capsys):
  directory = write_database(tmp_path / "db", "plain", name="foldoc")
  assert foldoc.main(["--dictd", str(directory), "--name", "foldoc",
                     "--out", str(tmp_path / "out")]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  stats = json.loads(last)
  assert stats["world"] == "foldoc" and stats["mentions_total"] == 16
  assert (tmp_path / "out" / "documents" / "foldoc.json").is_file()


def test_bad_input_leaves_existing_output_intact(world, tmp_path):
  out, _ = world
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  broken = write_database(tmp_path / "broken", "dictzip")
  dz = broken / "test.dict.dz"
  data = bytearray(dz.read_bytes())
  start = json.loads((broken / "chunk_starts.json").read_text())[5]
  data[start:start + 4] = b"\xff" * 4  # a reserved deflate block type: chunk 5 is garbage
  dz.write_bytes(bytes(data))
  with pytest.raises(dictd.DictdFormatError, match="chunk"):
    foldoc.build_world(broken, "test", out, world="lisp_world")
  after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  assert after == before


def test_failure_while_writing_leaves_existing_output_intact(world):
  out, stats = world
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

  def entities():
    yield zeshel.Entity("0000000000000000", "t", "t", "lisp_world")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    foldoc.write_world(out, "lisp_world", entities(), {"train": []}, stats)
  after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  assert after == before  # no partial file, no temporary left behind
  assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
