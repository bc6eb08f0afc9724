"""Pretrained encoders named by a Hugging Face Hub repo id (`bert-base-uncased`,
`sentence-transformers/all-MiniLM-L6-v2`): only the files the loader reads are fetched, with
`huggingface_hub.snapshot_download`, into the standard Hugging Face cache, and found there
again offline.

The environment is read at each call, not only when huggingface_hub was imported:
  HF_HUB_CACHE, else HF_HOME/hub (else ~/.cache/huggingface/hub)   the cache folder
  HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1)                      the cache only, no network
  HF_ENDPOINT                                                        another hub (a mirror)
  HF_HUB_ETAG_TIMEOUT (seconds, default 10)    how long the hub has to answer before the cache
                                               is used instead (snapshot_download alone waits
                                               on a silent network without limit)
"""

from __future__ import annotations

import os
import re
from typing import Iterable

# What zel_jax reads of a checkpoint: its config, safetensors weights, tokenizer files and
# sentence-transformers' pooling (bert_io.checkpoint_pooling). Nothing else is downloaded.
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "added_tokens.json", "vocab.txt",
         "sentencepiece.bpe.model", "1_Pooling/config.json")
# Weight files in other formats, named when a checkpoint has no model.safetensors.
OTHER_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json",
                 "model.safetensors.index.json", "tf_model.h5", "flax_model.msgpack")
DEFAULT_TIMEOUT_S = 10.0

# Hugging Face's repo id syntax: NAME or ORG/NAME, no "--" or ".." (its cache folder names
# use "--" as the separator).
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]{1,96}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_repo_id(name: str) -> bool:
  """Whether `name` can be a hub model id (a path like /ckpt/bert or ./bert cannot)."""
  return (bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name
          and not name.startswith((".", "-")) and not name.endswith(".git"))


def cache_dir() -> str:
  """The hub cache folder, as huggingface_hub chooses it, from the environment now."""
  env = os.environ
  folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
  if not folder:
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    folder = os.path.join(home, "hub")
  return os.path.expandvars(os.path.expanduser(folder))


def offline() -> bool:
  """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub's own reading, made
  at its import, where neither is set."""
  value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
  if value is not None:
    return value.upper() in _TRUE
  from huggingface_hub import constants  # lazy: only hub names need huggingface_hub
  return bool(constants.HF_HUB_OFFLINE)


def no_safetensors_message(where: str, files: Iterable[str]) -> str:
  """Why a checkpoint without model.safetensors cannot be read, and how to convert it."""
  found = [name for name in OTHER_WEIGHTS if name in set(files)]
  has = f"it has {', '.join(found)}" if found else "nor any other weights file"
  sharded = ("; sharded safetensors (model-0000N-of-000M.safetensors) are not read either: "
             "save the model as one file" if "model.safetensors.index.json" in found else "")
  return (f"{where}: no model.safetensors ({has}); zel_jax reads only safetensors checkpoints"
          f"{sharded}. Convert it once where torch is installed: python -c \"from transformers "
          "import AutoModel, AutoTokenizer; [c.from_pretrained('SRC').save_pretrained('OUT') "
          "for c in (AutoModel, AutoTokenizer)]\" writes OUT/model.safetensors and the "
          "tokenizer; then set model.pretrained=OUT")


def _unavailable(repo_id: str, cache: str, reason: str) -> str:
  folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  return (f"pretrained model {repo_id!r} is not a directory here, and the Hugging Face cache "
          f"has no copy of it (looked in {folder}): {reason}. Either connect to the hub once "
          "(HF_HUB_OFFLINE unset) so it is downloaded into that cache; or download it "
          f"elsewhere (hf download {repo_id} --include '*.json' --include '*.txt' --include "
          "model.safetensors --local-dir DIR), copy DIR here and set model.pretrained=DIR; or "
          "point HF_HUB_CACHE (or HF_HOME) at a cache that holds it")


def _probe(api, repo_id: str, timeout: float):
  """(model info, None) when the hub answers within `timeout`, else (None, why not)."""
  from huggingface_hub import errors  # lazy: only hub names need huggingface_hub
  try:
    return api.model_info(repo_id, timeout=timeout), None
  except errors.RepositoryNotFoundError as e:  # Gated repositories included.
    raise FileNotFoundError(
        f"pretrained model {repo_id!r} is not a directory here, and the hub at {api.endpoint} "
        "has no public model of that name (a private or gated one needs `hf auth login` or "
        f"HF_TOKEN): {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    # Refused, timed out, offline mode, a proxy's error page: the cache decides (below).
    return None, f"the hub at {api.endpoint} did not answer ({type(e).__name__}: {e})"


def download(repo_id: str) -> str:
  """The snapshot folder of hub model `repo_id` in the cache, downloading the files in FILES
  the repository has unless offline; a clear FileNotFoundError when it cannot be had."""
  import huggingface_hub  # lazy: only hub names need it (and it starts an HTTP client)
  from huggingface_hub import constants, errors  # lazy: as above
  cache = cache_dir()
  endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
  timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT_S)
  info, reason = None, "HF_HUB_OFFLINE is set" if offline() else None
  if reason is None:
    info, reason = _probe(huggingface_hub.HfApi(endpoint=endpoint), repo_id, timeout)
  repo_files = {s.rfilename for s in (info.siblings or [])} if info is not None else set()
  if repo_files and "model.safetensors" not in repo_files:
    raise FileNotFoundError(no_safetensors_message(f"hub model {repo_id!r}", repo_files))
  try:
    folder = huggingface_hub.snapshot_download(
        repo_id, allow_patterns=list(FILES), cache_dir=cache, endpoint=endpoint,
        etag_timeout=timeout, local_files_only=reason is not None)
  except errors.LocalEntryNotFoundError as e:  # Incomplete snapshots too.
    raise FileNotFoundError(_unavailable(repo_id, cache, reason or str(e))) from e
  if not os.path.exists(os.path.join(folder, "model.safetensors")):
    raise FileNotFoundError(no_safetensors_message(f"hub model {repo_id!r} ({folder})",
                                                   os.listdir(folder)))
  return folder
