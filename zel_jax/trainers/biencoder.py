"""BLINK bi-encoder training (Wu et al., 2020): in-batch negatives over the global batch, or
gold + K hard negatives per mention; one jitted, sharded, donated update per step.

`train_and_evaluate(config, workdir)` is what `python -m zel_jax.train` runs; the pieces
(`build_model`, `load_params`, `make_update`, ...) are importable for notebooks, the evaluator
and the linker.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Iterator

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zel_jax import checkpoint as checkpoint_lib
from zel_jax import losses, metrics, optim, sharding
from zel_jax.data import examples as examples_lib
from zel_jax.data import features as features_lib
from zel_jax.data import pipeline, zeshel
from zel_jax.models import bert, biencoder

CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------
# Model, parameters, shardings.


def build_model(config, mesh) -> tuple[biencoder.BiEncoder, features_lib.Featurizer]:
  """The bi-encoder and its featurizer (tokenizer + markers) from config.model / config.data."""
  path = bert.resolve_pretrained(config.model.pretrained)
  featurizer = features_lib.Featurizer(bert.load_tokenizer(path),
                                       use_unused_markers=config.data.use_unused_markers)
  bert_config = bert.load_config(path).replace(
      hidden_dropout=config.model.hidden_dropout,
      attention_dropout=config.model.attention_dropout)
  if featurizer.vocab_size > bert_config.vocab_size:
    bert_config = bert_config.replace(vocab_size=featurizer.vocab_size)
  model = biencoder.BiEncoder(
      bert_config, pooling=config.model.pooling, share_towers=config.model.share_towers,
      dtype=jnp.dtype(config.model.dtype), remat=config.model.remat or None,
      activation_sharding=sharding.activation_sharding(mesh, config.sharding.batch_axes))
  return model, featurizer


def param_shardings(config, model, mesh, log: bool = False):
  abstract = biencoder.abstract_params(model)
  specs = sharding.param_specs(abstract, mesh, config.sharding.logical_rules,
                               config.sharding.param_rules)
  if log:
    logging.info("parameter shardings on mesh %s:\n%s", dict(mesh.shape),
                 sharding.spec_table(abstract, specs))
  return sharding.to_shardings(specs, mesh)


def abstract_sharded_params(model, shardings):
  """ShapeDtypeStructs of the parameters, with their shardings (to restore or init into)."""
  return jax.tree_util.tree_map(
      lambda box, s: jax.ShapeDtypeStruct(box.value.shape, box.value.dtype, sharding=s),
      biencoder.abstract_params(model), shardings,
      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def random_params(model, shardings, rng):
  """Initialized straight into their shardings (jit with out_shardings)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  init = lambda r: nn.unbox(model.init(r, ids, ids, ids, ids)["params"])
  return jax.jit(init, out_shardings=shardings)(rng)


def pretrained_params(config, model, shardings, rng):
  """Each tower starts from config.model.pretrained; marker rows are appended when the
  vocabulary grew (use_unused_markers=False)."""
  path = bert.resolve_pretrained(config.model.pretrained)
  checkpoint_vocab = bert.load_config(path).vocab_size
  tower = bert.BertModel(model.config.replace(vocab_size=checkpoint_vocab))
  params = {}
  for name in biencoder.tower_names(model):
    tower_shardings = shardings[name]
    if model.config.vocab_size != checkpoint_vocab:
      loaded = bert.load_params(path, tower)
      loaded = bert.grow_embeddings(loaded, model.config.vocab_size,
                                    jax.random.fold_in(rng, hash(name) % 2**31))
      params[name] = jax.device_put(loaded, tower_shardings)
    else:
      params[name] = bert.load_params(path, tower, shardings=tower_shardings)
  return params


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found; is {workdir!r} a zel_jax training workdir?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # JSON turns tuples into lists; the mesh and rules are read as sequences either way.
  return config


def restore_params(workdir: str, config, model, mesh, step: int | None = None):
  """The trained parameters of a workdir's latest (or given) checkpoint, on `mesh`."""
  shardings = param_shardings(config, model, mesh)
  abstract = abstract_sharded_params(model, shardings)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to evaluate")
    items, meta = ckpt.restore({"params": abstract}, step=step)
  finally:
    ckpt.close()
  return items["params"], meta["step"]


# ------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TrainingData:
  """The training split as arrays: per-mention features for the pipeline, and the entity
  table of every training world concatenated (global entity rows) for negatives."""
  features: dict[str, np.ndarray]   # mention_*, entity_* (the gold's tokens), entity_index
  groups: np.ndarray                # [M] world of each mention
  entity_input_ids: np.ndarray      # [E, L] all training-world entities
  entity_attention_mask: np.ndarray
  entity_worlds: np.ndarray         # [E]
  entity_doc_ids: np.ndarray        # [E]
  mention_ids: list[str]

  @property
  def gold(self) -> np.ndarray:
    return self.features["entity_index"]


def training_data(config, dataset: zeshel.ZeshelDataset, featurizer) -> TrainingData:
  window = None if config.data.window_words < 0 else config.data.window_words
  worlds = sorted({m.corpus for m in dataset.iter_mentions(config.data.train_split,
                                                           validate=False)})
  entities = {w: examples_lib.world_entities(dataset, w, featurizer, config.data.entity_length)
              for w in worlds}
  mentions = examples_lib.mention_set(dataset, config.data.train_split, featurizer,
                                      config.data.mention_length, entities,
                                      window_words=window)
  offsets = dict(zip(worlds, np.cumsum([0] + [len(entities[w].ids) for w in worlds])))
  entity_ids = np.concatenate([entities[w].features["input_ids"] for w in worlds])
  entity_mask = np.concatenate([entities[w].features["attention_mask"] for w in worlds])
  global_rows = np.asarray([offsets[w] for w in mentions.worlds], np.int64) + mentions.gold_rows
  feats = {
      "mention_input_ids": mentions.features["input_ids"],
      "mention_attention_mask": mentions.features["attention_mask"],
      "entity_input_ids": entity_ids[global_rows],
      "entity_attention_mask": entity_mask[global_rows],
      "entity_index": global_rows.astype(np.int32),
  }
  return TrainingData(
      feats, mentions.worlds, entity_ids, entity_mask,
      np.concatenate([[w] * len(entities[w].ids) for w in worlds]),
      np.concatenate([entities[w].ids for w in worlds]),
      [m.mention_id for m in mentions.mentions])


def _first_negatives(candidates: np.ndarray, gold: np.ndarray, k: int) -> np.ndarray:
  """The first k candidates of each row that are not the gold; -1 where a row has fewer."""
  out = np.full((len(gold), k), -1, np.int64)
  for i, (row, g) in enumerate(zip(candidates, gold)):
    kept = row[(row != g) & (row >= 0)][:k]
    out[i, :len(kept)] = kept
  return out


def negatives_from_file(path: str, data: TrainingData, k: int, top: int) -> np.ndarray:
  """Hard negatives [M, k] (global entity rows) from a candidates file written by
  zel_jax.evaluate on the training split: the first k non-gold ids of each mention's top."""
  row_of = {(w, d): i for i, (w, d) in enumerate(zip(data.entity_worlds.tolist(),
                                                    data.entity_doc_ids.tolist()))}
  by_mention = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        by_mention[record["mention_id"]] = (record["world"], record["candidates"][:top])
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{number}: not a candidates record ({e})") from None
  missing = [m for m in data.mention_ids if m not in by_mention]
  if missing:
    raise ValueError(f"{path}: no candidates for {len(missing)} training mentions (e.g. "
                     f"{missing[:3]}); write it with zel_jax.evaluate --split=<train split>")
  candidates = np.full((len(data.mention_ids), top), -1, np.int64)
  for i, mention_id in enumerate(data.mention_ids):
    world, ids = by_mention[mention_id]
    rows = [row_of.get((world, d), -1) for d in ids]
    candidates[i, :len(rows)] = rows
  return _first_negatives(candidates, data.gold, k)


def mine_negatives(model, params, data: TrainingData, config, mesh) -> np.ndarray:
  """Hard negatives [M, k] from the current model: each mention's top entities of its own
  world by exact search, gold removed (BLINK Sec. 5.2.2)."""
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  from zel_jax.index.numpy_store import NumpyStore  # pylint: disable=g-import-not-at-top
  encode_mentions, encode_entities = evaluate.encoders(model)
  axes = config.sharding.batch_axes
  mention_emb = evaluate.embed_rows(
      encode_mentions, params, {"input_ids": data.features["mention_input_ids"],
                                "attention_mask": data.features["mention_attention_mask"]},
      mesh, config.eval_batch_size, axes, desc="mine: mentions")
  entity_emb = evaluate.embed_rows(
      encode_entities, params, {"input_ids": data.entity_input_ids,
                                "attention_mask": data.entity_attention_mask},
      mesh, config.eval_batch_size, axes, desc="mine: entities")
  top = int(config.hard_negatives.top)
  candidates = np.full((len(data.groups), top), -1, np.int64)
  for world in np.unique(data.groups):
    rows = np.flatnonzero(data.entity_worlds == world)
    sel = np.flatnonzero(data.groups == world)
    kk = min(top, len(rows))
    _, found = NumpyStore.build(entity_emb[rows], rows).search(mention_emb[sel], kk)
    candidates[sel, :kk] = found
  return _first_negatives(candidates, data.gold, int(config.hard_negatives.num))


def with_negatives(local: dict[str, np.ndarray], negatives: np.ndarray,
                   data: TrainingData) -> dict[str, np.ndarray]:
  """Adds the tokens of each example's negatives to a batch (gathered on the host)."""
  rows = negatives[local["example_index"]]
  safe = np.maximum(rows, 0)
  return dict(local, negative_input_ids=data.entity_input_ids[safe],
              negative_attention_mask=data.entity_attention_mask[safe],
              negative_index=rows.astype(np.int32), negative_valid=rows >= 0)


# ------------------------------------------------------------------------------------------
# The update.


def _microbatches(x: jax.Array, steps: int) -> jax.Array:
  """[B, ...] -> [steps, B/steps, ...] taking every steps-th row, so each microbatch keeps
  rows from every batch shard (a contiguous split would leave devices idle)."""
  b = x.shape[0]
  if b % steps:
    raise ValueError(f"batch {b} does not split into {steps} microbatches")
  return jnp.swapaxes(x.reshape((b // steps, steps) + x.shape[1:]), 0, 1)


def make_loss_fn(model: biencoder.BiEncoder, config):
  def loss_fn(params, batch, rng):
    r_mention, r_entity, r_negative = jax.random.split(rng, 3)
    variables = {"params": params}
    mention = model.apply(variables, batch["mention_input_ids"],
                          batch["mention_attention_mask"], deterministic=False,
                          method=biencoder.BiEncoder.encode_mentions,
                          rngs={"dropout": r_mention})
    entity = model.apply(variables, batch["entity_input_ids"], batch["entity_attention_mask"],
                         deterministic=False, method=biencoder.BiEncoder.encode_entities,
                         rngs={"dropout": r_entity})
    if config.loss == "in_batch":
      return losses.in_batch_softmax(mention, entity, batch["entity_index"], batch["valid"])
    if config.loss == "hard_negatives":
      b, k, length = batch["negative_input_ids"].shape
      negative = model.apply(variables, batch["negative_input_ids"].reshape(b * k, length),
                             batch["negative_attention_mask"].reshape(b * k, length),
                             deterministic=False, method=biencoder.BiEncoder.encode_entities,
                             rngs={"dropout": r_negative}).reshape(b, k, -1)
      return losses.hard_negative_softmax(mention, entity, negative, batch["entity_index"],
                                          batch["negative_index"], batch["negative_valid"],
                                          batch["valid"])
    raise ValueError(f"config.loss {config.loss!r} is not 'in_batch' or 'hard_negatives'")
  return loss_fn


def make_update(model, optimizer, schedule, config):
  """update(params, opt_state, step, batch, rng) -> (params, opt_state, measurements)."""
  loss_fn = make_loss_fn(model, config)
  accum = int(config.grad_accum_steps)

  def update(params, opt_state, step, batch, rng):
    rng = jax.random.fold_in(rng, step)
    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    else:
      micro = jax.tree_util.tree_map(lambda x: _microbatches(x, accum), batch)

      def one(carry, inputs):
        i, mb = inputs
        value, g = jax.value_and_grad(loss_fn)(params, mb, jax.random.fold_in(rng, i))
        return (carry[0] + value, jax.tree_util.tree_map(jnp.add, carry[1], g)), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
      (loss, grads), _ = jax.lax.scan(one, (jnp.zeros((), jnp.float32), zeros),
                                      (jnp.arange(accum), micro))
      loss, grads = loss / accum, jax.tree_util.tree_map(lambda g: g / accum, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    measurements = {"loss": loss, "learning_rate": schedule(step),
                    "grad_norm": optax.tree.norm(grads),
                    "param_norm": optax.tree.norm(params),
                    "update_norm": optax.tree.norm(updates)}
    return params, opt_state, measurements

  return update


# ------------------------------------------------------------------------------------------
# Training loop.


def _total_steps(config, batches_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * batches_per_epoch)


class _Progress:
  """A tqdm bar with ETA on process 0; quiet elsewhere."""

  def __init__(self, total: int, initial: int):
    self._bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                       dynamic_ncols=True, mininterval=2.0)

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains, checkpoints, resumes; then evaluates config.evals.splits. Returns the last
  logged measurements and the evaluation reports."""
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=A_ZESHEL_DIRECTORY")
  save_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s; %d processes", dict(mesh.shape), jax.process_count())
  model, featurizer = build_model(config, mesh)
  dataset = zeshel.ZeshelDataset(config.data.dir)

  t0 = time.time()
  data = training_data(config, dataset, featurizer)
  logging.info("featurized %d training mentions and %d entities in %.1fs", len(data.groups),
               len(data.entity_doc_ids), time.time() - t0)
  if config.loss not in ("in_batch", "hard_negatives"):
    raise ValueError(f"config.loss {config.loss!r} is not 'in_batch' or 'hard_negatives'")
  feats, groups = data.features, data.groups

  batches = pipeline.BatchIterator(
      feats, config.batch_size, seed=config.seed,
      groups=groups if config.data.one_world_per_batch else None)
  total_steps = _total_steps(config, batches.batches_per_epoch)
  optimizer, schedule = optim.make_optimizer(config.optimizer, total_steps)

  p_shardings = param_shardings(config, model, mesh, log=True)
  rng = jax.random.PRNGKey(config.seed)

  abstract_params = abstract_sharded_params(model, p_shardings)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  o_shardings = _opt_shardings(abstract_opt, abstract_params, p_shardings, mesh)
  abstract = {"params": abstract_params,
              "opt_state": checkpoint_lib.abstract_like(abstract_opt, o_shardings)}

  def initialize():
    params = random_params(model, p_shardings, jax.random.fold_in(rng, 1))
    opt_state = jax.jit(optimizer.init, out_shardings=o_shardings)(params)
    return {"params": params, "opt_state": opt_state}

  def load_pretrained(items):
    params = pretrained_params(config, model, p_shardings, jax.random.fold_in(rng, 2))
    return dict(items, params=params)

  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     save_every=config.checkpoint_every,
                                     keep=config.keep_checkpoints)
  ckpt.install_preemption_handler()
  restored = checkpoint_lib.restore_or_initialize(
      ckpt, abstract, initialize, init_from=config.init_from or None,
      load_pretrained=load_pretrained)
  params, opt_state = restored.items["params"], restored.items["opt_state"]
  step = int(restored.meta.get("step", 0))
  if "pipeline" in restored.meta:
    batches.restore(restored.meta["pipeline"])
  hard = config.loss == "hard_negatives"
  negatives, negatives_epoch = None, -1
  if hard and config.hard_negatives.candidates:
    negatives = negatives_from_file(config.hard_negatives.candidates, data,
                                    int(config.hard_negatives.num),
                                    int(config.hard_negatives.top))
  elif hard and restored.source == "workdir" and "negatives" in restored.meta:
    # The negatives mined at the start of this epoch, so a resumed run sees the same ones.
    negatives = np.asarray(restored.meta["negatives"], np.int64)
    negatives_epoch = int(restored.meta["negatives_epoch"])
  logging.info("starting at step %d of %d (%s)", step, total_steps, restored.source)

  state_shardings = (p_shardings, o_shardings)
  batch_sharding = sharding.batch_sharding(mesh, config.sharding.batch_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  update = jax.jit(
      make_update(model, optimizer, schedule, config),
      in_shardings=(state_shardings[0], state_shardings[1], replicated, batch_sharding,
                    replicated),
      out_shardings=(state_shardings[0], state_shardings[1], replicated),
      donate_argnums=(0, 1))

  writer = metrics.MetricWriter(workdir)
  progress = _Progress(total_steps, step)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last: dict[str, Any] = {}
  tick, tick_step = time.time(), step
  try:
    while step < total_steps:
      if hard and not config.hard_negatives.candidates and negatives_epoch != batches.epoch:
        negatives = mine_negatives(model, params, data, config, mesh)
        negatives_epoch = batches.epoch
      local = next(batches)
      if hard:
        local = with_negatives(local, negatives, data)
      batch = sharding.global_batch(local, mesh, config.sharding.batch_axes)
      params, opt_state, measured = update(params, opt_state, jnp.int32(step), batch, rng)
      step += 1
      pending.append((step, measured))
      at_save = step % config.checkpoint_every == 0 or step == total_steps
      preempted = ckpt.reached_preemption(step)
      if step % config.log_every == 0 or at_save or preempted:
        last = _flush(pending, writer, step, tick, tick_step, config.batch_size)
        tick, tick_step = time.time(), step
        pending = []
        progress.update(0, loss=f"{last['loss']:.4f}")
      progress.update(1)
      if at_save or preempted:
        meta = {"pipeline": batches.state()}
        if hard and not config.hard_negatives.candidates:
          meta.update(negatives=negatives.tolist(), negatives_epoch=negatives_epoch)
        ckpt.save(step, {"params": params, "opt_state": opt_state}, meta=meta, force=True)
      if preempted:
        ckpt.wait()
        logging.warning("preempted: saved step %d; the next start resumes from it", step)
        return {"preempted_at": step, **last}
  finally:
    progress.close()
    writer.close()
    ckpt.close()

  reports = {}
  if config.evals.splits:
    from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
    for split in config.evals.splits:
      if split not in dataset.splits():
        logging.warning("no split %r in %s; not evaluated", split, config.data.dir)
        continue
      reports[split] = evaluate.evaluate_biencoder(
          model, params, featurizer, dataset, split, config, mesh,
          store=config.evals.store, top_k=config.evals.top_k,
          candidates_path=os.path.join(workdir, "candidates", f"{split}.jsonl"))
      if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
          json.dump(reports[split], f, indent=1)
  return {**last, "evals": reports}


def _flush(pending, writer, step, tick, tick_step, batch_size) -> dict[str, Any]:
  """Fetches the measurements of the steps since the last log (one transfer), writes them,
  and stops the run on a non-finite loss before anything bad is checkpointed."""
  host = jax.device_get([m for _, m in pending])
  elapsed = max(time.time() - tick, 1e-9)
  for (s, _), values in zip(pending, host):
    if not math.isfinite(float(values["loss"])):
      raise FloatingPointError(
          f"loss is {float(values['loss'])} at step {s}: training stopped before saving it. "
          "Lower config.optimizer.learning_rate, raise warm-up, or compute in float32 "
          "(--config.model.dtype=float32); the last good checkpoint is kept.")
  record = {k: float(v) for k, v in host[-1].items()}
  record["examples_per_s"] = (step - tick_step) * batch_size / elapsed
  record["steps_per_s"] = (step - tick_step) / elapsed
  writer.write(step, record)
  return record


def _opt_shardings(abstract_opt_state, abstract_params, p_shardings, mesh):
  """Shardings for an optax state: subtrees shaped like the parameter tree (Adam's mu and
  nu) take the parameter shardings; every other leaf (step counts) is replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_struct = jax.tree_util.tree_structure(abstract_params)

  def assign(tree):
    if jax.tree_util.tree_structure(tree) == param_struct:
      return p_shardings
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple states.
      return type(tree)(*(assign(t) for t in tree))
    if isinstance(tree, (tuple, list)):
      return type(tree)(assign(t) for t in tree)
    if isinstance(tree, dict):
      return {k: assign(v) for k, v in tree.items()}
    return jax.tree_util.tree_map(lambda _: replicated, tree)

  return assign(abstract_opt_state)
