"""MVD (Liu et al., 2023): entity views, alignment losses, negative sampling, view retrieval."""

import json

import numpy as np
import pytest

from zel_jax import evaluate as evaluate_lib
from zel_jax import recipes
from zel_jax.data import features, local_views
from zel_jax.models import bert_io
from zel_jax.recipes.mvd import data as mvd_data


@pytest.fixture(scope="module")
def feat(minilm_path):
  return features.Featurizer(bert_io.load_tokenizer(minilm_path))


def _excerpt_entities(shared_data, limit=300):
  titles, texts = [], []
  for path in sorted((shared_data / "zeshel_excerpt" / "documents").glob("*.json")):
    with open(path, encoding="utf-8") as f:
      for line in f:
        doc = json.loads(line)
        titles.append(doc["title"])
        texts.append(doc["text"])
  return titles[:limit], texts[:limit]


# -- views ------------------------------------------------------------------------------------


def test_sentences_by_hand():
  text = ("Fifth Doctor Youthful in mind , manner and appearance . He met Dr . Who and "
          "J . R . R . Tolkien . See wikipedia . org for more ! ( AUDIO : \" Mistfall \" ) "
          "Then 3 more ? yes .")
  assert local_views.split_sentences(text) == [
      "Fifth Doctor Youthful in mind , manner and appearance .",
      "He met Dr . Who and J . R . R . Tolkien .",
      "See wikipedia . org for more !",
      "( AUDIO : \" Mistfall \" ) Then 3 more ? yes ."]
  assert local_views.split_sentences("One. Two!  Three?") == ["One.", "Two!", "Three?"]
  assert local_views.split_sentences("   ") == []


def test_chunks_merge_short_sentences():
  # Chunks close once they hold more than 5 tokens; a short tail joins the chunk before it.
  assert local_views.view_chunks(["a b", "c d e f", "g h i j k l", "m"], [2, 4, 6, 1]) == [
      "a b c d e f", "g h i j k l m"]
  assert local_views.view_chunks(["tiny ."], [2]) == ["tiny ."]
  assert local_views.view_chunks([], []) == []


def test_views_of_real_descriptions(feat, shared_data):
  titles, texts = _excerpt_entities(shared_data)
  for text in texts:
    sentences = local_views.split_sentences(text)
    # No text lost or reordered by splitting...
    assert " ".join(sentences) == " ".join(text.split())
    _, counts = feat.encode_pieces(sentences, 64) if sentences else (None, [])
    chunks = local_views.view_chunks(sentences, counts)
    # ... nor by chunking, and every chunk but a whole short description has > 5 tokens.
    assert " ".join(chunks) == " ".join(text.split())
    if len(chunks) > 1:
      _, chunk_counts = feat.encode_pieces(chunks, 64)
      assert (chunk_counts > 5).all()

  views = local_views.view_features(feat, titles, texts, max_length=40)
  per = views["views_per_entity"]
  assert len(per) == len(titles) and (per >= 1).all() and per.sum() == len(views["entity"])
  assert (np.diff(views["entity"]) >= 0).all()
  assert views["input_ids"].shape == (per.sum(), 40)
  assert (views["attention_mask"].sum(1) <= 40).all()
  # Each view is `[CLS] title [ENT] chunk [SEP]` cut to 40, exactly as entity_features makes
  # it; descriptions of many sentences give many views.
  i = int(np.argmax(per))
  assert per[i] > 3
  first = np.flatnonzero(views["entity"] == i)
  sentences = local_views.split_sentences(texts[i])
  chunks = local_views.view_chunks(sentences, feat.encode_pieces(sentences, 40)[1])
  expected = feat.entity_features([titles[i]] * len(chunks), chunks, 40)
  np.testing.assert_array_equal(views["input_ids"][first], expected["input_ids"])
  np.testing.assert_array_equal(views["input_ids"][first, 0], feat.cls_id)

  capped = local_views.view_features(feat, titles, texts, max_length=40, max_views=2)
  np.testing.assert_array_equal(capped["views_per_entity"], np.minimum(per, 2))
  np.testing.assert_array_equal(capped["input_ids"][capped["entity"] == i],
                                views["input_ids"][first[:2]])


def test_empty_description_has_a_title_view(feat):
  views = local_views.view_features(feat, ["Only Title", "B"], ["", "Bee . Is an insect ."], 16)
  np.testing.assert_array_equal(views["views_per_entity"], [1, 1])
  tok = feat.tokenizer
  assert tok.convert_ids_to_tokens(views["input_ids"][0][:5].tolist()) == [
      "[CLS]", "only", "title", "[unused2]", "[SEP]"]


# -- alignment losses -------------------------------------------------------------------------


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _kl(p_logits, q_logits):
  lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
  return float((np.exp(lp) * (lp - lq)).sum())


def test_alignment_by_hand():
  import jax
  import jax.numpy as jnp
  from zel_jax import losses
  # One mention, 3 candidates of up to 3 views; candidate 2 has only 2 valid views.
  student = np.array([[[1.0, 0.5, -1.0], [0.0, 2.0, 0.3], [0.7, -0.2, 9.0]]], np.float32)
  teacher = np.array([[[0.2, 3.0, 0.1], [1.5, 0.0, -0.5], [-1.0, 2.5, 7.0]]], np.float32)
  valid = np.array([[[True, True, True], [True, True, True], [True, True, False]]])
  # The teacher picks views 1, 0, 1 (the 7.0 of candidate 2 is padding): the student is read
  # there, not at its own best views (0, 1, 2).
  teacher_max = [3.0, 1.5, 2.5]
  student_at_chosen = [0.5, 0.0, -0.2]
  cross = _kl(teacher_max, student_at_chosen)
  self_ = np.mean([_kl(teacher[0, 0], student[0, 0]), _kl(teacher[0, 1], student[0, 1]),
                   _kl(teacher[0, 2, :2], student[0, 2, :2])])
  got_cross, got_self = losses.mvd_alignment(jnp.asarray(student), jnp.asarray(teacher),
                                             jnp.asarray(valid))
  np.testing.assert_allclose(got_cross, cross, rtol=1e-5)
  np.testing.assert_allclose(got_self, self_, rtol=1e-5)
  np.testing.assert_allclose(losses.max_over_views(jnp.asarray(student), jnp.asarray(valid)),
                             [[1.0, 2.0, 0.7]])
  # A student equal to the teacher has nothing left to align; the teacher gets no gradient.
  same = losses.mvd_alignment(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(valid))
  np.testing.assert_allclose(same, [0.0, 0.0], atol=1e-6)
  grad_teacher = jax.grad(lambda t: sum(losses.mvd_alignment(
      jnp.asarray(student), t, jnp.asarray(valid))))(jnp.asarray(teacher))
  np.testing.assert_array_equal(grad_teacher, 0.0)
  # Without relevant-view alignment the student is read at its own best views (1.0, 2.0).
  own = losses.mvd_alignment(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(valid),
                             relevant_view=False)
  np.testing.assert_allclose(own[0], _kl(teacher_max, [1.0, 2.0, 0.7]), rtol=1e-5)
  np.testing.assert_allclose(own[1], self_, rtol=1e-5)
  # An invalid candidate is dropped from both terms.
  masked = losses.mvd_alignment(jnp.asarray(student), jnp.asarray(teacher),
                                jnp.asarray(valid), jnp.asarray([[True, True, False]]))
  np.testing.assert_allclose(masked[0], _kl(teacher_max[:2], student_at_chosen[:2]), rtol=1e-5)
  np.testing.assert_allclose(masked[1], np.mean([_kl(teacher[0, 0], student[0, 0]),
                                                 _kl(teacher[0, 1], student[0, 1])]), rtol=1e-5)


# -- view retrieval ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "scann", "device"])
def test_view_store_returns_each_entity_once(kind):
  from zel_jax import index
  from zel_jax.index import views
  rng = np.random.default_rng(0)
  views_per_entity = rng.integers(1, 6, 300)
  entity_of_view = np.repeat(np.arange(300), views_per_entity)
  emb = rng.standard_normal((len(entity_of_view), 16)).astype(np.float32)
  store = index.store_class(kind).build(emb, entity_of_view + 1000)
  queries = rng.standard_normal((20, 16)).astype(np.float32)
  scores, ids = views.search_entities(store, queries, 50)
  # Ground truth: each entity's score is its best view's; top 50 entities, each once.
  view_scores = queries @ emb.T
  best = np.full((20, 300), -np.inf)
  np.maximum.at(best.T, entity_of_view, view_scores.T)
  expected = np.argsort(-best, axis=1)[:, :50] + 1000
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(best, expected - 1000, 1), rtol=1e-5)
  assert all(len(set(r)) == 50 for r in ids)
  # k above the number of entities returns every entity once.
  _, all_ids = views.search_entities(store, queries[:2], 1000)
  assert all_ids.shape == (2, 300) and sorted(all_ids[0]) == list(range(1000, 1300))


# -- dynamic hard negatives -------------------------------------------------------------------


def test_sampler_keeps_gold_and_samples_from_top():
  from zel_jax.data import candidates
  rng = np.random.default_rng(0)
  m, n, k = 400, 100, 16
  top = np.stack([rng.permutation(5000)[:n] for _ in range(m)])
  gold = np.where(rng.random(m) < 0.5, top[:, 3], 9999)  # Half retrieved, half missed.
  rows, labels = candidates.sample_with_gold(top, gold, k, rng)
  assert rows.shape == (m, k)
  np.testing.assert_array_equal(rows[np.arange(m), labels], gold)
  for i in range(m):
    negatives = np.delete(rows[i], labels[i])
    assert gold[i] not in negatives
    assert set(negatives) <= set(top[i]) and len(set(negatives)) == k - 1
  # Random, not the top k: the deeper half of the lists is drawn about half the time.
  deep = np.mean([np.isin(np.delete(r, l), t[50:]).mean()
                  for r, l, t in zip(rows, labels, top)])
  assert 0.4 < deep < 0.6
  assert 0.3 < np.mean(labels < k // 2) < 0.7
  # Short lists leave empty slots, never repeats or the gold.
  short = np.array([[5, 7, 5, -1, -1]])
  rows, labels = candidates.sample_with_gold(short, np.array([7]), 4, rng)
  assert sorted(rows[0]) == [-1, -1, 5, 7] and rows[0, labels[0]] == 7


def test_in_batch_view_softmax_by_hand():
  import jax.numpy as jnp
  from zel_jax import losses
  rng = np.random.default_rng(1)
  mention = rng.standard_normal((3, 4)).astype(np.float32)
  views = rng.standard_normal((3, 2, 4)).astype(np.float32)
  view_valid = np.array([[True, True], [True, False], [True, True]])
  ids = np.array([10, 11, 10])  # Mentions 0 and 2 share their gold: not each other's negative.
  best = np.stack([np.where(view_valid[j][:, None], views[j] @ mention.T, -np.inf).max(0)
                   for j in range(3)], axis=1)  # [mention, entity]
  expected = np.mean([-_log_softmax(best[0, [0, 1]])[0], -_log_softmax(best[1])[1],
                      -_log_softmax(best[2, [1, 2]])[1]])
  got = losses.in_batch_view_softmax(jnp.asarray(mention), jnp.asarray(views),
                                     jnp.asarray(view_valid), jnp.asarray(ids))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # One view per entity is BLINK's loss.
  np.testing.assert_allclose(
      losses.in_batch_view_softmax(jnp.asarray(mention), jnp.asarray(views[:, :1]),
                                   jnp.ones((3, 1), bool)),
      losses.in_batch_softmax(jnp.asarray(mention), jnp.asarray(views[:, 0])), rtol=1e-6)


# -- the three stages on the fake mesh --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  import tiny_world
  root = tmp_path_factory.mktemp("tiny_mvd")
  data = tiny_world.write_world(root / "data", sentences=3)
  return data, tiny_world.write_tiny_bert(root / "bert")


@pytest.fixture(scope="module")
def retriever(tiny, tmp_path_factory):
  import tiny_world
  from zel_jax.recipes.mvd import trainer as mvd
  data, bert_dir = tiny
  workdir = tmp_path_factory.mktemp("mvd_retriever")
  config = tiny_world.tiny_mvd_config(data, bert_dir, "retriever",
                                      **{"evals.splits": ("train", "test")})
  return workdir, mvd.train_and_evaluate(config, str(workdir))


def _losses(workdir):
  from zel_jax import metric_writer
  return [r["loss"] for r in metric_writer.read_jsonl(str(workdir / "metrics.jsonl"))]


def test_retriever_warms_up_over_views(retriever):
  workdir, result = retriever
  logged = _losses(workdir)
  assert len(logged) == 6 and np.mean(logged[-2:]) < np.mean(logged[:2])
  test = result["evals"]["test"]
  # 16 topic entities of 3 sentence views (each sentence has > 5 tokens) and 40 one-sentence
  # notes, each with its global view too: (16 * 4 + 40 * 2) / 56 vectors per entity.
  assert test["views"] == "global+local"
  assert test["vectors_per_entity"] == round((16 * 4 + 40 * 2) / 56, 3)
  assert test["entities"] == {"computing": 56}
  # Trained, it ranks better than the same encoder before training (recall@k, k < 56).
  untrained = evaluate_lib.run(str(workdir), None, "test", "exact", None, "untrained", 16)
  assert test["recall@16"] > untrained["recall@16"] and test["recall@8"] > 100 * 8 / 56
  # Every entity once per mention, however many of its views scored.
  with open(workdir / "candidates" / "test.jsonl") as f:
    for line in f:
      listed = json.loads(line)["candidates"]
      assert len(listed) == len(set(listed)) == 56


@pytest.fixture(scope="module")
def teacher(tiny, retriever, tmp_path_factory):
  import tiny_world
  from zel_jax.recipes.mvd import trainer as mvd
  data, bert_dir = tiny
  workdir = tmp_path_factory.mktemp("mvd_teacher")
  config = tiny_world.tiny_mvd_config(
      data, bert_dir, "teacher", num_train_steps=30,
      **{"mvd.candidates": str(retriever[0]), "evals.splits": ("test",),
         "optimizer.learning_rate": 1e-2, "batch_size": 16})
  return workdir, mvd.train_and_evaluate(config, str(workdir))


def test_teacher_trains_on_static_candidates(teacher):
  workdir, result = teacher
  logged = _losses(workdir)
  assert np.mean(logged[-3:]) < np.mean(logged[:3])
  report = result["evals"]["test"]
  assert report["num_candidates"] == 4 and report["views_per_candidate"] == 3
  from zel_jax import evaluate
  again = evaluate.run(str(workdir), None, "test", "exact", None, None, 100)
  assert again["normalized_accuracy"] == report["normalized_accuracy"]
  assert 0 <= report["unnormalized_accuracy"] <= report["normalized_accuracy"] <= 100



def _joint(tiny, retriever, teacher, workdir, **overrides):
  import tiny_world
  from zel_jax.recipes.mvd import trainer as mvd
  data, bert_dir = tiny
  config = tiny_world.tiny_mvd_config(
      data, bert_dir, "joint",
      **{"mvd.retriever": str(retriever[0]), "mvd.teacher": str(teacher[0]),
         "mvd.refresh_every": 4, "num_train_steps": 8, "checkpoint_every": 8,
         "optimizer.learning_rate": 1e-3, "evals.splits": ("test",), **overrides})
  return config, mvd.train_and_evaluate(config, str(workdir))


def _restored(config, workdir, side=None):
  """(params, meta) of a workdir's latest checkpoint: the joint tree, or one side's."""
  from zel_jax import checkpoint as checkpoint_lib
  from zel_jax import sharding
  from zel_jax.models import biencoder, crossencoder
  from zel_jax.recipes.blink import biencoder as bi_trainer
  from zel_jax.recipes.blink import crossencoder as cross_trainer
  from zel_jax.training import params as params_lib
  mesh = sharding.make_mesh(config.mesh)
  student, _ = bi_trainer.build_model(config, mesh)
  teacher, _ = cross_trainer.build_model(mvd_data.teacher_config(config), mesh)
  abstract = {"student": biencoder.abstract_params(student),
              "teacher": crossencoder.abstract_params(teacher)}
  if side is not None:
    abstract = abstract[side]
  shardings = params_lib.param_shardings(config, abstract, mesh)
  ckpt = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  try:
    items, meta = ckpt.restore({"params": params_lib.abstract_sharded_params(abstract, shardings)})
  finally:
    ckpt.close()
  return items["params"], meta


def test_joint_training_mines_and_distills(tiny, retriever, teacher, tmp_path):
  import jax
  config, result = _joint(tiny, retriever, teacher, tmp_path)
  logged = _losses(tmp_path)
  assert len(logged) == 4 and all(np.isfinite(logged))
  # Twice chance at k = 8 of 56 entities (measured 62.5 over 16 mentions).
  assert result["evals"]["test"]["recall@8"] > 2 * 100 * 8 / 56
  params, meta = _restored(config, tmp_path)
  # The candidates in use (mined at step 4 with the student of then) are in the checkpoint:
  # the gold at its label, K - 1 distinct negatives, never the gold.
  rows, labels = np.asarray(meta["mvd_rows"]), np.asarray(meta["mvd_labels"])
  assert meta["mvd_batches"] == 8 and meta["mvd_mined_at"] == 1
  assert rows.shape == (48, 4)
  from zel_jax.data import zeshel
  from zel_jax.models import bert_io
  from zel_jax.data import features
  from zel_jax import evaluate
  data = mvd_data.mvd_data(config, zeshel.ZeshelDataset(config.data.dir),
                      features.Featurizer(bert_io.load_tokenizer(config.model.pretrained)), "train")
  np.testing.assert_array_equal(rows[np.arange(48), labels], data.gold)
  for row, label, gold in zip(rows, labels, data.gold):
    negatives = np.delete(row, label)
    assert gold not in negatives and len(set(negatives)) == 3
  # The CLI's evaluation of the workdir: the student under each store layout, and linking.
  local = evaluate.run(str(tmp_path), None, "test", "exact", None, None, 100, views="local")
  assert local["vectors_per_entity"] == round((16 * 3 + 40) / 56, 3)
  assert (tmp_path / "candidates" / "test.local.jsonl").exists()
  single = evaluate.run(str(tmp_path), None, "test", "exact", None, None, 100, views="global")
  assert "views" not in single
  assert single["recall@8"] > 2 * 100 * 8 / 56  # Measured 50.0.
  linked = recipes.open_linker(str(tmp_path), None, "computing").link(
      [{"text": "it runs in the kernel today", "start": 15, "end": 21}], top_k=20)
  ids = [e["document_id"] for e in linked[0]["entities"]]
  assert len(ids) == len(set(ids)) == 20
  # Both sides trained.
  warm_student, _ = _restored(config, retriever[0], "student")
  warm_teacher, _ = _restored(config, teacher[0], "teacher")
  for now, before in ((params["student"], warm_student), (params["teacher"], warm_teacher)):
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree_util.tree_leaves(now), jax.tree_util.tree_leaves(before))]
    assert max(moved) > 0


def test_static_distillation_freezes_the_teacher(tiny, retriever, teacher, tmp_path):
  import jax
  config, _ = _joint(tiny, retriever, teacher, tmp_path,
                     **{"mvd.no_dynamic_distillation": True, "evals.splits": ()})
  params, _ = _restored(config, tmp_path)
  warm, _ = _restored(config, teacher[0], "teacher")
  for a, b in zip(jax.tree_util.tree_leaves(params["teacher"]),
                  jax.tree_util.tree_leaves(warm)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_joint_loss_trains_the_global_view_and_aligns_local_views(tiny):
  """L_de takes each candidate's max over the global view (view 0) and its local views; the
  alignment terms and the teacher see the local views only, index for index."""
  import jax
  import jax.numpy as jnp
  import tiny_world
  from zel_jax import losses, sharding
  from zel_jax.models import crossencoder
  from zel_jax.recipes.mvd import multiview
  from zel_jax.recipes.blink import biencoder as bi_trainer
  from zel_jax.recipes.blink import crossencoder as cross_trainer
  from zel_jax.training import params as params_lib
  from zel_jax.recipes.mvd import trainer as mvd
  data, bert_dir = tiny
  config = tiny_world.tiny_mvd_config(data, bert_dir, "joint")
  mesh = sharding.make_mesh(config.mesh)
  student, _ = bi_trainer.build_model(config, mesh)
  teacher, _ = cross_trainer.build_model(mvd_data.teacher_config(config), mesh)
  rng = jax.random.PRNGKey(0)
  params = {
      "student": bi_trainer.random_params(
          student, bi_trainer.param_shardings(config, student, mesh), rng),
      "teacher": cross_trainer.random_params(
          teacher, params_lib.param_shardings(config, crossencoder.abstract_params(teacher), mesh),
          jax.random.fold_in(rng, 1))}
  b, k, s = 8, 4, 3
  lm, lv, lg = 12, 12, 24
  lp = cross_trainer.pair_length(mvd_data.teacher_config(config), teacher.config)
  gen = np.random.default_rng(0)
  view_valid = np.ones((b, k, s), bool)
  view_valid[:, :, 2] = gen.random((b, k)) < 0.5   # Some candidates have 2 views.
  batch = {
      "mention_input_ids": gen.integers(5, 90, (b, lm)), "mention_attention_mask":
          np.ones((b, lm), np.int32),
      "view_input_ids": gen.integers(5, 90, (b, k, s, lv)),
      "view_attention_mask": np.ones((b, k, s, lv), np.int32) * view_valid[..., None],
      "view_valid": view_valid,
      "global_input_ids": gen.integers(5, 90, (b, k, 1, lg)),
      "global_attention_mask": np.ones((b, k, 1, lg), np.int32),
      "global_valid": np.ones((b, k, 1), bool),
      "teacher_input_ids": gen.integers(5, 90, (b, k, s, lp)),
      "teacher_attention_mask": np.ones((b, k, s, lp), np.int32),
      "teacher_token_type_ids": np.zeros((b, k, s, lp), np.int32),
      "teacher_valid": view_valid,
      "label": gen.integers(0, k, b).astype(np.int32),
      "candidate_valid": np.ones((b, k), bool), "valid": np.ones(b, bool)}
  batch = {name: jnp.asarray(v) for name, v in batch.items()}

  def encode(ids, mask):
    return multiview.encode_views(student, params["student"], ids, mask, rng, True)

  mention = multiview.encode_mentions(student, params["student"], batch["mention_input_ids"],
                                      batch["mention_attention_mask"], rng, True)
  local = np.einsum("bd,bksd->bks", mention,
                    encode(batch["view_input_ids"], batch["view_attention_mask"]))
  whole = np.einsum("bd,bkd->bk", mention,
                    encode(batch["global_input_ids"], batch["global_attention_mask"])[:, :, 0])
  t = np.asarray(multiview.teacher_scores(teacher, params["teacher"], batch, rng, True))
  best_local = np.where(view_valid, local, -np.inf).max(-1)
  assert (whole > best_local).any() and (whole < best_local).any()  # Both cases occur.

  def expected(l_de_scores):
    l_de = losses.candidate_softmax(jnp.asarray(l_de_scores), batch["label"])
    l_ce = losses.candidate_softmax(jnp.asarray(np.where(view_valid, t, -np.inf).max(-1)),
                                    batch["label"])
    cross, self_ = losses.mvd_alignment(jnp.asarray(local), jnp.asarray(t),
                                        jnp.asarray(view_valid))
    return float(l_de + 0.3 * cross + 0.1 * self_ + l_ce)

  for with_global, l_de_scores in ((True, np.maximum(whole, best_local)),
                                   (False, best_local)):
    config.mvd.train_global_view = with_global
    got = float(mvd.joint_loss_fn(student, teacher, config)(params, batch, rng))
    np.testing.assert_allclose(got, expected(l_de_scores), rtol=2e-4)
