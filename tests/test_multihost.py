"""Real multi-host on one machine: 2 processes x 4 CPU devices (launch/local_multiprocess.sh)
against 1 process x 8 devices, training the tiny bi-encoder through `python -m zel_jax.train`:
the same losses, checkpoints that either layout resumes, the same evaluation."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import tiny_world

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "local_multiprocess.sh"


def _flags(data, bert, steps, evaluate):
  return [
      "--config=configs/blink_biencoder.py:runlocal", f"--config.data.dir={data}",
      f"--config.model.pretrained={bert}", "--config.data.mention_length=12",
      "--config.data.entity_length=12", "--config.model.pooling=mean", "--config.batch_size=8",
      f"--config.num_train_steps={steps}", "--config.log_every=1",
      "--config.checkpoint_every=3", "--config.optimizer.learning_rate=3e-3",
      "--config.model.hidden_dropout=0.0", "--config.model.attention_dropout=0.0",
      "--config.optimizer.warmup_fraction=0.0", "--config.eval_batch_size=16",
      "--config.evals.store=exact",
      "--config.evals.splits=" + ("('test',)" if evaluate else "()")]


def _train(workdir, processes, steps, tiny_dirs, evaluate=False):
  data, bert = tiny_dirs
  command = [sys.executable, "-m", "zel_jax.train", *_flags(data, bert, steps, evaluate),
             f"--workdir={workdir}"]
  env = dict(os.environ, ZEL_CPU_DEVICES="8")
  env.pop("XLA_FLAGS", None)
  if processes > 1:
    command = ["bash", str(LAUNCH), str(processes), str(8 // processes), *command]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout + result.stderr


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  tiny_world.write_world(root / "data")
  tiny_world.write_tiny_bert(root / "bert")
  return root / "data", root / "bert"


def test_two_processes_train_checkpoint_and_evaluate_like_one(tiny_dirs, tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _train(one, 1, 6, tiny_dirs)
  log = _train(two, 2, 6, tiny_dirs)
  # Each process reports itself and the global batch's split.
  assert "[1] " in log and "process 1 of 2; 4 local / 8 global devices" in log
  assert "global batch 8: 1 per device, 4 per process" in log
  first, second = _losses(one), _losses(two)
  assert sorted(first) == sorted(second) == list(range(1, 7))
  for step in first:
    assert second[step] == pytest.approx(first[step], rel=1e-5)
  # The pair's checkpoint resumes in one process, and one process's in the pair; both then
  # train the same two steps and evaluate to the same report.
  assert "starting at step 6 of 8" in _train(two, 1, 8, tiny_dirs, evaluate=True)
  assert "starting at step 6 of 8" in _train(one, 2, 8, tiny_dirs, evaluate=True)
  first, second = _losses(one), _losses(two)
  for step in (7, 8):
    assert second[step] == pytest.approx(first[step], rel=1e-5)
  report_one = json.loads((one / "eval_test.json").read_text())
  report_two = json.loads((two / "eval_test.json").read_text())
  assert report_one["mentions"] == report_two["mentions"] > 0
  for k in ("recall@1", "recall@4"):
    assert report_one[k] == pytest.approx(report_two[k], abs=1e-6)


def test_sigterm_saves_and_the_next_start_resumes(tiny_dirs, tmp_path):
  """`python -m zel_jax.train` stopped by SIGTERM (what TPU VMs and SLURM send before taking a
  machine) saves the step it reached, exits 0, and the next start continues from there."""
  import signal  # pylint: disable=g-import-not-at-top
  data, bert = tiny_dirs
  workdir = tmp_path / "w"
  command = [sys.executable, "-u", "-m", "zel_jax.train",
             *_flags(data, bert, 500, evaluate=False), f"--workdir={workdir}",
             "--config.checkpoint_every=1000"]
  env = dict(os.environ, ZEL_CPU_DEVICES="8")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # Metrics reach the log every step (log_every=1).
    seen.append(line)
    if (workdir / "metrics.jsonl").exists() and len(_losses(workdir)) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
  out, _ = proc.communicate(timeout=300)
  log = "".join(seen) + out
  assert proc.returncode == 0, log[-3000:]
  assert "preempted: saved step" in log
  saved = int(log.split("preempted: saved step ")[1].split(";")[0])
  assert 3 <= saved < 500
  resumed = _train(workdir, 1, saved + 2, tiny_dirs)
  assert f"starting at step {saved} of {saved + 2}" in resumed
  assert sorted(_losses(workdir))[-1] == saved + 2


def test_launchers_print_what_they_would_run():
  env = dict(os.environ, DRY_RUN="1", REPO="https://example.com/zel_jax.git")
  run = lambda *args: subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True,
                                     text=True, check=True).stdout
  tpu = run("launch/tpu_vm.sh", "my-tpu", "us-central2-b", "train",
            "--config=configs/blink_biencoder.py:variant=base", "--workdir=gs://b/run 1")
  assert tpu.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b "
                        "--worker=all ")
  assert "ZEL_DISTRIBUTED=auto\\ python\\ -m\\ zel_jax.train" in tpu
  assert "gs://b/run\\\\\\ 1" in tpu  # Quoted for the remote shell, then for this one.
  setup = run("launch/tpu_vm.sh", "my-tpu", "us-central2-b", "setup")
  assert "https://example.com/zel_jax.git" in setup and "jax\\[tpu\\]" in setup
  slurm = run("launch/slurm.sbatch", "--config=configs/x.py", "--workdir=/s/w")
  assert slurm.startswith("srun --kill-on-bad-exit=1 ")
  assert slurm.rstrip().endswith("zel_jax --config=configs/x.py --workdir=/s/w")
  bad = subprocess.run(["bash", "launch/tpu_vm.sh", "t", "z", "fly"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown action 'fly'" in bad.stderr


def test_auto_distributed_calls_initialize(monkeypatch):
  from zel_jax import train  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(train.jax.distributed, "initialize", lambda *a, **k: calls.append(a))
  monkeypatch.delenv("SLURM_NTASKS", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  train.initialize_distributed()
  assert calls == []  # One process alone: no distributed start.
  monkeypatch.setenv("ZEL_DISTRIBUTED", "auto")
  train.initialize_distributed()
  assert calls == [()]
