"""Config files: every experiment loads with runlocal, overrides apply, typos fail loudly."""

import json
import pathlib
import subprocess
import sys

from absl import flags
import pytest
from ml_collections import config_flags

from zel_jax import configs, recipes
from zel_jax.configs import common

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.py") if p.stem not in ("common", "__init__"))


def _parse(*args):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(["prog", *args])
  return values.config


def test_there_are_experiments():
  assert EXPERIMENTS, "configs/ holds no experiment files"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_has_runlocal(path):
  full = _parse(f"--config={path}")
  local = _parse(f"--config={path}:runlocal")
  assert full.mesh and local.mesh
  assert local.to_dict() != full.to_dict(), "runlocal must shrink something"
  assert path.read_text().lstrip().startswith(('"""', 'r"""')), "docstring with the command"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_names_a_recipe_and_one_of_its_stages(path):
  config = _parse(f"--config={path}:runlocal")
  if "trainer" not in config:  # Not a training config: its docstring runs another command.
    assert "python -m zel_jax.encode" in path.read_text(), path.name
    return
  recipe = recipes.for_config(config)
  assert recipe.name == config.recipe
  assert callable(recipe.trainers[recipe.stage(config)])


def test_packaged_config_names_resolve_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = str(CONFIGS.resolve() / "blink_biencoder.py")
  for given in ("blink_biencoder:runlocal", "blink_biencoder.py:runlocal",
                "configs/blink_biencoder.py:runlocal"):
    assert configs.resolve(given) == packaged + ":runlocal"
  assert configs.resolve("blink_biencoder") == packaged
  (tmp_path / "mine.py").write_text("")  # A file that exists is taken as given.
  assert configs.resolve("mine.py:x") == "mine.py:x"
  assert configs.resolve("no_such_config:runlocal") == "no_such_config:runlocal"
  assert configs.resolve_argv(["prog", "--config", "mvd:stage=joint", "--x=1"]) == [
      "prog", "--config", str(CONFIGS.resolve() / "mvd.py") + ":stage=joint", "--x=1"]
  assert _parse(f"--config={configs.resolve('blink_biencoder:runlocal')}").batch_size == 32


# The command lines' own flag handling (absl app + locked config file flag), minus JAX.
_CLI = """
from absl import app
from ml_collections import config_flags
config = config_flags.DEFINE_config_file("config", None, "", lock_config=True)
app.run(lambda argv: print(config.value.to_json()))
"""


def _cli(*args):
  return subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True,
                        timeout=120)


def test_overrides_apply_and_missing_keys_fail():
  path = CONFIGS / "encode.py"
  ok = _cli(f"--config={path}:runlocal", "--config.batch_size=3",
            "--config.model.dtype=bfloat16")
  assert ok.returncode == 0, ok.stderr
  config = json.loads(ok.stdout.strip().splitlines()[-1])
  assert config["batch_size"] == 3 and config["model"]["dtype"] == "bfloat16"
  typo = _cli(f"--config={path}", "--config.batch_sizee=3")
  assert typo.returncode != 0 and 'Did you mean "batch_size"' in typo.stderr
  nested = _cli(f"--config={path}", "--config.model.dtyp=bfloat16")
  assert nested.returncode != 0 and "dtyp" in nested.stderr
  wrong_type = _cli(f"--config={path}", "--config.batch_size=many")
  assert wrong_type.returncode != 0 and "batch_size" in wrong_type.stderr


def test_variant_string_parsing():
  arg = common.parse_arg("variant=base,runlocal,steps=7", variant="large", runlocal=False,
                         steps=1, lr=0.1)
  assert (arg.variant, arg.runlocal, arg.steps, arg.lr) == ("base", True, 7, 0.1)
  with pytest.raises(ValueError, match="unknown config argument 'runlcal'"):
    common.parse_arg("runlcal", runlocal=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("steps", steps=1)
