"""Ultra-fine entity typing (Sui et al., 2022): the data (UFET reader, WordNet glosses,
distant labels), label-wise attention, the typing layers' independence from the rest of the
batch, extraction, and both stages end to end on a tiny world."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_world
from zel_jax import evaluate, losses, metric_writer
from zel_jax.configs import etzel_typing
from zel_jax.recipes.etzel import types as typing_data
from zel_jax.data import zeshel
from zel_jax.models import bert
from zel_jax.recipes.etzel import typer
from zel_jax.recipes.etzel import typing_model

VOCAB = ["person", "organization", "part", "language", "programming_language", "tool",
         "graphics", "code", "country_code", "computer", "system", "process"]


@pytest.fixture
def vocabulary(tmp_path):
  path = tmp_path / "types.txt"
  path.write_text("\n".join(VOCAB) + "\n")
  return typing_data.TypeVocabulary.load(path)


# -- data ------------------------------------------------------------------------------------


def test_vocabulary_file_errors_name_the_line(tmp_path):
  path = tmp_path / "types.txt"
  path.write_text("person\nplace\nperson\n")
  with pytest.raises(zeshel.ZeshelFormatError, match=r"types.txt:3: duplicate type label"):
    typing_data.TypeVocabulary.load(path)


def test_real_ufet_vocabulary():
  vocabulary = typing_data.TypeVocabulary.load(etzel_typing.default_vocabulary())
  assert len(vocabulary) == 10331
  assert vocabulary.labels[:3] == ("person", "object", "organization")
  assert "programming_language" in vocabulary.index


# A sample in the UFET crowd release's own layout (one JSON object per line; extra keys such
# as annot_id are ignored).
UFET_LINES = [
    {"annot_id": "APW_ENG_20101103.0539:6:0", "mention_span": "the company",
     "right_context_token": ["said", "on", "Tuesday", "."],
     "left_context_token": ["Shares", "rose", "after"], "y_str": ["organization", "company"]},
    {"annot_id": "WIKI_label_0001:2:1", "mention_span": "Guido",
     "right_context_token": ["designed", "Python", "."], "left_context_token": [],
     "y_str": ["person"]},
]


def test_ufet_reader_reads_the_release_layout(tmp_path):
  path = tmp_path / "crowd_dev.json"
  path.write_text("".join(json.dumps(r) + "\n" for r in UFET_LINES))
  examples = typing_data.read_ufet(path)
  assert examples[0] == typing_data.TypingExample(
      "the company", "Shares rose after", "said on Tuesday .", ("organization", "company"))
  assert examples[1].left == "" and examples[1].labels == ("person",)


def test_ufet_reader_errors_name_file_line_and_field(tmp_path, vocabulary):
  path = tmp_path / "crowd_train.json"
  bad = dict(UFET_LINES[1], left_context_token="not a list")
  path.write_text(json.dumps(UFET_LINES[1]) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(zeshel.ZeshelFormatError,
                     match=r"crowd_train.json:2: field 'left_context_token'"):
    typing_data.read_ufet(path)
  path.write_text(json.dumps(UFET_LINES[0]) + "\n")  # "company" is not in VOCAB
  with pytest.raises(zeshel.ZeshelFormatError, match=r":1: field 'y_str'.*company"):
    typing_data.read_ufet(path, vocabulary)


# Definitions as dict-wn stores them (wn.dict.dz of Debian's dict-wn 1:3.0-37).
WN_PERSON = ('person\n    n 1: a human being; "there was too much for one person to do"\n'
             '         [syn: {person}, {individual}, {someone}, {somebody},\n'
             '         {mortal}, {soul}]\n    2: a human body (usually including the '
             'clothing); "a weapon was\n       hidden on his person"\n')
WN_WAY = ('way\n    adv 1: to a great degree or by a great distance; very much\n'
          '           (`right smart\' is regional in the United States); "way\n'
          '           over budget"\n    n 1: how something is done or how it happens; "her '
          'dignified\n         manner"; "his rapid manner of talking"\n')
WN_OS = ('operating system\n    n 1: (computer science) software that controls the execution '
         'of\n         computer programs and may provide various services [syn:\n'
         '         {operating system}, {OS}]\n')


def test_first_gloss_takes_the_first_noun_sense():
  assert typing_data.first_gloss(WN_PERSON) == "a human being"
  assert typing_data.first_gloss(WN_WAY) == "how something is done or how it happens"
  assert typing_data.first_gloss(WN_OS) == ("(computer science) software that controls the "
                                            "execution of computer programs and may provide "
                                            "various services")


def test_distant_labels_from_real_foldoc_entries(vocabulary):
  index = vocabulary.index
  # FOLDOC entries as the FOLDOC world stores them (dict-foldoc 20230119-1).
  paintbrush = ("Paintbrush < graphics , tool > A Microsoft Windows tool for creating bitmap "
                "graphics . ( 1996 - 08 - 26 )")
  assert typing_data.distant_labels(paintbrush, index, "Paintbrush") == ["graphics", "tool"]
  pr = "pr < networking > The country code for Puerto Rico . ( 1999 - 01 - 27 )"
  # The tag is not in the vocabulary; the definition gives the longest match first.
  assert typing_data.distant_labels(pr, index, "pr") == ["country_code", "code"]
  gc = ("garbage collection garbage collect < programming > ( GC ) The process by which "
        "dynamically allocated storage is reclaimed during the execution of a program .")
  assert typing_data.distant_labels(gc, index, "garbage collection") == ["process"]
  # No tags, a copula: "X is a programming language" -> both vocabulary matches.
  python = "Python Python is an interpreted programming language created by Guido ."
  assert typing_data.distant_labels(python, index, "Python") == [
      "programming_language", "language"]
  assert typing_data.distant_labels("Foo Something happened .", index, "Foo") == []


# -- model -------------------------------------------------------------------------------------


def test_label_wise_attention_by_hand_with_padding():
  rng = np.random.default_rng(0)
  t, b, length, h = 5, 2, 4, 3
  v, w = rng.normal(size=(t, h)), rng.normal(size=(t, h))
  bias, x = rng.normal(size=t), rng.normal(size=(b, length, h))
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  got = np.asarray(typing_model.label_wise_logits(jnp.asarray(v), jnp.asarray(x),
                                                  jnp.asarray(mask), jnp.asarray(w),
                                                  jnp.asarray(bias)))
  for i in range(b):
    real = x[i, mask[i] > 0]
    for label in range(t):
      g = real @ v[label]
      a = np.exp(g - g.max()) / np.exp(g - g.max()).sum()
      z = a @ real
      np.testing.assert_allclose(got[i, label], w[label] @ z + bias[label], rtol=1e-5,
                                 atol=1e-6)
  # What sits at padded positions changes nothing.
  x2 = x.copy()
  x2[mask == 0] = 100.0
  got2 = typing_model.label_wise_logits(jnp.asarray(v), jnp.asarray(x2), jnp.asarray(mask),
                                        jnp.asarray(w), jnp.asarray(bias))
  np.testing.assert_allclose(got2, got, rtol=1e-6)


def test_multi_label_bce_by_hand():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  labels = jnp.array([[0, 2], [1, -1]])
  y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  per = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)
  np.testing.assert_allclose(losses.multi_label_bce(logits, labels), per.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.multi_label_bce(logits, labels, jnp.array([True, False])),
                             per[0], rtol=1e-5)


def _tiny_bert_config():
  return bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_position_embeddings=32,
                         hidden_dropout=0.0, attention_dropout=0.0)


def test_typing_layers_attend_over_tokens_not_the_batch():
  """The reference code's extra layers attended across the batch without a padding mask:
  here an example's outputs do not depend on the other examples or on its padding."""
  model = typing_model.TypeAwareBiEncoder(_tiny_bert_config(), num_types=7)
  params = model.init(jax.random.PRNGKey(0), *(jnp.zeros((1, 4), jnp.int32),) * 4)["params"]
  rng = np.random.default_rng(1)
  ids = rng.integers(1, 50, size=(4, 10)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, 6:] = 0
  mask[2, 3:] = 0
  ids[mask == 0] = 0

  def run(ids, mask):
    return model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                       method=typing_model.TypeAwareBiEncoder.encode_mentions_with_types)

  emb_all, types_all = run(ids, mask)
  emb_one, types_one = run(ids[:1, :6], mask[:1, :6])           # alone, unpadded
  np.testing.assert_allclose(emb_all[0], emb_one[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(types_all[0], types_one[0], rtol=1e-4, atol=1e-5)
  other = ids.copy()
  other[1:] = rng.integers(1, 50, size=(3, 10))                  # different neighbours
  other[0, 6:] = 7                                               # junk under the padding
  emb_other, types_other = run(other, mask)
  np.testing.assert_allclose(emb_other[0], emb_all[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(types_other[0], types_all[0], rtol=1e-4, atol=1e-5)
  assert emb_all.shape == (4, 32)  # [u[CLS]; f[CLS]]
  # The score is f_m . f_e + u_m . u_e: the embedding's dot product.
  e_emb, _ = model.apply({"params": params}, jnp.asarray(other), jnp.asarray(mask),
                         method=typing_model.TypeAwareBiEncoder.encode_entities_with_types)
  u_m, f_m, u_e, f_e = emb_all[:, :16], emb_all[:, 16:], e_emb[:, :16], e_emb[:, 16:]
  np.testing.assert_allclose(emb_all @ e_emb.T, f_m @ f_e.T + u_m @ u_e.T, rtol=1e-5)


# -- metrics and extraction -----------------------------------------------------------------


def test_typing_report_by_hand():
  assert typer.typing_report([[1, 2]], [[1, 2]])["macro_f1"] == 100.0
  report = typer.typing_report([[1, 2], [3], []], [[1], [3, 4], [5]])
  # macro P over 3 predicting examples: (1 + 1/2 + 0) / 3; R over 2 with gold: (1/2 + 1) / 2.
  assert report["macro_p"] == pytest.approx(50.0)
  assert report["macro_r"] == pytest.approx(75.0)
  assert report["macro_f1"] == pytest.approx(60.0)
  # micro: 2 hits of 4 predicted and of 3 gold.
  assert report["micro_p"] == 50.0 and report["micro_r"] == pytest.approx(66.6667)


def test_extraction_keeps_types_above_the_threshold_plus_the_argmax():
  from zel_jax.recipes.etzel import typer as trainer
  probs = np.array([[0.9, 0.3, 0.05], [0.08, 0.07, 0.01], [0.5, 0.11, 0.1]], np.float32)
  index = np.array([[4, 2, 9], [7, 1, 3], [5, 6, 8]])
  assert trainer.decode(probs, index, 0.1) == [[4, 2], [7], [5, 6]]
  assert trainer.decode(probs, index, 0.5) == [[4], [7], [5]]
  # Rows 0 and 2 are chunks of text 0, row 1 of text 1: unions.
  assert trainer.union_over_rows(np.array([0, 1, 0]), [[4, 2], [7], [5, 6]], 3) == [
      [2, 4, 5, 6], [7], []]


def test_chunked_pairs_cover_the_description(minilm_path):
  from zel_jax.data import features
  featurizer = features.Featurizer.from_pretrained(minilm_path)
  description = " ".join(f"word{i}" for i in range(40))
  feats, owner = featurizer.chunked_pair_features(["Title", "B"], [description, "short"], 24, 8)
  pieces = []
  for row in np.flatnonzero(owner == 0):
    ids = feats["input_ids"][row, :feats["attention_mask"][row].sum()].tolist()
    first_sep = ids.index(featurizer.sep_id)
    assert ids[0] == featurizer.cls_id and ids[-1] == featurizer.sep_id
    assert featurizer.tokenizer.decode(ids[1:first_sep]) == "title"
    pieces.extend(ids[first_sep + 1:-1])
  whole, n = featurizer.encode_pieces([description], 1000)
  assert pieces == whole[0, :n[0]].tolist()          # every token once, in order
  assert (owner == 1).sum() == 1
  capped, owner = featurizer.chunked_pair_features(["Title"], [description], 24, 2)
  assert len(owner) == 2                               # max_chunks respected


# -- both stages on a tiny world ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_typing")
  vocab = root / "types.txt"
  vocab.write_text("\n".join(VOCAB) + "\n")
  return (tiny_world.write_world(root / "data"), tiny_world.write_tiny_bert(root / "bert"),
          vocab)


@pytest.fixture(scope="module")
def typing_run(tiny, tmp_path_factory):
  from zel_jax.configs import etzel_typing as recipe
  from zel_jax.recipes.etzel import typer as trainer
  data, bert_dir, vocab = tiny
  config = recipe.get_config("runlocal")
  overrides = {"data.dir": str(data), "model.pretrained": str(bert_dir),
               "typing.vocabulary": str(vocab), "typing.wordnet": "",
               "typing.mention_length": 16, "typing.type_length": 8,
               "typing.extract_length": 12, "typing.extract_block": 20,
               "typing.max_types": 4, "batch_size": 8, "num_train_steps": 12,
               "log_every": 2, "checkpoint_every": 6, "optimizer.learning_rate": 3e-3,
               "optimizer.warmup_fraction": 0.0, "eval_batch_size": 16,
               "evals.splits": ("test",), "mesh": [("data", 4), ("fsdp", 2)]}
  config = tiny_world._override(config, overrides)  # pylint: disable=protected-access
  workdir = tmp_path_factory.mktemp("typing")
  return config, workdir, trainer.train_and_evaluate(config, str(workdir))


def test_typing_trains_evaluates_and_extracts(tiny, typing_run):
  data, _, _ = tiny
  config, workdir, result = typing_run
  logged = [r["loss"] for r in metric_writer.read_jsonl(str(workdir / "metrics.jsonl"))]
  assert np.mean(logged[-2:]) < np.mean(logged[:2])
  # Every tiny-world mention names a topic entity, "X is a part of a computer system".
  test = result["evals"]["test"]
  assert test["mention"]["examples"] == 16 and test["micro_f1"] > 0
  rows = dict(typing_data.read_types(typing_data.types_path(data, "computing")))
  assert len(rows) == 56 and all(rows.values())          # the argmax at least
  assert result["extracted"]["computing"]["entities"] == 56
  assert all(set(v) <= set(VOCAB) for v in rows.values())


def test_type_embeddings_stay_fixed(tiny, typing_run):
  from zel_jax import sharding
  from zel_jax.recipes.etzel import typer as trainer
  config, workdir, _ = typing_run
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer, vocabulary = trainer.build_model(config, mesh)
  params, step = trainer.restore_params(str(workdir), config, model, mesh)
  assert step == 12
  start = trainer.pretrained_params(config, model, featurizer, vocabulary,
                                    trainer.param_shardings(config, model, mesh), mesh,
                                    jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params["type_embeddings"], start["type_embeddings"])
  assert not np.allclose(params["type_kernel"], start["type_kernel"])


def test_multitask_trains_on_extracted_types_and_evaluates(tiny, typing_run, tmp_path):
  from zel_jax.configs import etzel_multitask as recipe
  from zel_jax.recipes.etzel import multitask as etzel
  data, bert_dir, vocab = tiny
  config = tiny_world.tiny_config(data, bert_dir)
  multitask = recipe.get_config("runlocal")
  for section in ("data", "model", "optimizer"):
    multitask[section] = config[section]
  for key in ("batch_size", "num_train_steps", "log_every", "checkpoint_every",
              "eval_batch_size", "mesh"):
    multitask[key] = config[key]
  multitask.model.pooling = "cls"
  multitask.typing.vocabulary = str(vocab)
  multitask.num_train_steps = 40
  multitask.evals.splits = ("test",)
  result = etzel.train_and_evaluate(multitask, str(tmp_path))
  logged = [r["loss"] for r in metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert np.mean(logged[-2:]) < np.mean(logged[:2])
  test = result["evals"]["test"]
  untrained = evaluate.run(str(tmp_path), None, "test", "exact", None, "untrained", 16)
  # Better than the same encoder untrained, at k below the world's 56 entities (measured
  # 68.75 against 37.5 over 16 mentions).
  assert test["recall@16"] > untrained["recall@16"]
  assert set(test["per_category"]) >= {"HIGH_OVERLAP"}
  # The CLI path: zel_jax.evaluate restores the type-aware model from the workdir.
  again = evaluate.run(str(tmp_path), None, "test", "exact", None, None, 100)
  assert again["recall@1"] == pytest.approx(test["recall@1"])


def test_multitask_without_extracted_types_says_what_to_run(tiny, tmp_path):
  from zel_jax.configs import etzel_multitask as recipe
  from zel_jax.recipes.etzel import multitask as etzel
  data, bert_dir, vocab = tiny
  config = recipe.get_config("runlocal")
  config.data.dir = str(data)
  config.model.pretrained = str(bert_dir)
  config.typing.vocabulary = str(vocab)
  config.typing.types_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"nowhere/computing.json.*etzel_typing"):
    etzel.train_and_evaluate(config, str(tmp_path / "w"))


def test_typing_and_linking_layers_start_from_the_top_layer(tiny):
  from zel_jax.configs import etzel_multitask as recipe
  from zel_jax import sharding
  from zel_jax.recipes.etzel import multitask as etzel
  data, bert_dir, vocab = tiny
  config = recipe.get_config("runlocal")
  config.data.dir, config.model.pretrained = str(data), str(bert_dir)
  config.typing.vocabulary = str(vocab)
  config.mesh = [("data", 4), ("fsdp", 2)]
  mesh = sharding.make_mesh(config.mesh)
  model, _ = etzel.build_model(config, mesh)
  shardings = etzel.param_shardings(config, model, mesh)
  params = etzel.pretrained_params(config, model, shardings, jax.random.PRNGKey(0))
  for side in ("mention", "entity"):
    top = params[side]["layer_1"]  # the tiny BERT's last layer
    for stack in (f"{side}_typing", f"{side}_linking"):
      jax.tree_util.tree_map(np.testing.assert_array_equal, params[stack]["layer_0"], top)
  # Separate buffers: the update donates them all.
  buffers = [x.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(params)
             for x in [leaf.addressable_shards[0].data]]
  assert len(buffers) == len(set(buffers))
  config.typing.layers_init = "random"
  fresh = etzel.pretrained_params(config, model, shardings, jax.random.PRNGKey(0))
  assert not np.allclose(fresh["mention_typing"]["layer_0"]["output"]["kernel"],
                         params["mention"]["layer_1"]["output"]["kernel"])


def test_extraction_can_be_limited_to_the_worlds_of_some_splits(tmp_path):
  from zel_jax.configs import etzel_typing as recipe
  from zel_jax.recipes.etzel import typer as trainer
  (tmp_path / "documents").mkdir()
  (tmp_path / "mentions").mkdir()
  for world in ("trainworld", "testworld", "unused"):
    (tmp_path / "documents" / f"{world}.json").write_text(
        json.dumps({"document_id": f"{world}1", "title": "t", "text": "a b"}) + "\n")
  for split, world in (("train", "trainworld"), ("test", "testworld")):
    (tmp_path / "mentions" / f"{split}.json").write_text(json.dumps({
        "mention_id": f"m{split}", "context_document_id": f"{world}1",
        "label_document_id": f"{world}1", "start_index": 0, "end_index": 0, "text": "a",
        "corpus": world, "category": "LOW_OVERLAP"}) + "\n")
  dataset = zeshel.ZeshelDataset(tmp_path)
  config = recipe.get_config("runlocal")
  assert trainer._extraction_worlds(config, dataset) == ["testworld", "trainworld", "unused"]
  config.typing.extract_splits = ("train",)
  assert trainer._extraction_worlds(config, dataset) == ["trainworld"]
  config.typing.extract_splits = ("train", "test", "val")  # a split the data lacks is skipped
  assert trainer._extraction_worlds(config, dataset) == ["testworld", "trainworld"]
