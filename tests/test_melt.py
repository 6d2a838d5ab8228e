"""`polyget melt`: amorphous periodic melts of loops or linear chains as LAMMPS data files."""

import numpy as np
import pytest
from ase.io import read

pytest.importorskip("rdkit")

from polyget.cli import main  # noqa: E402
from polyget.data.melt import MeltError, build_melt  # noqa: E402


def inter_chain_min_distance(atoms, per):
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, 2.5)
    other = (i // per) != (j // per)
    return d[other].min() if other.any() else np.inf


@pytest.mark.parametrize("linear", [False, True])
def test_melt_counts_density_and_no_overlaps(linear):
    atoms = build_melt("LAC2", 3, n_chains=6, density=0.9, linear=linear, seed=1)
    per = 36 + (2 if linear else 0)  # a linear chain has two H caps
    assert len(atoms) == 6 * per and atoms.info["atoms_per_chain"] == per
    assert atoms.pbc.all()
    mass_g = atoms.get_masses().sum() / 6.02214076e23
    rho = mass_g / (atoms.get_volume() * 1e-24)
    assert rho == pytest.approx(atoms.info["density"], rel=1e-9) == pytest.approx(0.9, rel=1e-9)
    assert inter_chain_min_distance(atoms, per) >= 1.6
    # compression kept bond lengths and angles (1-2 and 1-3 distances) to 0.05 A
    assert atoms.info["geometry_error"] < 0.05
    # every chain keeps its bonded geometry (no atom closer than 0.9 A to another)
    from ase.neighborlist import neighbor_list

    assert neighbor_list("d", atoms, 0.9).size == 0
    formula = atoms[:per].get_chemical_formula()
    assert formula == ("C12H20O6" if linear else "C12H18O6")


def test_cli_writes_lammps_data(tmp_path, capsys):
    out = tmp_path / "m.data"
    assert main(["melt", "LAC2", "-L", "3", "--atoms", "150", "--density", "0.3", "-o", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "wrote" in msg and "144 atoms (4 chains x 36)" in msg
    a = read(out, format="lammps-data", units="metal", atom_style="atomic")
    assert len(a) == 144
    assert out.read_text().splitlines()[0].startswith("amorphous melt: 4 LAC2 loop chains of L=3")
    types = sorted(set(a.get_atomic_numbers()))
    assert len(types) == 3


def test_bad_requests():
    with pytest.raises(MeltError, match="chains"):
        build_melt("LAC2", 3, density=0.5)
    with pytest.raises(MeltError, match="L must be >= 1"):
        build_melt("LAC2", 0, n_chains=2)
