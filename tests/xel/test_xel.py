"""Cross-language linking: the data builder and readers, the ranker, its losses and metrics
(hinge over the max negative, NIL thresholds, popularity re-ranking) and the recipe end to end
on the real multilingual encoder."""

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dictd_fixture import b64
import tiny_world
from zel_jax import losses, sharding
from zel_jax.data import crosslang
from zel_jax.data.crosslang import cli, freedict, reference
from zel_jax.recipes.xel import model as xel_model
from zel_jax.recipes.xel import trainer as xel_trainer
from zel_jax.recipes.xel import features as xel_features
from zel_jax.recipes.xel import data as xel_run_data
from zel_jax.recipes.xel import nil

NIL = nil.NIL_ROW


# ------------------------------------------------------------------------------------------
# Losses and metrics.


def test_hinge_uses_the_highest_scoring_negative():
  pos = jnp.array([0.9, 0.2, 0.5])
  neg = jnp.array([[-0.5, 0.1, -0.9], [0.8, -1.0, 0.0], [0.4, 0.45, 0.3]])
  # max(0, 1 - pos + max neg): 1 - 0.9 + 0.1, 1 - 0.2 + 0.8, 1 - 0.5 + 0.45
  expected = np.mean([0.2, 1.6, 0.95])
  assert float(losses.max_negative_hinge(pos, neg, 1.0)) == pytest.approx(expected, abs=1e-6)
  # Satisfied margins cost nothing; a masked row and masked negatives drop out.
  assert float(losses.max_negative_hinge(pos, neg - 5.0, 1.0)) == 0.0
  valid = jnp.array([True, False, True])
  assert float(losses.max_negative_hinge(pos, neg, 1.0, valid)) == pytest.approx(
      np.mean([0.2, 0.95]), abs=1e-6)
  keep = jnp.array([[True, False, True], [True, True, True], [True, True, True]])
  assert float(losses.max_negative_hinge(pos, neg, 1.0, negative_valid=keep)) == pytest.approx(
      np.mean([0.0, 1.6, 0.95]), abs=1e-6)  # Row 0: 1 - 0.9 - 0.5 < 0.


def test_hinge_gradient_reaches_only_the_max_negative():
  pos = jnp.array([0.0])
  grad = jax.grad(lambda n: losses.max_negative_hinge(pos, n, 1.0))(jnp.array([[0.1, 0.7,
                                                                                0.3]]))
  np.testing.assert_allclose(np.asarray(grad), [[0.0, 1.0, 0.0]])


def test_nil_threshold():
  scores = np.array([[0.9, 0.1], [0.2, -0.3], [-np.inf, -np.inf], [0.5, 0.6]])
  rows = np.array([[4, 7], [3, 1], [-1, -1], [2, 5]])
  top_row, top_score = nil.top_candidates(scores, rows)
  np.testing.assert_array_equal(top_row, [4, 3, NIL, 5])
  np.testing.assert_array_equal(nil.apply_nil_threshold(top_row, top_score, 0.3),
                                [4, NIL, NIL, 5])
  np.testing.assert_array_equal(nil.apply_nil_threshold(top_row, top_score, -np.inf),
                                [4, 3, NIL, 5])
  # Mention 1 is NIL in gold: any threshold in (0.2, 0.6] gets all four right.
  gold = np.array([4, NIL, NIL, 5])
  t = nil.select_nil_threshold(top_row, top_score, gold)
  assert 0.2 < t <= 0.6
  np.testing.assert_array_equal(nil.apply_nil_threshold(top_row, top_score, t), gold)
  # No gold NIL among linked mentions: never NIL is best.
  assert nil.select_nil_threshold(top_row, top_score, np.array([4, 3, NIL, 5])) == -np.inf


def test_nil_link_report():
  predicted = np.array([1, 2, NIL, 4, NIL, 6])
  gold = np.array([1, 3, NIL, NIL, 5, 6])
  r = nil.nil_link_report(predicted, gold)
  # Links predicted 4 (2 right); gold links 4 (2 found); equal labels 3 of 6.
  assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (50.0, 50.0, 50.0, 50.0)
  assert (r["gold_nil"], r["predicted_nil"], r["mentions"]) == (2, 2, 6)


def test_popularity_rerank():
  scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.5, 0.6, -np.inf], [-np.inf] * 3])
  rows = np.array([[0, 1, 2], [3, 4, 5], [1, 2, -1], [-1, -1, -1]])
  counts = np.array([1, 5, 5, 0, 0, 0])
  picked = nil.popularity_rerank(scores, rows, counts, top=10)
  # Row 0: rows 1 and 2 tie on 5, the better-scoring (1) wins. Row 1: none seen in training,
  # the top-scoring stays. Row 2: 2 scores above 1 and ties on count. Row 3: no candidates.
  np.testing.assert_array_equal(picked, [1, 3, 2, NIL])
  # Only the top-k are considered.
  np.testing.assert_array_equal(nil.popularity_rerank(scores, rows, counts, top=1),
                                [0, 3, 2, NIL])


def test_ranker_shapes_range_and_baseline():
  model = xel_model.XelRanker(name_layers=(8,), context_layers=(8,), type_layers=(4,),
                              score_layers=(8,), num_mention_types=3, num_entity_types=2,
                              type_dim=4)
  params = xel_model.init_params(model, 6, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  mention = {"name": jnp.asarray(rng.normal(size=(2, 6)), jnp.float32),
             "context": jnp.asarray(rng.normal(size=(2, 6)), jnp.float32),
             "type": jnp.array([0, 2])}
  entities = {"name": jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32),
              "context": jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32),
              "types": jnp.asarray(rng.integers(0, 2, size=(2, 5, 2)), jnp.float32)}
  scores = model.apply({"params": params}, mention, entities)
  assert scores.shape == (2, 5) and bool(jnp.all(jnp.abs(scores) < 1))
  logits = model.clone(squash=False).apply({"params": params}, mention, entities)
  np.testing.assert_allclose(np.tanh(np.asarray(logits)), np.asarray(scores), rtol=1e-5)
  match = model.apply({"params": params}, mention["name"], entities["name"],
                      method=xel_model.XelRanker.name_match)
  assert match.shape == (2, 5)
  # The NN baseline is the cosine of name representations: an entity named like the mention
  # scores 1.
  names = entities["name"].at[0, 3].set(mention["name"][0] * 2.0)
  nn = xel_model.nearest_neighbour_scores(mention["name"], names)
  assert float(nn[0, 3]) == pytest.approx(1.0, abs=1e-6) and int(jnp.argmax(nn[0])) == 3


def test_thresholds_from_config():
  assert xel_trainer.parse_thresholds("de=0.1, fr=-0.25") == {"de": 0.1, "fr": -0.25}
  assert xel_trainer.parse_thresholds("") == {}
  with pytest.raises(ValueError, match="'de' is not LANGUAGE=NUMBER"):
    xel_trainer.parse_thresholds("de")


# ------------------------------------------------------------------------------------------
# Data.

WORDNET = [(w, f"{w}\n    n 1: {gloss}\n") for w, gloss in [
    ("house", "a dwelling that serves as living quarters"),
    ("dog", "a domesticated carnivorous mammal that barks"),
    ("tree", "a tall perennial woody plant"),
    ("water", "a clear liquid that falls as rain"),
    ("book", "a written work or composition that has been published"),
    ("city", "a large and densely populated urban area"),
    ("bread", "food made from dough of flour and water baked"),
    ("port", "a place where ships can take on or discharge cargo"),
    ("harbour", "a sheltered port where ships can take on or discharge cargo"),
    ("church", "a place for public worship"),
    ("school", "an educational institution"),
    ("apple", "fruit with red or yellow or green skin"),
    ("natural gas", "a fossil fuel in the gaseous state"),
]] + [("run", "run\n    n 1: a score in baseball\n    v 1: move fast by using one's feet\n")]

GERMAN = [
    ("haus", "Haus /haʊs/ <n, neut, sg>\nhouse\n"),
    ("hund", "Hund /hʊnt/ <n, masc, sg>\n1. dog\n   Synonyms: {Köter}\n"),
    ("baum", "Baum <n, masc>\n[bot.] tree <n>\n"),
    ("wasser", "Wasser <n, neut>\nwater\n"),
    ("buch", "Buch <n, neut>\nbook\n"),
    ("stadt", "Stadt <n, fem>\ncity, town\n"),
    ("brot", "Brot <n, neut>\nbread\n"),
    ("hafen", "Hafen <n, masc>\nport, harbour\n"),
    ("laufen", "laufen <vi>\nto run\n"),
    ("erdgas", "Erdgas <n, neut>\nnaturalgas\n"),
    ("quatsch", "Quatsch <n, masc>\nhumbug talk\n"),
    ("gemütlichkeit", "Gemütlichkeit <n, fem>\nsnugness feeling\n"),
    ("der hund bellt laut", "der Hund bellt laut\nthe dog barks loudly\n"),
]
FRENCH = [
    ("maison", "maison /mɛzɔ̃/ <n, fem>\nhouse\n"),
    ("chien", "chien <n, masc>\ndog\n"),
    ("arbre", "arbre <n, masc>\ntree\n"),
    ("eau", "eau <n, fem>\nwater\n"),
    ("livre", "livre <n, masc>\nbook\n"),
    ("ville", "ville <n, fem>\ncity\n"),
    ("pain", "pain <n, masc>\nbread\n"),
    ("église", "église <n, fem>\nchurch\n"),
    ("école", "école <n, fem>\nschool\n"),
    ("pomme", "pomme <n, fem>\napple\n"),
    ("bof", "bof\nmeh whatever\n"),
]


def write_database(directory, name, entries):
  """NAME.index + NAME.dict with one index line per entry, its headword case-folded (FreeDict's
  entries start with two lines at column 0, which are not both headwords)."""
  directory.mkdir(parents=True, exist_ok=True)
  data, index = b"", []
  for headword, text in entries:
    raw = text.encode("utf-8")
    index.append((headword.lower(), len(data), len(raw)))
    data += raw
  (directory / f"{name}.index").write_text(
      "".join(f"{h}\t{b64(o)}\t{b64(n)}\n" for h, o, n in sorted(index)), encoding="utf-8")
  (directory / f"{name}.dict").write_bytes(data)


@pytest.fixture(scope="module")
def dictd_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("dictd")
  write_database(root / "wn", "wn", WORDNET)
  write_database(root / "fd", "freedict-deu-eng", GERMAN)
  write_database(root / "fd", "freedict-fra-eng", FRENCH)
  return root


@pytest.fixture(scope="module")
def xel_data(dictd_dirs, tmp_path_factory):
  out = tmp_path_factory.mktemp("xel") / "data"
  stats = freedict.build(str(dictd_dirs / "fd"), str(dictd_dirs / "wn"), ["de", "fr"],
                          str(out), max_mentions=100, nil_share=0.5, kb_size=14,
                          split_shares=(0.6, 0.2))
  return out, stats


def test_freedict_entry_parsing():
  assert freedict.freedict_translations("Hund <n>\n1. dog 2. hound\n   Synonyms: {Köter}\n") \
      == ["dog", "hound"]
  assert freedict.freedict_translations("Baum <n>\n[bot.] tree <n>, shrub (small)\n\n see: "
                                         "{x}\n") == ["tree", "shrub"]
  assert freedict.freedict_pos("Haus /haʊs/ <n, neut, sg>\nhouse\n") == "n"
  assert freedict.freedict_pos("laufen <vi>\nto run\n") == "v"
  assert freedict.freedict_pos("bof\nmeh\n") == ""
  assert freedict.freedict_headword("Haus /haʊs/ <n>\nhouse\n", "haus") == "Haus"


def test_build_links_nil_and_skips_ambiguous(xel_data):
  out, stats = xel_data
  kb = {e.id: e for e in crosslang.read_kb(out / "kb.jsonl")}
  by_name = {e.name: e.id for e in kb.values()}
  assert kb[by_name["run"]].types == ("n", "v")
  assert kb[by_name["dog"]].description == "a domesticated carnivorous mammal that barks"
  mentions = {m.text: m for lang in ("de", "fr") for split in crosslang.SPLITS
              for m in crosslang.read_mentions(crosslang.mentions_path(out, lang, split))}
  assert mentions["Haus"].label == by_name["house"] and mentions["Haus"].type == "n"
  assert mentions["maison"].label == by_name["house"]
  assert mentions["laufen"].label == by_name["run"] and mentions["laufen"].type == "v"
  assert mentions["Erdgas"].label == by_name["natural gas"]  # "naturalgas" squashed
  assert mentions["Quatsch"].label == crosslang.NIL
  # Hafen names both port and harbour: left out; Stadt names city (town is not in the KB).
  assert "Hafen" not in mentions and mentions["Stadt"].label == by_name["city"]
  assert stats["languages"]["de"]["ambiguous_skipped"] == 1
  # A one-word headword's context is the shortest phrase of its dictionary containing it.
  hund = mentions["Hund"]
  assert hund.context == "der Hund bellt laut" and (hund.start, hund.end) == (4, 8)
  # Name pairs never come from dev or test mentions.
  held_out = {m.text for lang in ("de", "fr") for split in ("dev", "test")
              for m in crosslang.read_mentions(crosslang.mentions_path(out, lang, split))}
  pairs = crosslang.read_pairs(out / "pairs" / "de.jsonl")
  assert pairs and not {s for s, _ in pairs} & held_out


def test_bad_mention_file_names_line_and_field(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text(json.dumps({"id": "a", "language": "de", "context": "Haus", "start": 0,
                              "end": 4, "label": "NIL"}) + "\n" +
                  json.dumps({"id": "b", "language": "de", "context": "Haus", "start": 2,
                              "end": 9, "label": "NIL"}) + "\n")
  with pytest.raises(crosslang.CrossLangFormatError, match=r"m.jsonl:2: field 'end'"):
    crosslang.read_mentions(path)
  path.write_text(json.dumps({"id": "a", "language": "de", "context": "Haus", "start": 0,
                              "end": 4, "label": "wn:x"}) + "\n")
  with pytest.raises(crosslang.CrossLangFormatError, match=r"m.jsonl:1: field 'label'"):
    crosslang.read_mentions(path, kb_ids={"wn:y"})


def test_reads_tac_kbp_layout(tmp_path):
  docs = tmp_path / "SPA" / "eval"
  docs.mkdir(parents=True)
  text = "El presidente Obama visitó Madrid ayer."
  (docs / "SPA_NW_001.xml").write_text('<?xml version="1.0"?>\n' + text, encoding="utf-8")
  start = text.index("Obama")
  tab = tmp_path / "gold.tab"
  tab.write_text(f"sys\tQ1\tObama\tSPA_NW_001:{start}-{start + 4}\tm.02mjmr\tPER\tNAM\t1.0\n"
                 f"sys\tQ2\tMadrid\tSPA_NW_001:{text.index('Madrid')}-"
                 f"{text.index('Madrid') + 5}\tNIL0001\tGPE\tNAM\t1.0\n", encoding="utf-8")
  mentions = reference.read_tac_kbp(tab, tmp_path / "SPA")
  assert [(m.id, m.text, m.label, m.language, m.type) for m in mentions] == [
      ("Q1", "Obama", "m.02mjmr", "spa", "PER"), ("Q2", "Madrid", crosslang.NIL, "spa", "GPE")]
  bad = tmp_path / "bad.tab"
  bad.write_text("sys\tQ1\tObama\tSPA_NW_001:0-4\tm.1\tPER\n", encoding="utf-8")
  with pytest.raises(crosslang.CrossLangFormatError, match="bad.tab:1: field 'mention_string'"):
    reference.read_tac_kbp(bad, tmp_path / "SPA")


def test_reads_wiki_pickle_layout(tmp_path):
  article = "Intro. Die Stadt Berlin liegt an der Spree."
  sent = article.index("Die")
  berlin, spree = article.index("Berlin") - sent, article.index("Spree") - sent
  data = {
      "en_pages": {"Berlin": {"_id": 17, "title": "Berlin", "article": "Berlin is a city.",
                              "categories": ["City"]}},
      "mentions": {"de": {"Doc": {(0, 1): {"sent": {"start": sent, "title": "Doc"},
                                           "link": {"start": berlin, "end": berlin + 6,
                                                    "id_ll": 17,
                                                    "title_ll": "Berlin"}}}}},
      "nil_mentions": {"de": {"Doc": {(0, 2): {"sent": {"start": sent, "title": "Doc"},
                                               "link": {"start": spree,
                                                        "end": spree + 5}}}}},
      "l2_pages": {"de": {"Doc": {"article": article}}},
  }
  path = tmp_path / "wiki_de.pkl"
  path.write_bytes(pickle.dumps(data))
  kb, mentions = reference.read_wiki_pickle(path, "de", trust_pickle=True)
  assert [(e.id, e.name, e.types) for e in kb] == [("17", "Berlin", ("City",))]
  assert [(m.text, m.label) for m in mentions] == [("Berlin", "17"), ("Spree", crosslang.NIL)]
  # The CLI writes them in this layout, readable by the trainer's reader.
  assert cli.main(["--wiki_pickle", str(path), "--trust_pickle", "--languages", "de",
                         "--out", str(tmp_path / "out")]) == 0
  written = [m for split in crosslang.SPLITS for m in crosslang.read_mentions(
      crosslang.mentions_path(tmp_path / "out", "de", split), {"17"})]
  assert sorted(m.text for m in written) == ["Berlin", "Spree"]


# ------------------------------------------------------------------------------------------
# The recipe on the real encoder.


def _config(data_dir, **overrides):
  from zel_jax.configs import xel as xel_config  # pylint: disable=g-import-not-at-top
  config = xel_config.get_config("runlocal")
  config.data.dir = str(data_dir)
  config.model.context_tokens = 16
  config.model.description_tokens = 16
  config.model.name_tokens = 8
  config.model.name_layers = (16,)
  config.model.context_layers = (16,)
  config.model.score_layers = (16,)
  config.model.min_type_count = 0
  config.negatives.num = 3
  config.triage.k = 4
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 20
  config.log_every = 10
  config.checkpoint_every = 10
  config.optimizer.learning_rate = 1e-3
  return tiny_world._override(config, overrides)  # pylint: disable=protected-access


def test_prepare_draws_negatives_other_than_gold_and_repeats_them(xel_data, tmp_path):
  out, _ = xel_data
  config = _config(out, **{"data.train_languages": "de"})
  data = xel_run_data.XelData(config)
  assert data.train_languages == ["de"] and data.eval_languages == ["de", "fr"]
  features = xel_features.Features.__new__(xel_features.Features)  # Hand-made tables, no encoder.
  e = len(data.kb)
  features.kb = {"name": np.eye(e, dtype=np.float32), "context": np.zeros((e, 8), np.float32)}
  features.pairs = {"source": np.ones((5, 8), np.float32), "english": np.ones((5, 8), np.float32)}
  prepare = xel_trainer.make_prepare(config, data, features)
  gold = np.array([0, 3, 5, 5, 1, 2, 4, 0])
  local = {"gold": gold, "mention_name": np.zeros((8, 8), np.float32),
           "example_index": np.arange(8, dtype=np.int32), "valid": np.ones(8, bool)}
  first = prepare(dict(local), None, 0)
  again = prepare(dict(local), None, 0)
  np.testing.assert_array_equal(first["entity_name"], again["entity_name"])
  rows = first["entity_name"].argmax(-1)  # Row i of the KB is the one-hot name e_i.
  np.testing.assert_array_equal(rows[:, 0], gold)
  assert not np.any(rows[:, 1:] == gold[:, None])
  assert first["aux_english"].shape == (8, 4, 8)
  other_epoch = prepare(dict(local), None, 1)
  assert not np.array_equal(other_epoch["entity_name"], first["entity_name"])


def test_recipe_trains_evaluates_and_reuses_features(xel_data, tmp_path):
  out, _ = xel_data
  workdir = tmp_path / "w"
  config = _config(out)
  result = xel_trainer.train_and_evaluate(config, str(workdir))
  report = json.loads((workdir / "eval_test.json").read_text())
  assert report["train_languages"] == ["de", "fr"]
  assert set(report["languages"]) == {"de", "fr"}
  for language in ("de", "fr"):
    r = report["languages"][language]
    for system in ("ranker", "nn", "ranker+popularity"):
      assert set(r[system]) >= {"precision", "recall", "f1", "accuracy", "mentions"}
    assert 0.0 <= r["triage_recall"] <= 100.0
  assert report["all"]["ranker"]["mentions"] == sum(
      r["ranker"]["mentions"] for r in report["languages"].values())
  thresholds = json.loads((workdir / "nil_thresholds.json").read_text())
  assert set(thresholds["ranker"]) == {"de", "fr"}
  written = (workdir / "candidates" / "fr" / "test.jsonl").read_text().splitlines()
  assert len(written) == report["languages"]["fr"]["ranker"]["mentions"]
  assert np.isfinite(result["loss"])
  # Every feature comes back from the cache: the encoder is never loaded again.
  config = _config(out)
  features = xel_features.Features(config, xel_run_data.XelData(config), str(workdir),
                                  sharding.make_mesh(config.mesh))
  assert features._encoder is None
  # The saved run evaluates again from its checkpoint, to the same numbers.
  again = xel_trainer.run_eval(str(workdir), ("test",))["test"]
  assert again["all"] == report["all"]


def test_pair_similarity_separates_aligned_from_shuffled():
  rng = np.random.default_rng(0)
  source = rng.normal(size=(50, 16)).astype(np.float32)
  aligned = xel_features.pair_similarity(source, source + 0.1 * rng.normal(size=(50, 16)))
  assert aligned["translated"] > 0.9 and abs(aligned["random"]) < 0.2
  unrelated = xel_features.pair_similarity(source, rng.normal(size=(50, 16)))
  assert abs(unrelated["translated"]) < 0.2


def test_candidates_from_a_given_file(xel_data, tmp_path):
  out, _ = xel_data
  config = _config(out, **{"triage.source": "file", "triage.k": 3})
  data = xel_run_data.XelData(config)
  mentions = data.split("fr", "test")
  ids = [e.id for e in data.kb]
  path = crosslang.candidates_path(out, "fr", "test")
  crosslang.write_jsonl(path, ({"id": m.id, "candidates": ["not-in-kb", ids[i], ids[i + 1]],
                                "scores": [9.0, 0.5, 0.25]} for i, m in enumerate(mentions)))
  rows, scores = xel_trainer.candidates(config, data, None, "fr", "test", str(tmp_path))
  # Unknown ids drop out; the rest keep their order and scores; the slot left is empty.
  np.testing.assert_array_equal(rows[:, 0], np.arange(len(mentions)))
  np.testing.assert_array_equal(rows[:, 2], -1)
  assert np.all(scores[:, 1] == 0.25) and np.all(np.isneginf(scores[:, 2]))
  path.unlink()
