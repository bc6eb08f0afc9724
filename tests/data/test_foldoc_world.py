"""The FOLDOC world built from a real dict-foldoc excerpt: entity titles as written ("high-level
language", not "high - level language"), mention categories of the tokenized forms as before,
ETZEL's reading of descriptions as before, and the linker's output titles those of the
documents."""

import dataclasses
import json
import pathlib

import pytest

import tiny_world
from zel_jax import recipes, workdir_io
from zel_jax.configs import etzel_typing
from zel_jax.data import foldoc, zeshel
from zel_jax.evals import linking
from zel_jax.recipes.etzel import typer
from zel_jax.recipes.etzel import types as typing_data

EXCERPT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "worlds" / "dict-foldoc"
WRITTEN = {"high-level language", "lambda-calculus", "multi-user", "time-sharing",
           "Kamin's interpreters"}


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("foldoc")
  stats = foldoc.build_world(EXCERPT / "usr" / "share" / "dictd", "foldoc", out)
  return out, stats, read_jsonl(out / "documents" / "foldoc.json")


def test_titles_are_kept_as_written(world):
  _, stats, documents = world
  titles = [d["title"] for d in documents]
  assert len(titles) == stats["entities"]
  assert WRITTEN <= set(titles)
  assert not [t for t in titles if " - " in t or " ' " in t]
  by_title = {d["title"]: d for d in documents}
  # The text is tokenized like ZESHEL texts, its headword line included.
  assert by_title["high-level language"]["text"].startswith("high - level language ")


def test_categories_compare_the_tokenized_title(world):
  out, stats, documents = world
  title_of = {d["document_id"]: d["title"] for d in documents}
  pairs = {}
  for split in ("train", "val", "test"):
    for m in read_jsonl(out / "mentions" / f"{split}.json"):
      title = title_of[m["label_document_id"]]
      assert m["category"] == zeshel.category_of(m["text"], " ".join(zeshel.tokenize(title)))
      pairs[(m["text"].lower(), title)] = m["category"]
  # A link that names its entry exactly is HIGH_OVERLAP, punctuation or not.
  for text, title in (("lambda - calculus", "lambda-calculus"), ("multi - user", "multi-user"),
                      ("kamin ' s interpreters", "Kamin's interpreters")):
    assert pairs[(text, title)] == zeshel.HIGH_OVERLAP
  assert sum(stats["categories"].values()) == stats["mentions_total"] == len(
      [1 for split in ("train", "val", "test")
       for _ in read_jsonl(out / "mentions" / f"{split}.json")])


def test_etzel_reads_descriptions_after_the_title_as_written_or_tokenized(world):
  # Texts open with the tokenized headword ("high - level language < ... >"): ETZEL's entity
  # description and distant labels skip it exactly as they did when titles were tokenized.
  _, _, documents = world
  index = typing_data.TypeVocabulary.load(etzel_typing.default_vocabulary()).index
  assert zeshel.strip_title("a - b c", "a-b") == zeshel.strip_title("a - b c", "a - b") == "c"
  assert zeshel.strip_title("x y", "a-b") == "x y"
  for d in documents:
    entity = zeshel.Entity(d["document_id"], d["title"], d["text"], "foldoc")
    tokenized = dataclasses.replace(entity, title=" ".join(zeshel.tokenize(d["title"])))
    assert typer.entity_description(entity) == typer.entity_description(tokenized)
    assert (typing_data.distant_labels(d["text"], index, entity.title)
            == typing_data.distant_labels(d["text"], index, tokenized.title))
  by_title = {d["title"]: d for d in documents}
  description = typer.entity_description(zeshel.Entity(
      "", "high-level language", by_title["high-level language"]["text"], "foldoc"))
  assert description.startswith("HLL ( HLL ) A programming language")


def test_linked_titles_are_the_documents_titles(world, tmp_path):
  out, _, documents = world
  config = tiny_world.tiny_config(out, tiny_world.write_tiny_bert(tmp_path / "bert"))
  workdir = tmp_path / "w"
  workdir_io.save_config(config, str(workdir))
  linker = recipes.open_linker(str(workdir), None, "foldoc", untrained=True)
  linked = linker.link([linking.marked_text("a [[high-level language]] like Lisp")],
                       top_k=len(documents))[0]
  title_of = {d["document_id"]: d["title"] for d in documents}
  assert len(linked["entities"]) == len(documents)
  assert all(e["title"] == title_of[e["document_id"]] for e in linked["entities"])
  assert WRITTEN <= {e["title"] for e in linked["entities"]}
