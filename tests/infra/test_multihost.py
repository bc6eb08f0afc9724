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

REPO = pathlib.Path(__file__).resolve().parents[2]
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
  return _launch([sys.executable, "-m", "zel_jax.train", *_flags(data, bert, steps, evaluate),
                  f"--workdir={workdir}"], processes)


def _launch(command, processes, timeout=600):
  """Runs `command` as one process of 8 CPU devices, or as `processes` processes sharing
  them through the local launcher; returns its output, failing the test on a non-zero exit."""
  env = dict(os.environ, ZEL_CPU_DEVICES="8")
  env.pop("XLA_FLAGS", None)
  if processes > 1:
    command = ["bash", str(LAUNCH), str(processes), str(8 // processes), *command]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
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


def test_the_parameter_digest_is_the_same_over_two_processes_as_in_one():
  # Store and teacher-score caches are keyed by params_digest, computed by every process
  # over its own shards: two hosts must agree with one, or a store one layout wrote would be
  # rebuilt (or another layout's reused) when a workdir moves between them.
  from zel_jax.evals import fingerprint  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / "tests"))
  import digest_worker  # pylint: disable=g-import-not-at-top

  def digest(processes):
    output = _launch([sys.executable, str(REPO / "tests" / "digest_worker.py")], processes,
                     timeout=300)
    line = next(l for l in output.splitlines() if "digest " in l)
    assert f"processes {processes} devices 8" in line, line
    return line.split("digest ")[1].split()[0]

  local = fingerprint.params_digest(digest_worker.tree())  # This process's devices, unsharded.
  assert digest(1) == digest(2) == local


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
            "--config=configs/blink_biencoder.py:variant=base", "--workdir=/mnt/shared/run 1")
  assert tpu.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b "
                        "--worker=all ")
  assert "ZEL_DISTRIBUTED=auto\\ python\\ -m\\ zel_jax.train" in tpu
  assert "/mnt/shared/run\\\\\\ 1" in tpu  # Quoted for the remote shell, then for this one.
  setup = run("launch/tpu_vm.sh", "my-tpu", "us-central2-b", "setup")
  assert "https://example.com/zel_jax.git" in setup
  assert r"pip\ install\ -q\ -e\ \'.\[tpu\]\'" in setup
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


# Each process of the pair checks a workdir: one shared folder, or (as on hosts with only
# local disks) a folder of its own.
_PROBE = """
import os, sys
from zel_jax import sharding, train
from zel_jax import workdir_io
sharding.use_cpu_cores_as_devices()
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
pid = int(args["process_id"])
train.initialize_distributed(args["coordinator_address"], int(args["num_processes"]), pid)
root = os.environ["PROBE_ROOT"]
workdir = os.path.join(root, "shared" if os.environ["PROBE_SHARED"] == "1" else f"host{pid}")
try:
  workdir_io.check_workdir(workdir, wait_s=1.0)
  print(f"process {pid}: ok", flush=True)
except ValueError as e:
  print(f"process {pid}: {e}", flush=True)
"""


@pytest.mark.parametrize("shared", [True, False])
def test_workdir_must_be_shared_by_all_processes(tmp_path, shared):
  env = dict(os.environ, PROBE_ROOT=str(tmp_path), PROBE_SHARED=str(int(shared)))
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(["bash", str(LAUNCH), "2", "1", sys.executable, "-c", _PROBE],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if ": ok" in l or "--workdir=" in l]
  if shared:
    assert sorted(lines) == ["[0] process 0: ok", "[1] process 1: ok"]
    assert os.listdir(tmp_path / "shared") == []  # The probe is gone.
  else:
    assert len(lines) == 2, result.stdout
    # Both raise (neither waits alone in a collective), naming who missed process 0's file.
    assert all("not one folder shared by all 2 processes (processes [1] do not see" in l
               for l in lines)
    assert os.listdir(tmp_path / "host0") == [] and not (tmp_path / "host1").exists()


def test_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  from zel_jax import workdir_io  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"--workdir=gs://bucket/run: a URL.*same path on every"):
    workdir_io.check_workdir("gs://bucket/run")
  assert os.listdir(tmp_path) == []  # No "gs:" folder in the working directory.
