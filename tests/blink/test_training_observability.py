"""What a long run shows without a terminal: a plain log line per log interval with loss,
examples/s and ETA, and recall on the val split during training, with the best step's
parameters kept."""

import json
import logging

import pytest

import tiny_world
from zel_jax import checkpoint as checkpoint_lib
from zel_jax.recipes.blink import biencoder as trainer


def test_log_lines_val_recall_during_training_and_the_best_step_kept(tmp_path, caplog):
  data = tiny_world.write_world(tmp_path / "data")
  model_dir = tiny_world.write_tiny_bert(tmp_path / "bert")
  config = tiny_world.tiny_config(data, model_dir, num_train_steps=12, log_every=3)
  config.evals.splits = ("val",)
  config.evals.every = 4
  config.evals.best_metric = "val/recall@1"
  workdir = tmp_path / "w"
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(config, str(workdir))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert [line.split()[1] for line in lines] == ["3/12", "4/12", "6/12", "8/12", "9/12",
                                                  "12/12"]
  assert all(" loss " in line and "examples/s  ETA " in line for line in lines)
  assert lines[-1].endswith("ETA 0:00:00")

  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  during = {r["step"]: r["val/recall@1"] for r in logged if "val/recall@1" in r}
  assert sorted(during) == [4, 8]
  final = json.loads((workdir / "eval_val.json").read_text())["recall@1"]
  recalls = {**during, 12: final}
  best = json.loads((workdir / "best.json").read_text())
  assert best["metric"] == "val/recall@1" and best["value"] == max(recalls.values())
  assert recalls[best["step"]] == best["value"]
  # The first step reaching the best value is kept (a tie does not replace it).
  assert best["step"] == min(s for s, v in recalls.items() if v == best["value"])
  kept = checkpoint_lib.Checkpointer(str(workdir / "best"), read_only=True)
  assert kept.all_steps() == [best["step"]]


def test_best_metric_of_a_split_not_evaluated_is_refused_before_training(tmp_path):
  data = tiny_world.write_world(tmp_path / "data")
  config = tiny_world.tiny_config(data, tiny_world.write_tiny_bert(tmp_path / "bert"),
                                  num_train_steps=2)
  config.evals.splits = ("test",)
  config.evals.best_metric = "val/recall@1"
  with pytest.raises(ValueError, match="best_metric='val/recall@1': its split"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists() or not any(
      (tmp_path / "w" / "checkpoints").iterdir())
