"""A recipe is one folder and one config: a package outside zel_jax that exposes a RECIPE is
trained, evaluated and linked by `python -m zel_jax.train / evaluate / link` without editing
them. The tiny recipe here is a bag-of-embeddings retriever (a real model on the real training
loop, the shared retrieval evaluator and the linker), written to a temporary package."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import tiny_world

REPO = pathlib.Path(__file__).resolve().parents[2]

RECIPE = '''
"""Bag of embeddings: a mention or an entity is the mean of its token embeddings."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import losses, sharding, workdir_io
from zel_jax.data import examples, features, zeshel
from zel_jax.evals import base as evals_base
from zel_jax.evals import retrieval
from zel_jax.evals.linking import LoadedRetriever
from zel_jax.recipes.base import Recipe
from zel_jax.training import loop
from zel_jax.training import params as params_lib


class Bag(nn.Module):
  vocab: int
  dim: int = 16

  def setup(self):
    self.table = self.param("table", nn.with_logical_partitioning(
        nn.initializers.normal(0.1), ("vocab", "embed")), (self.vocab, self.dim))

  def _pool(self, ids, mask):
    m = mask[..., None].astype(jnp.float32)
    return (self.table[ids] * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)

  def __call__(self, ids, mask):
    return self._pool(ids, mask)

  def encode_mentions(self, ids, mask):
    return self._pool(ids, mask)

  def encode_entities(self, ids, mask):
    return self._pool(ids, mask)


def build(config, mesh):
  featurizer = features.Featurizer.from_pretrained(config.model.pretrained)
  model = Bag(featurizer.vocab_size)
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]
  return model, featurizer, abstract, params_lib.param_shardings(config, abstract, mesh)


def evaluator(config, workdir, model, featurizer, mesh, dataset, split=None):
  def evaluate_split(params, split):
    return retrieval.evaluate_biencoder(
        model, params, featurizer, dataset, split, config, mesh, top_k=4,
        candidates_path=os.path.join(workdir, "candidates", f"{split}.jsonl"))
  return evals_base.Evaluator("retrieval", [split] if split else config.evals.splits,
                              evaluate_split, dataset.splits())


def train(config, workdir):
  evals_base.check_type(config, ("retrieval",), "tinyrecipe")
  workdir_io.save_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer, abstract, _ = build(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)
  worlds = dataset.worlds()
  entities = {w: examples.world_entities(dataset, w, featurizer, 16) for w in worlds}
  mentions = examples.mention_set(dataset, "train", featurizer, 16, entities)
  table = np.concatenate([entities[w].features["input_ids"] for w in worlds])
  table_mask = np.concatenate([entities[w].features["attention_mask"] for w in worlds])
  gold = mentions.gold_rows

  def loss_fn(params, batch, rng):
    del rng
    m = model.apply({"params": params}, batch["ids"], batch["mask"])
    e = model.apply({"params": params}, batch["entity_ids"], batch["entity_mask"])
    return losses.in_batch_softmax(m, e, batch["gold"], batch["valid"])

  spec = loop.TrainSpec(
      abstract_params=abstract,
      random_params=lambda shardings, rng: jax.jit(
          lambda r: nn.unbox(model.init(r, jnp.zeros((1, 1), jnp.int32),
                                        jnp.zeros((1, 1), jnp.int32))["params"]),
          out_shardings=shardings)(rng),
      pretrained_params=None, loss_fn=loss_fn,
      features={"ids": mentions.features["input_ids"],
                "mask": mentions.features["attention_mask"],
                "entity_ids": table[gold], "entity_mask": table_mask[gold],
                "gold": gold.astype(np.int32)})
  evaluate_every = evaluator(config, workdir, model, featurizer, mesh, dataset)
  outcome = loop.run(config, workdir, spec, mesh, evaluate_every)
  return {"evals": evals_base.evaluate_and_write(evaluate_every, outcome.params,
                                                 outcome.step, workdir)}


def restore(workdir, config):
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer, abstract, shardings = build(config, mesh)
  params, step = params_lib.restore_params(workdir, abstract, shardings)
  return mesh, model, featurizer, params, step


def evaluate(workdir, config, request):
  mesh, model, featurizer, params, step = restore(workdir, config)
  dataset = zeshel.ZeshelDataset(request.data or config.data.dir)
  report = evaluator(config, workdir, model, featurizer, mesh, dataset,
                     request.split).evaluate_split(params, request.split)
  return dict(report, step=int(step), recipe="tinyrecipe")


def retriever(workdir, config, untrained):
  assert not untrained
  mesh, model, featurizer, params, step = restore(workdir, config)
  return LoadedRetriever(config, mesh, model, featurizer, params, step)


RECIPE = Recipe(name="tinyrecipe", trainers={"bag": train}, evaluate=evaluate,
                retriever=retriever)
'''

CONFIG = '''
import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.recipe = "tinyrecipe"
  config.trainer = "bag"
  config.seed = 0
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""
  config.data.mention_length = 16
  config.data.entity_length = 16
  config.data.window_words = -1
  config.model = ml_collections.ConfigDict()
  config.model.pretrained = ""
  config.batch_size = 8
  config.grad_accum_steps = 1
  config.num_epochs = 1
  config.num_train_steps = 6
  config.optimizer = common.optimizer(learning_rate=0.5, warmup_fraction=0.0)
  common.checkpoints(config, log_every=2, checkpoint_every=3, keep=2)
  config.init_from = ""
  common.mesh_and_sharding(config)
  config.eval_batch_size = 8
  config.evals = common.evals("retrieval", splits=("test",), every=3)
  config.evals.store = "exact"
  config.evals.top_k = 4
  return config
'''


def _run(module, *args, plugin_dir, cwd):
  env = dict(os.environ, PYTHONPATH=f"{plugin_dir}{os.pathsep}{REPO}")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result.stdout


def test_a_recipe_of_ones_own_trains_evaluates_and_links(tmp_path):
  plugin = tmp_path / "plugins"
  (plugin / "tinyrecipe").mkdir(parents=True)
  (plugin / "tinyrecipe" / "__init__.py").write_text(textwrap.dedent(RECIPE))
  config_file = tmp_path / "tiny.py"
  config_file.write_text(textwrap.dedent(CONFIG))
  data = tiny_world.write_world(tmp_path / "data")
  bert_dir = tiny_world.write_tiny_bert(tmp_path / "bert")
  workdir = tmp_path / "work"
  elsewhere = tmp_path / "elsewhere"  # Not the repository: nothing is found by accident.
  elsewhere.mkdir()

  _run("zel_jax.train", f"--config={config_file}", f"--workdir={workdir}",
       f"--config.data.dir={data}", f"--config.model.pretrained={bert_dir}",
       plugin_dir=plugin, cwd=elsewhere)
  assert json.loads((workdir / "config.json").read_text())["recipe"] == "tinyrecipe"
  trained = json.loads((workdir / "eval_test.json").read_text())
  assert trained["mentions"] == 16 and 0.0 <= trained["recall@1"] <= 100.0
  # The loop ran the same evaluator during training (every 3 steps, before the last).
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("test/recall@1" in record for record in logged)

  report = json.loads(_run("zel_jax.evaluate", f"--workdir={workdir}", "--split=test",
                           plugin_dir=plugin, cwd=elsewhere).strip().splitlines()[-1])
  assert report["recipe"] == "tinyrecipe" and report["step"] == 6
  assert report["recall@4"] == trained["recall@4"]

  linked = json.loads(_run("zel_jax.link", f"--workdir={workdir}", "--world=computing",
                           "--text=the [[kernel]] uses the cache", "--top_k=3",
                           plugin_dir=plugin, cwd=elsewhere).strip().splitlines()[-1])
  assert linked["linked"] == 1 and len(linked["top"]) == 1
  assert linked["top"][0]["document_id"].startswith("E")
