"""The ZESHEL reader on the real excerpt, and each promised validation error."""

import json
import pathlib
import shutil

import pytest

from zel_jax.data import zeshel

WORLD_SIZES = {"doctor_who": 6, "military": 6, "pro_wrestling": 5, "starwars": 6}


@pytest.fixture
def excerpt(shared_data):
  return shared_data / "zeshel_excerpt"


@pytest.fixture
def copy(excerpt, tmp_path):
  """A writable copy of the excerpt, to break one line at a time."""
  root = tmp_path / "zeshel"
  shutil.copytree(excerpt, root)
  return root


def rewrite_line(path: pathlib.Path, number: int, change) -> None:
  """Replaces line `number` (1-based) by change(record) (a dict, or a raw string)."""
  lines = path.read_text(encoding="utf-8").splitlines()
  new = change(json.loads(lines[number - 1]))
  lines[number - 1] = new if isinstance(new, str) else json.dumps(new)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def updated(**changes):
  return lambda record: {**record, **changes}


def mentions_error(root: pathlib.Path, **kwargs) -> str:
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    list(zeshel.ZeshelDataset(root, **kwargs).iter_mentions("sample"))
  return str(info.value)


def where(root, line, field):
  return f"{root / 'mentions' / 'sample.json'}:{line}: field '{field}': "


# -- the real excerpt ----------------------------------------------------------------------


def test_all_mentions_resolve_and_spans_equal_text(excerpt):
  with zeshel.ZeshelDataset(excerpt) as ds:
    assert ds.splits() == ["sample"]
    mentions = list(ds.iter_mentions("sample"))
    assert len(mentions) == 4
    assert {m.corpus for m in mentions} == set(WORLD_SIZES)
    for m in mentions:
      left, span, right = ds.mention_tokens(m)
      assert " ".join(span) == m.text
      context = ds.document(m.context_document_id)
      assert left + span + right == context.text.split()
      assert len(left) == m.start_index and len(left) + len(span) - 1 == m.end_index
      # The entity set of a mention is its corpus world, and the label is in it.
      assert m.label_document_id in ds.entities(m.corpus)
      assert ds.world_of(m.context_document_id) == m.corpus


def test_mention_fields_are_typed(excerpt):
  first = next(zeshel.ZeshelDataset(excerpt).iter_mentions("sample"))
  assert first == zeshel.Mention(
      mention_id="04118548A2FEB09B", context_document_id="17E2687A61CE4D45",
      label_document_id="925ED6501F6D4BD6", start_index=614, end_index=615,
      text="besieged Antioch", corpus="military", category="LOW_OVERLAP")


def test_entity_sets_per_world(excerpt):
  ds = zeshel.ZeshelDataset(excerpt)
  assert ds.worlds() == sorted(WORLD_SIZES)
  for world, size in WORLD_SIZES.items():
    streamed = list(ds.iter_entities(world))
    loaded = ds.entities(world)
    assert len(streamed) == len(loaded) == size
    assert list(loaded.values()) == streamed
    assert all(e.world == world for e in streamed)
  starwars = {e.title for e in ds.iter_entities("starwars")}
  assert starwars == {"Corellia / Legends", "Doman Beruss ( Corellian )",
                      "Doman Beruss ( Illodian )", "Avan Beruss", "Clan Beruss",
                      "Illodia sector"}
  doctor_who = ds.entities("doctor_who")
  assert doctor_who["FD6D03518AF74C28"].title == "Mistfall ( audio story )"
  assert doctor_who["0D8169B46F1B9C66"].text.startswith("Fifth Doctor Youthful in mind ,")
  # The index reaches every document of every world, and reads back the same records.
  index = ds.build_index()
  assert len(index) == sum(WORLD_SIZES.values())
  for world in WORLD_SIZES:
    for entity in ds.iter_entities(world):
      assert ds.document(entity.document_id) == entity


def test_recorded_categories_match_category_of(excerpt):
  ds = zeshel.ZeshelDataset(excerpt)
  seen = set()
  for m in ds.iter_mentions("sample"):
    title = ds.document(m.label_document_id).title
    assert zeshel.category_of(m.text, title) == m.category
    assert zeshel.category_of(m.text, title, case_sensitive=True) == m.category
    seen.add(m.category)
  assert seen == {"LOW_OVERLAP", "MULTIPLE_CATEGORIES"}


def test_category_of_paper_examples():
  assert zeshel.category_of("Batman", "Batman") == zeshel.HIGH_OVERLAP
  assert zeshel.category_of("Batman", "Batman (Lego)") == zeshel.MULTIPLE_CATEGORIES
  assert zeshel.category_of("Mistfall", "Mistfall ( audio story )") == "MULTIPLE_CATEGORIES"
  assert zeshel.category_of("Agent", "The Agent") == zeshel.AMBIGUOUS_SUBSTRING
  assert zeshel.category_of("Emperor", "Palpatine") == zeshel.LOW_OVERLAP
  # A prefix that is not followed by a parenthesised phrase is only a substring.
  assert zeshel.category_of("Bat", "Batman (Lego)") == zeshel.AMBIGUOUS_SUBSTRING
  assert zeshel.category_of("Batman", "Batman Returns") == zeshel.AMBIGUOUS_SUBSTRING
  assert zeshel.category_of("Batman", "Batman ()") == zeshel.AMBIGUOUS_SUBSTRING
  # Whitespace is normalized; case is ignored unless asked for.
  assert zeshel.category_of("the  doctor", "The Doctor") == zeshel.HIGH_OVERLAP
  assert zeshel.category_of("the doctor", "The Doctor", case_sensitive=True) == "LOW_OVERLAP"


def test_tokenize_is_the_convention_of_the_released_texts(excerpt):
  ds = zeshel.ZeshelDataset(excerpt)
  for world in ds.worlds():
    for entity in ds.iter_entities(world):
      assert zeshel.tokenize(entity.text) == entity.text.split()
      assert zeshel.tokenize(entity.title) == entity.title.split()
  assert zeshel.tokenize("Jovanka's C++ (1268) snake_case") == [
      "Jovanka", "'", "s", "C", "+", "+", "(", "1268", ")", "snake", "_", "case"]


# -- validation ------------------------------------------------------------------------------


def test_malformed_json(copy):
  rewrite_line(copy / "mentions" / "sample.json", 2, lambda r: '{"mention_id": "X", ')
  message = mentions_error(copy)
  assert message.startswith(f"{copy / 'mentions' / 'sample.json'}:2: malformed JSON")


def test_not_an_object(copy):
  rewrite_line(copy / "mentions" / "sample.json", 3, lambda r: json.dumps([r]))
  message = mentions_error(copy)
  assert message.startswith(f"{copy / 'mentions' / 'sample.json'}:3: expected a JSON object")


def test_missing_key(copy):
  rewrite_line(copy / "mentions" / "sample.json", 3,
               lambda r: {k: v for k, v in r.items() if k != "label_document_id"})
  assert mentions_error(copy).startswith(where(copy, 3, "label_document_id") + "missing")


@pytest.mark.parametrize("field,value,expected", [
    ("start_index", "614", "expected int, got str"),
    ("end_index", 615.0, "expected int, got float"),
    ("start_index", True, "expected int, got bool"),
    ("text", 7, "expected str, got int"),
    ("category", 1, "expected str, got int"),
])
def test_wrong_type(copy, field, value, expected):
  rewrite_line(copy / "mentions" / "sample.json", 1, updated(**{field: value}))
  assert mentions_error(copy).startswith(where(copy, 1, field) + expected)


def test_missing_category_is_none(copy):
  rewrite_line(copy / "mentions" / "sample.json", 2,
               lambda r: {k: v for k, v in r.items() if k != "category"})
  mentions = list(zeshel.ZeshelDataset(copy).iter_mentions("sample"))
  assert mentions[1].category is None and mentions[0].category == "LOW_OVERLAP"


def test_unknown_context_document(copy):
  rewrite_line(copy / "mentions" / "sample.json", 4, updated(context_document_id="NOPE"))
  message = mentions_error(copy)
  assert message.startswith(where(copy, 4, "context_document_id") + "unknown document 'NOPE'")


def test_unknown_label_document(copy):
  rewrite_line(copy / "mentions" / "sample.json", 2, updated(label_document_id="NOPE"))
  assert mentions_error(copy).startswith(where(copy, 2, "label_document_id") + "unknown")


def test_label_outside_corpus_world(copy):
  # 925ED6501F6D4BD6 is a military document; the mention claims another world.
  rewrite_line(copy / "mentions" / "sample.json", 1, updated(corpus="starwars"))
  message = mentions_error(copy)
  assert message.startswith(where(copy, 1, "label_document_id"))
  assert "'military'" in message and "'starwars'" in message


def test_unknown_corpus(copy):
  rewrite_line(copy / "mentions" / "sample.json", 1, updated(corpus="lego"))
  assert mentions_error(copy).startswith(where(copy, 1, "corpus") + "unknown world 'lego'")


@pytest.mark.parametrize("start,end,field", [
    (-1, 615, "start_index"),
    (10**6, 10**6, "start_index"),
    (614, 10**6, "end_index"),
    (615, 614, "end_index"),
])
def test_span_outside_document_or_reversed(copy, start, end, field):
  rewrite_line(copy / "mentions" / "sample.json", 1, updated(start_index=start, end_index=end))
  message = mentions_error(copy)
  assert message.startswith(where(copy, 1, field))
  assert "1478 tokens" in message or "before start_index" in message


def test_text_mismatch_error_and_warn(copy):
  rewrite_line(copy / "mentions" / "sample.json", 3, updated(text="Mistfell"))
  message = mentions_error(copy)
  assert message.startswith(where(copy, 3, "text") + "'Mistfell' does not match")
  assert "'Mistfall'" in message
  with pytest.warns(zeshel.ZeshelFormatWarning, match=r"sample\.json:3: field 'text'"):
    mentions = list(zeshel.ZeshelDataset(copy, text_mismatch="warn").iter_mentions("sample"))
  assert len(mentions) == 4 and mentions[2].text == "Mistfell"


def test_text_compared_after_whitespace_normalization(copy):
  rewrite_line(copy / "mentions" / "sample.json", 2, updated(text=" Amasis ,\tOphidian  "))
  assert len(list(zeshel.ZeshelDataset(copy).iter_mentions("sample"))) == 4


def test_duplicate_mention_id(copy):
  path = copy / "mentions" / "sample.json"
  first = json.loads(path.read_text().splitlines()[0])["mention_id"]
  rewrite_line(path, 4, updated(mention_id=first))
  message = mentions_error(copy)
  assert message.startswith(where(copy, 4, "mention_id") + f"duplicate id {first!r}")
  assert "line 1" in message


def test_duplicate_document_id_in_one_file(copy):
  path = copy / "documents" / "military.json"
  first = json.loads(path.read_text().splitlines()[0])["document_id"]
  rewrite_line(path, 5, updated(document_id=first))
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    list(zeshel.ZeshelDataset(copy).iter_entities("military"))
  assert str(info.value).startswith(f"{path}:5: field 'document_id': duplicate id {first!r}")
  with pytest.raises(zeshel.ZeshelFormatError, match=r"military\.json:5: field 'document_id'"):
    zeshel.ZeshelDataset(copy).build_index()


def test_duplicate_document_id_across_files(copy):
  military = copy / "documents" / "military.json"
  starwars = copy / "documents" / "starwars.json"
  first = json.loads(military.read_text().splitlines()[1])["document_id"]
  rewrite_line(starwars, 3, updated(document_id=first))
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    zeshel.ZeshelDataset(copy).build_index()
  # Worlds are indexed in name order: military first, so starwars holds the duplicate.
  assert str(info.value).startswith(f"{starwars}:3: field 'document_id': duplicate id")
  assert f"{military}:2" in str(info.value)


def test_document_missing_field(copy):
  path = copy / "documents" / "pro_wrestling.json"
  rewrite_line(path, 2, lambda r: {k: v for k, v in r.items() if k != "text"})
  with pytest.raises(zeshel.ZeshelFormatError) as info:
    list(zeshel.ZeshelDataset(copy).iter_mentions("sample"))
  assert str(info.value).startswith(f"{path}:2: field 'text': missing")


def test_not_a_zeshel_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="documents"):
    zeshel.ZeshelDataset(tmp_path)
  with pytest.raises(ValueError, match="text_mismatch"):
    zeshel.ZeshelDataset(tmp_path, text_mismatch="ignore")
