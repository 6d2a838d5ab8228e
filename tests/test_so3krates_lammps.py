"""SO3krates in the engines: the C++ core, `pair_style mliap unified` and `pair_style polyget`.

A tiny float64 SO3krates export (32 features, 2 layers = 2 hops, cutoff 4 A, l_max 3) against the
ASE calculator on its checkpoint, to 1e-8:

- polyget._core: whole-graph compute and the per-layer halo exchange (compute_halo), which
  exchanges (x, ev) rows: 32 + 15 = 47 numbers per atom;
- mliap unified, isolated and periodic (ghostneigh 0 and 1), and 1, 2, 3 MPI ranks on a periodic
  melt (comm_modify cutoff = 2 hops x 4 A + skin);
- pair_style polyget on 1, 2, 3 ranks with `ghosts exchange` (per-layer exchange), `ghosts shell`
  (ghost atoms out to hops x cutoff) and the default.

Skipped where LAMMPS / the native build is absent (failing under CI like the other engine tests).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase.io import read

from test_lammps_common import (isolated, periodic, REPO, ase_reference, export_tiny, require_lammps, require_mpirun,
                                single_point)

pytestmark = pytest.mark.lammps

SO3 = dict(architecture="so3krates", rbf_type="bernstein", max_degree=3)
TOL = 1e-8


@pytest.fixture(scope="module")
def so3(tmp_path_factory):
    d = tmp_path_factory.mktemp("so3_export")
    pt, jit, ckpt = export_tiny(d / "so3.pt", **SO3)
    return {"dir": d, "pt": pt, "jit": jit, "ckpt": ckpt}


def melt():
    return read(str(REPO / "inputs" / "melt_lac2.data"), format="lammps-data", atom_style="atomic",
                Z_of_type={1: 1, 2: 6, 3: 8}, units="metal")


def close(res, ref, energies_key="energies"):
    assert abs(res["energy"] - ref["energy"]) < TOL
    assert np.abs(res["forces"] - ref["forces"]).max() < TOL
    assert np.abs(res[energies_key] - ref["energies"]).max() < TOL
    assert np.abs(ref["forces"]).max() > 1e-2  # not a trivial comparison


# ------------------------------------------------------------------ C++ core (no LAMMPS needed)

def test_core_whole_graph_and_halo_exchange(so3):
    native = pytest.importorskip("polyget.native")
    if not native.available():
        msg = f"polyget._core is not built: {native._IMPORT_ERROR}; run bash scripts/build_native.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from polyget import _core
    from polyget.io import load_model
    from polyget.nn.graph import atoms_to_graph, evaluate
    from test_native_halo import halo_inputs, owned_forces
    from test_pieces import periodic_box

    model = load_model(so3["ckpt"])
    cm = _core.Model(str(so3["jit"]), "cpu")
    assert cm.supports_halo and cm.num_exchanges == 2 and cm.exchange_width == 32 + 15
    atoms = periodic_box(seed=3, triclinic=True)
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    ref = evaluate(model, g, forces=True)
    sp, ei, ev, owner, _ = halo_inputs(model, atoms)
    n = len(atoms)
    e, ae, fij = cm.compute_halo(sp, ei, ev, n, owner)
    assert abs(e - ref["energy"].item()) < 1e-10
    assert np.abs(ae - ref["atom_energies"].detach().numpy()).max() < 1e-10
    assert np.abs(owned_forces(n, sp, ei, fij, owner) - ref["forces"].numpy()).max() < 1e-10
    assert cm.forward_exchanges == 2 and cm.reverse_exchanges == 2


# ------------------------------------------------------------------ mliap unified

@pytest.mark.parametrize("ghost", [0, 1])
@pytest.mark.parametrize("structure", ["isolated", "periodic"])
def test_mliap_matches_ase(so3, tmp_path, structure, ghost):
    require_lammps()
    atoms = isolated() if structure == "isolated" else periodic()
    ref = ase_reference(so3["ckpt"], atoms)
    post = "comm_modify cutoff 10.0" if ghost and structure == "periodic" else ""
    close(single_point(tmp_path, so3["pt"], atoms, ghost=ghost, post=post), ref)


@pytest.fixture(scope="module")
def mliap_melt(so3, tmp_path_factory):
    require_mpirun()
    atoms = melt()
    out = {"ref": ase_reference(so3["ckpt"], atoms)}
    for n in (1, 2, 3):
        out[n] = single_point(tmp_path_factory.mktemp("so3_mliap_np%d" % n), so3["pt"], atoms,
                              nprocs=n, ghost=1, post="comm_modify cutoff 10.0", skin=2.0)
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_mliap_ranks_match_ase(mliap_melt, n):
    close(mliap_melt[n], mliap_melt["ref"])


# ------------------------------------------------------------------ pair_style polyget

@pytest.fixture(scope="module")
def polyget_melt(so3, tmp_path_factory):
    require_mpirun()
    from test_native_lammps import lammps_single_point

    atoms = melt()
    out = {"ref": ase_reference(so3["ckpt"], atoms)}
    for ghosts in ("auto", "exchange", "shell"):
        for n in (1, 2, 3):
            res, log = lammps_single_point(tmp_path_factory.mktemp(f"so3_pg_{ghosts}"), atoms,
                                           f"{so3['jit']} ghosts {ghosts}", nprocs=n,
                                           processors=f"processors {n} 1 1" if n > 1 else "")
            out[ghosts, n] = res
            out[ghosts, n, "log"] = log
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("ghosts", ["auto", "exchange", "shell"])
def test_pair_polyget_matches_ase(polyget_melt, ghosts, n):
    ref = polyget_melt["ref"]
    res = polyget_melt[ghosts, n]
    close(res, ref, energies_key="atom_energies")
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-9, rtol=0)
    log = polyget_melt[ghosts, n, "log"]
    if ghosts == "shell":
        assert "2 hops x 4 A" in log
    else:  # auto picks the per-layer exchange for a file with pieces: (x, ev) rows of 32 + 15
        assert "ghosts exchange" in log and "exchanged 2 times per step (47 numbers per atom)" in log
