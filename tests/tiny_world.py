"""A tiny ZESHEL-layout dataset and tiny BERT and MPNet checkpoints for trainer, evaluator and
linker tests: mechanics (sharding, resume, metrics), not accuracy, so a 2-layer, 32-wide
encoder with the real MiniLM (or all-mpnet-base-v2) vocabulary and tokenizer is enough and
keeps the tests fast."""

import json
import os
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

from zel_jax.models import bert_io

TOPICS = ["kernel", "compiler", "parser", "router", "database", "scheduler", "cache", "socket",
          "thread", "buffer", "linker", "shell", "editor", "network", "protocol", "server"]


def write_world(root: pathlib.Path, world: str = "computing", mentions_per_split=(48, 16, 16),
                sentences: int = 1) -> pathlib.Path:
  """Entities "the X" with descriptions of `sentences` sentences (more than one makes several
  MVD views); each mention is an entity title inside another entity's description-like
  context document."""
  (root / "documents").mkdir(parents=True, exist_ok=True)
  (root / "mentions").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  docs = []
  for i, topic in enumerate(TOPICS):
    extra = "".join(f" It works with the {TOPICS[(i + j + 1) % len(TOPICS)]} in step {j} ."
                    for j in range(sentences - 1))
    docs.append({"document_id": f"E{i:03d}", "title": topic,
                 "text": f"{topic} {topic} is a part of a computer system that handles "
                         f"{topic} work .{extra}"})
  contexts = []
  for j in range(40):
    words = rng.choice(TOPICS, size=6).tolist()
    contexts.append({"document_id": f"C{j:03d}", "title": f"note {j}",
                     "text": f"note {j} : the {words[0]} uses the {words[1]} and the "
                             f"{words[2]} with {words[3]} {words[4]} {words[5]} ."})
  with open(root / "documents" / f"{world}.json", "w") as f:
    for doc in docs + contexts:
      f.write(json.dumps(doc) + "\n")
  title_row = {d["title"]: d["document_id"] for d in docs}
  count = 0
  for split, n in zip(("train", "val", "test"), mentions_per_split):
    with open(root / "mentions" / f"{split}.json", "w") as f:
      for _ in range(n):
        context = contexts[count % len(contexts)]
        tokens = context["text"].split()
        positions = [p for p, t in enumerate(tokens) if t in title_row]
        p = positions[count % len(positions)]
        f.write(json.dumps({
            "mention_id": f"M{count:04d}", "context_document_id": context["document_id"],
            "label_document_id": title_row[tokens[p]], "start_index": p, "end_index": p,
            "text": tokens[p], "corpus": world, "category": "HIGH_OVERLAP"}) + "\n")
        count += 1
  return root


def write_tiny_bert(directory: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A randomly initialized 2-layer BERT in Hugging Face layout, with MiniLM's tokenizer."""
  return _write_tiny(directory, seed, mpnet=False)


def write_tiny_mpnet(directory: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A randomly initialized 2-layer MPNet in Hugging Face layout (its tensor names, no token
  types, a relative-position bias, positions past the padding row), with all-mpnet-base-v2's
  tokenizer: `<s>`/`</s>`/`<pad>` ids 0/2/1 and pairs written `<s> a </s></s> b </s>`."""
  return _write_tiny(directory, seed, mpnet=True)


def _write_tiny(directory: pathlib.Path, seed: int, mpnet: bool) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  source = bert_io.resolve_pretrained("all-mpnet-base-v2" if mpnet else "all-MiniLM-L6-v2")
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    if os.path.exists(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), directory / name)
  hidden, layers, inter = 32, 2, 64
  vocab, positions = (30527, 130) if mpnet else (30522, 128)
  config = {"architectures": ["MPNetModel" if mpnet else "BertModel"],
            "model_type": "mpnet" if mpnet else "bert", "vocab_size": vocab,
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
            "intermediate_size": inter, "max_position_embeddings": positions,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1}
  config.update({"pad_token_id": 1, "relative_attention_num_buckets": 32} if mpnet else
                {"type_vocab_size": 2})
  (directory / "config.json").write_text(json.dumps(config))
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
  tensors = {
      "embeddings.word_embeddings.weight": normal(vocab, hidden),
      "embeddings.position_embeddings.weight": normal(positions, hidden),
      "embeddings.LayerNorm.weight": ones(hidden),
      "embeddings.LayerNorm.bias": zeros(hidden),
  }
  if mpnet:
    tensors["encoder.relative_attention_bias.weight"] = normal(32, 4)
  else:
    tensors["embeddings.token_type_embeddings.weight"] = normal(2, hidden)
  # Where the two name their attention blocks: q/k/v/o and the block's norm.
  qkv = ({"query": "attn.q", "key": "attn.k", "value": "attn.v"} if mpnet else
         {n: f"self.{n}" for n in ("query", "key", "value")})
  out, norm = ("attn.o", "LayerNorm") if mpnet else ("output.dense", "output.LayerNorm")
  for i in range(layers):
    p = f"encoder.layer.{i}."
    for theirs in qkv.values():
      tensors[p + f"attention.{theirs}.weight"] = normal(hidden, hidden)
      tensors[p + f"attention.{theirs}.bias"] = zeros(hidden)
    tensors[p + f"attention.{out}.weight"] = normal(hidden, hidden)
    tensors[p + f"attention.{out}.bias"] = zeros(hidden)
    tensors[p + "intermediate.dense.weight"] = normal(inter, hidden)
    tensors[p + "intermediate.dense.bias"] = zeros(inter)
    tensors[p + "output.dense.weight"] = normal(hidden, inter)
    tensors[p + "output.dense.bias"] = zeros(hidden)
    for ln in (f"attention.{norm}", "output.LayerNorm"):
      tensors[p + ln + ".weight"] = ones(hidden)
      tensors[p + ln + ".bias"] = zeros(hidden)
  save_file(tensors, str(directory / "model.safetensors"))
  return directory


def tiny_config(data_dir, model_dir, **overrides):
  from zel_jax.configs import blink_biencoder as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.data.dir = str(data_dir)
  config.model.pretrained = str(model_dir)
  # A from-scratch 2-layer encoder learns in a few dozen steps with short inputs and mean
  # pooling (the mention word then dominates both sides).
  config.data.mention_length = 12
  config.data.entity_length = 12
  config.model.pooling = "mean"
  config.batch_size = 8
  config.num_train_steps = 12
  config.log_every = 2
  config.checkpoint_every = 4
  config.optimizer.learning_rate = 3e-3
  config.model.hidden_dropout = 0.0
  config.model.attention_dropout = 0.0
  config.optimizer.warmup_fraction = 0.0
  config.eval_batch_size = 16
  config.evals.splits = ()
  config.mesh = [("data", 4), ("fsdp", 2)]
  return _override(config, overrides)


def write_candidates(data_dir, path, split: str, k: int = 4, miss_every: int = 0,
                     seed: int = 0) -> pathlib.Path:
  """A retriever's candidates file for the tiny world: each mention's gold among k - 1
  random other entities at a random position, or (every miss_every-th mention) missing."""
  rng = np.random.default_rng(seed)
  ids = [f"E{i:03d}" for i in range(len(TOPICS))]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(pathlib.Path(data_dir) / "mentions" / f"{split}.json") as f, open(path, "w") as out:
    for n, line in enumerate(f):
      mention = json.loads(line)
      gold = mention["label_document_id"]
      others = [d for d in rng.permutation(ids).tolist() if d != gold]
      if miss_every and n % miss_every == 0:
        chosen = others[:k]
      else:
        chosen = others[:k - 1]
        chosen.insert(int(rng.integers(k)), gold)
      out.write(json.dumps({"mention_id": mention["mention_id"], "world": mention["corpus"],
                            "label_document_id": gold, "candidates": chosen,
                            "scores": [float(k - i) for i in range(k)]}) + "\n")
  return path


def tiny_cross_config(data_dir, model_dir, candidates, **overrides):
  from zel_jax.configs import blink_crossencoder as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config("runlocal")
  config.data.dir = str(data_dir)
  config.data.candidates = str(candidates)
  config.model.pretrained = str(model_dir)
  config.data.mention_length = 12
  config.data.entity_length = 12
  config.data.num_candidates = 4
  # A from-scratch 2-layer encoder must learn to match the mention word with the title
  # across the pair; it does so within ~60 steps of 16 mentions at a high learning rate.
  config.batch_size = 16
  config.num_train_steps = 60
  config.log_every = 4
  config.checkpoint_every = 20
  config.optimizer.learning_rate = 1e-2
  config.optimizer.warmup_fraction = 0.0
  config.model.hidden_dropout = 0.0
  config.model.attention_dropout = 0.0
  config.eval_batch_size = 8
  config.evals.splits = ()
  config.mesh = [("data", 4), ("fsdp", 2)]
  return _override(config, overrides)


def _override(config, overrides):
  """Sets each key ("name" or "section.name") of overrides on config."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_mvd_config(data_dir, model_dir, stage: str, **overrides):
  from zel_jax.configs import mvd as recipe  # pylint: disable=g-import-not-at-top
  config = recipe.get_config(f"runlocal,stage={stage}")
  config.data.dir = str(data_dir)
  config.model.pretrained = str(model_dir)
  config.data.mention_length = 12
  config.data.entity_length = 24
  config.mvd.view_length = 12
  config.mvd.train_views = 3
  config.mvd.num_candidates = 4
  config.mvd.top_n = 8
  config.model.pooling = "mean"
  config.model.hidden_dropout = 0.0
  config.model.attention_dropout = 0.0
  config.batch_size = 8
  config.num_train_steps = 12
  config.log_every = 2
  config.checkpoint_every = 6
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_fraction = 0.0
  config.eval_batch_size = 16
  config.evals.splits = ()
  config.mesh = [("data", 4), ("fsdp", 2)]
  return _override(config, overrides)
