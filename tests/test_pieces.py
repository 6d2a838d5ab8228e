"""The model in pieces (embed / interact / readout) and the per-layer halo exchange.

forward() must be the composition of the pieces; composing them on owned atoms plus a halo of
periodic-image ghosts one cutoff wide, with ghost rows filled from their owners between
pieces (and ghost-row gradients added back to the owners), must give the energy, per-atom
energies, forces and virial of the full model.
"""

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import polymer_like, tiny_model
from polyget.nn.graph import atoms_to_graph, evaluate
from polyget.nn.halo import IndexExchange, index_exchange, periodic_halo_graph, run_pieces


def reference_forward(model, species, edge_index, edge_vec):
    """The pre-pieces forward(): the frozen pre-speed network (tests/frozen_et.py) with the same
    weights, the meaning forward() must keep."""
    import frozen_et

    cfg = {k: v for k, v in model.config.to_dict().items() if k in frozen_et.ModelConfig.__dataclass_fields__}
    ref = frozen_et.PolyGET(frozen_et.ModelConfig(**cfg)).to(edge_vec.dtype)
    ref.load_state_dict(model.state_dict())
    return ref(species, edge_index, edge_vec)


def periodic_box(seed=0, triclinic=False):
    """Two small molecules in a cell smaller than 2 cutoffs: atoms see their own images."""
    a = polymer_like(seed)
    cell = np.array([[7.5, 0.0, 0.0], [0.0, 6.5, 0.0], [0.0, 0.0, 7.0]])
    if triclinic:
        cell[1, 0], cell[2, 0], cell[2, 1] = 1.9, -1.1, 0.8
    a.set_cell(cell)
    a.set_pbc(True)
    a.wrap()
    return a


def test_attributes():
    m = tiny_model(num_layers=3)
    assert m.num_layers == 3 and m.num_exchanges == 3 and m.receptive_hops == 4
    s = torch.jit.script(m)
    assert s.num_layers == 3 and s.num_exchanges == 3


@pytest.mark.parametrize("scripted", [False, True])
def test_forward_is_the_composition(scripted):
    model = tiny_model(num_layers=3)
    g = atoms_to_graph(periodic_box(), model.elements, model.cutoff)
    ref = reference_forward(model, g.species, g.edge_index, g.edge_vec)
    m = torch.jit.script(model) if scripted else model
    full = m(g.species, g.edge_index, g.edge_vec)
    n = len(g.species)
    pieces = run_pieces(m, g.species, g.edge_index, g.edge_vec, n, None)
    assert torch.equal(full, pieces)
    assert (full - ref).abs().max().item() < 1e-12


def test_rows_beyond_n_local_are_zero_and_unused():
    model = tiny_model()
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    n = len(g.species)
    nl = 7
    keep = g.edge_index[0] < nl
    ei, ev = g.edge_index[:, keep], g.edge_vec[keep]
    feats = model.edge_features(ev)
    x, vec = model.embed(g.species, ei, feats, nl)
    assert x.shape == (n, 32) and vec.shape == (n, 3, 32)
    assert x[nl:].abs().max() == 0 and x[:nl].abs().max() > 0
    x2, vec2 = model.interact(0, x + 1.0, vec + 1.0, ei, feats, nl)
    assert x2[nl:].abs().max() == 0 and vec2[nl:].abs().max() == 0
    assert model.readout(g.species, x2, vec2, nl).shape == (nl,)
    with pytest.raises(Exception, match="out of range"):
        torch.jit.script(model).interact(5, x, vec, ei, feats, nl)


def test_index_exchange_is_its_own_adjoint():
    torch.manual_seed(0)
    owner = torch.tensor([2, 0, 2, 1])
    t = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    u = torch.randn(7, 3, 5, dtype=torch.float64)
    out = IndexExchange.apply(t, owner, 3)
    assert torch.equal(out[3:], t[owner].detach()) and torch.equal(out[:3], t[:3].detach())
    (g,) = torch.autograd.grad((out * u).sum(), t)
    expect = u.clone()
    expect[:3].index_add_(0, owner, u[3:])
    expect[3:] = 0
    assert torch.equal(g, expect)


def halo_energy_forces(model, atoms):
    """Energy, per-atom energies, forces, virial from the pieces on owned atoms + image ghosts."""
    cell = atoms.get_cell().array
    pos0 = atoms.get_positions()
    owner, shifts, ei = periodic_halo_graph(pos0, cell, atoms.get_pbc(), model.cutoff)
    n = len(atoms)
    species = torch.as_tensor(atoms_to_graph(atoms, model.elements, model.cutoff).species)
    species = torch.cat([species, species[torch.as_tensor(owner)]])
    pos = torch.tensor(pos0, dtype=torch.float64, requires_grad=True)
    # strain for the virial: positions and cell deformed by (1 + eps)
    eps = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    defo = torch.eye(3, dtype=torch.float64) + eps
    cellt = torch.as_tensor(cell) @ defo
    p = pos @ defo
    ghosts = p[torch.as_tensor(owner)] + torch.as_tensor(shifts, dtype=torch.float64) @ cellt
    allpos = torch.cat([p, ghosts])
    ei = torch.as_tensor(ei)
    vec = allpos[ei[1]] - allpos[ei[0]]
    ae = run_pieces(model, species, ei, vec, n, index_exchange(torch.as_tensor(owner), n))
    e = ae.sum()
    gpos, geps = torch.autograd.grad(e, (pos, eps))
    return e.item(), ae.detach().numpy(), -gpos.numpy(), geps.numpy(), len(owner)


@pytest.mark.parametrize("triclinic", [False, True])
@pytest.mark.parametrize("scripted", [False, True])
def test_halo_exchange_equals_full_model_periodic(triclinic, scripted):
    model = tiny_model(num_layers=3)
    atoms = periodic_box(seed=1, triclinic=triclinic)
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    ref = evaluate(model, g, forces=True, stress=True)
    m = torch.jit.script(model) if scripted else model
    e, ae, f, w, nghost = halo_energy_forces(m, atoms)
    assert nghost > len(atoms)  # the cell is small: most neighbours are images
    assert abs(e - ref["energy"].item()) < 1e-10
    assert np.abs(ae - ref["atom_energies"].detach().numpy()).max() < 1e-10
    assert np.abs(f - ref["forces"].numpy()).max() < 1e-10
    assert np.abs(w - ref["virial"][0].numpy()).max() < 1e-9


def test_halo_without_exchange_is_wrong():
    """The exchange matters: ghost rows left at zero change the answer (the test has teeth)."""
    model = tiny_model(num_layers=2)
    atoms = periodic_box(seed=2)
    owner, shifts, ei = periodic_halo_graph(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
    n = len(atoms)
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    species = torch.cat([g.species, g.species[torch.as_tensor(owner)]])
    allpos = np.concatenate([atoms.positions, atoms.positions[owner] + shifts @ atoms.cell.array])
    ei = torch.as_tensor(ei)
    vec = torch.as_tensor(allpos[ei[1]] - allpos[ei[0]])
    good = run_pieces(model, species, ei, vec, n, index_exchange(torch.as_tensor(owner), n)).sum()
    bad = run_pieces(model, species, ei, vec, n, lambda t: t).sum()
    full = model(g.species, g.edge_index, g.edge_vec).sum()
    assert abs(good - full) < 1e-10 and abs(bad - full) > 1e-4
