"""An encoder tower written back as a Hugging Face checkpoint folder: model.safetensors under
the checkpoint's own tensor names, its config.json and its tokenizer, so that transformers'
BertModel / MPNetModel (`AutoModel.from_pretrained(folder)`) and zel_jax's own loader
(`bert_io.load_params`) read it alike."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from flax import traverse_util
import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from zel_jax.models import bert, bert_io

# transformers' model class of each model type: AutoModel builds it from config.json.
_ARCHITECTURES = {"bert": "BertModel", "mpnet": "MPNetModel"}


def save_encoder(directory: str | os.PathLike, params: Any, config: bert.BertConfig,
                 source_dir: str, tokenizer: Any) -> None:
  """Writes one BERT/MPNet tower's params into `directory` (an existing folder).

  source_dir: the pretrained checkpoint the tower started from; its config.json is the
  template (the vocabulary size updated when marker tokens grew it), and the position rows a
  RoBERTa-style model never reads are taken from it. tokenizer: the featurizer's (marker
  tokens registered), saved with `save_pretrained`.
  """
  directory = pathlib.Path(directory)
  if config.model_type not in _ARCHITECTURES:
    raise ValueError(f"cannot export a {config.model_type!r} encoder; known: "
                     f"{sorted(_ARCHITECTURES)}")
  flat = {path: np.asarray(jax.device_get(leaf), np.float32)
          for path, leaf in traverse_util.flatten_dict(params).items()}
  names = bert_io.hf_tensor_names(config)
  unused = set(flat) - {path for path, _ in names.values()}
  if unused:
    raise ValueError("the encoder has parameters a Hugging Face "
                     f"{_ARCHITECTURES[config.model_type]} cannot hold: "
                     f"{sorted('/'.join(p) for p in unused)[:5]}")
  tensors = {}
  for name, (path, inverse) in names.items():
    if path not in flat:
      raise ValueError(f"the encoder has no parameter {'/'.join(path)} (for {name})")
    tensors[name] = np.ascontiguousarray(inverse(flat[path]))
  if config.position_offset:
    position = "embeddings.position_embeddings.weight"
    tensors[position] = np.concatenate(
        [_source_tensor(source_dir, position)[:config.position_offset], tensors[position]])
  save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})

  with open(os.path.join(source_dir, "config.json")) as f:
    hf_config = json.load(f)
  hf_config.update(vocab_size=config.vocab_size,
                   architectures=[_ARCHITECTURES[config.model_type]])
  hf_config.pop("_name_or_path", None)
  with open(directory / "config.json", "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
    f.write("\n")
  tokenizer.save_pretrained(str(directory))


def _source_tensor(source_dir: str, name: str) -> np.ndarray:
  with safe_open(os.path.join(source_dir, "model.safetensors"), framework="numpy") as f:
    for raw in f.keys():
      if raw == name or raw.split(".", 1)[-1] == name:
        return f.get_tensor(raw)
  raise ValueError(f"{source_dir}/model.safetensors has no tensor {name!r}")
