"""Debian packages as data: download a `.deb` with apt-get and unpack it without root.

`apt-get download` needs no root once package lists exist (a fresh machine has none: as
root, `apt-get update` is run once and the download retried); `dpkg-deb -x` unpacks into any
folder without installing anything.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess


def download_deb(package: str, directory: str) -> str:
  """`apt-get download PACKAGE` into `directory`; returns the path of the `.deb`."""
  if shutil.which("apt-get") is None:
    raise RuntimeError(f"apt-get is needed to download {package}: on another system fetch "
                       f"{package}'s .deb by hand and unpack it with `dpkg-deb -x`")
  os.makedirs(directory, exist_ok=True)

  def attempt():
    return subprocess.run(["apt-get", "download", package], cwd=directory,
                          capture_output=True, text=True)

  result = attempt()
  if result.returncode != 0 and os.geteuid() == 0:
    # Fresh machines have no package lists yet.
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    result = attempt()
  # Versions contain ':' as '%3a' in file names; any version of the package will do.
  debs = sorted(glob.glob(os.path.join(directory, f"{package}_*.deb")))
  if result.returncode != 0 or not debs:
    raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-500:]} "
                       "(run `apt-get update` as root first)")
  return debs[-1]


def extract_deb(deb: str, root: str) -> None:
  """Unpacks the files of `deb` under `root` (as `dpkg -x` does; no root needed)."""
  if shutil.which("dpkg-deb") is None:
    raise RuntimeError(f"dpkg-deb is needed to unpack {deb} (a Debian/Ubuntu tool)")
  os.makedirs(root, exist_ok=True)
  subprocess.run(["dpkg-deb", "-x", deb, root], check=True, capture_output=True)
