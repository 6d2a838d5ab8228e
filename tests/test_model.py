"""The network: symmetry, conservative forces, smoothness at the cutoff, TorchScript, periodic cells."""

import io

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from scipy.spatial.transform import Rotation

from conftest import polymer_like, tiny_model
from polyget.nn.graph import atoms_to_graph, evaluate

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def run(model, atoms, dtype):
    g = atoms_to_graph(atoms, model.elements, model.cutoff).to("cpu", dtype)
    out = evaluate(model, g, forces=True)
    return out["energy"].detach().double().item(), out["forces"].detach().double().numpy(), \
        out["atom_energies"].detach().double().numpy()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_translation_permutation(dtype):
    model = tiny_model(dtype)
    atoms = polymer_like()
    e0, f0, ea0 = run(model, atoms, dtype)
    scale = max(1.0, abs(e0))
    for seed in range(3):
        rot = Rotation.random(random_state=seed).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T + np.array([1.3, -7.2, 0.4]) * (seed + 1)
        e1, f1, _ = run(model, moved, dtype)
        assert abs(e1 - e0) / scale < TOL[dtype]
        assert np.abs(f1 - f0 @ rot.T).max() < TOL[dtype] * 10
    perm = np.random.default_rng(0).permutation(len(atoms))
    e2, f2, ea2 = run(model, atoms[perm], dtype)
    assert abs(e2 - e0) / scale < TOL[dtype]
    assert np.abs(f2 - f0[perm]).max() < TOL[dtype] * 10
    assert np.abs(ea2 - ea0[perm]).max() < TOL[dtype] * 10


def test_gradcheck_float64():
    model = tiny_model(torch.float64)
    model.atom_offsets.zero_()  # large constant offsets only cost finite-difference precision
    atoms = polymer_like()[:6]
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)

    def energy(p):
        vec = p[g.edge_index[1]] - p[g.edge_index[0]]
        return model(g.species, g.edge_index, vec).sum()

    assert torch.autograd.gradcheck(energy, (pos,), eps=1e-6, atol=1e-7)
    # second derivatives too: the force loss is differentiated w.r.t. parameters
    assert torch.autograd.gradgradcheck(energy, (pos,), eps=1e-6, atol=1e-6)


def test_forces_equal_finite_differences(ckpt_path):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like(seed=3)
    atoms.calc = PolyGETCalculator(ckpt_path, dtype="float64")
    num = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(atoms.get_forces() - num).max() < 1e-6


def test_smooth_at_cutoff():
    """Energy and forces are continuous as an atom crosses the cutoff sphere of another."""
    model = tiny_model(torch.float64)
    rc = model.cutoff
    base = polymer_like()[:9]  # ethanol
    far = base.positions[:, 0].max()

    def e_f(x):
        a = base + Atoms("O", positions=[[far + x, 0.0, 0.0]])
        # the O atom is at distance x from the atom(s) with the largest x coordinate
        e, f, _ = run(model, a, torch.float64)
        return e, f

    imax = int(np.argmax(base.positions[:, 0]))
    dx = rc - 0.0  # distance along x between O and atom imax (same y, z only if aligned)
    offs = np.linalg.norm((base.positions[imax] - [far, 0.0, 0.0])[1:])
    x_c = np.sqrt(rc ** 2 - offs ** 2)  # O exactly at the cutoff of atom imax
    for d in (1e-6, 1e-8):
        e_in, f_in = e_f(x_c - d)
        e_out, f_out = e_f(x_c + d)
        assert abs(e_in - e_out) < 1e-8
        assert np.abs(f_in - f_out).max() < 1e-6
    # and a scan through rc has no jump larger than the smooth variation
    xs = np.linspace(x_c - 0.05, x_c + 0.05, 41)
    es = np.array([e_f(x)[0] for x in xs])
    assert np.abs(np.diff(es, 2)).max() < 1e-5


def test_no_neighbours_and_edges_beyond_cutoff(model64):
    lone = Atoms("CO", positions=[[0, 0, 0], [20, 0, 0]])
    e, f, ea = run(model64, lone, torch.float64)
    assert np.all(np.isfinite(f)) and np.abs(f).max() == 0.0
    # extra edges beyond the cutoff (LAMMPS skin) change nothing
    atoms = polymer_like()
    g = atoms_to_graph(atoms, model64.elements, model64.cutoff)
    from polyget.nn.graph import neighbour_list
    ei, sh = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, model64.cutoff + 1.5)
    vec = torch.from_numpy(atoms.positions[ei[1]] - atoms.positions[ei[0]])
    assert vec.shape[0] > g.edge_vec.shape[0]
    e_skin = model64(g.species, torch.from_numpy(ei), vec).sum().item()
    e_ref = model64(g.species, g.edge_index, g.edge_vec).sum().item()
    assert abs(e_skin - e_ref) < 1e-12


def test_torchscript_round_trip_equals_eager(model64):
    atoms = polymer_like()
    g = atoms_to_graph(atoms, model64.elements, model64.cutoff)
    scripted = torch.jit.script(model64)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    a = evaluate(model64, g)
    b = evaluate(loaded, g)
    assert torch.equal(a["energy"], b["energy"]) or (a["energy"] - b["energy"]).abs().max() < 1e-12
    assert (a["forces"] - b["forces"]).abs().max() < 1e-12
    assert loaded.cutoff == model64.cutoff and loaded.num_layers == model64.num_layers


def test_checkpoint_round_trip_bit_for_bit(tmp_path, model64):
    from polyget.io import atomic_save, load_model, make_checkpoint

    atomic_save(make_checkpoint(model64), tmp_path / "m.ckpt")
    again = load_model(tmp_path / "m.ckpt", dtype="float64")
    g = atoms_to_graph(polymer_like(), model64.elements, model64.cutoff)
    a, b = evaluate(model64, g), evaluate(again, g)
    assert torch.equal(a["energy"], b["energy"])
    assert torch.equal(a["forces"], b["forces"])


def test_periodic_stress_and_images(ckpt_path):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like()[:9]
    atoms.center(vacuum=0.0)
    atoms.set_cell([5.5, 6.0, 5.0])  # neighbours across the faces
    atoms.pbc = True
    atoms.rattle(0.02, seed=1)
    calc = PolyGETCalculator(ckpt_path, dtype="float64")
    atoms.calc = calc
    assert np.abs(atoms.get_forces() - calculate_numerical_forces(atoms, eps=1e-4)).max() < 1e-6
    assert np.abs(atoms.get_stress() - calculate_numerical_stress(atoms, eps=1e-5)).max() < 1e-7
    big = atoms.repeat((2, 1, 1))
    big.calc = calc
    assert abs(big.get_potential_energy() - 2 * atoms.get_potential_energy()) < 1e-9
    np.testing.assert_allclose(big.get_forces()[: len(atoms)], atoms.get_forces(), atol=1e-9)


def test_per_atom_energies_sum_to_energy(ckpt_path):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like()
    atoms.calc = PolyGETCalculator(ckpt_path, dtype="float64")
    assert abs(atoms.get_potential_energies().sum() - atoms.get_potential_energy()) < 1e-9


def test_float32_close_to_float64(ckpt_path):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like()
    f64 = PolyGETCalculator(ckpt_path, dtype="float64").get_forces(atoms)
    f32 = PolyGETCalculator(ckpt_path, dtype="float32").get_forces(atoms)
    assert np.abs(f64 - f32).max() < 1e-4


def test_ase_nve_conserves_energy(trained_ckpt):
    """Velocity Verlet from 300 K, float64, a (briefly) trained tiny model, 200 fs.

    Measured (ethanol, 9 atoms): total-energy spread 2.8e-3 eV at 0.5 fs, 6.6e-4 eV at 0.25 fs:
    it falls as dt^2, so it is integrator error, not a non-conservative force."""
    from ase import units
    from ase.build import molecule
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from polyget.ase import PolyGETCalculator

    spreads = []
    for dt in (0.5, 0.25):
        atoms = molecule("CH3CH2OH")
        atoms.calc = PolyGETCalculator(trained_ckpt, dtype="float64")
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
        energies = []
        dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
        dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=int(5 / dt))
        dyn.run(int(200 / dt))
        spreads.append(max(energies) - min(energies))
    print(f"NVE total-energy spread: {spreads[0]:.2e} eV (0.5 fs), {spreads[1]:.2e} eV (0.25 fs)")
    assert spreads[0] < 5e-3 and spreads[1] < 1.5e-3
    assert 3.0 < spreads[0] / spreads[1] < 5.5  # second-order integrator: error ~ dt^2
