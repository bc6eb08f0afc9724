"""`pip install .` (not editable): the configs travel inside the package, so nothing named
`configs` lands in site-packages and `--config` takes a packaged name from any directory."""

import os
import pathlib
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_wheel_installs_configs_inside_the_package_and_train_starts_anywhere(tmp_path):
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(tmp_path / "dist"), str(REPO)],
      capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert build.returncode == 0, build.stderr[-3000:]
  wheel, = (tmp_path / "dist").glob("zel_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  assert "configs" not in tops and "tests" not in tops
  assert "zel_jax/configs/blink_biencoder.py" in names
  for recipe in ("blink", "mvd", "etzel", "entqa", "xel"):
    assert f"zel_jax/recipes/{recipe}/__init__.py" in names

  site = tmp_path / "site"
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
       "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  assert not (site / "configs").exists()

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site))  # The installed copy, not the checkout.
  env.pop("XLA_FLAGS", None)
  where = subprocess.run(
      [sys.executable, "-c", "import zel_jax, zel_jax.configs as c; print(zel_jax.__file__); "
       "print(c.resolve('blink_biencoder:runlocal'))"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert where.returncode == 0, where.stderr
  module_file, config_file = where.stdout.split()
  assert module_file.startswith(str(site)) and config_file.startswith(str(site))
  assert config_file.endswith("zel_jax/configs/blink_biencoder.py:runlocal")

  # The trainer starts: the packaged config loads and its recipe checks the data directory
  # (none given), before anything is written.
  train = subprocess.run(
      [sys.executable, "-m", "zel_jax.train", "--config=blink_biencoder:runlocal",
       f"--workdir={tmp_path / 'work'}"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert train.returncode != 0
  assert "config.data.dir is empty" in train.stderr, train.stderr[-3000:]
