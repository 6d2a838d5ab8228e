"""Bad input in LAMMPS (both pair styles, real LAMMPS runs): a clear error naming what is wrong,
never a crash, a NaN run or a silently wrong result. docs/bad-input.md lists the messages."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import polymer_like
from test_lammps_common import export_tiny, require_lammps, run_lmp, single_point
from test_native_lammps import (LMP as NATIVE_LMP, PLUGIN, export_toy, parse_single_point,
                                ring_polymer, run_lammps, single_point_deck, write_data)

pytestmark = pytest.mark.lammps


def require_plugin():
    if NATIVE_LMP is None or not PLUGIN.is_file():
        pytest.skip("pair_style polyget plugin not built (make setup)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("tiny")
    pt, jit, ckpt = export_tiny(d / "tiny.pt")
    return {"dir": d, "pt": pt, "jit": jit, "ckpt": ckpt}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    require_plugin()
    return export_toy(tmp_path_factory.mktemp("toy") / "toy.jit.pt", cutoff=4.0, num_layers=2)


def no_crash(out: str):
    assert "Segmentation" not in out and "core dumped" not in out and "nan" not in out.lower()


def close_pair(atoms, i, j, r):
    """Move atom j to distance r from atom i (0-based), along their current direction."""
    a = atoms.copy()
    d = a.positions[j] - a.positions[i]
    a.positions[j] = a.positions[i] + r * d / np.linalg.norm(d)
    return a


# ------------------------------------------------------------------------- minimum distance
@pytest.mark.parametrize("r", [0.1, 0.0])
def test_mliap_overlapping_atoms_stop_with_ids_and_step(tiny, tmp_path, r):
    atoms = close_pair(polymer_like(seed=3), 2, 5, r) if r else polymer_like(seed=3)
    if r == 0.0:
        atoms.positions[5] = atoms.positions[2]
    res = single_point(tmp_path, tiny["pt"], atoms, check=False)
    assert not res["ok"]
    no_crash(res["output"])
    assert "ERROR (polyget): atoms 3 and 6 are %.4f A apart at step 0" % r in res["output"], \
        res["output"][-3000:]
    assert "variable polyget_min_distance equal" in res["output"]


def test_mliap_min_distance_variable_overrides(tiny, tmp_path):
    atoms = close_pair(polymer_like(seed=3), 2, 5, 0.45)
    res = single_point(tmp_path, tiny["pt"], atoms, check=False)
    assert not res["ok"] and "0.4500 A apart" in res["output"]
    res = single_point(tmp_path, tiny["pt"], atoms, pre="variable polyget_min_distance equal 0.3",
                       tag="ok")
    assert res["ok"] and np.isfinite(res["energy"])


def test_polyget_overlapping_atoms_stop_with_ids_and_step(toy, tmp_path):
    atoms = close_pair(ring_polymer(6), 0, 1, 0.1)
    work = tmp_path / "w"
    work.mkdir()
    types = write_data(atoms, work / "data.lmp")
    code, out = run_lammps(work, single_point_deck(toy, types), check=False)
    assert code != 0
    no_crash(out)
    assert "polyget: atoms 1 and 2 are 0.1000 A apart at step 0" in out, out[-3000:]
    assert "pair_style polyget FILE min_distance" in out
    # the keyword overrides the model's threshold
    deck = single_point_deck(toy, types).replace(f"pair_style polyget {toy}",
                                                 f"pair_style polyget {toy} min_distance 0.05")
    code, out = run_lammps(work, deck, check=False)
    assert code == 0, out[-3000:]


def test_polyget_min_distance_during_md(toy, tmp_path):
    """Two atoms driven together: the step in the message is the MD step."""
    work = tmp_path / "md"
    work.mkdir()
    atoms = ring_polymer(6)
    types = write_data(atoms, work / "data.lmp")
    deck = single_point_deck(toy, types).replace("run 0", "velocity all set 0 0 0\n"
        "group two id 1\nvelocity two set 0.5 0.5 0.5\nfix f all nve\nrun 400")
    code, out = run_lammps(work, deck, check=False)
    m = re.search(r"atoms (\d+) and (\d+) are ([0-9.]+) A apart at step (\d+)", out)
    if code == 0:
        pytest.skip("atom 1 did not reach another atom in this geometry")
    assert m, out[-3000:]
    assert int(m.group(4)) > 0 and float(m.group(3)) < 0.5


# ------------------------------------------------------------------------------- pair_coeff
@pytest.mark.parametrize("elements, fragment", [
    ("H C", "2 element(s) given (H C) for 3 atom type(s)"),
    ("H C O O", "4 element(s) given (H C O O) for 3 atom type(s)"),
    ("H NULL O", "atom type 2 is mapped to NULL"),
])
def test_mliap_pair_coeff_count_and_null(tiny, tmp_path, elements, fragment):
    require_plugin()  # the check lives in the polyget plugin (pair_style mliap, checked)
    res = single_point(tmp_path, tiny["pt"], polymer_like(seed=3), elements=elements, check=False)
    assert not res["ok"]
    no_crash(res["output"])
    assert fragment in res["output"], res["output"][-3000:]


@pytest.mark.parametrize("coeff, fragment", [
    ("pair_coeff * * C H O", "pair_coeff gives 3 element(s) (C H O) for 2 atom type(s)"),
    ("pair_coeff * * C", "pair_coeff gives 1 element(s) (C) for 2 atom type(s)"),
    ("pair_coeff * * C NULL", "maps atom type 2 to NULL"),
    ("pair_coeff * * C N", "element N (atom type 2 in pair_coeff) is not in this model"),
])
def test_polyget_pair_coeff(toy, tmp_path, coeff, fragment):
    work = tmp_path / "pc"
    work.mkdir()
    types = write_data(ring_polymer(6), work / "data.lmp")
    code, out = run_lammps(work, single_point_deck(toy, types, pair_coeff=coeff), check=False)
    assert code != 0
    no_crash(out)
    assert fragment in out and "model's elements: H C O" in out, out[-3000:]


# -------------------------------------------------------------------------------- files
def test_mliap_missing_file(tmp_path):
    require_lammps()
    res = single_point(tmp_path, tmp_path / "nope.pt", polymer_like(seed=3), check=False)
    assert not res["ok"]
    assert "does not exist" in res["output"] and "nope.pt" in res["output"], res["output"][-2000:]
    assert "not an ML-IAP unified model" not in res["output"]


# --------------------------------------------------------------------------- special_bonds
SPECIAL = """
units metal
atom_style bond
boundary p p p
region box block 0 20 0 20 0 20
create_box 2 box bond/types 1 extra/bond/per/atom 2 extra/special/per/atom 6
mass 1 12.011
mass 2 1.008
create_atoms 1 single 5.0 5.0 5.0
create_atoms 2 single 6.1 5.0 5.0
create_atoms 2 single 4.6 6.0 5.2
bond_style zero
bond_coeff 1
create_bonds single/bond 1 1 2
create_bonds single/bond 1 1 3
{special}
pair_style {pair}
pair_coeff * * C H
thermo_style custom step pe
thermo_modify format float %.17g
run 0
print "RESULT $(pe:%.17g)"
"""


@pytest.mark.parametrize("special", ["special_bonds lj/coul 1.0 0.0 0.0",
                                     "special_bonds lj/coul 1.0 0.0 1.0",
                                     "special_bonds lj/coul 1.0 1.0 0.0"])
def test_polyget_special_bonds_from_bonds_alone(toy, tmp_path, special):
    """A bonds-only data file: LAMMPS builds 1-3 and 1-4 partners from the bonds, so a zero
    1-3 (or 1-4) factor drops the H-H pair of C(-H)2 from the list. Refused (was silent)."""
    work = tmp_path / "sb"
    work.mkdir()
    code, out = run_lammps(work, SPECIAL.format(special=special, pair=f"polyget {toy}"),
                           check=False)
    assert code != 0, out[-3000:]
    assert "special_bonds lj/coul 1.0 1.0 1.0" in out and "1-2, 1-3 or 1-4" in out


@pytest.mark.parametrize("special", ["special_bonds lj/coul 1.0 0.0 0.0",
                                     "special_bonds lj/coul 1.0 1.0 0.0"])
def test_mliap_special_bonds_from_bonds_alone(tiny, tmp_path, special):
    deck = SPECIAL.format(special=special, pair=f"mliap unified {tiny['pt']} 0").replace(
        "pair_coeff * * C H", "pair_coeff * * C H")
    out = run_lmp(deck, tmp_path, name="sb.in", check=False)
    assert out.returncode != 0
    assert "special_bonds lj/coul 1.0 1.0 1.0" in out.stdout, out.stdout[-3000:]


# ------------------------------------------------------------------------ one rank, no map
def test_polyget_one_rank_without_atom_map_folds(toy, tmp_path):
    """No `atom_modify map yes`: the plugin creates the map and folds (never the ghost shell);
    same numbers as with the map."""
    atoms = ring_polymer(12)
    atoms.set_cell([14.0, 13.0, 12.0])
    atoms.center()
    atoms.pbc = True
    res = {}
    for tag, deck_edit in (("map", lambda d: d), ("nomap", lambda d: d.replace("atom_modify map yes\n", ""))):
        work = tmp_path / tag
        work.mkdir()
        types = write_data(atoms, work / "data.lmp")
        code, out = run_lammps(work, deck_edit(single_point_deck(toy, types)))
        res[tag] = (parse_single_point(work, out), out)
    assert "created an atom map" in res["nomap"][1]
    assert "periodic images folded" in res["nomap"][1]
    assert "communication cutoff set to" not in res["nomap"][1]
    a, b = res["map"][0], res["nomap"][0]
    assert abs(a["energy"] - b["energy"]) < 1e-10
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-10, rtol=0)
