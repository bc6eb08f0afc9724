"""Faults of issue #30 ("nothing lost, nothing stale, nothing unsafe"): caches under a workdir
are reused only when what produced them is unchanged (W/stores/, the distilled student's
teacher scores), and recall@k is never reported for k beyond the candidates retrieved."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

import tiny_world
from zel_jax import checkpoint as checkpoint_lib
from zel_jax import evaluate, recipes, sharding, workdir_io
from zel_jax.data import candidates as candidates_lib
from zel_jax.data import zeshel
from zel_jax.evals import metrics, retrieval
from zel_jax.recipes.blink import biencoder as bi_trainer
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.blink import distill


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The tiny world and two tiny BERTs of the same shapes and vocabulary, other weights."""
  root = tmp_path_factory.mktemp("faults")
  return (tiny_world.write_world(root / "data"), tiny_world.write_tiny_bert(root / "bert0"),
          tiny_world.write_tiny_bert(root / "bert1", seed=1))


def _save_checkpoint(workdir: pathlib.Path, config, trainer, weights: pathlib.Path,
                     step: int) -> None:
  """W/checkpoints/<step> holding config's model with `weights` (a tiny BERT folder): the
  checkpoint of a run, replaced wholesale as a new run into the same workdir would."""
  mesh = sharding.make_mesh(config.mesh)
  model, _ = trainer.build_model(config, mesh)
  source = config.copy_and_resolve_references()
  source.model.pretrained = str(weights)
  params = trainer.pretrained_params(source, model, trainer.param_shardings(config, model, mesh),
                                     jax.random.PRNGKey(0))
  shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  ckpt = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ckpt.save(step, {"params": params}, force=True)
  ckpt.close()


def _bi_workdir(tmp_path, data, weights, step=3) -> pathlib.Path:
  workdir = tmp_path / "w"
  config = tiny_world.tiny_config(data, weights)
  workdir_io.save_config(config, str(workdir))
  _save_checkpoint(workdir, config, bi_trainer, weights, step)
  return workdir


def _fresh(workdir: pathlib.Path, world: str = "computing"):
  """The truth: the same workdir's linker opened with no store cached."""
  copy = workdir.parent / (workdir.name + "_fresh")
  shutil.rmtree(copy, ignore_errors=True)
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("stores"))
  return recipes.open_linker(str(copy), None, world)


MENTIONS = [{"text": "the router sends packets to the socket", "start": 4, "end": 10},
            {"text": "a compiler reads the parser output", "start": 2, "end": 10}]


def _scores(linker):
  return [[(e["document_id"], e["score"]) for e in r["entities"]]
          for r in linker.link(MENTIONS, top_k=5)]


def _assert_same_links(got, want):
  assert [[d for d, _ in r] for r in got] == [[d for d, _ in r] for r in want]
  np.testing.assert_allclose([[s for _, s in r] for r in got],
                             [[s for _, s in r] for r in want], atol=1e-3)


def _redescribe_entities(data: pathlib.Path) -> None:
  """Rewrites the tiny world's entity descriptions in place: same ids and count, other text."""
  path = data / "documents" / "computing.json"
  docs = [json.loads(line) for line in path.read_text().splitlines()]
  for doc in docs:
    if doc["document_id"].startswith("E"):
      doc["text"] = doc["text"].replace("a part of a computer system", "sold at the market")
  path.write_text("".join(json.dumps(d) + "\n" for d in docs))


# -- stale stores ---------------------------------------------------------------------------


def test_linker_re_encodes_a_world_whose_documents_changed(tiny, tmp_path, caplog):
  data0, bert0, _ = tiny
  data = pathlib.Path(shutil.copytree(data0, tmp_path / "data"))
  workdir = _bi_workdir(tmp_path, data, bert0)
  before = recipes.open_linker(str(workdir), None, "computing")
  _redescribe_entities(data)  # The same entities (same ids, same count), other texts.
  caplog.set_level("INFO")
  after = recipes.open_linker(str(workdir), None, "computing")
  assert any("rebuilding" in r.getMessage() and "entities" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  truth = _fresh(workdir)
  assert len(after.kb.ids) == len(before.kb.ids)
  assert not np.allclose(after.kb.vectors, before.kb.vectors, atol=1e-4)
  np.testing.assert_allclose(after.kb.vectors, truth.kb.vectors, atol=1e-5)
  _assert_same_links(_scores(after), _scores(truth))


def test_linker_re_encodes_when_the_checkpoint_is_swapped_at_the_same_step(tiny, tmp_path):
  data, bert0, bert1 = tiny
  workdir = _bi_workdir(tmp_path, data, bert0, step=3)
  before = recipes.open_linker(str(workdir), None, "computing")
  old = _scores(before)
  # Another run into the same workdir ends at the same step with other parameters.
  _save_checkpoint(workdir, workdir_io.load_config(str(workdir)), bi_trainer, bert1, 3)
  after = recipes.open_linker(str(workdir), None, "computing")
  truth = _fresh(workdir)
  assert after.step == before.step == 3
  assert not np.allclose(after.kb.vectors, before.kb.vectors, atol=1e-4)
  np.testing.assert_allclose(after.kb.vectors, truth.kb.vectors, atol=1e-5)
  new = _scores(after)
  _assert_same_links(new, _scores(truth))
  assert new != old


def test_params_digest_sees_any_change_and_no_layout():
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from zel_jax.evals import fingerprint  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(16, 8)).astype(np.float32),
            "b": {"c": rng.normal(size=(8,)).astype(jax.numpy.bfloat16)}}
  digest = fingerprint.params_digest(params)
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  sharded = {"a": jax.device_put(params["a"], NamedSharding(mesh, PartitionSpec("data", "fsdp"))),
             "b": params["b"]}
  assert fingerprint.params_digest(sharded) == digest  # The mesh does not matter.
  changed = {"a": params["a"].copy(), "b": params["b"]}
  changed["a"][3, 5] = np.nextafter(changed["a"][3, 5], np.float32(np.inf))
  swapped = {"a": params["a"][::-1].copy(), "b": params["b"]}
  assert len({digest, fingerprint.params_digest(changed),
              fingerprint.params_digest(swapped)}) == 3


def test_evaluated_store_is_reused_by_the_linker_when_nothing_changed(tiny, tmp_path,
                                                                       monkeypatch):
  data, bert0, _ = tiny
  workdir = _bi_workdir(tmp_path, data, bert0)
  evaluate.run(str(workdir), None, "test", "exact", None, None, 8)
  stores = sorted(p.name for p in (workdir / "stores").iterdir())
  assert stores == ["computing.3.exact"]

  def no_encoding(*args, **kwargs):
    raise AssertionError("the linker re-encoded a store that is up to date")

  monkeypatch.setattr(retrieval, "entity_vectors", no_encoding)
  linked = _scores(recipes.open_linker(str(workdir), None, "computing"))
  monkeypatch.undo()
  _assert_same_links(linked, _scores(_fresh(workdir)))


def test_teacher_scores_are_rescored_for_another_teacher_or_kb(tiny, tmp_path):
  data0, bert0, bert1 = tiny
  data = pathlib.Path(shutil.copytree(data0, tmp_path / "data"))
  bi = tmp_path / "bi"
  tiny_world.write_candidates(data, bi / "candidates" / "train.jsonl", "train")
  teacher_dir = tmp_path / "teacher"
  teacher_config = tiny_world.tiny_cross_config(data, bert0, bi)
  workdir_io.save_config(teacher_config, str(teacher_dir))
  _save_checkpoint(teacher_dir, teacher_config, cross_trainer, bert0, 20)

  from zel_jax.configs import blink_distill  # pylint: disable=g-import-not-at-top
  config = blink_distill.get_config("runlocal")
  student = tiny_world.tiny_config(data, bert0)
  for section in ("data", "model"):
    config[section].update({k: v for k, v in student[section].items() if k in config[section]})
  config.mesh, config.eval_batch_size = student.mesh, 16
  config.data.candidates, config.data.num_candidates = str(bi), 4
  config.data.max_train_mentions = 16
  config.distill.teacher = str(teacher_dir)
  mesh = sharding.make_mesh(config.mesh)
  _, featurizer = bi_trainer.build_model(config, mesh)
  student_dir = tmp_path / "student"

  def scores():
    student_dir.mkdir(exist_ok=True)  # The distilled run's workdir, which keeps the cache.
    dataset = zeshel.ZeshelDataset(data)
    train = cross_trainer.rerank_set(config, dataset, featurizer, "train",
                                     candidates_lib.path_of(str(bi), "train"), 16, config.seed)
    rows, _ = candidates_lib.with_gold(train.rows, train.gold)
    ids = [m.mention_id for m in train.mentions]
    return distill.teacher_scores(config, str(student_dir), dataset, ids, rows, mesh)

  def truth():
    shutil.rmtree(student_dir)
    return scores()

  first = scores()
  # Another teacher run, the same step: its scores, not the cached ones.
  _save_checkpoint(teacher_dir, teacher_config, cross_trainer, bert1, 20)
  swapped = scores()
  assert not np.allclose(swapped, first, atol=1e-4)
  np.testing.assert_allclose(swapped, truth(), rtol=0, atol=1e-6)
  _redescribe_entities(data)  # The same mentions and candidate rows, other entity texts.
  edited = scores()
  # An untrained teacher's scores move little with the text, but they move: the same
  # program on the same inputs gives the same floats, so 1e-6 tells them apart.
  assert np.abs(edited - swapped).max() > 2e-5
  np.testing.assert_allclose(edited, truth(), rtol=0, atol=1e-6)


def test_xel_triage_candidates_are_recomputed_for_another_kb(tmp_path, monkeypatch):
  # The cached triage rows index kb.jsonl: the same mentions over a reordered KB (same size,
  # same count) must not reuse them.
  from zel_jax.configs import xel as xel_config  # pylint: disable=g-import-not-at-top
  from zel_jax.data import crosslang  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.xel import data as xel_data  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.xel import features as xel_features  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.xel import trainer as xel_trainer  # pylint: disable=g-import-not-at-top
  names = ["Berlin", "Paris", "Rome", "Madrid"]
  root = tmp_path / "xel"

  def write_kb(order):  # Only kb.jsonl changes: the mentions file stays as it was.
    crosslang.write_jsonl(root / "kb.jsonl", (
        {"id": f"Q{i}", "name": names[j], "description": f"the city of {names[j]}",
         "types": ["city"]} for i, j in enumerate(order)))

  def name_match(config, data, features, mentions, desc):  # The encoder's triage, by hand.
    del features, desc
    row = {e.name: i for i, e in enumerate(data.kb)}
    rows = np.full((len(mentions), int(config.triage.k)), -1, np.int64)
    rows[:, 0] = [row[m.text] for m in mentions]
    return {"rows": rows, "scores": np.zeros(rows.shape, np.float32)}

  monkeypatch.setattr(xel_trainer, "_triage", name_match)
  config = xel_config.get_config("runlocal")
  config.data.dir, config.triage.k = str(root), 2

  def triage():
    data = xel_data.XelData(config)
    features = xel_features.Features.__new__(xel_features.Features)  # Its cache, no encoder.
    features.config, features.data = config, data
    features.directory = str(tmp_path / "features")
    rows, _ = xel_trainer.candidates(config, data, features, "de", "test", str(tmp_path / "w"))
    return [data.kb[r].name for r in rows[:, 0]], [m.text for m in data.split("de", "test")]

  crosslang.write_jsonl(crosslang.mentions_path(root, "de", "test"), (
      {"id": f"m{i}", "language": "de", "context": f"in {n} heute", "start": 3,
       "end": 3 + len(n), "label": "NIL"} for i, n in enumerate(names)))
  write_kb([0, 1, 2, 3])
  found, said = triage()
  assert found == said == names
  write_kb([3, 2, 1, 0])
  found, said = triage()
  assert found == said  # Rows of the new KB, not the cached rows of the old one.


def test_xel_feature_caches_follow_the_bytes_and_the_pairs_sampled(tmp_path, monkeypatch):
  # The XEL encoder-feature cache (config.features_dir, shareable between runs) is keyed by
  # what the features were computed from: a KB replaced by one of the same size and mtime
  # (cp -p, rsync -t) and another seed's sample of the translated pairs must not reuse it.
  import os  # pylint: disable=g-import-not-at-top
  from zel_jax.configs import xel as xel_config  # pylint: disable=g-import-not-at-top
  from zel_jax.data import crosslang  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.xel import data as xel_data  # pylint: disable=g-import-not-at-top
  from zel_jax.recipes.xel import features as xel_features  # pylint: disable=g-import-not-at-top

  def embed(texts):  # A stand-in encoder: one number per text, from its characters.
    return np.array([[float(sum(map(ord, t)) % 9973)] for t in texts], np.float32)

  class FakeEncoder:
    def __init__(self, config, mesh):
      del config, mesh
    def names(self, names, desc=""):
      return embed(names)
    def texts(self, texts, max_tokens, desc=""):
      return embed(texts)
    def mentions(self, mentions, desc=""):
      return {"name": embed([m.text for m in mentions]),
              "context": embed([m.context for m in mentions])}

  monkeypatch.setattr(xel_features, "Encoder", FakeEncoder)
  root = tmp_path / "xel"
  kb = root / "kb.jsonl"
  crosslang.write_jsonl(crosslang.mentions_path(root, "de", "train"), (
      {"id": f"m{i}", "language": "de", "context": f"in {n} heute", "start": 3,
       "end": 3 + len(n), "label": "Q0"} for i, n in enumerate(["Berlin", "Madrid"])))
  crosslang.write_jsonl(root / "pairs" / "de.jsonl", (
      {"source": f"Stadt {i}", "english": f"city {i}"} for i in range(8)))
  config = xel_config.get_config("runlocal")
  config.data.dir, config.features_dir = str(root), str(tmp_path / "features")
  config.aux.weight, config.aux.max_pairs = 0.5, 3

  def features_for(names, seed):
    crosslang.write_jsonl(kb, ({"id": f"Q{i}", "name": n, "description": f"the city of {n}",
                                "types": ["city"]} for i, n in enumerate(names)))
    os.utime(kb, ns=(1_000_000_000, 1_000_000_000))  # The same mtime every time.
    config.seed = seed
    data = xel_data.XelData(config)
    return data, xel_features.Features(config, data, str(tmp_path / "w"), mesh=None)

  data, features = features_for(["Berlin", "Madrid"], seed=0)
  np.testing.assert_array_equal(features.kb["name"], embed(["Berlin", "Madrid"]))
  # Same size, same mtime, other bytes: the names swapped.
  data, features = features_for(["Madrid", "Berlin"], seed=0)
  np.testing.assert_array_equal(features.kb["name"], embed(["Madrid", "Berlin"]))
  # Another seed samples 3 other pairs of the 8.
  other, features = features_for(["Madrid", "Berlin"], seed=1)
  assert other.pairs != data.pairs and len(other.pairs) == len(data.pairs)
  np.testing.assert_array_equal(features.pairs["source"], embed([s for s, _ in other.pairs]))


# -- a wrong metric -------------------------------------------------------------------------


def _zoo(root: pathlib.Path) -> pathlib.Path:
  """A world where BM25's top 8 never holds the gold: 13 documents say "zebra", the gold of
  every "zebra" mention (the lion) does not."""
  (root / "documents").mkdir(parents=True)
  (root / "mentions").mkdir()
  docs = [{"document_id": f"Z{i:02d}", "title": f"zebra {i}", "text": f"zebra number {i} ."}
          for i in range(12)]
  docs += [{"document_id": "LION", "title": "lion", "text": "a big cat of the plains ."},
           {"document_id": "NOTE", "title": "note", "text": "the zebra ran away ."}]
  (root / "documents" / "zoo.json").write_text("".join(json.dumps(d) + "\n" for d in docs))
  mentions = [{"mention_id": f"M{i}", "context_document_id": "NOTE", "label_document_id": "LION",
               "start_index": 1, "end_index": 1, "text": "zebra", "corpus": "zoo",
               "category": "LOW_OVERLAP"} for i in range(4)]
  (root / "mentions" / "test.json").write_text("".join(json.dumps(m) + "\n" for m in mentions))
  return root


def test_recall_beyond_the_candidates_retrieved_is_not_reported(tmp_path):
  report = retrieval.evaluate_bm25(zeshel.ZeshelDataset(_zoo(tmp_path)), "test", top_k=8)
  assert report["mentions"] == 4 and report["recall@8"] == 0.0  # Every gold missed.
  # A miss at K=8 is not a hit at 16, 32, 64 or 100: those are not measured.
  for part in (report, report["macro"], report["per_world"]["zoo"],
               report["per_category"]["LOW_OVERLAP"]):
    assert [k for k in part if k.startswith("recall@")] == [f"recall@{k}" for k in (1, 2, 4, 8)]
  assert report["retrieved"] == 8
  line = evaluate.summary(report)
  assert "R@1=0.00" in line and "R@16" not in line and "100.00" not in line
  # The same at the metric itself: K=8 candidates, golds absent.
  rows = np.tile(np.arange(8), (3, 1))
  ranks = metrics.gold_ranks(rows, np.array([20, 21, 3]))
  got = metrics.recall_report(ranks, ["w"] * 3, [None] * 3, retrieved=8)
  assert "recall@16" not in got and got["recall@8"] == round(100 / 3, 4)
