"""bench zeroshot: the job plan, keys that cache by config and data, commands, resumption,
and the report written from the jobs' results."""

import json
import os

import pytest

from zel_jax.bench import zeroshot, zeroshot_report
from zel_jax.data import zeshel


def test_plan_chains_every_row_through_the_jobs_it_reads():
  jobs = {j.name: j for j in zeroshot.plan(zeroshot.Budget(), [0, 1])}
  assert {"bm25", "untrained", "blink.s0", "blink.s1", "hard.s0", "cross.s0", "distill.s0",
          "gold_only.s0", "typing.s0", "etzel.s0", "mvd_r.s0", "mvd_t.s0", "mvd.s0"} <= set(jobs)
  assert jobs["hard.s0"].overrides["init_from"] == zeroshot.Ref("blink.s0")
  # BLINK's hard negatives are its own top candidates, the file the cross-encoder reads.
  assert jobs["hard.s0"].overrides["hard_negatives.candidates"] == zeroshot.Ref("blink.s0")
  assert jobs["blink.s0.train_candidates"].workdir_of == "blink.s0"
  assert jobs["mvd.s0"].overrides["mvd.candidates"] == zeroshot.Ref("mvd_r.s0")
  dynamic = {j.name: j for j in zeroshot.plan(zeroshot.Budget(mvd_dynamic_negatives=1), [0])}
  assert "mvd.candidates" not in dynamic["mvd.s0"].overrides
  assert jobs["distill.s1"].overrides["distill.teacher"] == zeroshot.Ref("cross.s1")
  assert jobs["gold_only.s0"].overrides["distill.weight"] == 0.0
  assert jobs["mvd_t.s0"].overrides["init_from"] == zeroshot.Ref("cross.s0")
  assert jobs["etzel.s0"].overrides["typing.types_dir"] == zeroshot.Ref("typing.s0")
  # The base-size rows: one MPNet teacher (on seed 0's BLINK candidates) for the MiniLM
  # students of every seed, whose controls are the gold-only rows; MVD builds its teacher
  # with MPNet.
  assert jobs["cross_mpnet.s0"].overrides["model.pretrained"] == zeroshot.MPNET
  for s in (0, 1):
    distilled = jobs[f"distill_mpnet.s{s}"].overrides
    assert distilled["distill.teacher"] == zeroshot.Ref("cross_mpnet.s0")
    assert "model.pretrained" not in distilled
    control = jobs[f"gold_only.s{s}"].overrides
    for key in ("data.candidates", "init_from", "num_train_steps", "data.num_candidates"):
      assert distilled[key] == control[key], key
  assert jobs["mvd_t_mpnet.s0"].overrides["init_from"] == zeroshot.Ref("cross_mpnet.s0")
  assert jobs["mvd_mpnet.s0"].overrides["mvd.teacher_pretrained"] == zeroshot.MPNET
  assert jobs["untrained_mpnet"].overrides["model.pooling"] == "mean"
  # An MPNet step costs about 8 s on 2 cores: every MPNet job resumes from a recent step.
  for name in ("cross_mpnet.s0", "mpnet_blink.s0", "mvd_t_mpnet.s0", "mvd_mpnet.s0"):
    assert jobs[name].overrides["checkpoint_every"] <= 50, name
  # The same training budget within a recipe: BLINK, ETZEL and MVD's warm-up.
  for name in ("blink.s0", "etzel.s0", "mvd_r.s0"):
    assert jobs[name].overrides["num_train_steps"] == zeroshot.Budget().steps
  # Every job comes after the jobs it reads.
  order = list(jobs)
  for job in jobs.values():
    for value in job.overrides.values():
      if isinstance(value, zeroshot.Ref) and value.job:
        assert order.index(value.job) < order.index(job.name)


def test_keys_follow_config_inputs_and_data():
  budget = zeroshot.Budget()

  def keys(budget, data="d0"):
    out = {}
    for job in zeroshot.plan(budget, [0]):
      out[job.name] = zeroshot.job_key(job, out, data)
    return out

  base = keys(budget)
  assert base == keys(budget)
  more_cross = keys(zeroshot.Budget(cross_steps=budget.cross_steps + 1))
  # A change reaches the job and everything that reads it, and nothing else.
  changed = {name for name in base if base[name] != more_cross[name]}
  assert changed == {"cross.s0", "distill.s0", "gold_only.s0", "mvd_t.s0", "mvd.s0"}
  assert all(base[n] != v for n, v in keys(budget, data="d1").items())


def test_command_is_what_a_user_types():
  jobs = zeroshot.plan(zeroshot.Budget(), [0])
  workdirs = {j.name: f"/runs/{j.name}" for j in jobs}
  by_name = {j.name: j for j in jobs}
  argv = zeroshot.command(by_name["cross.s0"], "/runs/cross.s0", workdirs, "data/worlds")
  assert argv[1:3] == ["-m", "zel_jax.train"]
  assert argv[3].endswith("configs/blink_crossencoder.py:runlocal")
  assert "--config.data.candidates=/runs/blink.s0" in argv
  assert "--config.evals.splits=('val', 'test')" in argv
  typing = zeroshot.command(by_name["typing.s0"], "/runs/typing.s0", workdirs, "data/worlds")
  assert "--config.typing.types_dir=/runs/typing.s0" in typing  # its own workdir
  assert "--config.typing.wordnet=" in typing  # WordNet is not a benchmark source
  evaluate = zeroshot.command(by_name["blink.s0.train_candidates"], "", workdirs, "d")
  assert evaluate[1:] == ["-m", "zel_jax.evaluate", "--workdir=/runs/blink.s0",
                          "--split=train", "--top_k=32"]


def _recall_report(r1, r64, worlds, categories=zeshel.CATEGORIES):
  ks = {f"recall@{k}": v for k, v in ((1, r1), (4, r1 + 5), (16, r1 + 10), (64, r64))}
  for k in (2, 8, 32, 50, 100):
    ks[f"recall@{k}"] = min(100.0, r64 + k / 100)
  return {**ks, "mentions": 30, "macro": dict(ks),
          "per_world": {w: {**ks, "mentions": 10} for w in worlds},
          "per_category": {c: {**ks, "mentions": 5} for c in categories}}


def test_report_tables_and_orderings_come_from_the_results(tmp_path):
  worlds = ["python3.11-doc", "rust-doc", "apache2-doc"]
  summary = {"worlds": {w: {"split": "test", "entities": 100, "mentions": 50,
                            "mentions_kept": 30, "mean_entity_tokens": 12.5,
                            "category_share": {c: 0.25 for c in zeshel.CATEGORIES},
                            "links_dropped": {"unresolved": 3, "to_self": 2,
                                              "empty_anchor": 0, "overlapping": 1}}
                        for w in worlds}}
  numbers = {"bm25": (20, 60), "untrained": (10, 50), "blink.s0": (40, 80),
             "blink.s1": (42, 82), "mvd.s0": (45, 79), "mvd.s1": (47, 83),
             "distill_mpnet.s0": (44, 80), "distill_mpnet.s1": (46, 84)}
  results = {name: {"seconds": 60, "command": name,
                    "reports": {"test": _recall_report(r1, r64, worlds),
                                "val": _recall_report(r1, r64, ["sqlite3-doc"])}}
             for name, (r1, r64) in numbers.items()}
  results["cross.s0"] = {"seconds": 60, "command": "c", "reports": {"test": {
      "unnormalized_accuracy": 50.0, "macro": {"normalized_accuracy": 60.0,
                                               "unnormalized_accuracy": 55.0,
                                               "candidate_recall": 90.0,
                                               "retriever_accuracy": 41.0}}}}
  results["cross.s1"] = {"seconds": 60, "command": "c", "reports": {"test": {
      "macro": {"unnormalized_accuracy": 40.0}}}}
  # The MPNet bi-encoder is measured on the test worlds only.
  results["mpnet_blink.s0"] = {"seconds": 60, "command": "m", "reports": {
      "test": _recall_report(50, 85, worlds)}}
  # Step times come from the job's logged metrics: the median, so that a resumed run's
  # first window (compilation included) does not count.
  (tmp_path / "blink0").mkdir()
  (tmp_path / "blink0" / "metrics.jsonl").write_text(
      "\n".join(json.dumps(row) for row in ({"step": 10, "steps_per_s": 0.05},
                                             {"step": 20, "steps_per_s": 0.5},
                                             {"step": 20, "val/recall@1": 3.0},
                                             {"step": 30, "steps_per_s": 0.4})) + "\n")
  results["blink.s0"].update(workdir=str(tmp_path / "blink0"), command="-m zel_jax.train b0")
  results["blink.s0.train_candidates"] = {"seconds": 60, "workdir": str(tmp_path / "blink0"),
                                          "command": "-m zel_jax.evaluate", "reports": {}}
  # One MPNet teacher (seed 0) for the students of both seeds.
  results["cross_mpnet.s0"] = {"seconds": 60, "command": "c", "reports": {"test": {
      "macro": {"unnormalized_accuracy": 45.0}}}}
  # Recorded by a report written on another machine: its workdir is not here.
  results["mvd.s0"].update(workdir="/elsewhere/mvd.s0", command="-m zel_jax.train m0",
                           step_seconds=7.5)
  paths = zeroshot_report.write(str(tmp_path), summary, results, zeroshot.Budget(), [0, 1],
                                "python -m zel_jax.bench zeroshot", worlds,
                                planned=[*results, "etzel.s0"])
  text = open(paths["benchmark.md"]).read()
  assert ("**Partial**: 13 of 14 jobs have finished; rows and seeds still to come: etzel.s0."
          in text)
  assert "| blink.s0 | 1.0 | 2.50 | `-m zel_jax.train b0` |" in text
  assert "| blink.s0.train_candidates | 1.0 | - |" in text
  assert "| blink.s1 | 1.0 | - | `blink.s1` |" in text
  assert "| mvd.s0 | 1.0 | 7.50 | `-m zel_jax.train m0` |" in text
  assert "MVD teacher 100 steps from it, joint 200 steps; measured on the test worlds only" in text
  test_table, val_table = text.split("### Validation worlds")
  assert "| MPNet bi-encoder | 50.00 |" in test_table
  assert "MPNet bi-encoder" not in val_table.split("##")[0]
  assert "| BLINK bi-encoder | 41.00 (40.00 / 42.00) / 81.00" in val_table
  assert "| BLINK bi-encoder | 41.00 (40.00 / 42.00) |" in text
  assert "Every test world has 10 mentions, so micro recall equals macro." in text
  assert "| python3.11-doc | test | 100 | 30 / 50 | 12.5 | 25.0% |" in text
  assert "| rust-doc | test |" in text and "20.00 / 60.00 | 10.00 / 50.00 |" in text
  # Each seed is checked alone too: MVD's R@64 ties BLINK's on the mean, wins in seed 1 only.
  assert "MVD > BLINK, R@1: **holds** (mvd 46.00 vs blink 41.00; s0 holds, s1 holds)" in text
  assert "MVD > BLINK, R@64: **does not hold** (mvd 81.00 vs blink 81.00; s0 not, s1 holds)" in text
  # BLINK beats both, but the untrained encoder (50) is under BM25 (60): the chain fails.
  assert ("trained (BLINK) > untrained > BM25, R@64: **does not hold** (blink 81.00 vs "
          "untrained 50.00 vs bm25 60.00; s0 not, s1 not)") in text
  assert ("cross-encoder > bi-encoder, accuracy@1: **holds** (cross macro unnormalized 47.50 vs "
          "blink R@1 41.00; s0 holds, s1 not)") in text
  assert "distilled > gold-only control, R@1: not measured" in text
  # The teacher stands in both seeds of its students: above seed 0's R@1, under seed 1's.
  assert ("MPNet teacher > its distilled MiniLM student, accuracy@1: **does not hold** "
          "(cross_mpnet macro unnormalized 45.00 vs distill_mpnet R@1 45.00; s0 holds, "
          "s1 not)") in text
  assert "| MPNet | s0 | - | 45.00 | - | - | nan |" in text
  assert os.path.getsize(paths["benchmark_recall.png"]) > 1000
  recorded = json.load(open(paths["benchmark.json"]))["results"]
  assert recorded["blink.s1"]["seconds"] == 60
  assert (recorded["blink.s0"]["step_seconds"], recorded["blink.s1"]["step_seconds"]) == (2.5, None)


def _one_entity_world(tmp_path):
  """A benchmark folder of one entity: what run_all fingerprints."""
  data = tmp_path / "data"
  (data / "documents").mkdir(parents=True)
  (data / "mentions").mkdir()
  (data / "documents" / "w.json").write_text('{"document_id": "A", "title": "a", "text": "a"}\n')
  return data


def test_finished_jobs_are_reused_and_failures_name_the_log(tmp_path, monkeypatch):
  data = _one_entity_world(tmp_path)
  calls = []

  def fake_run(job, workdir, workdirs, data_dir):
    calls.append(job.name)
    if job.name == "broken":
      raise RuntimeError(f"failed; see {workdir}/bench.log")
    return {"test": {"recall@1": 1.0}}

  monkeypatch.setattr(zeroshot, "run_job", fake_run)
  jobs = [zeroshot.Job("bm25", "bm25"), zeroshot.Job("broken", "bm25")]
  with pytest.raises(RuntimeError, match="bench.log"):
    zeroshot.run_all(jobs, str(data), str(tmp_path / "runs"), log=lambda _: None)
  assert calls == ["bm25", "broken"]
  results = zeroshot.run_all(jobs[:1], str(data), str(tmp_path / "runs"), log=lambda _: None)
  assert calls == ["bm25", "broken"]  # bm25 was done: reused, not run again
  assert results["bm25"]["reports"]["test"]["recall@1"] == 1.0
  # Nothing asked for (the report-only mode): every finished job's results, nothing run.
  assert set(zeroshot.run_all(jobs, str(data), str(tmp_path / "runs"), only=set(),
                              log=lambda _: None)) == {"bm25"}
  assert calls == ["bm25", "broken"]


def test_untrained_row_is_the_mean_pooled_encoder_config(tmp_path):
  from zel_jax import workdir_io
  job = next(j for j in zeroshot.plan(zeroshot.Budget(), [0]) if j.name == "untrained")
  zeroshot.write_config(job, str(tmp_path), "data/worlds")
  config = workdir_io.load_config(str(tmp_path))
  assert config.model.pooling == "mean" and config.model.pretrained == "all-MiniLM-L6-v2"
  assert config.data.dir == "data/worlds" and config.data.entity_length == 32
  assert tuple(config.evals.splits) == ("train", "val", "test")


def test_a_preempted_training_run_is_not_cached_as_done(tmp_path, monkeypatch):
  """SIGTERM makes `zel_jax.train` save its step and exit 0: the job must stay to do."""
  data = _one_entity_world(tmp_path)
  reached = {"step": 64}

  def fake_train(argv, log_path):  # what the train process leaves in its workdir
    workdir = os.path.dirname(log_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"num_train_steps": 200}, f)
    for step in (25, 50, reached["step"]):
      os.makedirs(os.path.join(workdir, "checkpoints", str(step)), exist_ok=True)
    os.makedirs(os.path.join(workdir, "checkpoints", "75.orbax-checkpoint-tmp"), exist_ok=True)
    with open(os.path.join(workdir, "eval_test.json"), "w") as f:
      json.dump({"recall@1": 1.0}, f)
    return ""

  monkeypatch.setattr(zeroshot, "_run_logged", fake_train)
  jobs = [zeroshot.Job("mvd.s0", "train", "mvd.py:runlocal,stage=joint")]
  runs = str(tmp_path / "runs")
  with pytest.raises(RuntimeError, match="stopped at step 64 of 200.*bench.log.*resume"):
    zeroshot.run_all(jobs, str(data), runs, log=lambda _: None)
  assert zeroshot.run_all(jobs, str(data), runs, only=set(), log=lambda _: None) == {}
  reached["step"] = 200
  results = zeroshot.run_all(jobs, str(data), runs, log=lambda _: None)
  assert results["mvd.s0"]["reports"] == {"test": {"recall@1": 1.0}}


def test_recorded_results_count_as_measured_and_what_a_job_reads_runs_here(tmp_path, monkeypatch):
  """A report's results (another machine's) are reused where the key matches; a job still to
  run reads workdirs, so the recorded jobs it reads run again here."""
  data = _one_entity_world(tmp_path)
  calls = []

  def fake_run(job, workdir, workdirs, data_dir):
    calls.append(job.name)
    return {"test": {"recall@1": float(len(calls))}}

  monkeypatch.setattr(zeroshot, "run_job", fake_run)
  jobs = [zeroshot.Job("blink.s0", "train", "blink_biencoder.py:runlocal"),
          zeroshot.Job("blink.s0.train_candidates", "evaluate", args={"split": "train"},
                       workdir_of="blink.s0"),
          zeroshot.Job("bm25", "bm25"),
          zeroshot.Job("stale", "bm25"),
          zeroshot.Job("cross.s0", "train", "blink_crossencoder.py:runlocal",
                       {"data.candidates": zeroshot.Ref("blink.s0")})]
  fingerprint = zeroshot.data_fingerprint(str(data))
  keys = {}
  for job in jobs:
    keys[job.name] = zeroshot.job_key(job, keys, fingerprint)
  recorded = {name: {"key": keys[name], "seconds": 9, "reports": {"test": {"recall@1": 50.0}}}
              for name in ("blink.s0", "blink.s0.train_candidates", "bm25")}
  recorded["stale"] = {"key": "another-data", "reports": {}}
  runs = str(tmp_path / "runs")
  results = zeroshot.run_all(jobs, str(data), runs, only=set(), recorded=recorded,
                             log=lambda _: None)
  assert set(results) == {"blink.s0", "blink.s0.train_candidates", "bm25"} and calls == []
  # Every job not measured: the stale one, and cross.s0 with the blink.s0 workdir it reads,
  # including the candidates an evaluate job writes there.
  results = zeroshot.run_all(jobs, str(data), runs, recorded=recorded, log=lambda _: None)
  assert calls == ["blink.s0", "blink.s0.train_candidates", "stale", "cross.s0"]
  assert results["bm25"]["reports"]["test"]["recall@1"] == 50.0  # recorded, not run
  assert results["blink.s0"]["reports"]["test"]["recall@1"] == 1.0  # run here: this one counts
  assert results["cross.s0"]["key"] == keys["cross.s0"]
  # A result an older version wrote without its key gets it from its workdir's name; the
  # results come in the plan's order.
  done = os.path.join(results["blink.s0"]["workdir"], zeroshot.DONE)
  with open(done) as f:
    written = json.load(f)
  del written["key"]
  zeshel.write_json(done, written)
  results = zeroshot.run_all(jobs, str(data), runs, only=set(), log=lambda _: None)
  assert results["blink.s0"]["key"] == keys["blink.s0"]
  assert list(results) == [j.name for j in jobs if j.name != "bm25"]  # bm25: recorded only
  # Named jobs run even when recorded; a name that is no job is an error, not a no-op.
  zeroshot.run_all(jobs, str(data), runs, only={"bm25"}, recorded=recorded, log=lambda _: None)
  assert calls[-1] == "bm25"
  with pytest.raises(ValueError, match="no job named blink.s9"):
    zeroshot.run_all(jobs, str(data), runs, only={"blink.s9"}, log=lambda _: None)


def test_a_recorded_run_read_for_its_parameters_trains_here_without_its_evals(tmp_path,
                                                                              monkeypatch):
  """A recorded cross-encoder that a new job reads only as its init_from is trained here with
  its evals off (they are recorded); a run whose candidates are read runs whole."""
  data = _one_entity_world(tmp_path)
  calls = []

  def fake_run(job, workdir, workdirs, data_dir):
    calls.append((job.name, job.overrides.get("evals.splits")))
    os.makedirs(os.path.join(workdir, "checkpoints", "3"), exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"num_train_steps": 3}, f)
    return {"test": {"recall@1": 1.0}}

  monkeypatch.setattr(zeroshot, "run_job", fake_run)
  steps = {"num_train_steps": 3, "evals.splits": ("test",)}
  jobs = [zeroshot.Job("blink.s0", "train", "blink_biencoder.py:runlocal", steps),
          zeroshot.Job("blink.s0.train_candidates", "evaluate", args={"split": "train"},
                       workdir_of="blink.s0"),
          zeroshot.Job("cross.s0", "train", "blink_crossencoder.py:runlocal",
                       {**steps, "data.candidates": zeroshot.Ref("blink.s0")}),
          zeroshot.Job("mvd_t.s0", "train", "mvd.py:runlocal,stage=teacher",
                       {**steps, "init_from": zeroshot.Ref("cross.s0")}),
          zeroshot.Job("distill.s0", "train", "blink_distill.py:runlocal",
                       {**steps, "distill.teacher": zeroshot.Ref("cross.s0"),
                        "init_from": zeroshot.Ref("blink.s0")})]
  fingerprint = zeroshot.data_fingerprint(str(data))
  keys = {}
  for job in jobs:
    keys[job.name] = zeroshot.job_key(job, keys, fingerprint)
  recorded = {name: {"key": keys[name], "reports": {"test": {"recall@1": 50.0}}}
              for name in ("blink.s0", "blink.s0.train_candidates", "cross.s0")}
  runs = str(tmp_path / "runs")
  results = zeroshot.run_all(jobs, str(data), runs, only={"mvd_t.s0"}, recorded=recorded,
                             log=lambda _: None)
  # cross.s0 reads blink.s0's candidates (all of blink.s0 runs); mvd_t.s0 reads cross.s0's
  # parameters alone.
  assert calls == [("blink.s0", ("test",)), ("blink.s0.train_candidates", None),
                   ("cross.s0", ()), ("mvd_t.s0", ("test",))]
  assert results["cross.s0"]["reports"]["test"]["recall@1"] == 50.0  # still the recorded one
  # Its parameters are trained here now: a second reader only runs itself.
  zeroshot.run_all(jobs, str(data), runs, only={"distill.s0"}, recorded=recorded,
                   log=lambda _: None)
  assert calls[4:] == [("distill.s0", ("test",))]
  # Asked for by name, it runs whole (resuming at its last step, the evals run).
  results = zeroshot.run_all(jobs, str(data), runs, only={"cross.s0"}, recorded=recorded,
                             log=lambda _: None)
  assert calls[5:] == [("cross.s0", ("test",))]
  assert results["cross.s0"]["reports"]["test"]["recall@1"] == 1.0


def test_package_changes_name_the_worlds_built_from_other_versions():
  recorded = {"worlds": {"rust-doc": {"packages": ["rust-doc_1.63.0+dfsg1-2_all.deb"]},
                         "apache2-doc": {"packages": ["apache2-doc_2.4.71-1~deb12u1_all.deb"]}}}
  built = {"worlds": {"rust-doc": {"packages": ["rust-doc_1.63.0+dfsg1-2_all.deb"]},
                      "apache2-doc": {"packages": ["apache2-doc_2.4.68-1~deb12u1_all.deb"]},
                      "new-world": {"packages": ["new_1_all.deb"]}}}
  assert zeroshot.package_changes(recorded, built) == [
      "apache2-doc was measured on apache2-doc_2.4.71-1~deb12u1_all.deb; this machine built it "
      "from apache2-doc_2.4.68-1~deb12u1_all.deb"]
