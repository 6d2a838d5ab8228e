"""Every deck in inputs/ runs (shortened) with a tiny exported model; NVE energy conservation.

NVE: the shipped polyget-mini (float64), 0.5 fs, 3000 steps of a gamma-butyrolactone 3-loop at
300 K. Measured: max |E(t) - E(0)| / N = 6.4e-5 eV/atom (fluctuation), fitted drift ~1e-5
eV/atom over 1.5 ps; bounds 2e-4 and 5e-5 eV/atom.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from test_lammps_common import (REPO, deck_files, export_tiny, require_lammps, require_mpirun,
                                run_lmp, steps_per_second)

pytestmark = pytest.mark.lammps

NVE_STEPS = 3000
# measured (polyget-mini float64, 36 atoms, 1.5 ps): max |E(t)-E(0)|/N 6.4e-5 eV/atom (Verlet
# fluctuation of the H atoms at 0.5 fs), fitted linear drift over the run ~1e-5 eV/atom
NVE_FLUCTUATION_BOUND = 2e-4  # eV/atom
NVE_DRIFT_BOUND = 5e-5  # eV/atom over 1.5 ps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("decks")
    pt, jit, ckpt = export_tiny(d / "tiny.pt")
    return {"dir": d, "pt": pt}


SHORT = {"demo.in": 10, "nvt_15loop.in": 10, "nve_15loop.in": 20, "mpi_15loop.in": 10,
         "melt_nvt.in": 10}


OWN_TEST = {"melt_equil.in"}  # decks with a test of their own below


def test_every_deck_is_listed():
    names = {p.name for p in deck_files()}
    assert names == set(SHORT) | OWN_TEST, "add new decks to SHORT in this test: %s" % sorted(names)


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


def test_melt_equil_deck_on_a_fresh_melt(tiny, tmp_path):
    """`polyget melt` -> inputs/melt_equil.in (pair_style polyget, per-layer exchange) on 2
    ranks: compress to 1.05 g/cm^3, NVT, NPT, write_data (shortened)."""
    require_mpirun()
    from polyget.data.melt import build_melt, write_lammps_data

    atoms = build_melt("LAC2", 3, n_chains=6, density=1.0, seed=2)
    write_lammps_data(tmp_path / "melt.data", atoms, "test melt")
    jit = str(tiny["pt"])[:-3] + ".jit.pt"
    proc = run_lmp("", tmp_path, nprocs=2, deck_path=REPO / "inputs" / "melt_equil.in",
                   cwd=tmp_path, name="melt_equil.in",
                   variables={"model": jit, "data": tmp_path / "melt.data", "rho": 1.05,
                              "compress": 4, "nvt": 4, "npt": 4})
    out = proc.stdout
    assert "ghosts exchange" in out and "ERROR" not in out, out[-2000:]
    assert out.count("Loop time") == 3
    m = re.search(r"melt_equil: 216 atoms, box \S+ A at (\S+) g/cm\^3 -> (\S+) A at 1.05", out)
    assert m and abs(float(m.group(1)) - 1.0) < 1e-3, out[-2000:]
    assert (tmp_path / "melt_equil.data").is_file()


def test_slurm_example_is_valid_bash():
    script = REPO / "inputs" / "slurm_mliap.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH" in text and "inputs/mpi_15loop.in" in text


def test_nve_energy_conservation(tmp_path):
    """inputs/nve_15loop.in with the shipped polyget-mini (float64) on the gamma-butyrolactone
    3-loop (36 atoms, CI time), 3000 x 0.5 fs = 1.5 ps at 300 K."""
    require_lammps()
    model = REPO / "potentials" / "polyget-mini.pt"
    assert model.is_file(), "the shipped potential %s is missing" % model
    proc = run_lmp("", tmp_path, deck_path=REPO / "inputs" / "nve_15loop.in", cwd=REPO,
                   name="nve.in", timeout=900,
                   variables={"model": model, "steps": NVE_STEPS,
                              "data": REPO / "inputs" / "lac2_3loop.data"})
    m = re.search(r"NVE drift per atom after \d+ steps: (\S+) eV/atom", proc.stdout)
    assert m, proc.stdout[-3000:]
    # thermo: step time temp pe ke etotal v_drift spcpu
    rows = [l.split() for l in proc.stdout.splitlines()
            if re.match(r"^\s*\d+\s+[-0-9.e+]+\s+[-0-9.e+]+\s+[-0-9.e+]+", l)]
    rows = np.array([[float(x) for x in r] for r in rows if len(r) == 8])
    t, dev = rows[:, 1], rows[:, 6]
    slope = np.polyfit(t, dev, 1)[0] * (t[-1] - t[0])  # systematic drift over the run
    print("NVE %d steps: max |E(t)-E(0)|/N %.2e eV/atom, fitted drift %.2e eV/atom"
          % (NVE_STEPS, np.abs(dev).max(), slope))
    assert np.abs(dev).max() < NVE_FLUCTUATION_BOUND
    assert abs(slope) < NVE_DRIFT_BOUND
