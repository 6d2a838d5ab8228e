#!/usr/bin/env python
"""Write the LAMMPS data files used by the decks in inputs/ (ase.io ``lammps-data``).

    python inputs/make_data.py            # all files
    python inputs/make_data.py --check    # rebuild in a temp dir and compare atom counts

Files (atom types 1 H, 2 C, 3 O, the element order of polyget models: ``pair_coeff * * H C O``):

* ``ck6_15loop.data``    cyclooctane 15-loop (360 atoms), RDKit ETKDGv3 conformer, vacuum box;
* ``lac2_15loop.data``   gamma-butyrolactone 15-loop (180 atoms), same;
* ``lac2_3loop.data``    gamma-butyrolactone 3-loop (36 atoms): quick NVE checks (tests);
* ``melt_lac2.data``     periodic melt: 8 gamma-butyrolactone 3-loops (288 atoms) at about
  0.8 g/cm^3, molecules placed on a grid with random orientations (no pair closer than 1.8 A).

A deck of your own structure: ``ase.io.write("x.data", atoms, format="lammps-data",
specorder=["H", "C", "O"], masses=True, units="metal")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

SPECORDER = ["H", "C", "O"]


def write_data(path: Path, atoms, comment: str) -> None:
    from ase.io import write

    write(str(path), atoms, format="lammps-data", specorder=SPECORDER, masses=True,
          units="metal", atom_style="atomic")
    text = path.read_text().splitlines()
    text[0] = "%s (written by inputs/make_data.py with ase.io lammps-data)" % comment
    path.write_text("\n".join(text) + "\n")


def loop(family: str, L: int, seed: int = 0, vacuum: float = 12.0):
    from polyget.data.build import build

    atoms = build(family, L, n_conf=1, seed=seed)[0]
    atoms.center(vacuum=vacuum)
    atoms.pbc = False
    return atoms


def melt(family: str = "LAC2", L: int = 3, n_mol: int = 8, density: float = 0.8, seed: int = 1,
         min_dist: float = 1.8):
    from ase import Atoms
    from ase.geometry import get_distances
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    mol = loop(family, L, seed=seed, vacuum=0.0)
    mol.positions -= mol.get_center_of_mass()
    mass_g = mol.get_masses().sum() * n_mol / 6.02214076e23
    box = (mass_g / density * 1e24) ** (1.0 / 3.0)  # Angstrom
    n_side = int(np.ceil(n_mol ** (1.0 / 3.0)))
    cell = np.eye(3) * box
    out = Atoms(cell=cell, pbc=True)
    sites = [(i, j, k) for i in range(n_side) for j in range(n_side) for k in range(n_side)]
    for m in range(n_mol):
        centre = (np.array(sites[m]) + 0.5) * box / n_side
        for _ in range(2000):
            rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
            trial = mol.copy()
            trial.positions = trial.positions @ rot.T + centre
            if len(out) == 0:
                break
            d = get_distances(trial.positions, out.positions, cell=cell, pbc=True)[1]
            # and with its own periodic images
            if d.min() > min_dist:
                break
        else:
            raise RuntimeError("could not place molecule %d without overlaps" % m)
        out += trial
    out.wrap()
    return out


def make_all(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    made = {}
    a = loop("CK6", 15, seed=0)
    write_data(outdir / "ck6_15loop.data", a, "cyclooctane 15-loop, %d atoms" % len(a))
    made["ck6_15loop.data"] = len(a)
    b = loop("LAC2", 15, seed=0)
    write_data(outdir / "lac2_15loop.data", b, "gamma-butyrolactone 15-loop, %d atoms" % len(b))
    made["lac2_15loop.data"] = len(b)
    s = loop("LAC2", 3, seed=0, vacuum=8.0)
    write_data(outdir / "lac2_3loop.data", s, "gamma-butyrolactone 3-loop, %d atoms" % len(s))
    made["lac2_3loop.data"] = len(s)
    c = melt()
    write_data(outdir / "melt_lac2.data", c,
               "periodic melt of 8 gamma-butyrolactone 3-loops, %d atoms" % len(c))
    made["melt_lac2.data"] = len(c)
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default=str(HERE))
    args = p.parse_args(argv)
    made = make_all(Path(args.outdir))
    for name, n in made.items():
        print("%-20s %4d atoms" % (name, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
