"""The converters (zel_jax.data.convert): KBs and mentions in BLINK's, JSONL and CSV layouts
become a ZESHEL directory that validates; each kind of bad row names file, line and field;
--skip-bad keeps the good rows; a failed run changes nothing; a KB alone links."""

import json
import pathlib

import pytest

from zel_jax import recipes, workdir_io
from zel_jax.configs import blink_biencoder
from zel_jax.data import convert, zeshel
from zel_jax.evals import linking

# BLINK's entity catalogue (entity.jsonl), as blink/main_dense.py `_load_candidates` reads it.
BLINK_ENTITIES = [
    {"text": " Anarchism is a political philosophy and movement that is skeptical of all "
             "justifications for authority.", "idx": "https://en.wikipedia.org/wiki?curid=12",
     "title": "Anarchism", "entity": "Anarchism"},
    {"text": " Paris is the capital and most populous city of France.",
     "idx": "https://en.wikipedia.org/wiki?curid=22989", "title": "Paris", "entity": "Paris"},
    {"text": " Paris Hilton is an American media personality and businesswoman.",
     "idx": "https://en.wikipedia.org/wiki?curid=226483", "title": "Paris Hilton",
     "entity": "Paris Hilton"},
    {"text": " Germany is a country in Central Europe.",
     "idx": "https://en.wikipedia.org/wiki?curid=11867", "title": "Germany",
     "entity": "Germany"},
]
# BLINK's training rows (examples/zeshel/create_BLINK_zeshel_data.py): label_id is the
# entity's 0-based position in the catalogue, with its text and title alongside.
BLINK_TRAIN = [
    {"context_left": "the mayor of", "mention": "paris", "context_right": "'s 20 districts met",
     "label": BLINK_ENTITIES[1]["text"], "label_id": 1, "label_title": "Paris",
     "world": "wiki"},
    {"context_left": "", "mention": "hilton", "context_right": "opened a hotel in germany",
     "label": BLINK_ENTITIES[2]["text"], "label_id": 2, "label_title": "Paris Hilton",
     "world": "wiki"},
]
# BLINK's benchmark rows (scripts/create_BLINK_benchmark_data.py): label_id is the Wikipedia
# page id; two mentions of one document share its words.
BLINK_BENCHMARK = [
    {"context_left": "EU rejects", "mention": "German", "context_right": "call to boycott "
     "British lamb in Paris .", "query_id": "1163testb:0", "label_id": "11867",
     "Wikipedia_ID": "11867", "Wikipedia_URL": "http://en.wikipedia.org/wiki/Germany",
     "Wikipedia_title": "Germany"},
    {"context_left": "EU rejects German call to boycott British lamb in", "mention": "Paris",
     "context_right": ".", "query_id": "1163testb:1", "label_id": 22989,
     "Wikipedia_ID": 22989, "Wikipedia_URL": "http://en.wikipedia.org/wiki/Paris",
     "Wikipedia_title": "Paris"},
]
KB_ROWS = [
    {"id": "eiffel", "title": "Eiffel Tower", "text": "A wrought-iron lattice tower on the "
     "Champ de Mars in Paris, France.", "aliases": ["Tour Eiffel", "La dame de fer"]},
    {"id": "python", "title": "Python (programming language)", "text": "A high-level, "
     "general-purpose programming language.", "aliases": ["Python", "CPython"]},
    {"id": "jupiter", "title": "Jupiter", "text": "The fifth planet from the Sun and the "
     "largest in the Solar System."},
    {"id": "mozart", "title": "Wolfgang Amadeus Mozart", "text": "A prolific and influential "
     "composer of the Classical period.", "aliases": ["Mozart"]},
    {"id": "photosynthesis", "title": "Photosynthesis", "text": "The process by which plants "
     "convert light energy into chemical energy."},
]


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                  encoding="utf-8")
  return path


def kb_dir(tmp_path, rows=KB_ROWS, world="things") -> pathlib.Path:
  out = tmp_path / "data"
  convert.convert_kb(write_jsonl(tmp_path / "kb.jsonl", rows), "jsonl", world, out)
  return out


def blink_dir(tmp_path) -> pathlib.Path:
  out = tmp_path / "data"
  convert.convert_kb(write_jsonl(tmp_path / "entity.jsonl", BLINK_ENTITIES), "blink", "wiki",
                     out)
  return out


def raw_documents(out, world):
  return [r for _, r in zeshel.json_records(out / "documents" / f"{world}.json")]


# -- knowledge bases ------------------------------------------------------------------------


def test_jsonl_kb_opens_without_mentions_and_keeps_aliases(tmp_path):
  out = kb_dir(tmp_path)
  assert not (out / "mentions").exists()
  with zeshel.ZeshelDataset(out) as dataset:
    assert dataset.worlds() == ["things"] and dataset.splits() == []
    entities = dataset.entities("things")
    assert list(entities) == [r["id"] for r in KB_ROWS]
    assert entities["python"].title == "Python (programming language)"  # Not tokenized.
    assert entities["eiffel"].text == KB_ROWS[0]["text"]
    with pytest.raises(FileNotFoundError, match="no mentions/ folder"):
      list(dataset.iter_mentions("test"))
  documents = raw_documents(out, "things")
  assert documents[0]["aliases"] == ["Tour Eiffel", "La dame de fer"]
  assert "aliases" not in documents[2]  # Only where there are some.


def test_csv_kb_with_quoted_newlines_and_pipe_aliases(tmp_path):
  source = tmp_path / "kb.csv"
  source.write_text('\ufefftitle,id,text,aliases\n'
                    'Eiffel Tower,eiffel,"A tower,\nin Paris.",Tour Eiffel| La dame de fer\n'
                    '\n'
                    'Jupiter,7,A planet.,\n', encoding="utf-8")
  counts = convert.convert_kb(source, "csv", "things", tmp_path / "data")
  assert counts["written"] == 2 and counts["rejected"] == 0
  documents = raw_documents(tmp_path / "data", "things")
  assert documents == [
      {"document_id": "eiffel", "title": "Eiffel Tower", "text": "A tower,\nin Paris.",
       "aliases": ["Tour Eiffel", "La dame de fer"]},
      {"document_id": "7", "title": "Jupiter", "text": "A planet."}]


def test_blink_kb_ids_are_blinks_page_ids(tmp_path):
  rows = BLINK_ENTITIES[:2] + [
      {"text": "A TAC-KBP entity.", "title": "Lamb", "kb_idx": "E0000042"},
      {"text": "No id at all.", "title": "Nameless"},
      {"text": "Not a Wikipedia URL.", "title": "Local", "idx": "local-7"}]
  convert.convert_kb(write_jsonl(tmp_path / "entity.jsonl", rows), "blink", "wiki",
                     tmp_path / "data")
  ids = [d["document_id"] for d in raw_documents(tmp_path / "data", "wiki")]
  # curid= page ids, then kb_idx, then the entity's position (BLINK's local id), then idx.
  assert ids == ["12", "22989", "E0000042", "3", "local-7"]


# -- mentions -------------------------------------------------------------------------------


def check_tokens(dataset, split):
  """Every mention validates (known documents, text == its tokens) and returns it."""
  mentions = list(dataset.iter_mentions(split))
  for mention in mentions:
    _, span, _ = dataset.mention_tokens(mention)
    assert " ".join(span) == mention.text
  return mentions


def test_blink_training_rows_resolve_by_position(tmp_path):
  out = blink_dir(tmp_path)
  convert.convert_mentions(write_jsonl(tmp_path / "train.jsonl", BLINK_TRAIN), "blink",
                           "wiki", "train", out)
  with zeshel.ZeshelDataset(out) as dataset:
    mentions = check_tokens(dataset, "train")
    assert [m.label_document_id for m in mentions] == ["22989", "226483"]
    assert [m.text for m in mentions] == ["paris", "hilton"]
    assert [m.category for m in mentions] == [zeshel.HIGH_OVERLAP,
                                              zeshel.AMBIGUOUS_SUBSTRING]
    assert {m.corpus for m in mentions} == {"wiki"}
    left, span, right = dataset.mention_tokens(mentions[0])
    assert (left, span, right[:2]) == (["the", "mayor", "of"], ["paris"], ["'s", "20"])
    # Context documents sit in a world of their own, never among the KB's candidates.
    assert dataset.worlds() == ["wiki", "wiki.train.contexts"]
    assert set(dataset.entities("wiki")) == {"12", "22989", "226483", "11867"}
    assert dataset.world_of(mentions[0].context_document_id) == "wiki.train.contexts"


def test_blink_benchmark_rows_resolve_by_page_id_and_share_a_context(tmp_path):
  out = blink_dir(tmp_path)
  convert.convert_mentions(write_jsonl(tmp_path / "testb.jsonl", BLINK_BENCHMARK), "blink",
                           "wiki", "test", out, gold="id")
  with zeshel.ZeshelDataset(out) as dataset:
    mentions = check_tokens(dataset, "test")
  assert [m.mention_id for m in mentions] == ["1163testb:0", "1163testb:1"]
  assert [m.label_document_id for m in mentions] == ["11867", "22989"]
  assert mentions[0].category == zeshel.AMBIGUOUS_SUBSTRING  # "German" -> "Germany"
  assert mentions[0].context_document_id == mentions[1].context_document_id
  assert (mentions[0].start_index, mentions[1].start_index) == (2, 9)


def test_jsonl_mentions_with_character_offsets(tmp_path):
  out = kb_dir(tmp_path)
  text = "Mozart's pupils toured the Tour Eiffel."
  rows = [{"text": text, "id": "doc1", "title": "A visit", "mentions": [
              {"start": 0, "end": 6, "entity_id": "mozart", "id": "m-mozart"},
              {"start": 27, "end": 38, "entity_id": "eiffel"}]},
          {"text": "Jupiter  is\tbig", "start": 0, "end": 7, "entity_id": "jupiter",
           "id": "m-jupiter"},
          {"text": text, "start": 27, "end": 31, "entity_id": "eiffel"}]
  counts = convert.convert_mentions(write_jsonl(tmp_path / "m.jsonl", rows), "jsonl",
                                    "things", "test", out)
  assert counts["written"] == 4 and counts["context_documents"] == 2
  with zeshel.ZeshelDataset(out) as dataset:
    mentions = check_tokens(dataset, "test")
    context = dataset.document(mentions[0].context_document_id)
    # The boundary inside "Mozart's" became a space; the same text is one document.
    assert context.text == "Mozart 's pupils toured the Tour Eiffel ."
    assert context.title == "A visit"
    assert {m.context_document_id for m in mentions} == {context.document_id,
                                                         mentions[2].context_document_id}
    assert dataset.document(mentions[2].context_document_id).text == "Jupiter is big"
  assert [m.mention_id for m in mentions] == ["m-mozart", "doc1-1", "m-jupiter",
                                              "things-test-3"]
  assert [m.text for m in mentions] == ["Mozart", "Tour Eiffel", "Jupiter", "Tour"]
  assert [m.category for m in mentions] == [zeshel.AMBIGUOUS_SUBSTRING, zeshel.LOW_OVERLAP,
                                            zeshel.HIGH_OVERLAP, zeshel.LOW_OVERLAP]


def test_gold_by_title_falls_back_to_aliases(tmp_path):
  out = kb_dir(tmp_path)
  rows = [{"text": "I like Python.", "start": 7, "end": 13,
           "entity_title": "Python (programming language)"},
          {"text": "La dame de fer", "start": 0, "end": 14, "entity_title": "La dame de fer"}]
  convert.convert_mentions(write_jsonl(tmp_path / "m.jsonl", rows), "jsonl", "things",
                           "test", out, gold="title")
  with zeshel.ZeshelDataset(out) as dataset:
    assert [m.label_document_id for m in check_tokens(dataset, "test")] == ["python",
                                                                           "eiffel"]


def test_split_keeps_other_worlds_and_reruns_are_identical(tmp_path):
  out = kb_dir(tmp_path)
  convert.convert_kb(write_jsonl(tmp_path / "entity.jsonl", BLINK_ENTITIES), "blink", "wiki",
                     out)
  things = write_jsonl(tmp_path / "m.jsonl", [{"text": "Jupiter rises", "start": 0, "end": 7,
                                               "entity_id": "jupiter"}])
  wiki = write_jsonl(tmp_path / "train.jsonl", BLINK_TRAIN)
  convert.convert_mentions(things, "jsonl", "things", "test", out)
  convert.convert_mentions(wiki, "blink", "wiki", "test", out)
  before = {p: p.read_bytes() for p in out.rglob("*.json")}
  convert.convert_mentions(things, "jsonl", "things", "test", out)
  after = {p: p.read_bytes() for p in out.rglob("*.json")}
  with zeshel.ZeshelDataset(out) as dataset:
    assert sorted(m.corpus for m in check_tokens(dataset, "test")) == ["things", "wiki",
                                                                      "wiki"]
  split = out / "mentions" / "test.json"
  assert sorted(before[split].splitlines()) == sorted(after[split].splitlines())
  assert {p: b for p, b in before.items() if p != split} == {
      p: b for p, b in after.items() if p != split}


# -- bad rows -------------------------------------------------------------------------------


KB_BAD = [
    ('{"id": "a", "title": "A", "text": "x"', None, "malformed JSON"),
    ({"id": "a", "text": "x"}, "title", "missing"),
    ({"id": "  ", "title": "A", "text": "x"}, "id", "empty"),
    ({"id": True, "title": "A", "text": "x"}, "id", "expected str or int"),
    ({"id": "eiffel", "title": "Again", "text": "x"}, "id", "duplicate id 'eiffel' (first "
     "at line 1)"),
    ({"id": "a", "title": "A", "text": "x", "aliases": "A1|A2"}, "aliases", "JSON list"),
    ('["id", "title", "text"]', None, "expected a JSON object"),
]


@pytest.mark.parametrize("row,field,message", KB_BAD)
def test_bad_kb_rows_name_file_line_and_field(tmp_path, row, field, message):
  source = write_jsonl(tmp_path / "kb.jsonl", KB_ROWS[:2] + [row])
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    convert.convert_kb(source, "jsonl", "things", tmp_path / "data")
  where = f"{source}:3: " + (f"field {field!r}: " if field else "")
  assert str(info.value).startswith(where) and message in str(info.value)
  assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_bad_csv_rows_and_header(tmp_path):
  source = tmp_path / "kb.csv"
  source.write_text('id,title,text\n1,A,fine\n2,B\n"3,C,"unterminated\n', encoding="utf-8")
  with pytest.raises(zeshel.ZeshelFormatError, match=rf"^{source}:3: 2 fields where the "
                     "header has 3"):
    convert.convert_kb(source, "csv", "things", tmp_path / "data")
  counts = convert.convert_kb(source, "csv", "things", tmp_path / "data", skip_bad=True)
  assert counts["written"] == 1 and counts["rejected"] == 2
  rejects = [json.loads(l) for l in open(counts["rejects"])]
  assert [r["line"] for r in rejects] == [3, 4] and "malformed CSV" in rejects[1]["reason"]
  source.write_text("id,name,text\n1,A,x\n", encoding="utf-8")
  with pytest.raises(zeshel.ZeshelFormatError, match=rf"^{source}:1: field 'title': missing"):
    convert.convert_kb(source, "csv", "things", tmp_path / "data", skip_bad=True)


def test_kb_ids_must_be_unique_across_the_directory(tmp_path):
  out = kb_dir(tmp_path)
  source = write_jsonl(tmp_path / "other.jsonl", [{"id": "jupiter", "title": "J", "text": ""}])
  with pytest.raises(zeshel.ZeshelFormatError, match=r"other.jsonl:1: field 'id': id "
                     r"'jupiter' is already a document of .*things.json:3"):
    convert.convert_kb(source, "jsonl", "planets", out)


MENTION_BAD = [
    ("jsonl", {"text": "Jupiter", "start": 0, "end": 9, "entity_id": "jupiter"}, "end",
     "span [0, 9) outside the text of 7 characters"),
    ("jsonl", {"text": "Jupiter", "start": 0, "end": 7, "entity_id": "saturn"}, "entity_id",
     "unknown gold: no document 'saturn'"),
    ("jsonl", {"text": "Jupiter", "start": 0, "end": 7}, "entity_id", "missing"),
    ("jsonl", {"text": "a  b", "start": 1, "end": 3, "entity_id": "jupiter"}, "start",
     "only whitespace"),
    ("jsonl", {"text": "Jupiter", "mentions": [{"start": 0, "end": 7, "entity_id": "jupiter"},
                                                {"start": "0", "end": 7}]},
     "mentions[1].start", "expected int"),
    ("jsonl", {"text": "Jupiter", "start": 0, "end": 7, "entity_id": "jupiter", "id": "m1"},
     "id", "duplicate mention id 'm1' (first at line 1)"),
    ("blink", {"context_left": "", "mention": "Jupiter", "context_right": "", "label_id": 9},
     "label_id", "unknown gold: position 9 outside the KB's 5 entities"),
    ("blink", {"context_left": "", "mention": " ", "context_right": "", "label_id": 2},
     "mention", "empty"),
    ("blink", {"mention": "Jupiter", "context_right": "", "label_id": 2}, "context_left",
     "missing"),
    ("blink", {"context_left": "", "mention": "Jupiter", "context_right": "", "label_id": 1,
               "label_title": "Jupiter"}, "label_id",
     "position 1 of the KB is 'Python (programming language)' but label_title is 'Jupiter'"),
]


@pytest.mark.parametrize("fmt,row,field,message", MENTION_BAD)
def test_bad_mention_rows_name_file_line_and_field(tmp_path, fmt, row, field, message):
  out = kb_dir(tmp_path)
  good = ({"text": "Jupiter", "start": 0, "end": 7, "entity_id": "jupiter", "id": "m1"}
          if fmt == "jsonl" else {"context_left": "", "mention": "Jupiter",
                                  "context_right": "", "label_id": 2})
  source = write_jsonl(tmp_path / "m.jsonl", [good, "", row])
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    convert.convert_mentions(source, fmt, "things", "test", out)
  assert str(info.value).startswith(f"{source}:3: field {field!r}: ")
  assert message in str(info.value)
  assert not (out / "mentions").exists()


def test_mentions_need_the_kb_first(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert the knowledge base first"):
    convert.convert_mentions(write_jsonl(tmp_path / "m.jsonl", BLINK_TRAIN), "blink", "wiki",
                             "train", tmp_path / "data")


# -- --skip-bad, atomicity, the command line --------------------------------------------------


def test_skip_bad_writes_rejects_and_the_good_rows(tmp_path, capsys):
  out = tmp_path / "data"
  rows = [KB_ROWS[0], "{broken", {"id": "", "title": "E", "text": ""}, KB_ROWS[2]]
  source = write_jsonl(tmp_path / "kb.jsonl", rows)
  args = ["kb", f"--input={source}", "--format=jsonl", "--world=things", f"--out={out}"]
  assert convert.main(args) == 1
  assert capsys.readouterr().err.startswith(f"error: {source}:2: malformed JSON")
  assert convert.main(args + ["--skip-bad"]) == 0
  counts = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert (counts["written"], counts["rejected"]) == (2, 2)
  assert [d["document_id"] for d in raw_documents(out, "things")] == ["eiffel", "jupiter"]
  rejects = [json.loads(l) for l in open(out / "rejects" / "documents.things.jsonl")]
  assert [(r["line"], r["field"]) for r in rejects] == [(2, None), (3, "id")]
  assert rejects[0]["row"] == "{broken" and rejects[1]["reason"] == "empty"
  mentions = write_jsonl(tmp_path / "m.jsonl", [
      {"text": "Jupiter", "start": 0, "end": 7, "entity_id": "jupiter"},
      {"text": "Jupiter", "start": 0, "end": 7, "entity_id": "pluto"}])
  assert convert.main(["mentions", f"--input={mentions}", "--format=jsonl", "--world=things",
                       f"--out={out}", "--split=val", "--skip_bad"]) == 0
  counts = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert (counts["written"], counts["rejected"]) == (1, 1)
  assert json.loads(open(counts["rejects"]).read())["field"] == "entity_id"
  with zeshel.ZeshelDataset(out) as dataset:
    assert len(check_tokens(dataset, "val")) == 1
  # A clean run without --skip-bad leaves no stale rejects behind.
  write_jsonl(source, [KB_ROWS[0], KB_ROWS[2]])
  assert convert.main(args) == 0
  assert not (out / "rejects" / "documents.things.jsonl").exists()


def test_a_failed_run_leaves_earlier_outputs_untouched(tmp_path):
  out = kb_dir(tmp_path)
  mentions = write_jsonl(tmp_path / "m.jsonl", [{"text": "Jupiter", "start": 0, "end": 7,
                                                 "entity_id": "jupiter"}])
  convert.convert_mentions(mentions, "jsonl", "things", "test", out)
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  bad_kb = write_jsonl(tmp_path / "kb.jsonl", KB_ROWS[1:] + [{"id": "x", "title": "X"}])
  with pytest.raises(zeshel.ZeshelFormatError, match="kb.jsonl:5: field 'text'"):
    convert.convert_kb(bad_kb, "jsonl", "things", out)
  write_jsonl(mentions, [{"text": "Mozart", "start": 0, "end": 6, "entity_id": "mozart"},
                         {"text": "Jupiter", "start": 0, "end": 7, "entity_id": "pluto"}])
  with pytest.raises(zeshel.ZeshelFormatError, match="m.jsonl:2: field 'entity_id'"):
    convert.convert_mentions(mentions, "jsonl", "things", "test", out)
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# -- a KB alone links -------------------------------------------------------------------------


def test_a_kb_without_mentions_links_with_an_untrained_linker(tmp_path, minilm_path):
  out = kb_dir(tmp_path)
  assert not (out / "mentions").exists()
  config = blink_biencoder.get_config("runlocal")
  config.data.dir = str(out)
  config.model.pretrained = str(minilm_path)
  config.model.pooling = "mean"  # How all-MiniLM-L6-v2 was trained to embed sentences.
  config.data.mention_length = 32
  config.data.entity_length = 32
  config.eval_batch_size = 16
  workdir = tmp_path / "w"
  workdir_io.save_config(config, str(workdir))
  linker = recipes.open_linker(str(workdir), None, "things", untrained=True)
  linked = linker.link([linking.marked_text("We climbed the [[Eiffel Tower]] at night."),
                        linking.marked_text("She wrote the script in [[Python]] 3.")],
                       top_k=3)
  assert [r["entities"][0]["document_id"] for r in linked] == ["eiffel", "python"]
  assert len(linked[0]["entities"]) == 3
