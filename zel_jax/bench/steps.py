"""Step benchmarks against the reference stacks: the bi-encoder update and PyTorch, the
knowledge-base encoding pass, cross-encoder reranking, and MVD's joint update against
BLINK's (python -m zel_jax.bench train|encode|rerank|mvd)."""

from __future__ import annotations

import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zel_jax import optim, sharding
from zel_jax.configs import blink_biencoder, blink_crossencoder
from zel_jax.configs import mvd as mvd_config
from zel_jax.data import examples, zeshel
from zel_jax.data import rows as rows_lib
from zel_jax.evals import inference
from zel_jax.models import bert_io, biencoder, crossencoder
from zel_jax.recipes.blink import biencoder as bi_trainer
from zel_jax.recipes.blink import crossencoder as cross_trainer
from zel_jax.recipes.mvd import data as mvd_data
from zel_jax.recipes.mvd import trainer as mvd
from zel_jax.training import loop
from zel_jax.training import params as params_lib


# ------------------------------------------------------------------------------------------
# train: the bi-encoder update against PyTorch on the same model and batch.


def _matmul_flops_per_s(seconds: float = 3.0, n: int = 2048) -> float:
  """XLA's own ceiling here: FLOP/s of one plain jitted fp32 matmul."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    f(a, a).block_until_ready()
    runs += 1
  return 2 * n ** 3 * runs / (time.perf_counter() - start)


def _train_batch(tokenizer, batch_size: int, mention_length: int, entity_length: int):
  """A realistic batch: real vocabulary ids, every row at full length (no padding)."""
  rng = np.random.default_rng(0)
  vocab = len(tokenizer)
  def rows(length):
    ids = rng.integers(1000, vocab, (batch_size, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return ids, np.ones_like(ids)
  return rows(mention_length), rows(entity_length)


def bench_train(model_name: str, batch_size: int, mention_length: int, entity_length: int,
                seconds: float) -> dict[str, Any]:
  import torch  # lazy: torch is the reference, installed with the bench/test extras only

  config = blink_biencoder.get_config("runlocal")
  config.model.pretrained = model_name
  config.batch_size = batch_size
  config.model.hidden_dropout = config.model.attention_dropout = 0.1
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = bi_trainer.build_model(config, mesh)
  shardings = bi_trainer.param_shardings(config, model, mesh)
  params = bi_trainer.pretrained_params(config, model, shardings, jax.random.PRNGKey(0))
  optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
  opt_state = optimizer.init(params)
  (m_ids, m_mask), (e_ids, e_mask) = _train_batch(featurizer.tokenizer, batch_size,
                                                  mention_length, entity_length)
  batch = {"mention_input_ids": m_ids, "mention_attention_mask": m_mask,
           "entity_input_ids": e_ids, "entity_attention_mask": e_mask,
           "entity_index": np.arange(batch_size, dtype=np.int32),
           "valid": np.ones(batch_size, bool)}
  batch = sharding.global_batch(batch, mesh, config.sharding.batch_axes)
  update = jax.jit(loop.make_update(bi_trainer.make_loss_fn(model, config), optimizer, schedule,
                                    config),
                   donate_argnums=(0, 1))
  rng = jax.random.PRNGKey(0)
  compiled = update.lower(params, opt_state, jnp.int32(0), batch, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis counts one device's partition of the SPMD program; the batch is
  # split evenly over the devices, so the step's work is that times the device count.
  step_flops = float(cost.get("flops", 0.0)) * jax.device_count()

  def zel_step(state):
    p, o = state
    p, o, m = update(p, o, jnp.int32(1), batch, rng)
    jax.block_until_ready(m["loss"])
    return (p, o)

  zel_s = _time_steps(zel_step, (params, opt_state), seconds)
  zel_peak_gb = _peak_rss_gb()

  torch.manual_seed(0)
  from transformers import AutoModel  # lazy: the PyTorch reference (BertModel, MPNetModel)
  path = _resolve(model_name)
  towers = [AutoModel.from_pretrained(path, add_pooling_layer=False).train() for _ in range(2)]
  torch_params = [p for t in towers for p in t.parameters()]
  decay = [p for t in towers for n, p in t.named_parameters()
           if not (n.endswith("bias") or "LayerNorm" in n)]
  no_decay = [p for t in towers for n, p in t.named_parameters()
              if n.endswith("bias") or "LayerNorm" in n]
  torch_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
  tm = [torch.tensor(x, dtype=torch.long) for x in (m_ids, m_mask, e_ids, e_mask)]
  labels = torch.arange(batch_size)

  def torch_step(state):
    torch_opt.zero_grad(set_to_none=True)
    mention = towers[0](input_ids=tm[0], attention_mask=tm[1]).last_hidden_state[:, 0]
    entity = towers[1](input_ids=tm[2], attention_mask=tm[3]).last_hidden_state[:, 0]
    loss = torch.nn.functional.cross_entropy(mention @ entity.T, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
    torch_opt.step()
    return state

  torch_s = _time_steps(torch_step, None, seconds)
  ceiling = _matmul_flops_per_s()
  zel_pairs = batch_size / zel_s
  torch_pairs = batch_size / torch_s
  return {"model": model_name, "batch_size": batch_size,
          "lengths": [mention_length, entity_length], "devices": jax.device_count(),
          "torch_threads": torch.get_num_threads(),
          "zel_pairs_per_s": round(zel_pairs, 3), "torch_pairs_per_s": round(torch_pairs, 3),
          "ratio": round(zel_pairs / torch_pairs, 3), "step_gflop": round(step_flops / 1e9, 1),
          "step_gflop_per_s": round(step_flops / zel_s / 1e9, 2),
          "matmul_gflop_per_s": round(ceiling / 1e9, 2),
          "matmul_fraction": round(step_flops / zel_s / ceiling, 3),
          "peak_rss_gb_zel": zel_peak_gb, "peak_rss_gb_both": _peak_rss_gb()}


def _peak_rss_gb() -> float:
  """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def bench_mvd(model_name: str, variant: str, batch_size: int, seconds: float,
              dtype: str = "float32", remat: str = "") -> dict[str, Any]:
  """Seconds per jitted update of MVD's joint step (student over K candidates x S views,
  teacher over the same pairs, both losses and alignments) against the BLINK bi-encoder's
  in-batch step, same encoder, same mentions per step, full-length random token rows."""

  arg = "runlocal" if variant == "runlocal" else f"variant={variant}"
  config = mvd_config.get_config(f"{arg},stage=joint")
  config.model.pretrained = model_name
  config.model.dtype = dtype
  config.model.remat = remat
  config.batch_size = batch_size
  bi_config = blink_biencoder.get_config(arg)
  bi_config.model.pretrained = model_name
  bi_config.model.dtype = dtype
  bi_config.model.remat = remat
  mesh = sharding.make_mesh(config.mesh)
  rng = np.random.default_rng(0)
  b, lm = batch_size, int(config.data.mention_length)

  def filled(shapes):
    """Full-length random token rows; every view and candidate valid, gold first."""
    out = {}
    for name, (shape, dtype) in shapes.items():
      if name.endswith("input_ids"):
        out[name] = rng.integers(1000, 30000, shape).astype(dtype)
      elif name.endswith("token_type_ids"):  # The mention's segment 0, the view's 1.
        out[name] = (np.arange(shape[-1]) >= lm).astype(dtype) * np.ones(shape, dtype)
      elif name in ("label", "entity_index"):
        out[name] = (np.arange(shape[0]) if name == "entity_index"
                     else np.zeros(shape)).astype(dtype)
      else:  # attention masks and validity
        out[name] = np.ones(shape, dtype)
    return out

  def timed_update(loss_fn, abstract, init, batch):
    shardings = params_lib.param_shardings(config, abstract, mesh)
    params = init(shardings)
    optimizer, schedule = optim.make_optimizer(config.optimizer, 10_000)
    batch = sharding.global_batch(batch, mesh, config.sharding.batch_axes)
    state = (params, optimizer.init(params))
    update = jax.jit(loop.make_update(loss_fn, optimizer, schedule, config),
                     donate_argnums=(0, 1)).lower(
                         *state, jnp.int32(1), batch, jax.random.PRNGKey(0)).compile()
    # Per-device bytes XLA plans for the step's temporaries (activations kept for the
    # backward pass dominate); None where the backend does not report it.
    memory = update.memory_analysis()
    temp_gb = None if memory is None else round(memory.temp_size_in_bytes / 2**30, 2)

    def step(state):
      p, o = state
      p, o, m = update(p, o, jnp.int32(1), batch, jax.random.PRNGKey(0))
      jax.block_until_ready(m["loss"])
      return (p, o)

    return _time_steps(step, state, seconds), temp_gb

  student, _ = bi_trainer.build_model(config, mesh)
  teacher, _ = cross_trainer.build_model(mvd_data.teacher_config(config), mesh)
  key = jax.random.PRNGKey(0)
  joint_batch = filled(mvd.mvd_joint_shapes(config, b, teacher.config))
  joint_s, joint_gb = timed_update(
      mvd.joint_loss_fn(student, teacher, config),
      {"student": biencoder.abstract_params(student),
       "teacher": crossencoder.abstract_params(teacher)},
      lambda sh: {"student": bi_trainer.random_params(student, sh["student"], key),
                  "teacher": cross_trainer.random_params(teacher, sh["teacher"], key)},
      joint_batch)
  bi_model, _ = bi_trainer.build_model(bi_config, mesh)
  bi_batch = filled(bi_trainer.biencoder_shapes(bi_config, b))
  bi_s, bi_gb = timed_update(bi_trainer.make_loss_fn(bi_model, bi_config),
                      biencoder.abstract_params(bi_model),
                      lambda sh: bi_trainer.random_params(bi_model, sh, key), bi_batch)
  return {"variant": variant, "dtype": dtype, "platform": jax.devices()[0].platform,
          "mentions_per_step": b, "candidates": int(config.mvd.num_candidates),
          "views": int(config.mvd.train_views),
          "lengths": {"mention": lm, "view": int(config.mvd.view_length),
                      "teacher_pair": joint_batch["teacher_input_ids"].shape[-1],
                      "bi_entity": int(bi_config.data.entity_length),
                      "global_view": (int(config.data.entity_length)
                                      if config.mvd.train_global_view else 0)},
          "devices": jax.device_count(), "mvd_step_s": round(joint_s, 3),
          "biencoder_step_s": round(bi_s, 3), "ratio": round(joint_s / bi_s, 2),
          "remat": config.model.remat or "none", "mvd_temp_gib": joint_gb,
          "biencoder_temp_gib": bi_gb}


def _time_steps(step, state, seconds: float, warmup: int = 2) -> float:
  """Median seconds per step after `warmup` steps (compile, allocator warm-up)."""
  for _ in range(warmup):
    state = step(state)
  times = []
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 3:
    t = time.perf_counter()
    state = step(state)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _resolve(model_name: str) -> str:
  return bert_io.resolve_pretrained(model_name)


# ------------------------------------------------------------------------------------------
# encode: the whole knowledge-base embedding pass.


def bench_encode(data: str, world: str, model_name: str, length: int,
                 batch_size: int) -> dict[str, Any]:
  import torch  # lazy: torch is the reference, installed with the bench/test extras only

  dataset = zeshel.ZeshelDataset(data)
  entities = list(dataset.iter_entities(world))
  config = blink_biencoder.get_config("runlocal")
  config.model.pretrained = model_name
  config.data.entity_length = length
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = bi_trainer.build_model(config, mesh)
  params = bi_trainer.pretrained_params(
      config, model, bi_trainer.param_shardings(config, model, mesh), jax.random.PRNGKey(0))
  _, encode_entities = inference.encoders(model)
  # Compile every bucket shape once outside the timing: a KB pass runs long enough in
  # practice that compilation is amortized; it is reported separately.
  warm = featurizer.entity_features([e.title for e in entities[:batch_size]],
                                    [e.text for e in entities[:batch_size]], length)
  t = time.perf_counter()
  for width in range(8, length + 1, 8):
    w = {k: np.ascontiguousarray(v[:, :width]) for k, v in warm.items()}
    w["attention_mask"][:] = 1
    inference.embed_rows(encode_entities, params, w, mesh, batch_size)
  compile_s = time.perf_counter() - t

  from transformers import AutoModel  # lazy: the PyTorch reference (BertModel, MPNetModel)
  tower = AutoModel.from_pretrained(_resolve(model_name), add_pooling_layer=False).eval()

  def zel_pass(part):
    feats = featurizer.entity_features([e.title for e in part], [e.text for e in part], length)
    return inference.embed_rows(encode_entities, params, feats, mesh, batch_size), feats

  def torch_pass(part):
    # BLINK's pass: every entity padded to the maximum length, fixed batches, [CLS] state.
    padded = featurizer.entity_features([e.title for e in part], [e.text for e in part],
                                        length)
    out = []
    with torch.inference_mode():
      for start in range(0, len(part), batch_size):
        ids = torch.tensor(padded["input_ids"][start:start + batch_size], dtype=torch.long)
        mask = torch.tensor(padded["attention_mask"][start:start + batch_size],
                            dtype=torch.long)
        out.append(tower(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
    return torch.cat(out).numpy()

  def torch_bucketed_pass(part):
    # The same saving as zel_jax's: longest first, each batch cut to its longest row (in
    # steps of 8 tokens), so the ratio to this row is the framework's alone.
    feats = featurizer.entity_features([e.title for e in part], [e.text for e in part],
                                       length)
    out = np.zeros((len(part), tower.config.hidden_size), np.float32)
    with torch.inference_mode():
      for sel, width in length_buckets(feats["attention_mask"].sum(1), batch_size):
        ids = torch.tensor(feats["input_ids"][sel, :width], dtype=torch.long)
        mask = torch.tensor(feats["attention_mask"][sel, :width], dtype=torch.long)
        out[sel] = tower(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0].numpy()
    return out

  # The passes alternate over 4 random quarters of the world, so that a change in the
  # machine's speed during the run (shared hosts) weighs on all alike.
  quarters = np.array_split(np.random.default_rng(0).permutation(len(entities)), 4)
  seconds = {"zel": 0.0, "torch": 0.0, "torch_bucketed": 0.0}
  embedded = {name: [] for name in seconds}
  masks = []
  for quarter in quarters:
    part = [entities[i] for i in quarter]
    for name, run in (("zel", zel_pass), ("torch", torch_pass),
                      ("torch_bucketed", torch_bucketed_pass)):
      t = time.perf_counter()
      result = run(part)
      seconds[name] += time.perf_counter() - t
      if name == "zel":
        result, feats = result
        masks.append(feats["attention_mask"])
      embedded[name].append(result)
  embedded = {name: np.concatenate(parts) for name, parts in embedded.items()}
  mask = np.concatenate(masks)
  return {"world": world, "entities": len(entities), "length": length,
          "real_token_fraction": round(int(mask.sum()) / mask.size, 3),
          **{f"{name}_entities_per_s": round(len(entities) / s, 1)
             for name, s in seconds.items()},
          "ratio": round(seconds["torch"] / seconds["zel"], 3),
          "ratio_bucketed": round(seconds["torch_bucketed"] / seconds["zel"], 3),
          "zel_compile_s": round(compile_s, 1),
          "max_abs_difference": float(np.max(np.abs(embedded["torch"] - embedded["zel"]))),
          "max_abs_difference_bucketed": float(np.max(np.abs(embedded["torch_bucketed"]
                                                             - embedded["zel"]))),
          "torch_threads": torch.get_num_threads()}


def length_buckets(lengths: np.ndarray, batch_size: int, bucket: int = 8):
  """(rows, width) batches, longest rows first, each cut to its longest row rounded up to
  `bucket` tokens: the PyTorch reference's version of inference.sorted_batches."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  for start in range(0, len(order), batch_size):
    sel = order[start:start + batch_size]
    yield sel, int(-(-int(np.max(lengths[sel])) // bucket) * bucket)


# ------------------------------------------------------------------------------------------
# rerank: cross-encoder scoring throughput.


def bench_rerank(data: str, model_name: str, mentions: int, k: int, batch_size: int
                 ) -> dict[str, Any]:
  import torch  # lazy: torch is the reference, installed with the bench/test extras only

  config = blink_crossencoder.get_config("variant=base")
  config.model.pretrained = model_name
  mesh = sharding.make_mesh(config.mesh)
  model, featurizer = cross_trainer.build_model(config, mesh)
  params = cross_trainer.pretrained_params(
      config, model, cross_trainer.param_shardings(config, model, mesh), jax.random.PRNGKey(0))
  dataset = zeshel.ZeshelDataset(data)
  world = "foldoc" if "foldoc" in dataset.worlds() else dataset.worlds()[0]
  entities = examples.world_entities(dataset, world, featurizer, config.data.entity_length)
  test = examples.mention_set(dataset, "test", featurizer, config.data.mention_length,
                              {world: entities}, worlds=[world])
  rng = np.random.default_rng(0)
  index = np.sort(rng.choice(len(test), min(mentions, len(test)), replace=False))
  mention_feats = {name: v[index] for name, v in test.features.items()}
  rows = rng.integers(0, len(entities.ids), (len(index), k))
  rows[:, 0] = test.gold_rows[index]
  pairs = len(index) * k
  length = cross_trainer.pair_length(config, model.config)

  def zel_pass():
    return cross_trainer.score_candidates(model, params, mention_feats, entities.features, rows,
                                    config, mesh, batch_size, desc="")

  zel_pass()  # Compiles every bucket this set needs.
  t = time.perf_counter()
  zel_scores = zel_pass()
  zel_s = time.perf_counter() - t

  from transformers import AutoModel  # lazy: the PyTorch reference (BertModel, MPNetModel)
  tower = AutoModel.from_pretrained(_resolve(model_name), add_pooling_layer=False).eval()
  linear = torch.nn.Linear(tower.config.hidden_size, 1)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(np.asarray(params["score"]["kernel"]).T))
    linear.bias.copy_(torch.from_numpy(np.asarray(params["score"]["bias"])))
  real = (mention_feats["attention_mask"].sum(1)[:, None]
          + entities.features["attention_mask"][rows].sum(2) - 2 + model.config.pair_separators)

  def torch_scores_of(sel: np.ndarray, width: int) -> np.ndarray:
    feats = rows_lib.cross_features(
        mention_feats["input_ids"][sel], mention_feats["attention_mask"][sel],
        entities.features["input_ids"][rows[sel]],
        entities.features["attention_mask"][rows[sel]], length + 1,
        pad_id=model.config.pad_token_id, separators=model.config.pair_separators)
    flat = {name: torch.tensor(v[..., :width].reshape(-1, width), dtype=torch.long)
            for name, v in feats.items()
            if name != "token_type_ids" or model.config.type_vocab_size}  # MPNet: none
    cls = tower(**flat).last_hidden_state[:, 0]
    return linear(cls)[:, 0].reshape(len(sel), k).numpy()

  torch_scores = np.zeros((len(index), k), np.float32)
  bucketed_scores = np.zeros((len(index), k), np.float32)
  with torch.inference_mode():
    t = time.perf_counter()
    for start in range(0, len(index), batch_size):
      # BLINK: every pair padded to max_seq_length (256; the pairs here hold at most 255).
      sel = np.arange(start, min(start + batch_size, len(index)))
      torch_scores[sel] = torch_scores_of(sel, length + 1)
    torch_s = time.perf_counter() - t
    # The same saving as zel_jax's: mentions sorted by their longest pair, each batch cut to
    # its longest (steps of 8), so the ratio to this row is the framework's alone.
    t = time.perf_counter()
    for sel, width in length_buckets(real.max(1), batch_size):
      bucketed_scores[sel] = torch_scores_of(sel, min(width, length + 1))
    bucketed_s = time.perf_counter() - t
  return {"world": world, "mentions": int(len(index)), "candidates_per_mention": k,
          "pair_length": length + 1, "real_token_fraction": round(float(real.mean()) /
                                                                  (length + 1), 3),
          "zel_candidates_per_s": round(pairs / zel_s, 1),
          "torch_candidates_per_s": round(pairs / torch_s, 1),
          "torch_bucketed_candidates_per_s": round(pairs / bucketed_s, 1),
          "ratio": round(torch_s / zel_s, 3), "ratio_bucketed": round(bucketed_s / zel_s, 3),
          "max_abs_difference": float(np.max(np.abs(torch_scores - zel_scores))),
          "max_abs_difference_bucketed": float(np.max(np.abs(bucketed_scores - zel_scores))),
          "devices": jax.device_count(), "torch_threads": torch.get_num_threads()}
