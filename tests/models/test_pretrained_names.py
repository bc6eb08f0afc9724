"""model.pretrained as a Hugging Face Hub repo id, on a local hub cache in huggingface_hub's
own layout (no network): found offline and loaded as the packaged copy of the same model; an
uncached name offline, or a hub that refuses or never answers, stops at once with what to do;
a PyTorch-only checkpoint says that safetensors is needed."""

import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import huggingface_hub
from huggingface_hub import constants
import jax
import numpy as np
import pytest

from zel_jax.configs import blink_biencoder
from zel_jax.models import bert_io, hub, pretrained

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
HUB_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
           "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_ETAG_TIMEOUT",
           "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _hub_cache(cache: pathlib.Path, source: pathlib.Path, names) -> pathlib.Path:
  """Writes the files `names` of `source` into `cache` as the hub's download of REPO_ID at
  COMMIT leaves them: content-addressed blobs, a snapshot of relative symlinks, refs/main."""
  repo = cache / ("models--" + REPO_ID.replace("/", "--"))
  snapshot = repo / "snapshots" / COMMIT
  for name in names:
    data = (source / name).read_bytes()
    # A blob is named by its LFS sha256 (weights) or its git object id (small files).
    blob_id = (hashlib.sha256(data).hexdigest() if name.endswith((".safetensors", ".bin"))
               else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
    blob = repo / "blobs" / blob_id
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  (repo / "refs").mkdir(parents=True, exist_ok=True)
  (repo / "refs" / "main").write_text(COMMIT)
  return snapshot


@pytest.fixture
def hub_env(monkeypatch):
  """No hub setting from the machine leaks in; huggingface_hub's import-time reading of
  HF_HUB_OFFLINE is off, so each test's environment alone decides."""
  for name in HUB_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  return monkeypatch


@pytest.fixture
def cached_minilm(tmp_path, minilm_path):
  """A hub cache holding REPO_ID's loader files, copied from the packaged MiniLM."""
  source = pathlib.Path(minilm_path)
  names = [n for n in hub.FILES if (source / n).exists()]
  assert {"config.json", "model.safetensors", "1_Pooling/config.json"} <= set(names)
  cache = tmp_path / "home" / "hub"
  snapshot = _hub_cache(cache, source, names)
  # huggingface_hub reads it as its own.
  repo, = huggingface_hub.scan_cache_dir(cache).repos
  revision, = repo.revisions
  assert (repo.repo_id, revision.commit_hash) == (REPO_ID, COMMIT)
  assert sorted(f.file_name for f in revision.files) == sorted(pathlib.Path(n).name
                                                               for n in names)
  return cache, snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_name_offline_resolves_to_the_cache_and_loads_the_same_model(
    hub_env, cached_minilm, minilm_path, variable):
  cache, snapshot = cached_minilm
  hub_env.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else cache.parent))
  hub_env.setenv("HF_HUB_OFFLINE", "1")
  assert bert_io.resolve_pretrained(REPO_ID) == str(snapshot)
  assert bert_io.checkpoint_pooling(bert_io.resolve_pretrained(REPO_ID)) == "mean"

  # Through a config, as a recipe reads it: the same tokenizer, shapes and weights.
  named = blink_biencoder.get_config("runlocal")
  named.model.pretrained = REPO_ID
  packaged = blink_biencoder.get_config("runlocal")
  packaged.model.pretrained = "all-MiniLM-L6-v2"
  named_bert, named_featurizer = pretrained.bert_and_featurizer(named)
  packaged_bert, packaged_featurizer = pretrained.bert_and_featurizer(packaged)
  assert named_bert == packaged_bert
  text = "The Sun is a G-type main-sequence star."
  assert named_featurizer.tokenizer(text)["input_ids"] == (
      packaged_featurizer.tokenizer(text)["input_ids"])
  rng = jax.random.key(0)
  ours = pretrained.pretrained_bert(named, named_bert, None, rng)
  theirs = pretrained.pretrained_bert(packaged, packaged_bert, None, rng)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  assert len(jax.tree.leaves(ours)) > 90
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)
  assert pathlib.Path(minilm_path).is_dir()


def test_uncached_name_offline_says_where_it_looked_and_what_to_do(hub_env, tmp_path):
  cache = tmp_path / "empty_cache"
  hub_env.setenv("HF_HUB_CACHE", str(cache))
  hub_env.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError) as info:
    bert_io.resolve_pretrained("google-bert/bert-base-uncased")
  message = str(info.value)
  assert "'google-bert/bert-base-uncased'" in message
  assert str(cache / "models--google-bert--bert-base-uncased") in message
  assert "HF_HUB_OFFLINE is set" in message
  for remedy in ("connect to the hub once", "hf download google-bert/bert-base-uncased",
                 "model.pretrained=DIR", "HF_HUB_CACHE"):
    assert remedy in message


def test_a_fresh_interpreter_reads_the_environment_it_starts_with(tmp_path):
  # huggingface_hub is imported by zel_jax alone here, after HF_HUB_OFFLINE is set.
  env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
  env.update(HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
             PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]))
  run = subprocess.run(
      [sys.executable, "-c", "from zel_jax.models import bert_io\n"
       "try:\n  bert_io.resolve_pretrained('bert-base-uncased')\n"
       "except FileNotFoundError as e:\n  print(e)"],
      env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "HF_HUB_OFFLINE is set" in run.stdout
  assert str(tmp_path / "cache" / "models--bert-base-uncased") in run.stdout


@pytest.fixture
def silent_hub():
  """http://127.0.0.1:PORT that accepts connections and never answers."""
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(16)
  yield f"http://127.0.0.1:{server.getsockname()[1]}"
  server.close()


@pytest.fixture
def refusing_hub():
  """http://127.0.0.1:PORT where nothing listens."""
  probe = socket.socket()
  probe.bind(("127.0.0.1", 0))
  port = probe.getsockname()[1]
  probe.close()
  return f"http://127.0.0.1:{port}"


def _resolve_within(name: str, seconds: float):
  """resolve_pretrained(name) -> (folder or the exception, seconds taken); fails the test
  rather than hang when it takes longer than `seconds`."""
  out = {}

  def run():
    try:
      out["result"] = bert_io.resolve_pretrained(name)
    except Exception as e:  # pylint: disable=broad-except
      out["result"] = e

  start = time.monotonic()
  worker = threading.Thread(target=run, daemon=True)
  worker.start()
  worker.join(seconds)
  assert "result" in out, f"resolving {name!r} still waits after {seconds} s"
  return out["result"], time.monotonic() - start


@pytest.mark.parametrize("endpoint", ["silent_hub", "refusing_hub"])
def test_unreachable_hub_fails_fast_or_uses_the_cache(hub_env, cached_minilm, tmp_path,
                                                      request, endpoint):
  url = request.getfixturevalue(endpoint)
  hub_env.setenv("HF_ENDPOINT", url)
  hub_env.setenv("HF_HUB_ETAG_TIMEOUT", "1")
  hub_env.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
  error, seconds = _resolve_within("google-bert/bert-base-uncased", 30)
  assert isinstance(error, FileNotFoundError), error
  assert seconds < 10
  message = str(error)
  assert f"the hub at {url} did not answer" in message
  assert str(tmp_path / "empty_cache" / "models--google-bert--bert-base-uncased") in message
  assert "connect to the hub once" in message and "model.pretrained=DIR" in message

  # A cached model is used when the hub does not answer.
  cache, snapshot = cached_minilm
  hub_env.setenv("HF_HUB_CACHE", str(cache))
  folder, seconds = _resolve_within(REPO_ID, 30)
  assert folder == str(snapshot) and seconds < 10


def test_pytorch_only_checkpoints_say_safetensors_is_needed(hub_env, tmp_path, minilm_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "torch_only"
  folder.mkdir()
  shutil.copy(pathlib.Path(minilm_path) / "config.json", folder / "config.json")
  torch.save(load_file(str(pathlib.Path(minilm_path) / "model.safetensors")),
             folder / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match=r"no model.safetensors \(it has "
                     r"pytorch_model.bin\); zel_jax reads only safetensors.*save_pretrained"):
    bert_io.from_pretrained(str(folder))

  # The same checkpoint as a cached hub snapshot.
  snapshot = _hub_cache(tmp_path / "cache", folder, ["config.json", "pytorch_model.bin"])
  hub_env.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
  hub_env.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match=rf"hub model '{REPO_ID}' \({snapshot}\): no "
                     r"model.safetensors \(it has pytorch_model.bin\)"):
    bert_io.resolve_pretrained(REPO_ID)


def test_paths_are_not_hub_names(hub_env):
  for name in ("bert-base-uncased", REPO_ID, "intfloat/multilingual-e5-small"):
    assert hub.is_repo_id(name), name
  for name in ("/ckpt/bert-base-uncased", "./bert", "~/bert", "a/b/c", "org--x/name",
               "org/../name", ""):
    assert not hub.is_repo_id(name), name
  # A missing folder fails at once, without asking a hub.
  with pytest.raises(FileNotFoundError, match="neither a directory.*nor a Hugging Face Hub"):
    bert_io.resolve_pretrained("/nonexistent/bert-base-uncased")
