"""The stability watchdog of `pair_style polyget` (keywords bond_stretch / bond_every; always on:
non-finite positions and model output): a run that is made to blow up stops with the step and
the atoms involved, on one rank and on several."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from test_native_common import ToyMessagePassing, save_jit, toy_metadata
from test_native_lammps import (LMP, PLUGIN, export_toy, ring_polymer, run_lammps,
                                single_point_deck, write_data)

pytestmark = pytest.mark.lammps

STRETCH = re.compile(r"polyget watchdog: step (\d+): bond ([A-Z][a-z]?)(\d+)-([A-Z][a-z]?)(\d+) "
                     r"stretched to ([0-9.]+) A, ([0-9.]+) x its start length ([0-9.]+) A "
                     r"\(limit bond_stretch 1.60; the molecule is breaking\)")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    if LMP is None or not PLUGIN.is_file():
        pytest.skip("pair_style polyget plugin not built (make setup)")
    return export_toy(tmp_path_factory.mktemp("toy") / "toy.jit.pt", cutoff=4.0, num_layers=2)


def _deck(toy, types, body, keywords="bond_stretch 1.6", processors=""):
    return single_point_deck(toy, types, processors=processors).replace(
        f"pair_style polyget {toy}", f"pair_style polyget {toy} {keywords}").replace("run 0", body)


def _bonds(atoms):
    """Bonds as the watchdog defines them (polyget.md.Watchdog, cpp/contract.h): pairs closer
    than 1.2 x the sum of covalent radii."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    i, j, d = neighbor_list("ijd", atoms, natural_cutoffs(atoms, mult=1.2))
    keep = i < j
    return i[keep], j[keep], d[keep]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_bond_stretch_stops_md_at_the_first_bad_step(toy, tmp_path, nprocs):
    """The toy model's Morse pairs (r0 = 1.6 A for every pair) tear the C-H bonds of a
    polyethylene ring apart within tens of steps. The watchdog must stop at the first step where
    a bond of the start structure is longer than 1.6 x its start length and name it: the positions
    of that step are rebuilt here from the dump of the step before (velocity Verlet) and checked
    in Python."""
    atoms = ring_polymer(6)
    types = write_data(atoms, tmp_path / "data.lmp")
    body = ("velocity all set 0 0 0\ntimestep 0.0005\nfix f all nve\n"
            "dump v all custom 1 traj.dump id type x y z vx vy vz fx fy fz\n"
            "dump_modify v sort id format float %.17g\nrun 1000")
    code, out = run_lammps(tmp_path, _deck(toy, types, body,
                                           processors="processors 2 1 1" if nprocs == 2 else ""),
                           nprocs=nprocs, check=False)
    assert code != 0, out[-3000:]
    assert "watchdog: 18 bonds of this structure" in out, out[-3000:]
    m = STRETCH.search(out)
    assert m, out[-3000:]
    step, ti, tj = int(m.group(1)), int(m.group(3)), int(m.group(5))
    r, ratio, r0 = float(m.group(6)), float(m.group(7)), float(m.group(8))
    assert 0 < step < 1000 and ti < tj and ratio > 1.6

    from ase.io import read
    frames = read(tmp_path / "traj.dump", ":", format="lammps-dump-text")
    assert len(frames) == step        # dumps of steps 0 .. step-1: the run stopped at `step`
    bi, bj, d0 = _bonds(atoms)
    mass = np.array([{"H": 1.008, "C": 12.011, "O": 15.999}[s] for s in atoms.get_chemical_symbols()])
    ftm2v = 1.0 / 1.0364269e-4        # metal units: (eV/A)/(g/mol) -> A/ps^2
    dt = 0.0005

    def ratios(x):
        return np.linalg.norm(x[bj] - x[bi], axis=1) / d0

    prev = frames[-1]
    assert ratios(prev.positions).max() <= 1.6    # the step before was still fine
    v_half = prev.get_velocities() * 0 + _dump_columns(tmp_path / "traj.dump", step - 1, "v")
    f = _dump_columns(tmp_path / "traj.dump", step - 1, "f")
    x = prev.positions + dt * (v_half + 0.5 * dt * ftm2v * f / mass[:, None])
    bad = ratios(x)
    k = [n for n in range(len(bi)) if (bi[n] + 1, bj[n] + 1) == (ti, tj)]
    assert k, (ti, tj)
    assert bad[k[0]] > 1.6 and abs(bad[k[0]] - ratio) < 0.006 and abs(d0[k[0]] - r0) < 6e-4
    if nprocs == 1:                   # one rank names the worst bond of all
        assert bad[k[0]] == pytest.approx(bad.max(), abs=1e-3)


def _dump_columns(path, step, kind):
    """vx vy vz or fx fy fz of one dumped step (sorted by id)."""
    lines = path.read_text().splitlines()
    k = lines.index("ITEM: TIMESTEP")
    while int(lines[k + 1]) != step:
        k = lines.index("ITEM: TIMESTEP", k + 1)
    n = int(lines[k + 3])
    head = lines[k + 8].split()[2:]
    rows = np.array([[float(v) for v in ln.split()] for ln in lines[k + 9:k + 9 + n]])
    cols = [head.index(kind + c) for c in "xyz"]
    return rows[:, cols]


@pytest.mark.parametrize("nprocs", [1, 2])
def test_bond_out_of_reach_is_reported(toy, tmp_path, nprocs):
    """An atom moved 6 A away between two runs is beyond every neighbour list: the collective
    count finds the missing bond and names it."""
    atoms = ring_polymer(6)
    types = write_data(atoms, tmp_path / "data.lmp")
    body = "run 0\ngroup one id 1\ndisplace_atoms one move 0 0 6\nrun 0"
    code, out = run_lammps(tmp_path, _deck(toy, types, body,
                                           processors="processors 2 1 1" if nprocs == 2 else ""),
                           nprocs=nprocs, check=False)
    assert code != 0, out[-3000:]
    m = re.search(r"polyget watchdog: step 0: bond (\d+)-(\d+) \(start length ([0-9.]+) A\) is "
                  r"broken", out)
    assert m, out[-3000:]
    assert 1 in (int(m.group(1)), int(m.group(2)))


def test_watchdog_quiet_on_a_normal_run(toy, tmp_path):
    """Watchdog on, nothing wrong (a carbon ring at the toy's Morse minimum, 50 K): the run
    finishes and the energies are those of the same run without the watchdog."""
    from ase import Atoms
    ang = np.arange(8) * 2 * np.pi / 8
    rad = 1.6 / (2 * np.sin(np.pi / 8))
    ring = Atoms("C8", positions=np.stack([rad * np.cos(ang), rad * np.sin(ang), 0 * ang], 1))
    ring.center(vacuum=8.0)
    types = write_data(ring, tmp_path / "data.lmp")
    body = ("velocity all create 50 1\nfix f all nve\ntimestep 0.0005\nthermo 50\nrun 150\n"
            'print "FINAL $(pe:%.12g) $(c_thermo_temp:%.12g)"')
    code, out = run_lammps(tmp_path, _deck(toy, types, body, keywords="bond_stretch 1.6 bond_every 5"))
    assert "watchdog: 8 bonds of this structure" in out, out[-3000:]
    on = re.search(r"FINAL (\S+) (\S+)", out).groups()
    code, out = run_lammps(tmp_path, _deck(toy, types, body, keywords=""))
    assert "watchdog: " not in out
    assert re.search(r"FINAL (\S+) (\S+)", out).groups() == on


def test_nonfinite_model_output_stops_at_step_0(tmp_path):
    if LMP is None or not PLUGIN.is_file():
        pytest.skip("pair_style polyget plugin not built (make setup)")
    model = ToyMessagePassing(3, 4.0, 2)
    model.depth[2] = float("nan")          # every pair with an oxygen gives NaN
    jit = save_jit(model, tmp_path / "nan.jit.pt", toy_metadata(model))
    atoms = ring_polymer(6, oxygen_every=3)
    types = write_data(atoms, tmp_path / "data.lmp")
    code, out = run_lammps(tmp_path, single_point_deck(jit, types), check=False)
    assert code != 0
    assert re.search(r"polyget watchdog: step 0: non-finite force or energy from the model on "
                     r"atom [HCO]\d+", out), out[-3000:]


@pytest.mark.parametrize("keywords, fragment", [
    ("bond_stretch 0.8", "bond_stretch must be 0 (off) or a ratio > 1"),
    ("bond_stretch", "bond_stretch needs a ratio"),
    ("bond_every 0", "bond_every must be >= 1"),
])
def test_watchdog_keywords_checked(toy, tmp_path, keywords, fragment):
    atoms = ring_polymer(6)
    types = write_data(atoms, tmp_path / "data.lmp")
    code, out = run_lammps(tmp_path, _deck(toy, types, "run 0", keywords=keywords), check=False)
    assert code != 0 and fragment in out, out[-3000:]
