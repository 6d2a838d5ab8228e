"""polyget through ML-IAP on several MPI ranks (`mpirun -np 1, 2, 3`).

- 1, 2 and 3 ranks give the same energy, forces and per-atom energies (1e-8) on a periodic melt
  whose domains cut through molecules (ghostneigh 1, comm_modify cutoff = hops x cutoff + skin);
- a run where two of three ranks own no atom (an empty subdomain) gives the serial answer;
- ghostneigh 0 with a 2-layer model on 2 ranks, and a too-short ghost cutoff, stop with a clear
  error that names the `comm_modify cutoff` to use.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from conftest import polymer_like
from test_lammps_common import (REPO, ase_reference, export_tiny, require_mpirun, single_point)

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_mpirun()
    d = tmp_path_factory.mktemp("tiny_mpi")
    pt, jit, ckpt = export_tiny(d / "tiny.pt")
    return {"dir": d, "pt": pt, "ckpt": ckpt}


def melt():
    return read(str(REPO / "inputs" / "melt_lac2.data"), format="lammps-data", style="atomic",
                Z_of_type={1: 1, 2: 6, 3: 8}, units="metal")


@pytest.fixture(scope="module")
def melt_runs(tiny, tmp_path_factory):
    atoms = melt()
    out = {}
    for n in (1, 2, 3):
        d = tmp_path_factory.mktemp("np%d" % n)
        out[n] = single_point(d, tiny["pt"], atoms, nprocs=n, ghost=1,
                              post="comm_modify cutoff 14.0", skin=2.0)
    out["ref"] = ase_reference(tiny["ckpt"], atoms)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_ranks_agree_on_melt(melt_runs, n):
    one, many = melt_runs[1], melt_runs[n]
    assert many["energy"] == pytest.approx(one["energy"], abs=1e-8)
    np.testing.assert_allclose(many["forces"], one["forces"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(many["energies"], one["energies"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(many["pressure"], one["pressure"], rtol=1e-9, atol=1e-6)


def test_melt_matches_ase(melt_runs):
    ref, one = melt_runs["ref"], melt_runs[1]
    assert one["energy"] == pytest.approx(ref["energy"], abs=1e-6)
    np.testing.assert_allclose(one["forces"], ref["forces"], atol=1e-6)


def test_empty_subdomain(tiny, tmp_path):
    atoms = polymer_like(seed=5)
    atoms.set_cell([30.0, 14.0, 14.0])
    atoms.center()
    atoms.positions[:, 0] -= atoms.positions[:, 0].min() - 2.0  # all atoms in x < 10: rank 0
    atoms.pbc = False
    one = single_point(tmp_path, tiny["pt"], atoms, nprocs=1, boundary="f f f", tag="one")
    three = single_point(tmp_path, tiny["pt"], atoms, nprocs=3, boundary="f f f",
                         pre="processors 3 1 1", post="comm_modify cutoff 14.0", tag="three")
    assert three["energy"] == pytest.approx(one["energy"], abs=1e-8)
    np.testing.assert_allclose(three["forces"], one["forces"], atol=1e-8)


def test_ghostneigh0_refused_on_several_ranks(tiny, tmp_path):
    res = single_point(tmp_path, tiny["pt"], melt(), nprocs=2, ghost=0, skin=2.0, check=False)
    assert not res["ok"]
    assert "pair_style mliap unified" in res["output"] and " 1\n" in res["output"]
    assert "comm_modify cutoff 14.0" in res["output"]


def test_short_ghost_cutoff_refused(tiny, tmp_path):
    res = single_point(tmp_path, tiny["pt"], melt(), nprocs=2, ghost=1,
                       post="comm_modify cutoff 6.0", skin=2.0, check=False)
    assert not res["ok"]
    assert "too short" in res["output"]
    assert "comm_modify cutoff 14.0" in res["output"]
