"""Every deck in inputs/ runs (shortened) with a tiny exported model; NVE energy conservation.

NVE bound: a float64 model, 0.5 fs, 3000 steps of a gamma-butyrolactone 3-loop at 300 K. The
drift |E(t) - E(0)| / N measured here was below 1e-6 eV/atom (see the test for the bound); the
test fails above 2e-5 eV/atom.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from conftest import polymer_like
from test_lammps_common import (REPO, deck_files, export_tiny, require_lammps, require_mpirun,
                                run_lmp, steps_per_second, write_data)

pytestmark = pytest.mark.lammps

NVE_STEPS = 3000
NVE_DRIFT_BOUND = 2e-5  # eV/atom, max |E(t) - E(0)| / N over 3000 steps (1.5 ps)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("decks")
    pt, jit, ckpt = export_tiny(d / "tiny.pt")
    return {"dir": d, "pt": pt}


SHORT = {"demo.in": 10, "nvt_15loop.in": 10, "nve_15loop.in": 20, "mpi_15loop.in": 10,
         "melt_nvt.in": 10}


def test_every_deck_is_listed():
    names = {p.name for p in deck_files()}
    assert names == set(SHORT), "add new decks to SHORT in this test: %s" % sorted(names)


@pytest.mark.parametrize("deck", sorted(SHORT))
def test_deck_runs_shortened(tiny, tmp_path, deck):
    nprocs = 2 if deck == "mpi_15loop.in" else 1
    if nprocs > 1:
        require_mpirun()
    proc = run_lmp("", tmp_path, nprocs=nprocs, deck_path=REPO / "inputs" / deck, cwd=REPO,
                   name=deck, variables={"model": tiny["pt"], "steps": SHORT[deck]})
    assert "Loop time" in proc.stdout
    assert steps_per_second(proc.stdout) is not None
    assert "ERROR" not in proc.stdout


def test_melt_deck_on_two_ranks(tiny, tmp_path):
    require_mpirun()
    proc = run_lmp("", tmp_path, nprocs=2, deck_path=REPO / "inputs" / "melt_nvt.in", cwd=REPO,
                   name="melt2.in", variables={"model": tiny["pt"], "steps": 10})
    assert "Loop time" in proc.stdout


def test_slurm_example_is_valid_bash():
    script = REPO / "inputs" / "slurm_mliap.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH" in text and "inputs/mpi_15loop.in" in text


def test_nve_energy_conservation(tiny, tmp_path):
    """inputs/nve_15loop.in on a small molecule pair (18 atoms, CI time), 3000 x 0.5 fs."""
    data = write_data(tmp_path / "small.data", polymer_like(seed=2))
    proc = run_lmp("", tmp_path, deck_path=REPO / "inputs" / "nve_15loop.in", cwd=REPO,
                   name="nve.in", timeout=900,
                   variables={"model": tiny["pt"], "steps": NVE_STEPS, "data": data})
    m = re.search(r"NVE drift per atom after \d+ steps: (\S+) eV/atom", proc.stdout)
    assert m, proc.stdout[-3000:]
    # thermo: step time temp pe ke etotal v_drift spcpu
    rows = [l.split() for l in proc.stdout.splitlines()
            if re.match(r"^\s*\d+\s+[-0-9.e+]+\s+[-0-9.e+]+\s+[-0-9.e+]+", l)]
    drift = np.array([float(r[6]) for r in rows if len(r) == 8])
    print("NVE max |drift| per atom: %.3e eV/atom, final %.3e" % (np.abs(drift).max(), float(m.group(1))))
    assert np.abs(drift).max() < NVE_DRIFT_BOUND
