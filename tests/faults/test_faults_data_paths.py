"""Bad data and unsafe paths (issue #30, items 5 and 6): each bad input is an error naming
its file, line and field (or a warning where it is legal but suspicious), and no name read
from a flag or a data file reaches the filesystem outside its folder before it is refused.
"""

import builtins
import io
import json
import logging
import os
import pathlib
import pickle

import ml_collections
import pytest

import tiny_world
from zel_jax import link as link_cli
from zel_jax.data import convert, crosslang, examples, zeshel
from zel_jax.data import candidates as candidates_lib
from zel_jax.data.crosslang import cli as crosslang_cli
from zel_jax.data.crosslang import reference
from zel_jax.evals import base as evals_base
from zel_jax.evals import linking
from zel_jax.recipes.blink import biencoder


@pytest.fixture
def world(tmp_path):
  return tiny_world.write_world(tmp_path / "data", mentions_per_split=(8, 0, 4))


@pytest.fixture
def touched(monkeypatch):
  """Every path opened, stat'ed or listed while the test runs (the calls still happen)."""
  paths = []

  def spy(original):
    def call(path, *args, **kwargs):
      if isinstance(path, (str, os.PathLike)):
        paths.append(os.fspath(path))
      return original(path, *args, **kwargs)
    return call

  for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"),
                       (os, "lstat"), (os, "scandir"), (os, "listdir")):
    monkeypatch.setattr(module, name, spy(getattr(module, name)))
  return paths


def _outside(paths, root: pathlib.Path) -> list[str]:
  """The paths that step out with '..' or lie in the test's folder outside root (the rest,
  Python's own files, are not the code under test's)."""
  region, top = os.path.abspath(root.parent), os.path.abspath(root)
  inside = lambda p, d: os.path.abspath(p) == d or os.path.abspath(p).startswith(d + os.sep)
  return [p for p in paths if ".." in pathlib.PurePath(p).parts or
          (inside(p, region) and not inside(p, top))]


def _mention_line(world: pathlib.Path, **changes) -> str:
  record = json.loads((world / "mentions" / "train.json").read_text().splitlines()[0])
  return json.dumps({**record, **changes}) + "\n"


def _shell_linker(dataset=None) -> linking.Linker:
  """A Linker without a model: the input checks run before anything is encoded."""
  linker = object.__new__(linking.Linker)
  linker.dataset, linker.documents = dataset, None
  linker.config = ml_collections.ConfigDict({"data": {"mention_length": 16}})
  return linker


# -- item 5: bad data -----------------------------------------------------------------------


def test_empty_mentions_split_is_an_error_naming_the_file(world):
  dataset = zeshel.ZeshelDataset(world)
  with pytest.raises(zeshel.ZeshelFormatError, match=r"mentions/val.json: split 'val' has "
                     r"no mentions"):
    examples.mention_set(dataset, "val", None, 16, {})
  # Training on it said "need at least one array to concatenate" from deep in numpy.
  config = ml_collections.ConfigDict({"data": {"window_words": -1, "train_split": "val",
                                               "entity_length": 8, "mention_length": 8}})
  with pytest.raises(zeshel.ZeshelFormatError, match=r"val.json: split 'val' has no"):
    biencoder.training_data(config, dataset, None)


def test_whitespace_only_mention_is_an_error_naming_line_and_field(world, tmp_path):
  (world / "mentions" / "blank.json").write_text(
      _mention_line(world, mention_id="ok") + _mention_line(world, text="   "))
  with pytest.raises(zeshel.ZeshelFormatError, match=r"blank.json:2: field 'text': '   ': "
                     r"empty or only whitespace"):
    list(zeshel.ZeshelDataset(world).iter_mentions("blank", validate=False))
  # A link input whose span is only spaces was linked as an empty mention.
  inputs = tmp_path / "in.jsonl"
  inputs.write_text('\n{"text": "the   cache", "start": 3, "end": 6}\n')
  with pytest.raises(ValueError, match=r"in.jsonl: line 2: field 'start': span \[3, 6\) "
                     r"'   ' is only whitespace"):
    link_cli.link_file(_shell_linker(), str(inputs), None, 4)
  with pytest.raises(ValueError, match=r"input line 1: field 'start'.*only whitespace"):
    _shell_linker().link(["a [[ ]] b"])


def test_entity_with_empty_title_and_text_is_an_error(world, tmp_path):
  (world / "documents" / "stubs.json").write_text(
      '{"document_id": "S1", "title": "stub", "text": "a stub"}\n'
      '{"document_id": "S2", "title": " ", "text": ""}\n')
  with pytest.raises(zeshel.ZeshelFormatError, match=r"stubs.json:2: field 'title': empty, "
                     r"and so is 'text'"):
    list(zeshel.ZeshelDataset(world).iter_entities("stubs"))
  # The converter refuses the row too, rather than write a file the reader refuses.
  kb = tmp_path / "kb.jsonl"
  kb.write_text('{"id": 1, "title": "a", "text": "b"}\n{"id": 2, "title": "", "text": ""}\n')
  with pytest.raises(zeshel.ZeshelFormatError, match=r"kb.jsonl:2: field 'title': empty"):
    convert.convert_kb(kb, "jsonl", "mine", tmp_path / "out")


def test_entity_with_empty_text_but_a_title_is_warned_once(world, caplog):
  (world / "documents" / "stubs.json").write_text(
      '{"document_id": "S1", "title": "stub", "text": ""}\n'
      '{"document_id": "S2", "title": "full", "text": "a full entry"}\n'
      '{"document_id": "S3", "title": "bare", "text": " "}\n')
  dataset = zeshel.ZeshelDataset(world)
  with caplog.at_level(logging.WARNING):
    assert [e.title for e in dataset.iter_entities("stubs")] == ["stub", "full", "bare"]
    list(dataset.iter_entities("stubs"))  # Read again (each evaluation does): not repeated.
  said = [r.getMessage() for r in caplog.records if "stubs.json" in r.getMessage()]
  assert len(said) == 1 and "stubs.json:1: field 'text': empty in 2 of 3 entities" in said[0]


def test_duplicate_json_key_is_an_error_naming_the_key(world, tmp_path):
  (world / "documents" / "dup.json").write_text(
      '{"document_id": "D1", "title": "a", "text": "b", "title": "c"}\n')
  with pytest.raises(zeshel.ZeshelFormatError, match=r"dup.json:1: field 'title': key "
                     r"'title' given twice"):
    list(zeshel.ZeshelDataset(world).iter_entities("dup"))
  (world / "mentions" / "dup.json").write_text(
      _mention_line(world).replace('"corpus"', '"start_index": 0, "corpus"', 1))
  with pytest.raises(zeshel.ZeshelFormatError, match=r"dup.json:1: field 'start_index'"):
    list(zeshel.ZeshelDataset(world).iter_mentions("dup"))
  kb = tmp_path / "kb.jsonl"
  kb.write_text('{"id": 1, "title": "a", "text": "b"}\n{"id": 2, "id": 3, "title": "a", '
                '"text": "b"}\n')
  with pytest.raises(zeshel.ZeshelFormatError, match=r"kb.jsonl:2: field 'id': key 'id'"):
    convert.convert_kb(kb, "jsonl", "mine", tmp_path / "out")
  inputs = tmp_path / "in.jsonl"
  inputs.write_text('{"text": "the cache", "start": 0, "end": 3, "start": 4}\n')
  with pytest.raises(ValueError, match=r"in.jsonl:1: field 'start': key 'start' given"):
    link_cli.link_file(_shell_linker(), str(inputs), None, 4)


@pytest.mark.parametrize("value", ['"abc"', '"4"', "4.5", "true"])
def test_link_input_offset_that_is_not_an_integer_names_line_and_field(tmp_path, value):
  inputs = tmp_path / "in.jsonl"
  inputs.write_text('{"text": "the cache", "start": 4, "end": 9}\n'
                    f'{{"text": "the cache", "start": {value}, "end": 9}}\n')
  with pytest.raises(ValueError, match=r"in.jsonl: line 2: field 'start': expected an "
                     r"integer"):
    link_cli.link_file(_shell_linker(), str(inputs), None, 4)


def test_end_to_end_input_that_is_not_an_object_names_its_line():
  # It failed with "'list' object has no attribute 'get'", naming no line.
  with pytest.raises(ValueError, match=r"input line 2: field 'text' missing or not a"):
    linking.link_documents(None, [{"text": "fine"}, ["not", "an", "object"]], "computing")


def test_link_input_zeshel_record_with_bad_start_index_names_line_and_field(world, tmp_path):
  inputs = tmp_path / "in.jsonl"
  inputs.write_text(json.dumps({"context_document_id": "C000", "start_index": "abc",
                                "end_index": 1}) + "\n")
  with pytest.raises(ValueError, match=r"in.jsonl: line 1: field 'start_index': expected "
                     r"an integer, got str 'abc'"):
    link_cli.link_file(_shell_linker(zeshel.ZeshelDataset(world)), str(inputs), None, 4)


# -- item 6: unsafe paths -------------------------------------------------------------------


def test_world_name_leaving_the_folder_is_refused_before_any_file_access(world, touched):
  sentinel = world.parent / "x.json"  # DATA/documents/../../x.json
  sentinel.write_text('{"document_id": "SECRET", "title": "secret", "text": "outside"}\n')
  dataset = zeshel.ZeshelDataset(world)
  touched.clear()
  for name in ("../../x", "..", "a/b", ""):
    with pytest.raises(ValueError, match=r"world .* is not a plain name"):
      list(dataset.iter_entities(name))
  with pytest.raises(ValueError, match=r"split '../mentions/train' is not a plain name"):
    list(dataset.iter_mentions("../mentions/train"))
  assert _outside(touched, world) == []


def test_mention_corpus_leaving_the_folder_is_an_error_naming_line_and_field(world, touched):
  (world / "mentions" / "evil.json").write_text(_mention_line(world, corpus="../../x"))
  with pytest.raises(zeshel.ZeshelFormatError, match=r"evil.json:1: field 'corpus': world "
                     r"'../../x' is not a plain name"):
    list(zeshel.ZeshelDataset(world).iter_mentions("evil", validate=False))
  assert _outside(touched, world) == []


def test_world_flags_leaving_the_folder_are_refused(world, tmp_path, touched, capsys):
  kb = tmp_path / "kb.jsonl"
  kb.write_text('{"id": 1, "title": "a", "text": "b"}\n')
  out = tmp_path / "deep" / "out"
  assert convert.main(["kb", f"--input={kb}", "--format=jsonl", "--world=../../escaped",
                       f"--out={out}"]) == 1
  assert "--world '../../escaped' is not a plain name" in capsys.readouterr().err
  assert not (out.parent / "escaped.json").exists()  # OUT/documents/../../escaped.json
  with pytest.raises(ValueError, match=r"--split '../x' is not a plain name"):
    convert.convert_mentions(kb, "jsonl", "mine", "../x", out)
  with pytest.raises(ValueError, match=r"--world '../x' is not a plain name"):
    evals_base.EvalRequest(world="../x")
  with pytest.raises(ValueError, match=r"--split '/etc/passwd' is not a plain name"):
    evals_base.EvalRequest(split="/etc/passwd")
  with pytest.raises(ValueError, match=r"world '../x' is not a plain name"):
    candidates_lib.path_of(str(tmp_path), "test", "../x")
  retriever = linking.LoadedRetriever(ml_collections.ConfigDict({"data": {"dir": str(world)}}),
                                      None, None, None, None, 0)
  with pytest.raises(ValueError, match=r"world '../../x' is not a plain name"):
    linking.Linker.for_world(retriever, str(tmp_path / "w"), str(world), "../../x")
  assert _outside(touched, tmp_path) == []


def _tac(tmp_path, docid: str) -> pathlib.Path:
  gold = tmp_path / "gold.tab"
  gold.write_text("sys\tQ0\tParis\tENG_ok:6-10\tm.1\tGPE\tNAM\n"
                  f"sys\tQ1\tParis\t{docid}:6-10\tm.1\tGPE\tNAM\n", encoding="utf-8")
  return gold


def test_tac_docid_leaving_the_source_folder_is_refused(tmp_path, touched):
  source = tmp_path / "tac" / "source"
  source.mkdir(parents=True)
  (source / "ENG_ok.xml").write_text("hello Paris world", encoding="utf-8")
  (tmp_path / "tac" / "SPA_secret.xml").write_text("hello Paris world", encoding="utf-8")
  gold = _tac(tmp_path, "../SPA_secret")
  touched.clear()
  with pytest.raises(crosslang.CrossLangFormatError, match=r"gold.tab:2: field "
                     r"'doc_id_offsets': DOCID '../SPA_secret' is not a plain name"):
    reference.read_tac_kbp(gold, source)
  assert not any("secret" in p for p in touched)
  # A language folder named by a DOCID prefix: "../../x_1" would write outside --out.
  with pytest.raises(crosslang.CrossLangFormatError, match=r"gold.tab:2: .*is not a plain"):
    reference.read_tac_kbp(_tac(tmp_path, "..\\..\\x_1"), source)
  # A document found under the folder whose real path is outside it (a link) is not read.
  (source / "SPA_link.xml").symlink_to(tmp_path / "tac" / "SPA_secret.xml")
  with pytest.raises(crosslang.CrossLangFormatError, match=r"gold.tab:2: field "
                     r"'doc_id_offsets': document .*SPA_link.xml resolves to .* outside"):
    reference.read_tac_kbp(_tac(tmp_path, "SPA_link"), source)
  # The writer refuses such a language too (mentions read some other way).
  evil = crosslang.XelMention("Q1", "../../evil", "hello Paris", 6, 11, "m.1")
  out = tmp_path / "deep" / "out"
  with pytest.raises(ValueError, match=r"language '../../evil' is not a plain name"):
    reference.convert_reference(str(out), [], [evil])
  assert not (out.parent / "evil").exists()  # OUT/mentions/../../evil/


class _RunsCode:
  """Unpickling this creates a marker file: what a hostile pickle could do instead."""

  def __init__(self, marker: pathlib.Path):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_wiki_pickle_is_refused_without_trust_pickle(tmp_path, capsys):
  marker = tmp_path / "marker"
  path = tmp_path / "wiki_de.pkl"
  path.write_bytes(pickle.dumps({"en_pages": _RunsCode(marker)}))
  with pytest.raises(SystemExit):
    crosslang_cli.main(["--wiki_pickle", str(path), "--languages", "de",
                        "--out", str(tmp_path / "out")])
  assert "--trust_pickle" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"wiki_de.pkl: not read: loading a pickle executes "
                     r"code"):
    reference.read_wiki_pickle(path, "de")
  assert not marker.exists()
  # The flag is what lets it run: the test's pickle does execute once trusted.
  with pytest.raises(crosslang.CrossLangFormatError):
    reference.read_wiki_pickle(path, "de", trust_pickle=True)
  assert marker.is_dir()
