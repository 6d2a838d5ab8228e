"""scripts/build_lammps.sh: the installed wrapper and env file; LAMMPS_ROOT for an existing LAMMPS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_lammps_common import LMP, REPO, VENV, require_lammps

pytestmark = pytest.mark.lammps


def read_env(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_env_file_points_at_source_and_build():
    require_lammps()
    env = read_env(VENV / "share" / "polyget" / "lammps.env")
    assert env["LAMMPS_VERSION"].startswith("4 Jul 2026") or env["LAMMPS_VERSION"] == "external"
    if env["LAMMPS_VERSION"] != "external":
        src = Path(env["LAMMPS_SOURCE_DIR"])
        assert (src / "src" / "pair.h").is_file() and (src / "src" / "lammpsplugin.h").is_file()
        assert (Path(env["LAMMPS_BUILD_DIR"]) / "CMakeCache.txt").is_file()
        # cached outside the repository
        assert REPO not in src.parents
    wrapper = LMP.read_text()
    assert "PYTHONPATH" in wrapper and "LAMMPS_PLUGIN_PATH" in wrapper
    assert str(VENV / "lib" / "polyget" / "plugins") in wrapper


def test_lammps_root_uses_an_existing_install(tmp_path):
    require_lammps()
    prefix = Path(read_env(VENV / "share" / "polyget" / "lammps.env")["LAMMPS_PREFIX"])
    if not (prefix / "bin" / "lmp").is_file():
        pytest.skip("this venv itself uses an external LAMMPS")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = dict(os.environ, VENV=str(venv), LAMMPS_ROOT=str(prefix), POLYGET_CACHE=str(tmp_path / "cache"))
    res = subprocess.run(["bash", str(REPO / "scripts" / "build_lammps.sh")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert res.returncode == 0, res.stdout
    assert not (tmp_path / "cache").exists()  # nothing built or downloaded
    out = subprocess.run([str(venv / "bin" / "lmp"), "-h"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120).stdout
    assert "ML-IAP" in out and "PYTHON" in out
    assert read_env(venv / "share" / "polyget" / "lammps.env")["LAMMPS_VERSION"] == "4 Jul 2026"
