"""ML-IAP per-layer exchange (the Kokkos data object's forward_exchange / reverse_exchange).

LAMMPS with KOKKOS cannot be built here, so the data object is emulated faithfully after
LAMMPS' src/KOKKOS/mliap_unified_couple_kokkos.pyx and pair_mliap_kokkos.cpp:
forward_exchange(copy_from, copy_to, vec_len) copies all rows, then fills each ghost row from
the owned atom with the same tag (comm->forward_comm, periodic images included, across ranks);
reverse_exchange(copy_from, copy_to, vec_len) copies, adds every ghost row into its owner's row
(on whichever rank owns it), then zeroes the ghost rows. Ranks run as threads that meet at
barriers, as the MPI swaps would. The ghost shell is one cutoff + skin only.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import polymer_like
from test_lammps_mliap_unit import FakeData, decompose, exported, lammps_elems, long_chain, reference  # noqa: F401


class World:
    """Shared state of the emulated ranks: who owns which tag, and each rank's current rows."""

    def __init__(self, ranks):
        self.nranks = len(ranks)
        self.barrier = threading.Barrier(self.nranks)
        self.owner = {}  # tag -> (rank, row)
        for r, (ids, nloc, *_rest) in enumerate(ranks):
            for row in range(nloc):
                self.owner[int(ids[row])] = (r, row)
        self.rows = [None] * self.nranks
        self.ids = [ids for ids, *_rest in ranks]
        self.nloc = [nloc for _ids, nloc, *_rest in ranks]
        self.calls = [[0, 0] for _ in ranks]


class FakeKokkosData(FakeData):
    """FakeData plus forward_exchange / reverse_exchange, as ML-IAP Kokkos provides them."""

    def __init__(self, world, rank, *args):
        super().__init__(*args)
        self.world, self.rank = world, rank
        self.eatoms = np.zeros(self.nlistatoms)  # Kokkos: a view written in place

    def _check(self, copy_from, copy_to, vec_len):
        assert copy_from.dtype == copy_to.dtype and copy_from.is_contiguous() and copy_to.is_contiguous()
        assert copy_from.shape == (self.ntotal, vec_len) == copy_to.shape

    def forward_exchange(self, copy_from, copy_to, vec_len):
        w, r = self.world, self.rank
        self._check(copy_from, copy_to, vec_len)
        copy_to.copy_(copy_from)
        w.rows[r] = copy_to
        w.barrier.wait()
        ids, nloc = w.ids[r], w.nloc[r]
        for g in range(nloc, self.ntotal):
            q, row = w.owner[int(ids[g])]
            copy_to[g] = w.rows[q][row]  # owned rows are not written during a forward exchange
        w.calls[r][0] += 1
        w.barrier.wait()

    def reverse_exchange(self, copy_from, copy_to, vec_len):
        w, r = self.world, self.rank
        self._check(copy_from, copy_to, vec_len)
        copy_to.copy_(copy_from)
        w.rows[r] = copy_to
        w.barrier.wait()
        for p in range(w.nranks):  # add every ghost row (any rank) whose owner is here
            for g in range(w.nloc[p], len(w.ids[p])):
                q, row = w.owner[int(w.ids[p][g])]
                if q == r:
                    copy_to[row] += w.rows[p][g]
        w.barrier.wait()
        copy_to[self.nlocal:] = 0
        w.calls[r][1] += 1
        w.barrier.wait()


def run_exchange(obj, atoms, nslab, skin=1.0):
    cut = obj.cutoff + skin
    ranks = decompose(atoms, nslab, ghost_cut=cut, pair_cut=cut, ghost_lists=False)
    world = World(ranks)
    elems_all = np.array(lammps_elems(atoms.get_chemical_symbols()))
    datas = [FakeKokkosData(world, r, nloc, len(ids), pi, pj, rij, elems_all[ids], False)
             for r, (ids, nloc, pi, pj, rij) in enumerate(ranks)]
    errors = []

    def work(d):
        try:
            obj.compute_forces(d)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            world.barrier.abort()

    threads = [threading.Thread(target=work, args=(d,)) for d in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    n = len(atoms)
    f, ea, energy, virial = np.zeros((n, 3)), np.zeros(n), 0.0, np.zeros((3, 3))
    for (ids, nloc, *_r), d in zip(ranks, datas):
        energy += d.energy
        np.add.at(f, ids, d.f)
        ea[ids[:nloc]] += d.eatoms
        virial += d.virial
    nghost = [len(ids) - nloc for ids, nloc, *_r in ranks]
    return energy, f, ea, virial, world, nghost


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    torch.set_num_threads(1)


def test_exchange_is_used_only_when_offered(exported):
    obj = exported["obj"]
    assert obj.metadata["num_exchanges"] == obj.num_layers
    plain = FakeData(1, 1, [], [], np.zeros((0, 3)), [1], False)
    assert not obj.exchange_available(plain)
    assert obj.exchange_available(FakeKokkosData(None, 0, 1, 1, [], [], np.zeros((0, 3)), [1], False))


@pytest.mark.parametrize("nslab", [1, 2, 3])
def test_periodic_matches_ase(exported, nslab):
    atoms = polymer_like()
    atoms.set_cell([9.0, 8.5, 8.0])
    atoms.center()
    atoms.pbc = True
    ref = reference(exported["ckpt"], atoms)
    obj = exported["obj"]
    e, f, ea, virial, world, nghost = run_exchange(obj, atoms, nslab)
    assert e == pytest.approx(ref["energy"], abs=1e-8)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-9)
    np.testing.assert_allclose(ea, ref["energies"], atol=1e-9)
    stress = -virial / atoms.get_volume()  # LAMMPS virial = -sum r (x) fij; ASE stress = -W / V
    voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(voigt, ref["stress"], atol=1e-9)
    # every rank ran num_layers exchanges each way, and the halo is one cutoff + skin wide
    assert all(c == [obj.num_layers, obj.num_layers] for c in world.calls)
    assert max(nghost) > 0


@pytest.mark.parametrize("spacing,nslab", [(3.0, 5), (10.0, 8)])
def test_isolated_chain_thin_slabs_and_empty_ranks(exported, spacing, nslab):
    """Slabs thinner than the cutoff along a chain; with spacing 10, ranks 2 and 5 own no atom
    but hold ghosts (and still take part in every exchange)."""
    atoms = long_chain(copies=3, spacing=spacing)
    ref = reference(exported["ckpt"], atoms)
    obj = exported["obj"]
    e, f, ea, _, world, nghost = run_exchange(obj, atoms, nslab=nslab)
    if spacing == 10.0:
        assert world.nloc[2] == world.nloc[5] == 0 and nghost[2] > 0
    assert e == pytest.approx(ref["energy"], abs=1e-8)
    np.testing.assert_allclose(f, ref["forces"], atol=1e-9)
    np.testing.assert_allclose(ea, ref["energies"], atol=1e-9)
    assert all(c == [obj.num_layers, obj.num_layers] for c in world.calls)


def test_env_switch_falls_back_to_the_ghost_shell(exported, monkeypatch):
    monkeypatch.setenv("POLYGET_MLIAP_EXCHANGE", "0")
    obj = exported["obj"]
    assert not obj.exchange_available(FakeKokkosData(None, 0, 1, 1, [], [], np.zeros((0, 3)), [1], False))
