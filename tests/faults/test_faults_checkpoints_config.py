"""Nothing lost, nothing stale, nothing unsafe (issue #30): a refused run leaves the workdir
as it was; checkpoints are verified on restore and fall back to the newest intact step; a
config that cannot run is refused before anything is written; a failed background save
stops the run where it happened, and a resumed run logs no step twice."""

import errno
import glob
import json
import logging
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import tiny_world
from zel_jax import checkpoint, configs, metric_writer, recipes, sharding, workdir_io
from zel_jax.data import pipeline
from zel_jax.recipes.blink import biencoder as trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  return tiny_world.write_world(root / "data"), tiny_world.write_tiny_bert(root / "bert")


def _steps(directory) -> list[int]:
  return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())


def _logged_steps(workdir) -> list[int]:
  return [r["step"] for r in metric_writer.read_jsonl(str(workdir / "metrics.jsonl"))]


# -- a refused run changes nothing; a checkpoint carries its config ---------------------------


def test_a_run_refused_for_another_model_leaves_config_json_byte_identical(tiny, tmp_path):
  data, bert = tiny
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_world.tiny_config(data, bert, num_train_steps=4), str(workdir))
  before = (workdir / "config.json").read_bytes()
  listing = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))

  other = tiny_world.tiny_config(data, bert, num_train_steps=8)
  other.model.pooling = "cls"  # The checkpoint was trained with "mean".
  with pytest.raises(ValueError, match=r"config.model.pooling='cls' where they were trained "
                                       r"with 'mean'.*Nothing in the workdir was changed"):
    trainer.train_and_evaluate(other, str(workdir))
  assert (workdir / "config.json").read_bytes() == before
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == listing

  # What may change on resume (length of the run, dropout) is accepted.
  longer = tiny_world.tiny_config(data, bert, num_train_steps=8)
  longer.model.hidden_dropout = 0.1
  trainer.train_and_evaluate(longer, str(workdir))
  assert _steps(workdir / "checkpoints") == [4, 8]


def test_evaluation_reads_the_config_of_the_checkpoint_it_restores(tiny, tmp_path):
  data, bert = tiny
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_world.tiny_config(data, bert, num_train_steps=4), str(workdir))
  # A config.json that no longer describes the checkpoint (what an older zel_jax left after
  # a refused run): evaluation must still build the model the checkpoint was trained as.
  stale = json.loads((workdir / "config.json").read_text())
  stale["model"]["pooling"] = "cls"
  (workdir / "config.json").write_text(json.dumps(stale))
  assert workdir_io.load_config(str(workdir)).model.pooling == "mean"
  _, config = recipes.for_workdir(str(workdir))
  assert config.model.pooling == "mean"


# -- checkpoints verified on restore, with fallback -----------------------------------------


def _state(mesh, scale):
  w = jax.device_put(np.full((64, 8), scale, np.float32), NamedSharding(mesh, P("fsdp", None)))
  return {"params": {"w": w, "b": jnp.full((8,), scale)}}


def _data_files(step_dir):
  return sorted(f for f in glob.glob(f"{step_dir}/params/**/d/*", recursive=True)
                if os.path.getsize(f) > 100)


def _truncate_data_file(step_dir):
  for f in _data_files(step_dir):
    with open(f, "r+b") as handle:
      handle.truncate(os.path.getsize(f) // 2)


def _empty_step_folder(step_dir):
  for entry in os.listdir(step_dir):
    path = os.path.join(step_dir, entry)
    subprocess.run(["rm", "-rf", path], check=True)


def _corrupt_metadata(step_dir):
  pathlib.Path(step_dir, "meta", "metadata").write_text('{"step": 4, "pipel')


def _flip_bytes(step_dir):
  for f in _data_files(step_dir):
    raw = bytearray(pathlib.Path(f).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pathlib.Path(f).write_bytes(bytes(raw))


def _nan_without_checksums(step_dir):
  """Flipped exponent bits read back as NaN, in a checkpoint an older zel_jax wrote (no
  checksums): rewritten through Orbax with NaN params, the way such bytes restore."""
  directory, step = os.path.dirname(step_dir), int(os.path.basename(step_dir))
  subprocess.run(["rm", "-rf", step_dir], check=True)
  mesh = sharding.make_mesh([("fsdp", -1)])
  bad = jax.tree_util.tree_map(lambda x: x * jnp.nan, _state(mesh, 1.0)["params"])
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False))
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(bad),
                                             meta=ocp.args.JsonSave({"step": step})))
  manager.close()


@pytest.mark.parametrize("corrupt", [_truncate_data_file, _empty_step_folder, _corrupt_metadata,
                                     _flip_bytes, _nan_without_checksums],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, corrupt, caplog):
  mesh = sharding.make_mesh([("fsdp", -1)])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  for step in (2, 4):
    ckpt.save(step, _state(mesh, float(step)), meta={"epoch": step}, force=True)
  ckpt.close()
  corrupt(str(tmp_path / "4"))
  abstract = {"params": checkpoint.abstract_like(_state(mesh, 0.0)["params"])}

  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with caplog.at_level(logging.WARNING):
    items, meta = reader.restore(abstract)
  assert meta["step"] == 2 and float(items["params"]["w"][0, 0]) == 2.0
  assert any(str(tmp_path / "4") in r.getMessage() and "unusable" in r.getMessage()
             for r in caplog.records)
  assert _steps(tmp_path) == [2, 4]  # A reader (evaluate, link) moves nothing.
  with pytest.raises(checkpoint.CorruptCheckpoint, match="step 4"):
    reader.restore(abstract, step=4)  # A step asked for by name is not swapped for another.
  reader.close()

  # Training moves the bad step aside, so that it saves that step again.
  writer = checkpoint.Checkpointer(str(tmp_path), keep=3)
  _, meta = writer.restore(abstract)
  assert meta["step"] == 2 and _steps(tmp_path) == [2]
  assert (tmp_path / "4.corrupt").is_dir()
  assert writer.save(4, _state(mesh, 5.0), force=True)
  writer.close()
  assert _steps(tmp_path) == [2, 4]


def test_old_checkpoints_without_checksums_restore_unverified(tmp_path):
  mesh = sharding.make_mesh([("fsdp", -1)])
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(3, _state(mesh, 3.0), force=True)
  ckpt.close()
  (tmp_path / "3" / "zel_checksums.json").unlink(missing_ok=True)  # As today's workdirs.
  items, meta = checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(
      {"params": checkpoint.abstract_like(_state(mesh, 0.0)["params"])})
  assert meta["step"] == 3 and float(items["params"]["b"][0]) == 3.0


def test_rotation_never_replaces_the_last_good_step_with_a_nan_one(tmp_path):
  mesh = sharding.make_mesh([("fsdp", -1)])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(2, _state(mesh, 2.0), force=True)
  nan = jax.tree_util.tree_map(lambda x: x * jnp.nan, _state(mesh, 1.0))
  with pytest.raises(FloatingPointError, match=r"step 4: params/b holds NaN or inf"):
    ckpt.save(4, nan, force=True)
  ckpt.close()
  assert _steps(tmp_path) == [2]


def test_training_resumes_from_the_step_before_a_truncated_latest(tiny, tmp_path, caplog):
  data, bert = tiny
  workdir = tmp_path / "w"
  config = tiny_world.tiny_config(data, bert, num_train_steps=8)
  trainer.train_and_evaluate(config, str(workdir))
  assert _steps(workdir / "checkpoints") == [4, 8]
  _truncate_data_file(str(workdir / "checkpoints" / "8"))

  # Evaluation and linking fall back too, and --step picks a step.
  model_params = lambda step=None: trainer.restore_params(
      str(workdir), config, *_model_and_mesh(config), step=step)[1]
  assert model_params() == 4
  with pytest.raises(checkpoint.CorruptCheckpoint, match="step 8"):
    model_params(8)

  config.num_train_steps = 12
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(config, str(workdir))
  assert any("resuming from" in r.getMessage() and r.getMessage().endswith("step 4")
             for r in caplog.records)
  assert _steps(workdir / "checkpoints") == [4, 8, 12]
  assert (workdir / "checkpoints" / "8.corrupt").is_dir()
  assert _logged_steps(workdir) == [2, 4, 6, 8, 10, 12]


def _model_and_mesh(config):
  mesh = sharding.make_mesh(config.mesh)
  return trainer.build_model(config, mesh)[0], mesh


def test_evaluate_and_link_take_step(tiny, tmp_path):
  from zel_jax import evaluate  # pylint: disable=g-import-not-at-top
  data, bert = tiny
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_world.tiny_config(data, bert, num_train_steps=8),
                             str(workdir))
  report = evaluate.run(str(workdir), None, "val", "exact", None, None, 4, step=4)
  assert report["step"] == 4
  assert evaluate.run(str(workdir), None, "val", "exact", None, None, 4)["step"] == 8
  assert recipes.open_linker(str(workdir), None, "computing", step=4).step == 4
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 5; steps present: 4, 8"):
    recipes.open_linker(str(workdir), None, "computing", step=5)

  # The command-line flags.
  for module, extra in (("zel_jax.evaluate", []),
                        ("zel_jax.link", ["--world=computing", "--text=the [[kernel]]"])):
    run = subprocess.run([sys.executable, "-m", module, f"--workdir={workdir}", "--step=5",
                          *extra], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode != 0
    assert "no checkpoint of step 5; steps present: 4, 8" in run.stderr, run.stderr[-2000:]


# -- configs refused before anything runs ---------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("keep_checkpoints", 0, "config.keep_checkpoints=0: an integer >= 1"),
    ("checkpoint_every", 0, "config.checkpoint_every=0: an integer >= 1"),
    ("log_every", 0, "config.log_every=0: an integer >= 1"),
    ("grad_accum_steps", 0, "config.grad_accum_steps=0: an integer >= 1"),
    ("optimizer.learning_rate", -1e-3, "config.optimizer.learning_rate=-0.001: a number >= 0"),
    ("num_epochs", -1, "config.num_epochs=-1: a number >= 0"),
    ("optimizer.warmup_fraction", 1.5, r"config.optimizer.warmup_fraction=1.5: a fraction in "
                                       r"\[0, 1\]"),
    ("optimizer.warmup_fraction", -0.1, r"config.optimizer.warmup_fraction=-0.1"),
    ("seed", -1, "config.seed=-1: an integer >= 0"),
    ("evals.store", "faiss", "config.evals.store='faiss': one of exact, scann, device"),
])
def test_a_config_that_cannot_run_is_refused_before_anything_is_written(
    tiny, tmp_path, field, value, message):
  data, bert = tiny
  config = tiny_world.tiny_config(data, bert, num_train_steps=2, **{field: value})
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_an_unknown_trainer_is_refused_before_anything_is_written(tiny, tmp_path):
  data, bert = tiny
  config = tiny_world.tiny_config(data, bert, trainer="bi_encoder")
  with pytest.raises(ValueError, match=r"config.trainer='bi_encoder': recipe 'blink' has "
                                       r"stages \['biencoder'"):
    recipes.for_config(config).train(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def _documented_overrides(page: str) -> list[str]:
  """The `--config.mesh=...` arguments of a doc page's commands, as a shell passes them."""
  text = (REPO / "docs" / page).read_text()
  found = re.findall(r"""--config\.mesh=(?:"[^"]*"|'[^']*'|[^\s`]+)""", text)
  return [shlex.split(argument)[0] for argument in found]


@pytest.mark.parametrize("page", ["configs.md", "troubleshooting.md"])
def test_documented_mesh_overrides_parse_as_train_parses_them(page, monkeypatch):
  documented = _documented_overrides(page)
  assert documented, f"docs/{page} documents no --config.mesh override"
  for argument in documented:
    # What `python -m zel_jax.train` does with its argv: packaged config names resolved
    # (configs.parse_flags), then a config flag defined with lock_config=True, which reads
    # its overrides from sys.argv.
    argv = configs.resolve_argv(["train", "--config=blink_biencoder:runlocal", argument])
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(argv)
    expected = eval(argument.split("=", 1)[1])  # pylint: disable=eval-used
    assert tuple(map(tuple, values.config.mesh)) == expected
    assert sharding.make_mesh(values.config.mesh).shape["fsdp"] == expected[1][1]


# -- faults surfaced where they happen -----------------------------------------------------


def test_a_failed_background_save_stops_the_run_at_that_step(tiny, tmp_path, monkeypatch,
                                                              caplog):
  data, bert = tiny
  workdir = tmp_path / "w"
  config = tiny_world.tiny_config(data, bert, num_train_steps=16)
  real_save, real_next = json_checkpoint_handler.JsonCheckpointHandler._save_fn, \
      pipeline.BatchIterator.__next__
  calls = {"n": 0}

  async def disk_full_at_step_8(self, x, directory):
    if "checkpoints/8" in str(directory):
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await real_save(self, x, directory)

  def slow_next(self):
    calls["n"] += 1
    if calls["n"] > 8:
      time.sleep(0.5)  # Steps that take a while, as real ones do: the save fails mid-step.
    return real_next(self)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn",
                      disk_full_at_step_8)
  monkeypatch.setattr(pipeline.BatchIterator, "__next__", slow_next)
  with caplog.at_level(logging.ERROR), pytest.raises(checkpoint.SaveFailed) as failed:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(failed.value)
  assert message.startswith(f"checkpoint of step 8 failed writing {workdir}/checkpoints/8: "
                            "OSError: [Errno 28] No space left on device")
  assert "the last good checkpoint, step 4, is kept" in message and "\n" not in message
  assert calls["n"] < 12, "reported at the next save instead of where it happened"
  assert any(r.getMessage() == message for r in caplog.records)
  assert _steps(workdir / "checkpoints") == [4]

  # Space is back: the next start resumes from step 4 and logs no step twice.
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", real_save)
  monkeypatch.setattr(pipeline.BatchIterator, "__next__", real_next)
  trainer.train_and_evaluate(config, str(workdir))
  assert _steps(workdir / "checkpoints") == [8, 12, 16]
  assert _logged_steps(workdir) == list(range(2, 17, 2))


def test_a_resumed_run_drops_the_records_past_its_checkpoint(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "lo')  # A record cut short by a kill.
  resumed = metric_writer.MetricWriter(str(tmp_path), resume_step=4)
  resumed.write(6, {"loss": 0.5})
  resumed.close()
  assert _logged_steps(tmp_path) == [2, 4, 6]
