"""The benchmark's shared writer, the dictd builder and the assembled world-disjoint splits,
on real excerpts of the Debian packages (tests/fixtures/worlds/<package>/, paths as packaged)."""

import json
import pathlib
import subprocess

import pytest

from zel_jax.data import zeshel
from zel_jax.data.worlds import __main__ as worlds_cli
from zel_jax.data.worlds import assemble, dictd_world, pages

EXCERPTS = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "worlds"


def _by_title(world: pages.World) -> dict[str, zeshel.Entity]:
  return {e.title: e for e in world.entities}


def _mentions(world: pages.World) -> list[tuple[str, str, str, str]]:
  """(context title, anchor, gold title, category) of every mention."""
  titles = {e.document_id: e.title for e in world.entities}
  return [(titles[m.context_document_id], m.text, titles[m.label_document_id], m.category)
          for m in world.mentions]


def test_foldoc_references_keep_their_anchor_and_resolve_by_name():
  world = dictd_world.build(EXCERPTS / "dict-foldoc", "dict-foldoc")
  mentions = _mentions(world)
  # "{CPU}" in "scheduling" links to the entry whose alias it is, under another title.
  assert ("scheduling", "CPU", "central processing unit", zeshel.LOW_OVERLAP) in mentions
  # A plural/inflected anchor is kept as written, its gold is the entry it names.
  assert ("Lisp", "recursive", "recursion", zeshel.LOW_OVERLAP) in mentions
  assert ("Lisp", "lambda - calculus", "lambda - calculus", zeshel.HIGH_OVERLAP) in mentions
  # References to entries outside the excerpt are dropped and counted by target.
  assert dict(world.stats["top_unresolved"])["Unix"] == 4
  assert world.stats["links_dropped"]["unresolved"] == 443
  assert world.stats["mentions"] == len(world.mentions) == 95
  # Braces are markup: none is left in any text, and the anchor tokens sit in the context.
  lisp = _by_title(world)["Lisp"]
  assert "{" not in lisp.text and "}" not in lisp.text
  for m in world.mentions:
    tokens = next(e for e in world.entities if e.document_id == m.context_document_id).text
    assert " ".join(tokens.split()[m.start_index:m.end_index + 1]) == m.text


def test_gcide_titles_are_headwords_and_source_lines_are_dropped():
  world = dictd_world.build(EXCERPTS / "dict-gcide", "dict-gcide")
  entities = _by_title(world)
  assert "Acerous" in entities and "Acescent" in entities
  assert not any("\\" in title for title in entities)  # no pronunciation in a title
  texts = [e.text for e in world.entities]
  assert not any("1913 Webster" in t for t in texts)
  # Two entries share the headword (adjective and noun): two entities, one title.
  acescent = [e.text for e in world.entities if e.title == "Acescent"]
  assert len(acescent) == 2 and any("Turning sour" in t for t in acescent)
  assert ("Acerous", "Acerose", "Acerose", zeshel.HIGH_OVERLAP) in _mentions(world)
  assert ("Acid", "Acute", "Acute", zeshel.HIGH_OVERLAP) in _mentions(world)


def test_writer_merges_duplicates_and_drops_bad_links():
  text = "See alpha and the beta page, or gamma."
  span = lambda word, target: pages.Link(text.index(word), text.index(word) + len(word), target)
  found = [
      pages.Page("a", "Alpha", "Alpha is the first letter.", aliases=("a#top",)),
      pages.Page("b", "Beta (letter)", "Beta is the second.", aliases=("b#x",)),
      pages.Page("c", "Gamma", text, links=[
          span("alpha", "a#top"), span("beta", "b"), span("beta page", "b"),
          span("gamma", "c"), span("See", "nowhere"), pages.Link(3, 4, "a")]),
      pages.Page("b2", "Beta (letter)", "Beta is the second."),  # a copy: one entity
      pages.Page("d", "", "No title."),
      pages.Page("e", "Empty", "   "),
  ]
  world = pages.build_world("w", found)
  assert [e.title for e in world.entities] == ["Alpha", "Beta ( letter )", "Gamma"]
  assert world.stats["pages_duplicate_content"] == 1 and world.stats["pages_empty"] == 2
  assert [(m.text, m.category) for m in world.mentions] == [
      ("alpha", zeshel.HIGH_OVERLAP), ("beta", zeshel.MULTIPLE_CATEGORIES)]
  dropped = world.stats["links_dropped"]
  assert dropped == {"unresolved": 1, "to_self": 1, "empty_anchor": 1, "overlapping": 1}
  assert world.stats["top_unresolved"] == [["nowhere", 1]]
  # Ids are stable and differ across worlds.
  assert pages.entity_id("w", "a") == world.entities[0].document_id != pages.entity_id("v", "a")


def test_cross_split_copies_leave_earlier_splits():
  text = "a description long enough to count as the same entity text here"
  documents = {
      "dict-foldoc": [{"document_id": "F1", "text": text}, {"document_id": "F2", "text": "x"}],
      "sqlite3-doc": [{"document_id": "S1", "text": text.upper()}],
      "python3.11-doc": [{"document_id": "P1", "text": text}],
  }
  removed = assemble.cross_split_copies(documents)
  assert removed == {"dict-foldoc": {"F1"}, "sqlite3-doc": {"S1"}, "python3.11-doc": set()}


def test_sample_mentions_is_seeded_and_keeps_order():
  mentions = [{"mention_id": f"M{i:03d}"} for i in range(100)]
  first = assemble.sample_mentions(mentions, 10, seed=0)
  assert len(first) == 10 and first == assemble.sample_mentions(mentions, 10, seed=0)
  assert first != assemble.sample_mentions(mentions, 10, seed=1)
  assert first == sorted(first, key=lambda m: m["mention_id"])
  assert assemble.sample_mentions(mentions, 0, seed=0) == mentions


def _deb(package: str, out: pathlib.Path) -> None:
  """A real .deb of an excerpt, so the builder fetches and unpacks as it does apt's."""
  root = out / f"{package}-root"
  subprocess.run(["cp", "-r", str(EXCERPTS / package), str(root)], check=True)
  (root / "DEBIAN").mkdir()
  (root / "DEBIAN" / "control").write_text(
      f"Package: {package}\nVersion: 1.0-excerpt\nArchitecture: all\n"
      "Maintainer: zel_jax tests <tests@localhost>\nDescription: excerpt for tests\n")
  subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                  str(out / f"{package}_1.0-excerpt_all.deb")], check=True, capture_output=True)


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
  out = tmp_path_factory.mktemp("debs")
  for package in ("dict-foldoc", "dict-gcide", "sqlite3-doc", "python3.11-doc"):
    _deb(package, out)
  return out


def test_command_builds_splits_and_reuses_built_worlds(debs, tmp_path, capsys):
  out = tmp_path / "worlds"
  argv = [f"--out={out}", "--worlds=dict-foldoc,dict-gcide", f"--packages={debs}",
          "--max_train_mentions=50"]
  assert worlds_cli.main(argv) == 0
  summary = json.loads((out / "benchmark.json").read_text())
  assert summary["worlds"]["dict-foldoc"]["mentions_kept"] == 50
  assert summary["worlds"]["dict-gcide"]["mentions_kept"] == 20  # under the cap: all
  assert summary["split_mentions"] == {"train": 70, "val": 0, "test": 0}
  dataset = zeshel.ZeshelDataset(out)
  assert dataset.worlds() == ["dict-foldoc", "dict-gcide"]
  train = list(dataset.iter_mentions("train"))  # validated against the documents
  assert {m.corpus for m in train} == {"dict-foldoc", "dict-gcide"}
  assert len({m.mention_id for m in train}) == 70
  assert len(list(dataset.iter_entities("dict-gcide"))) == 25  # every entity kept
  # A second run reuses both built worlds (same packages and code) and writes the same files.
  stats = out / ".cache" / "built" / "dict-foldoc" / "stats.json"
  before = stats.stat().st_mtime_ns, (out / "mentions" / "train.json").read_bytes()
  assert worlds_cli.main(argv) == 0
  assert (stats.stat().st_mtime_ns, (out / "mentions" / "train.json").read_bytes()) == before
  # Asking for one world leaves no stale documents of the other.
  assert worlds_cli.main([f"--out={out}", "--worlds=dict-gcide", f"--packages={debs}"]) == 0
  assert zeshel.ZeshelDataset(out).worlds() == ["dict-gcide"]
  assert "wrote" in capsys.readouterr().out


def test_tfds_linking_config_reads_the_benchmark_alone(debs, tmp_path):
  from zel_jax.data import tfds_zeshel  # pylint: disable=g-import-not-at-top
  out = tmp_path / "worlds"
  assert worlds_cli.main([f"--out={out}", "--worlds=dict-foldoc", f"--packages={debs}"]) == 0
  tfds_zeshel.build(out, tmp_path / "tfds", kinds=(tfds_zeshel.LINKING,))
  source = tfds_zeshel.data_source(tmp_path / "tfds", "linking_train")
  reader = zeshel.ZeshelDataset(out)
  expected = list(reader.iter_mentions("train"))
  assert len(source) == len(expected) == 95
  for i in (0, 17, 94):
    record = {k: tfds_zeshel._text(v) for k, v in source[i].items()}
    left, span, right = reader.mention_tokens(expected[i])
    gold = reader.document(expected[i].label_document_id)
    assert record["mention"] == expected[i].text == " ".join(span)
    assert record["context_left"] == " ".join(left)
    assert record["context_right"] == " ".join(right)
    assert (record["label_title"], record["label_text"]) == (gold.title, gold.text)
    assert record["world"] == "dict-foldoc"


def test_splits_are_world_disjoint(debs, tmp_path):
  out = tmp_path / "worlds"
  assert worlds_cli.main([f"--out={out}", f"--packages={debs}",
                          "--worlds=dict-foldoc,sqlite3-doc,python3.11-doc"]) == 0
  dataset = zeshel.ZeshelDataset(out)
  world_of = {e.document_id: w for w in dataset.worlds() for e in dataset.iter_entities(w)}
  expected = {"train": {"dict-foldoc"}, "val": {"sqlite3-doc"}, "test": {"python3.11-doc"}}
  test_texts = {e.text for e in dataset.iter_entities("python3.11-doc")}
  for split, worlds in expected.items():
    mentions = list(dataset.iter_mentions(split))
    assert mentions and {m.corpus for m in mentions} == worlds
    # Context and gold both lie in the mention's own world: nothing of a test world is read
    # by a train or val mention, and no train/val document repeats a test text.
    assert {world_of[m.context_document_id] for m in mentions} == worlds
    assert {world_of[m.label_document_id] for m in mentions} == worlds
    if split != "test":
      assert not any(dataset.document(m.context_document_id).text in test_texts
                     for m in mentions)
  summary = json.loads((out / "benchmark.json").read_text())
  assert [summary["worlds"][w]["split"] for w in summary["worlds"]] == ["train", "val", "test"]
