"""`pair_style polyget` with per-layer halo exchange (ghosts exchange, the default for files
exported with per_layer_exchange metadata), real LAMMPS through mpirun.

Float64 agreement with the Python reference to 1e-8 (energy, per-atom energies, forces, virial)
on 1, 2, 3 and 4 ranks (4 may be oversubscribed), `processors` grids along x, y and z,
isolated and periodic systems, orthogonal and triclinic boxes, a cell smaller than the cutoff
(subdomains thinner than the cutoff, atoms bonded to their own images), empty subdomains,
comm_style tiled, MD with atom migration, and the errors a user can meet.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from test_native_common import periodic_melt, reference, ring_polymer
from test_native_lammps import (NKTV2P_METAL, parse_single_point, run_lammps, single_point_deck,
                                triclinic_melt, write_data)

pytestmark = pytest.mark.lammps

TOL = 1e-8
GRIDS = {1: "", 2: "processors 2 1 1", 3: "processors 1 3 1", 4: "processors 1 1 4"}


def small_net(num_layers=3, hidden=16, dtype=torch.float64):
    from polyget.nn import ModelConfig, PolyGET

    torch.manual_seed(1)
    cfg = ModelConfig(elements=["H", "C", "O"], hidden_channels=hidden, num_layers=num_layers,
                      num_heads=2, num_rbf=8, cutoff=4.0)
    model = PolyGET(cfg).to(dtype).eval()
    with torch.no_grad():
        model.energy_scale.fill_(0.7)
        model.atom_offsets.copy_(torch.tensor([-13.6, -1029.0, -2035.0], dtype=dtype))
    return model


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from polyget.export import export_model

    model = small_net()
    _, jit = export_model(model, tmp_path_factory.mktemp("net") / "net.pt", dtype="float64")
    return jit, model


def small_cell_box():
    """12 atoms in a 6.1 x 5.7 x 6.4 A cell (cutoff 4 A + skin 1): 4 ranks give subdomains of
    1.6 A, much thinner than the cutoff; atoms see several of their own images."""
    a = periodic_melt(seed=4)[:12]
    a.set_cell([6.1, 5.7, 6.4])
    a.center()
    a.rattle(0.05, seed=1)
    return a


STRUCTURES = {
    "isolated": lambda: _isolated(),
    "periodic": lambda: periodic_melt(seed=5).repeat((2, 1, 1)),
    "triclinic": lambda: triclinic_melt(),
    "small_cell": small_cell_box,
}


def _isolated():
    a = ring_polymer(40, oxygen_every=5, vacuum=9.0)
    a.pbc = True  # a LAMMPS box with vacuum (> cutoff + skin) around the loop
    return a


def single_point(tmp_path, atoms, model_args, nprocs=1, processors="", extra="", tag="sp",
                 map_line=False, check=True):
    work = tmp_path / f"{tag}-np{nprocs}"
    work.mkdir()
    types = write_data(atoms, work / "data.lmp")
    deck = single_point_deck(model_args, types, processors=processors, extra=extra)
    if not map_line:  # per-layer exchange needs no atom map, even on one rank
        deck = deck.replace("atom_modify map yes\n", "")
    rc, out = run_lammps(work, deck, nprocs=nprocs, check=check)
    if not check:
        return None, out
    return parse_single_point(work, out), out


def assert_matches(res, ref, tol=TOL):
    e, f, s, ae = ref
    assert abs(res["energy"] - e) < tol * max(1.0, abs(e))
    np.testing.assert_allclose(res["forces"], f, atol=tol, rtol=0)
    np.testing.assert_allclose(res["atom_energies"], ae, atol=tol, rtol=0)
    np.testing.assert_allclose(res["stress"], s, atol=tol, rtol=0)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_ranks_agree_with_python(tmp_path, net, structure):
    jit, model = net
    atoms = STRUCTURES[structure]()
    ref = reference(model, atoms)
    assert np.abs(ref[1]).max() > 0.01
    for n in (1, 2, 3, 4):
        res, out = single_point(tmp_path, atoms, jit, nprocs=n, processors=GRIDS[n], tag=structure)
        assert "ghosts exchange: ghost atoms out to 5 A" in out, out[-2000:]
        assert "communication cutoff set to" not in out
        assert_matches(res, ref)


@pytest.mark.parametrize("grid", ["processors 2 2 1", "processors 1 2 2", "processors 2 1 2"])
def test_two_dimensional_grids(tmp_path, net, grid):
    jit, model = net
    atoms = triclinic_melt().repeat((2, 1, 1))
    ref = reference(model, atoms)
    res, _ = single_point(tmp_path, atoms, jit, nprocs=4, processors=grid, tag=grid.replace(" ", ""))
    assert_matches(res, ref)


def test_empty_subdomains(tmp_path, net):
    """4 ranks along x; the molecule sits in one quarter of the box (three ranks own nothing,
    some hold ghosts only) and one O atom has no neighbour at all."""
    from ase import Atoms

    jit, model = net
    mol = ring_polymer(8, vacuum=0.0)
    lone = Atoms("O", positions=[[mol.positions[:, 0].max(), 0.0, mol.positions[:, 2].max() + 6.0]])
    atoms = mol + lone
    atoms.set_cell([60.0, 30.0, 30.0])
    atoms.positions += np.array([1.0, 12.0, 10.0]) - atoms.positions.min(axis=0)
    atoms.pbc = True
    ref = reference(model, atoms)
    for n in (3, 4):
        res, _ = single_point(tmp_path, atoms, jit, nprocs=n, processors=f"processors {n} 1 1",
                              tag="empty")
        assert_matches(res, ref)
        np.testing.assert_allclose(res["forces"][-1], 0.0, atol=1e-12)


def test_recompute(tmp_path, net):
    """recompute yes (each layer re-run in the backward pass): the same numbers on 1 and 3
    ranks (one rank with empty-ish subdomains among them), and refused where it cannot apply."""
    jit, model = net
    atoms = periodic_melt(seed=5).repeat((2, 1, 1))
    ref = reference(model, atoms)
    for n in (1, 3):
        res, out = single_point(tmp_path, atoms, f"{jit} recompute yes", nprocs=n,
                                processors=f"processors {n} 1 1", tag=f"recompute{n}")
        assert "recompute yes: each layer is run again in the backward pass" in out, out[-2000:]
        assert_matches(res, ref)
    _, out = single_point(tmp_path, atoms, f"{jit} ghosts shell recompute yes", tag="recompute-shell",
                          check=False)
    assert "recompute yes works with the per-layer exchange only" in out


def test_comm_style_tiled(tmp_path, net):
    jit, model = net
    atoms = periodic_melt(seed=8).repeat((2, 2, 1))
    ref = reference(model, atoms)
    res, _ = single_point(tmp_path, atoms, jit, nprocs=3, tag="tiled",
                          processors="comm_style tiled", extra="balance 1.0 rcb")
    assert_matches(res, ref)


def test_old_modes_agree(tmp_path, net):
    """ghosts shell (receptive-field ghost shell) and fold give the same numbers as exchange."""
    jit, model = net
    atoms = periodic_melt(seed=6)
    ref = reference(model, atoms)
    res, out = single_point(tmp_path, atoms, f"{jit} ghosts shell", nprocs=2,
                            processors=GRIDS[2], tag="shell")
    assert "ghosts shell: communication cutoff set to 17 = 4 hops x 4 A + skin 1" in out
    assert_matches(res, ref)
    res, out = single_point(tmp_path, atoms, f"{jit} ghosts fold", tag="fold", map_line=True)
    assert_matches(res, ref)


def test_per_atom_virial_and_md_migration(tmp_path, net):
    """compute stress/atom sums to the global virial on 2 ranks, and 40 NVE steps (atoms cross
    subdomain boundaries, neighbour lists are rebuilt) end in the same state on 1 and 2 ranks
    (a random-weight model: min_distance 0, the trajectory need not be physical)."""
    jit, _ = net
    atoms = periodic_melt(seed=7).repeat((2, 1, 1))
    finals = {}
    for n in (1, 2):
        work = tmp_path / f"md{n}"
        work.mkdir()
        types = write_data(atoms, work / "data.lmp")
        deck = f"""
units metal
atom_style atomic
processors {n} 1 1
read_data data.lmp
pair_style polyget {jit} min_distance 0
pair_coeff * * {' '.join(types)}
neighbor 0.3 bin
neigh_modify every 1 delay 0 check yes
velocity all create 600 4928459 mom yes rot no dist gaussian
timestep 0.001
fix 1 all nve
compute sa all stress/atom NULL virial
compute ssum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
compute vir all pressure NULL virial
thermo_style custom step pe ke etotal c_ssum[1] c_vir[1] vol
thermo_modify format float %.17g
run 40
dump d all custom 1 final.dump id x y z fx fy fz
dump_modify d sort id format float %.17g
run 0
print "CHECK $(c_ssum[1]:%.17g) $(c_vir[1]:%.17g) $(vol:%.17g) $(pe:%.17g)"
"""
        _, out = run_lammps(work, deck, nprocs=n)
        builds = [int(x) for x in re.findall(r"Neighbor list builds = (\d+)", out)]
        assert builds and builds[0] >= 2, out[-1500:]  # atoms moved past the skin: rebuilt
        ssum, pvir, vol, pe = [float(x) for x in re.findall(r"^CHECK (.*)$", out, flags=re.M)[-1].split()]
        assert abs(-ssum / vol - pvir) < 1e-9 * max(1.0, abs(pvir))
        lines = (work / "final.dump").read_text().splitlines()
        start = lines.index(next(x for x in lines if x.startswith("ITEM: ATOMS"))) + 1
        finals[n] = (pe, np.array([[float(v) for v in x.split()] for x in lines[start:]]))
    assert abs(finals[1][0] - finals[2][0]) < 1e-8
    np.testing.assert_allclose(finals[1][1], finals[2][1], atol=1e-8, rtol=0)


def test_float32_export(tmp_path):
    from polyget.export import export_model

    model = small_net(dtype=torch.float32)
    _, jit = export_model(model, tmp_path / "net32.pt", dtype="float32")
    atoms = periodic_melt(seed=3)
    res, out = single_point(tmp_path, atoms, jit, nprocs=2, processors=GRIDS[2], tag="f32")
    e, f, s, ae = reference(model.double(), atoms)
    assert abs(res["energy"] - e) < 1e-5 * abs(e)
    np.testing.assert_allclose(res["forces"], f, atol=2e-4, rtol=0)


def test_exchange_refused_for_files_without_pieces(tmp_path):
    from test_native_common import export_toy

    toy = export_toy(tmp_path / "toy.jit.pt", cutoff=4.0, num_layers=2)
    _, out = single_point(tmp_path, periodic_melt(seed=1), f"{toy} ghosts exchange", tag="old",
                          check=False)
    assert "ghosts exchange needs a model file exported with per-layer exchange" in out
    assert "re-export it with python/export.py, or use ghosts shell" in out


def test_large_comm_cutoff_is_noted(tmp_path, net):
    jit, model = net
    atoms = periodic_melt(seed=2)
    res, out = single_point(tmp_path, atoms, jit, extra="comm_modify cutoff 12.0", tag="cut")
    assert "comm_modify cutoff 12 is more than the 5 A per-layer exchange needs" in out
    assert_matches(res, reference(model, atoms))
