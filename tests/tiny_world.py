"""A tiny ZESHEL-layout dataset and a tiny BERT checkpoint for trainer, evaluator and linker
tests: mechanics (sharding, resume, metrics), not accuracy, so a 2-layer, 32-wide encoder with
the real MiniLM vocabulary and tokenizer is enough and keeps the tests fast."""

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
  directory.mkdir(parents=True, exist_ok=True)
  source = bert_io.resolve_pretrained("all-MiniLM-L6-v2")
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    if os.path.exists(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), directory / name)
  hidden, layers, inter, vocab = 32, 2, 64, 30522
  config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab,
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
            "intermediate_size": inter, "max_position_embeddings": 128, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1}
  (directory / "config.json").write_text(json.dumps(config))
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  tensors = {
      "embeddings.word_embeddings.weight": normal(vocab, hidden),
      "embeddings.position_embeddings.weight": normal(128, hidden),
      "embeddings.token_type_embeddings.weight": normal(2, hidden),
      "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
      "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
  }
  for i in range(layers):
    p = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      tensors[p + f"attention.self.{name}.weight"] = normal(hidden, hidden)
      tensors[p + f"attention.self.{name}.bias"] = np.zeros(hidden, np.float32)
    tensors[p + "attention.output.dense.weight"] = normal(hidden, hidden)
    tensors[p + "attention.output.dense.bias"] = np.zeros(hidden, np.float32)
    tensors[p + "intermediate.dense.weight"] = normal(inter, hidden)
    tensors[p + "intermediate.dense.bias"] = np.zeros(inter, np.float32)
    tensors[p + "output.dense.weight"] = normal(hidden, inter)
    tensors[p + "output.dense.bias"] = np.zeros(hidden, np.float32)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
      tensors[p + ln + ".weight"] = np.ones(hidden, np.float32)
      tensors[p + ln + ".bias"] = np.zeros(hidden, np.float32)
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
