"""The ML-IAP class without LAMMPS: a fake ML-IAP data object and a Python domain decomposition.

These run everywhere (no LAMMPS needed) and pin down the formulas LAMMPS relies on:
E_owned summed over owned atoms, fij = dE_owned/drij, ghost forces returned to their owners,
and the ghost cutoff a multi-layer model needs (hops x cutoff).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import polymer_like, tiny_model
from polyget.ase import PolyGETCalculator
from polyget.export import export_model
from polyget.io import atomic_save, make_checkpoint
from polyget.lammps.mliap import CHEMICAL_SYMBOLS, PolyGETLammpsError, PolyGETMLIAP, load


class FakeData:
    """The attributes of LAMMPS' MLIAPDataPy that polyget uses; update_pair_forces as in C++."""

    def __init__(self, nlocal, ntotal, pair_i, pair_j, rij, elems, ghost_lists):
        self.nlocal, self.ntotal = nlocal, ntotal
        self.pair_i = np.asarray(pair_i, dtype=np.int32)
        self.pair_j = np.asarray(pair_j, dtype=np.int32)
        self.rij = np.ascontiguousarray(rij, dtype=np.float64)
        self.npairs = len(self.pair_i)
        self.elems = np.asarray(elems, dtype=np.int32)
        self.nlistatoms = nlocal
        self.natomneigh = ntotal if ghost_lists else nlocal
        self.iatoms = np.arange(self.natomneigh, dtype=np.int32)
        self.f = np.zeros((ntotal, 3))
        self.virial = np.zeros((3, 3))
        self.energy = None
        self.eatoms = None

    def update_pair_forces(self, fij):
        assert fij.shape == (self.npairs, 3) and fij.dtype == np.float64
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial -= self.rij.T @ fij


def lammps_elems(symbols):
    return [CHEMICAL_SYMBOLS.index(s) for s in symbols]


@pytest.fixture(autouse=True)
def _no_lammps_handle(monkeypatch):
    """Outside LAMMPS the ghost cutoff cannot be read; these tests choose it themselves."""
    monkeypatch.setenv("POLYGET_GHOST_CUTOFF_OK", "1")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("mliap")
    model = tiny_model(torch.float64)
    ckpt = d / "tiny.ckpt"
    atomic_save(make_checkpoint(model), ckpt)
    pt, jit = export_model(model, d / "tiny.pt", dtype="float64")
    return {"ckpt": ckpt, "pt": pt, "jit": jit, "obj": load(str(pt))}


def reference(ckpt, atoms):
    a = atoms.copy()
    a.calc = PolyGETCalculator(str(ckpt), dtype="float64")
    props = ["energy", "forces", "energies"] + (["stress"] if a.pbc.all() else [])
    a.calc.calculate(a, props)
    return a.calc.results


def decompose(atoms, nslab, ghost_cut, pair_cut, ghost_lists):
    """Emulate LAMMPS' brick decomposition in slabs along x (orthogonal cells): per rank, owned
    atoms then ghosts (periodic images included), and the full neighbour list (ghost atoms get
    lists too when ghost_lists)."""
    periodic = atoms.pbc.any()
    if periodic:
        a = atoms.copy()
        a.wrap()
        pos = a.get_positions()
        lo, L = 0.0, atoms.cell[0, 0]
        rng = range(-2, 3)
        shifts = [np.array([i, j, k]) for i in rng for j in rng for k in rng]
    else:
        pos = atoms.get_positions()
        lo, L = pos[:, 0].min() - 1e-6, np.ptp(pos[:, 0]) + 2e-6
        shifts = [np.zeros(3, dtype=int)]
    cell = atoms.cell.array
    ranks = []
    for r in range(nslab):
        a, b = lo + r * L / nslab, lo + (r + 1) * L / nslab
        owned = np.where((pos[:, 0] >= a) & (pos[:, 0] < b))[0]
        owned_set = set(owned.tolist())
        gid, gpos = [], []
        for s in shifts:
            p = pos + s @ cell
            for k in range(len(atoms)):
                if not s.any() and k in owned_set:
                    continue
                if a - ghost_cut <= p[k, 0] < b + ghost_cut:
                    gid.append(k)
                    gpos.append(p[k])
        ids = np.concatenate([owned, np.array(gid, dtype=int)]).astype(int)
        allpos = np.concatenate([pos[owned], np.array(gpos).reshape(-1, 3)])
        nloc = len(owned)
        d = allpos[None, :, :] - allpos[:, None, :]
        dist = np.linalg.norm(d, axis=2)
        mask = (dist < pair_cut) & (dist > 0)
        if not ghost_lists:
            mask[nloc:, :] = False
        pi, pj = np.nonzero(mask)
        ranks.append((ids, nloc, pi, pj, d[pi, pj]))
    return ranks


def run_decomposed(obj, atoms, nslab, ghost_cut, pair_cut, ghost_lists=True):
    n = len(atoms)
    f = np.zeros((n, 3))
    energy = 0.0
    eatoms = np.zeros(n)
    virial = np.zeros((3, 3))
    elems_all = np.array(lammps_elems(atoms.get_chemical_symbols()))
    for ids, nloc, pi, pj, rij in decompose(atoms, nslab, ghost_cut, pair_cut, ghost_lists):
        data = FakeData(nloc, len(ids), pi, pj, rij, elems_all[ids], ghost_lists)
        obj.compute_forces(data)
        energy += data.energy
        np.add.at(f, ids, data.f)  # reverse communication of ghost forces
        if nloc:
            eatoms[ids[:nloc]] += data.eatoms
        virial += data.virial
    return energy, f, eatoms, virial


def long_chain(copies=5, spacing=3.0):
    """Molecules in a row along x (about 30 A): domains of a few A need a deep halo."""
    base = polymer_like()
    atoms = base.copy()
    for k in range(1, copies):
        b = base.copy()
        b.positions[:, 0] += k * (np.ptp(base.positions[:, 0]) + spacing)
        atoms += b
    return atoms


def test_metadata_and_rcutfac(exported):
    obj = exported["obj"]
    assert isinstance(obj, PolyGETMLIAP)
    assert obj.elements == ["H", "C", "O"]
    assert obj.rcutfac == pytest.approx(0.5 * obj.cutoff)
    assert obj.num_layers == 2 and obj.receptive_hops == 3 and obj.dtype_name == "float64"
    assert "comm_modify cutoff 14.0" in obj.deck_lines(skin=2.0)


@pytest.mark.parametrize("nslab", [1, 2, 3])
def test_isolated_matches_ase(exported, nslab):
    atoms = polymer_like()
    ref = reference(exported["ckpt"], atoms)
    obj = exported["obj"]
    cut = obj.receptive_hops * obj.cutoff + 2.0
    e, f, ea, _ = run_decomposed(obj, atoms, nslab, ghost_cut=cut, pair_cut=obj.cutoff + 2.0)
    assert e == pytest.approx(ref["energy"], abs=1e-8)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-9)
    np.testing.assert_allclose(ea, ref["energies"], atol=1e-9)


def test_periodic_virial_matches_ase_stress(exported):
    atoms = polymer_like()
    atoms.set_cell([9.0, 8.5, 8.0])
    atoms.center()
    atoms.pbc = True
    ref = reference(exported["ckpt"], atoms)
    obj = exported["obj"]
    cut = obj.receptive_hops * obj.cutoff + 2.0
    e, f, ea, vir = run_decomposed(obj, atoms, 2, ghost_cut=cut, pair_cut=obj.cutoff + 1.0)
    assert e == pytest.approx(ref["energy"], abs=1e-8)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-9)
    # ASE stress (Voigt xx yy zz yz xz xy) = -virial / V with virial = -sum r (x) fij
    stress = -vir / atoms.get_volume()
    voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(voigt, ref["stress"], atol=1e-9)


def test_short_ghost_cutoff_would_be_wrong(exported):
    """Why `comm_modify cutoff` >= hops x cutoff (hops = layers + 1): one hop less is wrong."""
    atoms = long_chain()
    ref = reference(exported["ckpt"], atoms)
    obj = exported["obj"]
    assert obj.receptive_hops == obj.num_layers + 1 == 3
    _, f, _, _ = run_decomposed(obj, atoms, 3, ghost_cut=(obj.receptive_hops - 1) * obj.cutoff,
                                pair_cut=obj.cutoff)
    # small for this random model (smooth cutoffs damp the last hop: ~1e-8 eV/A), never exact
    assert np.abs(f - ref["forces"]).max() > 1e-10
    _, f, _, _ = run_decomposed(obj, atoms, 3, ghost_cut=obj.receptive_hops * obj.cutoff,
                                pair_cut=obj.cutoff)
    assert np.abs(f - ref["forces"]).max() < 1e-9


def test_unknown_element_names_model_elements(exported):
    atoms = polymer_like()
    obj = exported["obj"]
    syms = atoms.get_chemical_symbols()
    syms[0] = "N"
    atoms.set_chemical_symbols(syms)
    with pytest.raises(PolyGETLammpsError, match=r"element N .*elements are: H C O"):
        run_decomposed(obj, atoms, 1, ghost_cut=10.0, pair_cut=6.0)


def test_empty_rank(exported):
    """A rank that owns no atom (only ghosts): zero energy, no forces."""
    obj = exported["obj"]
    data = FakeData(0, 3, [0, 1], [1, 0], [[1.0, 0, 0], [-1.0, 0, 0]],
                    lammps_elems(["C", "H", "H"]), True)
    obj.compute_forces(data)
    assert data.energy == 0.0 and not data.f.any()


def test_wrong_format_version_is_refused(exported, tmp_path):
    obj = exported["obj"]
    state = obj.__getstate__()
    state["format_version"] = 999
    fresh = PolyGETMLIAP.__new__(PolyGETMLIAP)
    with pytest.raises(PolyGETLammpsError, match="re-export"):
        fresh.__setstate__(state)


def test_float32_export_runs(tmp_path):
    model = tiny_model(torch.float64)
    pt, jit = export_model(model, tmp_path / "m32.pt", dtype="float32")
    obj = load(str(pt))
    atoms = polymer_like()
    e, f, _, _ = run_decomposed(obj, atoms, 1, ghost_cut=10.0, pair_cut=6.0)
    ckpt = tmp_path / "m.ckpt"
    atomic_save(make_checkpoint(model), ckpt)
    ref = reference(ckpt, atoms)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-3)


def test_cuda_request_falls_back_to_cpu_with_a_warning(exported, capsys, monkeypatch):
    """Exported with --device cuda: runs on CUDA where available, else on the CPU (and says so)."""
    obj = load(str(exported["pt"]))
    obj.device_request = "cuda"
    monkeypatch.delenv("POLYGET_DEVICE", raising=False)
    atoms = polymer_like()
    ref = reference(exported["ckpt"], atoms)
    _, f, _, _ = run_decomposed(obj, atoms, 1, ghost_cut=14.0, pair_cut=6.0)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-9)
    if torch.cuda.is_available():
        assert obj._device.type == "cuda"
    else:
        assert obj._device.type == "cpu"
        assert "CUDA requested" in capsys.readouterr().err


def test_unverifiable_ghost_cutoff_is_refused(exported, monkeypatch):
    """Ghost lists but no way to read the ghost cutoff: refuse instead of guessing."""
    monkeypatch.delenv("POLYGET_GHOST_CUTOFF_OK")
    with pytest.raises(PolyGETLammpsError, match="comm_modify cutoff.*POLYGET_GHOST_CUTOFF_OK"):
        run_decomposed(exported["obj"], long_chain(), 2, ghost_cut=14.0, pair_cut=6.0)
