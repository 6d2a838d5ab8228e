"""C++ core per-layer halo exchange (polyget._core.Model.compute_halo) against the Python model.

The exchanges of the C++ core (core.cpp, forward and explicit reverse) are driven here by an index map
(ghost g copies row owner[g]); in LAMMPS the same function drives comm->forward_comm /
reverse_comm (tests/test_native_lammps_halo.py).
"""

import numpy as np
import pytest
import torch

from conftest import tiny_model
from polyget.export import export_model
from polyget.nn.graph import atoms_to_graph, evaluate
from polyget.nn.halo import periodic_halo_graph
from test_pieces import periodic_box

native = pytest.importorskip("polyget.native")
if not native.available():
    pytest.fail(f"polyget._core is not built: {native._IMPORT_ERROR}; run bash scripts/build_native.sh",
                pytrace=False)
from polyget import _core  # noqa: E402

TOL = 1e-10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model(num_layers=3)
    _, jit = export_model(model, tmp_path_factory.mktemp("halo") / "tiny.pt")
    return model, str(jit)


def halo_inputs(model, atoms):
    owner, shifts, ei = periodic_halo_graph(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    sp = np.concatenate([g.species.numpy(), g.species.numpy()[owner]])
    allpos = np.concatenate([atoms.positions, atoms.positions[owner] + shifts @ atoms.cell.array])
    return sp, ei, allpos[ei[1]] - allpos[ei[0]], owner, g


def owned_forces(n, sp, ei, fij, owner):
    f = np.zeros((len(sp), 3))
    np.add.at(f, ei[0], fij)
    np.add.at(f, ei[1], -fij)
    np.add.at(f, owner, f[n:])  # ghost forces to owners (LAMMPS reverse comm)
    return f[:n]


def test_metadata_declares_per_layer_exchange(exported):
    from polyget.contract import read_metadata

    model, jit = exported
    meta = read_metadata(jit)
    assert meta["num_exchanges"] == 3 and meta["exchange_width"] == 4 * 32
    cpp = _core.read_metadata(str(jit))  # the C++ reader sees the same optional records
    assert (cpp["num_exchanges"], cpp["exchange_width"]) == (3, 4 * 32)
    cm = _core.Model(jit, "cpu")
    assert cm.supports_halo and cm.num_exchanges == 3 and cm.exchange_width == 128


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("triclinic", [False, True])
def test_compute_halo_equals_python(exported, triclinic, recompute):
    model, jit = exported
    atoms = periodic_box(seed=3, triclinic=triclinic)
    sp, ei, ev, owner, g = halo_inputs(model, atoms)
    n = len(atoms)
    cm = _core.Model(jit, "cpu")
    assert not cm.recompute
    cm.recompute = recompute  # activation recomputation: same numbers, less memory
    e, ae, fij = cm.compute_halo(sp, ei, ev, n, owner)
    ref = evaluate(model, g, forces=True, stress=True)
    assert abs(e - ref["energy"].item()) < TOL
    assert np.abs(ae - ref["atom_energies"].detach().numpy()).max() < TOL
    f = owned_forces(n, sp, ei, fij, owner)
    assert np.abs(f - ref["forces"].numpy()).max() < TOL
    w = (ev[:, :, None] * fij[:, None, :]).sum(0)
    assert np.abs(w - ref["virial"][0].numpy()).max() < 1e-9
    assert cm.forward_exchanges == 3 and cm.reverse_exchanges == 3


def test_relayed_ghosts(exported):
    """A ghost may copy an earlier ghost (LAMMPS relays ghosts across swaps): same answer."""
    model, jit = exported
    atoms = periodic_box(seed=4)
    sp, ei, ev, owner, g = halo_inputs(model, atoms)
    n = len(atoms)
    relay = owner.copy()
    first = {}
    for k, o in enumerate(owner):
        if o in first:
            relay[k] = n + first[o]  # copy the first ghost of the same atom, not the atom
        else:
            first[o] = k
    assert (relay >= n).sum() > 10
    cm = _core.Model(jit, "cpu")
    e0, _, fij0 = cm.compute_halo(sp, ei, ev, n, owner)
    e1, _, fij1 = cm.compute_halo(sp, ei, ev, n, relay)
    assert abs(e1 - e0) < 1e-12 and np.abs(fij1 - fij0).max() < 1e-12
    cm.recompute = True
    e2, _, fij2 = cm.compute_halo(sp, ei, ev, n, relay)
    assert abs(e2 - e0) < 1e-12 and np.abs(fij2 - fij0).max() < 1e-12
    assert cm.forward_exchanges == 3 and cm.reverse_exchanges == 3


def test_no_owned_atoms_and_no_atoms(exported):
    """A rank with only ghosts, or nothing, still runs every exchange (they are collective)."""
    _, jit = exported
    cm = _core.Model(jit, "cpu")
    sp = np.array([1, 0, 0])
    e, ae, fij = cm.compute_halo(sp, np.zeros((2, 0), np.int64), np.zeros((0, 3)), 1, np.array([0, 0]))
    assert ae.shape == (1,) and fij.shape == (0, 3)
    assert cm.forward_exchanges == 3 and cm.reverse_exchanges == 3
    for n_own, species, owner in [(0, np.zeros(0, np.int64), np.zeros(0, np.int64))]:
        e, ae, fij = cm.compute_halo(species, np.zeros((2, 0), np.int64), np.zeros((0, 3)), n_own, owner)
        assert e == 0.0 and ae.shape == (0,)
        assert cm.forward_exchanges == 3 and cm.reverse_exchanges == 3


def test_edges_must_start_at_owned_atoms(exported):
    model, jit = exported
    cm = _core.Model(jit, "cpu")
    with pytest.raises(ValueError, match="edges start at owned atoms only"):
        cm.compute_halo(np.array([0, 0]), np.array([[1], [0]]), np.array([[1.0, 0.0, 0.0]]), 1,
                        np.array([0]))


def test_old_file_without_pieces_is_refused_with_advice(tmp_path):
    from test_native_common import export_toy

    path = export_toy(tmp_path / "toy.jit.pt", cutoff=4.0, num_layers=2)
    cm = _core.Model(str(path), "cpu")
    assert not cm.supports_halo
    with pytest.raises(ValueError, match="re-export it, or use pair_style polyget ... ghosts shell"):
        cm.compute_halo(np.array([0]), np.zeros((2, 0), np.int64), np.zeros((0, 3)), 1,
                        np.zeros(0, np.int64))
