"""`python -m zel_jax.bench zeroshot --worlds=data/worlds`: every recipe on the zero-shot
benchmark, trained on its 8 train worlds, tuned on val, reported on the 3 test worlds.

Each row is a chain of jobs (`python -m zel_jax.train ...` and `python -m zel_jax.evaluate
...`, run as a user would, one at a time: each takes both cores). A job's workdir is named by
a hash of its config, its overrides, the jobs it reads and the benchmark's data, so:
- a finished job is never run again (its `bench_done.json` holds its reports);
- a job that was interrupted is started again in the same workdir, and training resumes
  from its last checkpoint;
- changing the budget, a seed or the data makes new workdirs and leaves old results alone.

The report (`zeroshot_report.write`) goes to docs/benchmark.md, docs/benchmark.json and a
recall@k plot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

from zel_jax import configs
from zel_jax.training import checks
from zel_jax.data import zeshel
from zel_jax.evals import retrieval

CONFIG_DIR = pathlib.Path(configs.__file__).resolve().parent
DONE = "bench_done.json"


@dataclasses.dataclass(frozen=True)
class Budget:
  """The training budget of every row (CPU defaults; the table states what was used)."""
  steps: int = 500             # Bi-encoder rows (BLINK, ETZEL, MVD's warm-up): steps of `batch`.
  batch: int = 32
  length: int = 32             # Mention and entity tokens of every model.
  learning_rate: float = 5e-5
  hard_steps: int = 300        # Hard-negative fine-tuning after BLINK, steps of `batch`.
  hard_top: int = 32           # Retrieved per training mention (hard negatives, MVD's pool).
  cross_steps: int = 600       # Cross-encoder: steps of 4 mentions x `candidates`.
  candidates: int = 8          # Candidates the cross-encoder and distillation read.
  distill_steps: int = 300     # Distilled and gold-only students after BLINK, steps of 8.
  typing_steps: int = 300      # ETZEL's typing stage.
  mvd_teacher_steps: int = 200  # MVD's multi-view teacher (from the cross-encoder), 4 mentions.
  mvd_joint_steps: int = 200   # MVD's joint stage after its warm-up retriever, 4 mentions.
  mvd_dynamic_negatives: int = 0  # 1: re-mine over every view of the train worlds (TPUs).
  # The base-size rows (all-mpnet-base-v2, 110M parameters, about 8x MiniLM-L6's work per
  # token): shapes as above, fewer steps where 2 cores cannot afford the MiniLM budget.
  mpnet_steps: int = 250       # MPNet bi-encoder, steps of `batch`.
  mpnet_cross_steps: int = 300  # MPNet cross-encoder (the teacher), steps of 4 mentions.
  mpnet_mvd_teacher_steps: int = 100  # MVD's multi-view teacher from the MPNet cross-encoder.
  mpnet_mvd_joint_steps: int = 200  # MVD's joint stage with the MPNet teacher (MVD's budget).


MPNET = "all-mpnet-base-v2"


@dataclasses.dataclass(frozen=True)
class Ref:
  """An override whose value is a job's workdir: another job's, or with no name its own."""
  job: str = ""


@dataclasses.dataclass
class Job:
  name: str
  kind: str                      # "train", "evaluate", "untrained", "bm25"
  config: str = ""               # configs/<file>:<variant>
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  args: dict[str, Any] = dataclasses.field(default_factory=dict)  # evaluate's flags
  workdir_of: str = ""           # evaluate: the job whose workdir it reads


def plan(budget: Budget, seeds: list[int]) -> list[Job]:
  """Every job of the table, in an order where each job's inputs come before it."""
  b = budget
  # BLINK's converter keeps 128 words each side of a mention; some documentation pages
  # (Vim's version notes, perlapi) run to 100k words.
  common = {"data.mention_length": b.length, "data.entity_length": b.length,
            "data.window_words": 128, "evals.splits": ("val", "test")}
  bi = {**common, "batch_size": b.batch, "num_train_steps": b.steps,
        "optimizer.learning_rate": b.learning_rate, "checkpoint_every": 250}
  # The baselines also run on the train worlds: the data card gives every world's.
  all_splits = ("train", "val", "test")
  jobs = [Job("bm25", "bm25"),
          Job("untrained", "untrained", "blink_biencoder.py:runlocal",
              {**common, "model.pooling": "mean", "evals.splits": all_splits})]
  for s in seeds:
    blink, cross, mvd_r, typing = f"blink.s{s}", f"cross.s{s}", f"mvd_r.s{s}", f"typing.s{s}"
    jobs += [
        Job(blink, "train", "blink_biencoder.py:runlocal", {**bi, "seed": s}),
        # BLINK's own hard negatives: its trained bi-encoder's top candidates of every
        # training mention, written once; the cross-encoder reads the same file.
        Job(f"{blink}.train_candidates", "evaluate", args={"split": "train",
                                                           "top_k": b.hard_top},
            workdir_of=blink),
        Job(f"hard.s{s}", "train", "blink_biencoder.py:runlocal",
            {**bi, "seed": s, "loss": "hard_negatives", "init_from": Ref(blink),
             "hard_negatives.candidates": Ref(blink), "hard_negatives.top": b.hard_top,
             "num_train_steps": b.hard_steps}),
        Job(cross, "train", "blink_crossencoder.py:runlocal",
            {**common, "seed": s, "data.candidates": Ref(blink),
             "data.num_candidates": b.candidates, "num_train_steps": b.cross_steps,
             "checkpoint_every": 250}),
        Job(f"distill.s{s}", "train", "blink_distill.py:runlocal",
            {**common, "seed": s, "data.candidates": Ref(blink), "distill.teacher": Ref(cross),
             "init_from": Ref(blink), "data.num_candidates": b.candidates,
             "num_train_steps": b.distill_steps}),
        Job(f"gold_only.s{s}", "train", "blink_distill.py:runlocal",
            {**common, "seed": s, "data.candidates": Ref(blink), "distill.teacher": Ref(cross),
             "init_from": Ref(blink), "data.num_candidates": b.candidates,
             "num_train_steps": b.distill_steps, "distill.weight": 0.0}),
        # Type descriptions from the labels' own words: WordNet (dict-wn) is not one of the
        # benchmark's sources. Types are extracted for the train worlds (all stage two reads)
        # from each entity's first `length` tokens, what the retriever reads of it.
        Job(typing, "train", "etzel_typing.py:runlocal",
            {"seed": s, "typing.wordnet": "", "typing.mention_length": b.length,
             "data.window_words": 128, "num_train_steps": b.typing_steps,
             "evals.splits": (), "typing.types_dir": Ref(), "typing.extract_splits": ("train",),
             "typing.extract_length": b.length, "typing.extract_chunks": 1}),
        Job(f"etzel.s{s}", "train", "etzel_multitask.py:runlocal",
            {**bi, "seed": s, "typing.types_dir": Ref(typing)}),
        # The warm-up retriever's global-view top candidates of every training mention: the
        # teacher's training lists, and (below) the joint stage's negatives.
        Job(mvd_r, "train", "mvd.py:runlocal,stage=retriever",
            {**bi, "seed": s, "evals.splits": ("train",), "evals.views": "global",
             "evals.top_k": b.hard_top}),
        Job(f"mvd_t.s{s}", "train", "mvd.py:runlocal,stage=teacher",
            {"data.mention_length": b.length, "data.window_words": 128, "seed": s,
             "mvd.candidates": Ref(mvd_r), "init_from": Ref(cross),
             "mvd.num_candidates": b.candidates, "num_train_steps": b.mvd_teacher_steps,
             "evals.splits": ()}),
        Job(f"mvd.s{s}", "train", "mvd.py:runlocal,stage=joint",
            {"data.mention_length": b.length, "data.window_words": 128, "seed": s,
             "mvd.retriever": Ref(mvd_r), "mvd.teacher": Ref(f"mvd_t.s{s}"),
             "mvd.num_candidates": b.candidates, "num_train_steps": b.mvd_joint_steps,
             "evals.splits": ("val", "test"),
             # The joint stage runs less than an epoch, so MVD's per-epoch re-mining would
             # draw once, from this same warm-up retriever: with `mvd_dynamic_negatives`
             # off, that draw is the retriever's candidates file (global views, top
             # `hard_top`) instead of a pass over every view of the 8 train worlds (about
             # 800k rows, an hour on 2 CPU cores).
             **({"mvd.refresh_every": 0} if b.mvd_dynamic_negatives else
                {"mvd.no_dynamic_negatives": True, "mvd.candidates": Ref(mvd_r),
                 "mvd.top_n": b.hard_top})}),
    ]
  return jobs + mpnet_jobs(b, seeds, common, bi)


def mpnet_jobs(b: Budget, seeds: list[int], common: dict[str, Any], bi: dict[str, Any]
               ) -> list[Job]:
  """The base-size rows, after every MiniLM row: untrained MPNet (mean pooled, as the
  checkpoint pools); the MPNet cross-encoder, trained on the first seed's BLINK candidates,
  as the teacher of MiniLM students of every seed (their controls are the gold-only rows:
  same student, candidates and steps); an MPNet bi-encoder; MVD with the MPNet teacher.
  The distillation rows come first: they answer the question these rows were added for.
  Every MPNet job checkpoints every 25-50 steps, so that a run cut short resumes."""
  s0 = seeds[0]
  teacher = f"cross_mpnet.s{s0}"
  mpnet = {"model.pretrained": MPNET}
  jobs = [
      Job("untrained_mpnet", "untrained", "blink_biencoder.py:runlocal",
          {**common, **mpnet, "model.pooling": "mean"}),
      # Reranking is reported on the test worlds only: scoring the val lists too would
      # cost MPNet another 22,500 pairs (about 25 minutes on 2 cores) for an unreported row.
      Job(teacher, "train", "blink_crossencoder.py:runlocal",
          {**common, **mpnet, "seed": s0, "data.candidates": Ref(f"blink.s{s0}"),
           "data.num_candidates": b.candidates, "num_train_steps": b.mpnet_cross_steps,
           "checkpoint_every": 50, "evals.splits": ("test",)}),
  ]
  for s in seeds:
    jobs.append(Job(f"distill_mpnet.s{s}", "train", "blink_distill.py:runlocal",
                    {**common, "seed": s, "data.candidates": Ref(f"blink.s{s}"),
                     "distill.teacher": Ref(teacher), "init_from": Ref(f"blink.s{s}"),
                     "data.num_candidates": b.candidates,
                     "num_train_steps": b.distill_steps}))
  # The MPNet rows are measured on the test worlds only: encoding the val worlds' 12,571
  # entities costs MPNet about 20 minutes on 2 cores, for a row the table does not report.
  jobs.append(Job(f"mpnet_blink.s{s0}", "train", "blink_biencoder.py:runlocal",
                  {**bi, **mpnet, "seed": s0, "num_train_steps": b.mpnet_steps,
                   "checkpoint_every": 50, "evals.splits": ("test",)}))
  jobs += [
      Job(f"mvd_t_mpnet.s{s0}", "train", "mvd.py:runlocal,stage=teacher",
          {**mpnet, "data.mention_length": b.length, "data.window_words": 128, "seed": s0,
           "mvd.candidates": Ref(f"mvd_r.s{s0}"), "init_from": Ref(teacher),
           "mvd.num_candidates": b.candidates, "num_train_steps": b.mpnet_mvd_teacher_steps,
           "checkpoint_every": 25, "evals.splits": ()}),
      Job(f"mvd_mpnet.s{s0}", "train", "mvd.py:runlocal,stage=joint",
          {"data.mention_length": b.length, "data.window_words": 128, "seed": s0,
           "mvd.retriever": Ref(f"mvd_r.s{s0}"), "mvd.teacher": Ref(f"mvd_t_mpnet.s{s0}"),
           "mvd.teacher_pretrained": MPNET, "mvd.num_candidates": b.candidates,
           "num_train_steps": b.mpnet_mvd_joint_steps, "checkpoint_every": 25,
           "evals.splits": ("test",),
           **({"mvd.refresh_every": 0} if b.mvd_dynamic_negatives else
              {"mvd.no_dynamic_negatives": True, "mvd.candidates": Ref(f"mvd_r.s{s0}"),
               "mvd.top_n": b.hard_top})}),
  ]
  return jobs


def data_fingerprint(data_dir: str) -> str:
  """A hash of the benchmark's files: results are keyed by the data they were measured on."""
  digest = hashlib.sha256()
  root = pathlib.Path(data_dir)
  for path in sorted([*root.glob("documents/*.json"), *root.glob("mentions/*.json")]):
    digest.update(str(path.relative_to(root)).encode() + b"\x00")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()[:16]


def package_changes(recorded: dict[str, Any], built: dict[str, Any]) -> list[str]:
  """Worlds built here from other package versions than a report's (e.g. package lists
  that predate a security update): one line per world."""
  lines = []
  for world, card in built.get("worlds", {}).items():
    before = recorded.get("worlds", {}).get(world, {}).get("packages")
    if before is not None and before != card.get("packages"):
      lines.append(f"{world} was measured on {', '.join(before)}; this machine built it "
                   f"from {', '.join(card.get('packages', []))}")
  return lines


def job_key(job: Job, keys: dict[str, str], data: str) -> str:
  """Config, overrides (a Ref by the key of the job it names), arguments and data."""
  spec = {"kind": job.kind, "config": job.config, "args": job.args,
          "reads": keys.get(job.workdir_of, ""), "data": data,
          "overrides": {k: (f"ref:{keys[v.job] if v.job else 'self'}" if isinstance(v, Ref)
                            else v)
                        for k, v in sorted(job.overrides.items())}}
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]


def _flag(key: str, value: Any) -> str:
  if isinstance(value, tuple):
    return f"--config.{key}={value!r}"
  return f"--config.{key}={value}"


def command(job: Job, workdir: str, workdirs: dict[str, str], data_dir: str) -> list[str]:
  """The command line a user would type for this job."""
  def resolved(v: Any) -> Any:
    return (workdirs[v.job] if v.job else workdir) if isinstance(v, Ref) else v

  if job.kind == "evaluate":
    return [sys.executable, "-m", "zel_jax.evaluate", f"--workdir={workdirs[job.workdir_of]}",
            *(f"--{k}={v}" for k, v in job.args.items())]
  file, _, variant = job.config.partition(":")
  argv = [sys.executable, "-m", "zel_jax.train",
          f"--config={CONFIG_DIR / file}" + (f":{variant}" if variant else ""),
          f"--workdir={workdir}", f"--config.data.dir={data_dir}"]
  for key, value in job.overrides.items():
    argv.append(_flag(key, resolved(value)))
  return argv


def _last_json_line(text: str) -> dict[str, Any]:
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      return json.loads(line)
  raise ValueError("no JSON report on the last lines of the output")


def _reports(workdir: str) -> dict[str, Any]:
  out = {}
  for split in ("val", "test", "train"):
    path = os.path.join(workdir, f"eval_{split}.json")
    if os.path.exists(path):
      with open(path) as f:
        out[split] = json.load(f)
  return out


def _run_logged(argv: list[str], log_path: str) -> str:
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.write(result.stdout)
  if result.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({result.returncode}); the end of "
                       f"{log_path}:\n{tail}")
  return result.stdout


def write_config(job: Job, workdir: str, data_dir: str):
  """The job's config (file, variant, overrides) as a workdir's config.json, as train writes
  it; returns the config."""
  file, _, variant = job.config.partition(":")
  module = importlib.import_module(f"zel_jax.configs.{file.removesuffix('.py')}")
  config = module.get_config(variant)
  config.data.dir = data_dir
  for key, value in job.overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  checks.prepare_workdir(config, workdir)
  return config


def _untrained(job: Job, workdir: str, data_dir: str) -> dict[str, Any]:
  """The encoder before training: a workdir holding only the config, evaluated as one."""
  config = write_config(job, workdir, data_dir)
  reports = {}
  for split in config.evals.splits:
    out = _run_logged([sys.executable, "-m", "zel_jax.evaluate", f"--workdir={workdir}",
                       f"--split={split}", "--baseline=untrained"],
                      os.path.join(workdir, "bench.log"))
    reports[split] = _last_json_line(out)
  return reports


def _bm25(data_dir: str) -> dict[str, Any]:
  dataset = zeshel.ZeshelDataset(data_dir)
  return {split: retrieval.evaluate_bm25(dataset, split, top_k=100)
          for split in ("train", "val", "test")}


def run_job(job: Job, workdir: str, workdirs: dict[str, str], data_dir: str) -> dict[str, Any]:
  log = os.path.join(workdir, "bench.log")
  if job.kind == "bm25":
    return _bm25(data_dir)
  if job.kind == "untrained":
    return _untrained(job, workdir, data_dir)
  argv = command(job, workdir, workdirs, data_dir)
  out = _run_logged(argv, log)
  if job.kind == "evaluate":
    return {job.args.get("split", "test"): _last_json_line(out)}
  _check_trained(job, workdir)
  return _reports(workdir)


def _trained_to(workdir: str) -> tuple[int, int]:
  """(newest checkpoint step, num_train_steps) of a training workdir; (0, -1) before any."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      total = json.load(f)["num_train_steps"]
  except FileNotFoundError:
    return 0, -1
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
  return max(steps, default=0), total


def _trained(workdir: str) -> bool:
  reached, total = _trained_to(workdir)
  return 0 <= total <= reached


def _check_trained(job: Job, workdir: str) -> None:
  """A training run preempted by SIGTERM saves its step and exits 0: the job is not done
  until its newest checkpoint is the last step, or it would be cached without its rows."""
  reached, total = _trained_to(workdir)
  if reached < total:
    raise RuntimeError(f"{job.name}: training stopped at step {reached} of {total} "
                       f"({os.path.join(workdir, 'bench.log')}); rerun the command to "
                       "resume it from that step")


# Overrides that read only another run's parameters (its checkpoints), not its outputs.
CHECKPOINT_READS = frozenset({"init_from", "distill.teacher", "mvd.teacher", "mvd.retriever"})


def _reads(job: Job) -> list[tuple[str, bool]]:
  """(job name, whether only its checkpoint is read) for each job whose workdir this reads."""
  return [(v.job, k in CHECKPOINT_READS) for k, v in job.overrides.items()
          if isinstance(v, Ref) and v.job] + ([(job.workdir_of, False)] if job.workdir_of else [])


def run_all(jobs: list[Job], data_dir: str, runs_dir: str, only: set[str] | None = None,
            log=print, on_result=None, recorded: dict[str, Any] | None = None
            ) -> dict[str, dict[str, Any]]:
  """Runs (or reuses) every job; returns {job name: {"workdir", "seconds", "reports", "key",
  ...}}. `on_result(results)` is called after each job that ran (the report is rewritten as
  rows arrive, so a long run shows its table so far).

  `recorded` is an earlier report's results (docs/benchmark.json): an entry whose key equals
  the job's (same config, inputs and data) counts as measured, so another machine adds a row
  without re-running the rest. Jobs to run are those in `only` (all not yet measured when
  None) not finished here, and every job they read that is not finished here: a recorded
  result has no workdir on this machine to read. A recorded training run that is read only
  for its parameters (CHECKPOINT_READS) is trained here with its evals off, once."""
  fingerprint = data_fingerprint(data_dir)
  keys: dict[str, str] = {}
  workdirs: dict[str, str] = {}
  for job in jobs:
    keys[job.name] = job_key(job, keys, fingerprint)
    own = job.workdir_of and workdirs[job.workdir_of]
    workdirs[job.name] = os.path.abspath(own or os.path.join(
        runs_dir, f"{job.name}-{keys[job.name]}"))

  def in_plan_order(results: dict[str, Any]) -> dict[str, Any]:
    return {j.name: results[j.name] for j in jobs if j.name in results}

  def done_path(job: Job) -> str:
    return os.path.join(workdirs[job.name], DONE if not job.workdir_of else
                        f"bench_done.{job.name}.json")

  # Every finished job's results, asked for or not: the report shows all that is measured.
  local: dict[str, dict[str, Any]] = {}
  for job in jobs:
    if os.path.exists(done_path(job)):
      # The workdir is named by the key: a result that an older zel_jax wrote without its
      # key gets it, so that the report it goes into can be reused elsewhere.
      with open(done_path(job)) as f:
        local[job.name] = {**json.load(f), "key": keys[job.name]}
  recorded = recorded or {}
  results = {j.name: recorded[j.name] for j in jobs
             if recorded.get(j.name, {}).get("key") == keys[j.name]}
  results.update(local)
  by_name = {j.name: j for j in jobs}
  unknown = sorted(set(only or ()) - set(by_name))
  if unknown:
    raise ValueError(f"no job named {', '.join(unknown)}; the jobs are {', '.join(by_name)}")
  wanted = {j.name for j in jobs if j.name not in results} if only is None else set(only)
  # What the wanted jobs read, transitively, unless finished here. Reading a workdir reads
  # what every job in it wrote (an evaluate job writes its files into another's workdir);
  # a recorded training run read only for its parameters is trained here without its evals.
  writers = {j.name: [w.name for w in jobs if w.workdir_of == j.name] for j in jobs}
  need = {name: "all" for name in wanted}
  pending = list(wanted)
  while pending:
    for read, checkpoint_only in _reads(by_name[pending.pop()]):
      part = checkpoint_only and read in results and by_name[read].kind == "train"
      if part and _trained(workdirs[read]):
        continue
      for name in [read] if part else [read, *writers[read]]:
        if name not in local and need.get(name) in (None, "parameters"):
          if name not in need:
            pending.append(name)
          need[name] = "parameters" if part else "all"
  todo = [j for j in jobs if j.name in need and j.name not in local]
  spent: list[float] = []
  for i, job in enumerate(todo, start=1):
    workdir = workdirs[job.name]
    remaining = len(todo) - i + 1
    eta = f", ETA {sum(spent) / len(spent) * remaining / 60:.0f} min" if spent else ""
    log(f"[{i}/{len(todo)}] {job.name} in {workdir}{eta}")
    start = time.time()
    os.makedirs(workdir, exist_ok=True)
    if need[job.name] == "parameters":
      # Same workdir and key: asking for the whole job later resumes at its last step.
      run_job(dataclasses.replace(job, overrides={**job.overrides, "evals.splits": ()}),
              workdir, workdirs, data_dir)
      spent.append(time.time() - start)
      log(f"[{i}/{len(todo)}] {job.name} trained for its parameters in "
          f"{spent[-1] / 60:.1f} min; its results are the recorded ones")
      continue
    reports = run_job(job, workdir, workdirs, data_dir)
    seconds = round(time.time() - start, 1)
    spent.append(seconds)
    results[job.name] = {"workdir": workdir, "key": keys[job.name], "seconds": seconds,
                         "reports": reports,
                         "command": " ".join(command(job, workdir, workdirs, data_dir))
                         if job.kind in ("train", "evaluate") else job.kind}
    zeshel.write_json(done_path(job), results[job.name])
    log(f"[{i}/{len(todo)}] {job.name} done in {seconds / 60:.1f} min")
    if on_result is not None:
      on_result(in_plan_order(results))
  return in_plan_order(results)
