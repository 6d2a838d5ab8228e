"""The SO3krates backbone: spherical harmonics, symmetry, conservative and smooth forces,
TorchScript, checkpoints and the architecture switch, training, export (LAMMPS: test_so3krates_lammps.py)."""

import io

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from scipy.spatial.transform import Rotation

from conftest import TINY, morse_frames, polymer_like, tiny_model
from polyget.io import atomic_save, load_model, make_checkpoint
from polyget.nn import ModelConfig, PolyGET, SO3krates, build_model
from polyget.nn.graph import atoms_to_graph, evaluate, neighbour_list
from polyget.nn.so3krates import BernsteinBasis, spherical_harmonics

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
SO3 = dict(architecture="so3krates", rbf_type="bernstein", max_degree=3)


def so3_model(dtype=torch.float64, seed=0, **kw) -> SO3krates:
    return tiny_model(dtype, seed, **{**SO3, **kw})


def run(model, atoms, dtype):
    g = atoms_to_graph(atoms, model.elements, model.cutoff).to("cpu", dtype)
    out = evaluate(model, g, forces=True)
    return out["energy"].detach().double().item(), out["forces"].detach().double().numpy(), \
        out["atom_energies"].detach().double().numpy()


@pytest.fixture(scope="module")
def so3_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("so3") / "so3.ckpt"
    atomic_save(make_checkpoint(so3_model(torch.float32)), path)
    return path


# ---------------------------------------------------------------- spherical harmonics

def unit_vectors(n, seed):
    u = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)))
    return u / u.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("lmax", [1, 2, 3, 4])
def test_spherical_harmonics_addition_theorem_and_equivariance(lmax):
    """sum_m Y_lm^2 = 1 for each degree, and Y_l(R u) = D_l(R) Y_l(u) with D_l orthogonal."""
    u = unit_vectors(400, 0)
    y = spherical_harmonics(u, lmax)
    assert y.shape == (400, sum(2 * l + 1 for l in range(1, lmax + 1)))
    rot = torch.from_numpy(Rotation.random(random_state=3).as_matrix())
    y_rot = spherical_harmonics(u @ rot.T, lmax)
    start = 0
    for l in range(1, lmax + 1):
        s = slice(start, start + 2 * l + 1)
        start += 2 * l + 1
        assert (y[:, s].pow(2).sum(1) - 1).abs().max() < 1e-13
        # least-squares D_l from 400 points; an exact linear map that is orthogonal
        d = torch.linalg.lstsq(y[:, s], y_rot[:, s]).solution.T
        assert (y[:, s] @ d.T - y_rot[:, s]).abs().max() < 1e-12
        assert (d @ d.T - torch.eye(2 * l + 1, dtype=d.dtype)).abs().max() < 1e-12
    # degree 1 is the unit vector itself, in (y, z, x) order
    assert torch.equal(y[:, :3], u[:, [1, 2, 0]])


def test_bernstein_basis_smooth_and_finite():
    basis = BernsteinBasis(4.0, 16).double()
    r = torch.linspace(0.4, 4.5, 200, dtype=torch.float64, requires_grad=True)
    b = basis(r)
    (g,) = torch.autograd.grad(b.sum(), r)
    assert torch.isfinite(b).all() and torch.isfinite(g).all()
    assert b[r >= 4.0].abs().max() == 0.0
    # value and slope go to zero at the cutoff
    near = basis(torch.tensor([4.0 - 1e-5], dtype=torch.float64))
    assert near.abs().max() < 1e-9


# ---------------------------------------------------------------- symmetry and forces

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_translation_permutation(dtype):
    model = so3_model(dtype)
    atoms = polymer_like()
    e0, f0, ea0 = run(model, atoms, dtype)
    assert np.abs(f0).max() > 1e-2  # a non-trivial model
    scale = max(1.0, abs(e0))
    for seed in range(3):
        rot = Rotation.random(random_state=seed).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T + np.array([1.3, -7.2, 0.4]) * (seed + 1)
        e1, f1, _ = run(model, moved, dtype)
        assert abs(e1 - e0) / scale < TOL[dtype]
        assert np.abs(f1 - f0 @ rot.T).max() < TOL[dtype] * 10
    # a reflection too: the energy of SO3krates (invariants only) is O(3)-invariant
    mirrored = atoms.copy()
    mirrored.positions[:, 0] *= -1
    e_m, f_m, _ = run(model, mirrored, dtype)
    assert abs(e_m - e0) / scale < TOL[dtype]
    assert np.abs(f_m - f0 * [-1, 1, 1]).max() < TOL[dtype] * 10
    perm = np.random.default_rng(0).permutation(len(atoms))
    e2, f2, ea2 = run(model, atoms[perm], dtype)
    assert abs(e2 - e0) / scale < TOL[dtype]
    assert np.abs(f2 - f0[perm]).max() < TOL[dtype] * 10
    assert np.abs(ea2 - ea0[perm]).max() < TOL[dtype] * 10


@pytest.mark.parametrize("rbf_type", ["bernstein", "expnorm", "gauss"])
def test_gradcheck_float64(rbf_type):
    model = so3_model(torch.float64, rbf_type=rbf_type)
    model.atom_offsets.zero_()
    atoms = polymer_like()[:6]
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)

    def energy(p):
        vec = p[g.edge_index[1]] - p[g.edge_index[0]]
        return model(g.species, g.edge_index, vec).sum()

    assert torch.autograd.gradcheck(energy, (pos,), eps=1e-6, atol=1e-7)
    if rbf_type == "bernstein":  # second derivatives (the force loss is differentiated again)
        assert torch.autograd.gradgradcheck(energy, (pos,), eps=1e-6, atol=1e-6)


def test_forces_equal_finite_differences(so3_ckpt):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like(seed=3)
    atoms.calc = PolyGETCalculator(so3_ckpt, dtype="float64")
    num = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(atoms.get_forces()).max() > 1e-2
    assert np.abs(atoms.get_forces() - num).max() < 1e-6


def test_smooth_at_cutoff():
    """Energy and forces are continuous as an atom crosses the cutoff sphere of another."""
    model = so3_model(torch.float64)
    rc = model.cutoff
    base = polymer_like()[:9]
    far = base.positions[:, 0].max()
    imax = int(np.argmax(base.positions[:, 0]))
    offs = np.linalg.norm((base.positions[imax] - [far, 0.0, 0.0])[1:])
    x_c = np.sqrt(rc ** 2 - offs ** 2)

    def e_f(x):
        e, f, _ = run(model, base + Atoms("O", positions=[[far + x, 0.0, 0.0]]), torch.float64)
        return e, f

    for d in (1e-6, 1e-8):
        e_in, f_in = e_f(x_c - d)
        e_out, f_out = e_f(x_c + d)
        assert abs(e_in - e_out) < 1e-8
        assert np.abs(f_in - f_out).max() < 1e-6
    xs = np.linspace(x_c - 0.05, x_c + 0.05, 41)
    es = np.array([e_f(x)[0] for x in xs])
    assert np.abs(np.diff(es, 2)).max() < 1e-5
    # the O atom does interact inside the cutoff (the test is not vacuous)
    assert abs(e_f(x_c - 0.5)[0] - e_f(x_c + 0.5)[0]) > 1e-6


def test_no_neighbours_and_edges_beyond_cutoff():
    model = so3_model(torch.float64)
    lone = Atoms("CO", positions=[[0, 0, 0], [20, 0, 0]])
    e, f, ea = run(model, lone, torch.float64)
    assert np.all(np.isfinite(f)) and np.abs(f).max() == 0.0
    atoms = polymer_like()
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    ei, _ = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff + 1.5)
    vec = torch.from_numpy(atoms.positions[ei[1]] - atoms.positions[ei[0]])
    assert vec.shape[0] > g.edge_vec.shape[0]
    e_skin = model(g.species, torch.from_numpy(ei), vec).sum().item()
    e_ref = model(g.species, g.edge_index, g.edge_vec).sum().item()
    assert abs(e_skin - e_ref) < 1e-12


def test_receptive_field_is_num_layers_hops():
    """An atom's energy changes when an atom num_layers hops away moves, not num_layers + 1."""
    model = so3_model(torch.float64, num_layers=2, cutoff=2.0)
    assert model.receptive_hops == 2
    chain = Atoms("C6", positions=[[1.5 * k, 0.0, 0.0] for k in range(6)])  # edges between neighbours only

    def atom0(pos):
        a = chain.copy()
        a.positions = pos
        return run(model, a, torch.float64)[2][0]

    base = chain.positions.copy()
    for hop, expect_change in ((2, True), (3, False)):
        moved = base.copy()
        moved[hop, 1] += 0.1
        changed = abs(atom0(moved) - atom0(base)) > 1e-12
        assert changed == expect_change, hop


def test_periodic_stress_and_images(so3_ckpt):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like()[:9]
    atoms.center(vacuum=0.0)
    atoms.set_cell([5.5, 6.0, 5.0])
    atoms.pbc = True
    atoms.rattle(0.02, seed=1)
    calc = PolyGETCalculator(so3_ckpt, dtype="float64")
    atoms.calc = calc
    assert np.abs(atoms.get_forces() - calculate_numerical_forces(atoms, eps=1e-4)).max() < 1e-6
    assert np.abs(atoms.get_stress() - calculate_numerical_stress(atoms, eps=1e-5)).max() < 1e-7
    big = atoms.repeat((2, 1, 1))
    big.calc = calc
    assert abs(big.get_potential_energy() - 2 * atoms.get_potential_energy()) < 1e-9


def test_float32_close_to_float64(so3_ckpt):
    from polyget.ase import PolyGETCalculator

    atoms = polymer_like()
    f64 = PolyGETCalculator(so3_ckpt, dtype="float64").get_forces(atoms)
    f32 = PolyGETCalculator(so3_ckpt, dtype="float32").get_forces(atoms)
    assert np.abs(f64 - f32).max() < 1e-4


# ---------------------------------------------------------------- TorchScript, checkpoints, switch

def test_torchscript_round_trip_equals_eager():
    model = so3_model(torch.float64)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    a, b = evaluate(model, g), evaluate(loaded, g)
    assert (a["energy"] - b["energy"]).abs().max() < 1e-12
    assert (a["forces"] - b["forces"]).abs().max() < 1e-12
    assert loaded.cutoff == model.cutoff and loaded.num_layers == model.num_layers
    assert loaded.receptive_hops == 2 and list(loaded.elements) == ["H", "C", "O"]
    # and a float32 cast of the scripted module still runs in float32
    out32 = loaded.float()(g.species, g.edge_index, g.edge_vec.float())
    assert out32.dtype == torch.float32


def test_checkpoint_round_trip_bit_for_bit(tmp_path):
    model = so3_model(torch.float64)
    atomic_save(make_checkpoint(model), tmp_path / "m.ckpt")
    again = load_model(tmp_path / "m.ckpt", dtype="float64")
    assert isinstance(again, SO3krates)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    a, b = evaluate(model, g), evaluate(again, g)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])


def test_old_checkpoints_without_architecture_load_as_et(tmp_path):
    et = tiny_model(torch.float64)
    ckpt = make_checkpoint(et)
    assert ckpt["hparams"]["architecture"] == "et"
    for key in ("architecture", "max_degree"):  # what a checkpoint written before this change holds
        del ckpt["hparams"][key]
    atomic_save(ckpt, tmp_path / "old.ckpt")
    again = load_model(tmp_path / "old.ckpt")
    assert isinstance(again, PolyGET) and not isinstance(again, SO3krates)
    g = atoms_to_graph(polymer_like(), et.elements, et.cutoff)
    assert torch.equal(evaluate(et, g)["forces"], evaluate(again, g)["forces"])


def test_architecture_switch_and_errors():
    assert isinstance(build_model(ModelConfig(**TINY)), PolyGET)
    assert isinstance(build_model(ModelConfig(**TINY, **SO3)), SO3krates)
    with pytest.raises(ValueError, match="unknown model architecture 'mace'.*et.*so3krates"):
        build_model(ModelConfig(**TINY, architecture="mace"))
    with pytest.raises(ValueError, match="max_degree must be 1..4"):
        build_model(ModelConfig(**{**TINY, **SO3, "max_degree": 6}))
    with pytest.raises(ValueError, match="unknown radial basis 'bessel'"):
        build_model(ModelConfig(**{**TINY, **SO3, "rbf_type": "bessel"}))
    from polyget.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.architecture must be one of"):
        load_config({"data": {"train": "x.extxyz"}, "model": {"architecture": "SO3krates"}})
    assert load_config({"data": {"train": "x.extxyz"}})["model"]["architecture"] == "et"


# ---------------------------------------------------------------- training, export, ASE

def test_training_lowers_force_mae_tenfold(tmp_path):
    from polyget.train.trainer import Trainer

    ase.io.write(tmp_path / "morse.extxyz", morse_frames(24))
    cfg = {"data": {"train": str(tmp_path / "morse.extxyz"), "val_fraction": 0.25},
           "model": {**TINY, **SO3},
           "training": {"lr": 2e-3, "batch_size": 4, "max_steps": 600, "val_every": 100, "threads": 1},
           "output": str(tmp_path / "run")}
    tr = Trainer(cfg, quiet=True)
    assert isinstance(tr.model, SO3krates)

    def train_mae():
        saved = tr.val_set
        tr.val_set = tr.train_set
        _, summary = tr.validate()
        tr.val_set = saved
        return summary["overall"]["force_mae"]

    before = train_mae()
    tr.run()
    after = train_mae()
    print(f"SO3krates train-set force MAE {before:.4f} -> {after:.4f} eV/A")
    assert after < before / 10
    assert isinstance(load_model(tmp_path / "run" / "best.ckpt"), SO3krates)


def test_export_and_ase_calculator_on_the_jit_file(so3_ckpt, tmp_path):
    from polyget.ase import PolyGETCalculator
    from polyget.export import export
    from polyget.io import load_torchscript
    from polyget.lammps.mliap import load

    pt, jit = export(so3_ckpt, tmp_path / "so3.pt", dtype="float64")
    module, meta = load_torchscript(jit)
    assert meta["architecture"] == "so3krates"
    assert meta["receptive_hops"] == 2 and meta["num_layers"] == 2 and meta["cutoff"] == 4.0
    assert load(str(pt)).receptive_hops == 2
    atoms = polymer_like(seed=5)
    ref = PolyGETCalculator(so3_ckpt, dtype="float64")
    via_jit = PolyGETCalculator(jit, dtype="float64")
    e_ref, f_ref = ref.get_potential_energy(atoms), ref.get_forces(atoms)
    assert abs(via_jit.get_potential_energy(atoms) - e_ref) < 1e-10
    assert np.abs(via_jit.get_forces(atoms) - f_ref).max() < 1e-10


def test_shipped_so3krates_config_builds_so3krates():
    from pathlib import Path

    from polyget.train.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "train-so3krates-mini.yaml")
    model = build_model(ModelConfig.from_dict({**cfg["model"], "elements": ["H", "C", "O"]}))
    assert isinstance(model, SO3krates) and model.receptive_hops == 3 and model.max_degree == 3


# ---------------------------------------------------------------- pieces (per-layer halo exchange)

def test_pieces_attributes_and_ghost_rows():
    model = so3_model(num_layers=3)
    assert model.num_exchanges == 3 and model.receptive_hops == 3
    s = torch.jit.script(model)
    assert s.num_exchanges == 3 and s.num_layers == 3
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    n, nl = len(g.species), 7
    keep = g.edge_index[0] < nl
    ei, ev = g.edge_index[:, keep], g.edge_vec[keep]
    feats = model.edge_features(ev)
    x, e = model.embed(g.species, ei, feats, nl)
    assert x.shape == (n, 32) and e.shape == (n, 15)  # the exchanged "vec" is ev [N, 15]
    assert x[nl:].abs().max() == 0 and x[:nl].abs().max() > 0
    x2, e2 = model.interact(0, x + 1.0, e + 1.0, ei, feats, nl)
    assert x2[nl:].abs().max() == 0 and e2[nl:].abs().max() == 0 and e2[:nl].abs().max() > 0
    assert model.readout(g.species, x2, e2, nl).shape == (nl,)
    with pytest.raises(Exception, match="out of range"):
        s.interact(3, x, e, ei, feats, nl)


@pytest.mark.parametrize("scripted", [False, True])
def test_forward_is_the_composition_of_pieces(scripted):
    from polyget.nn.halo import run_pieces
    from test_pieces import periodic_box

    model = so3_model(num_layers=3)
    g = atoms_to_graph(periodic_box(), model.elements, model.cutoff)
    m = torch.jit.script(model) if scripted else model
    full = m(g.species, g.edge_index, g.edge_vec)
    assert torch.equal(full, run_pieces(m, g.species, g.edge_index, g.edge_vec, len(g.species), None))
    assert (full - model(g.species, g.edge_index, g.edge_vec)).abs().max() < 1e-12


@pytest.mark.parametrize("triclinic", [False, True])
@pytest.mark.parametrize("scripted", [False, True])
def test_halo_exchange_equals_full_model_periodic(triclinic, scripted):
    """Owned atoms + periodic-image ghosts one cutoff wide, (x, ev) exchanged before every layer."""
    from test_pieces import halo_energy_forces, periodic_box

    model = so3_model(num_layers=3)
    atoms = periodic_box(seed=1, triclinic=triclinic)
    ref = evaluate(model, atoms_to_graph(atoms, model.elements, model.cutoff), forces=True, stress=True)
    e, ae, f, w, nghost = halo_energy_forces(torch.jit.script(model) if scripted else model, atoms)
    assert nghost > len(atoms)
    assert abs(e - ref["energy"].item()) < 1e-10
    assert np.abs(ae - ref["atom_energies"].detach().numpy()).max() < 1e-10
    assert np.abs(f - ref["forces"].numpy()).max() < 1e-10
    assert np.abs(w - ref["virial"][0].numpy()).max() < 1e-9


def test_halo_without_exchange_is_wrong():
    from polyget.nn.halo import index_exchange, periodic_halo_graph, run_pieces
    from test_pieces import periodic_box

    model = so3_model(num_layers=2)
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


def test_cli_train_resume_eval_calibrate_md(tmp_path):
    """`polyget train/eval/calibrate/md` on an SO3krates config, unchanged commands."""
    import subprocess
    import sys

    import yaml

    from polyget.calibrate import calibrate
    from polyget.evaluate import predict
    from polyget.io import load_checkpoint, model_from_checkpoint
    from polyget.train.dataset import frames_to_samples

    ase.io.write(tmp_path / "morse.extxyz", morse_frames(16))
    cfg = {"data": {"train": str(tmp_path / "morse.extxyz"), "val_fraction": 0.25},
           "model": {**TINY, **SO3},
           "training": {"lr": 2e-3, "batch_size": 4, "max_steps": 10, "val_every": 5, "threads": 1},
           "output": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    py = [sys.executable, "-m", "polyget.cli"]
    subprocess.run(py + ["train", str(tmp_path / "c.yaml")], check=True, capture_output=True)
    cfg["training"]["max_steps"] = 20
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(py + ["train", str(tmp_path / "c.yaml"), "--resume"], check=True, capture_output=True)
    ck = tmp_path / "run" / "last.ckpt"
    saved = load_checkpoint(ck)
    assert saved["train_state"]["step"] == 20 and saved["hparams"]["architecture"] == "so3krates"
    r = subprocess.run(py + ["eval", str(ck), str(tmp_path / "morse.extxyz"), "--out", str(tmp_path / "ev")],
                       check=True, capture_output=True, text=True)
    assert "force MAE" in r.stdout
    # calibration recovers known per-element offsets on top of the SO3krates raw energies
    frames = morse_frames(12)
    model = model_from_checkpoint(saved)
    samples = frames_to_samples(frames, model.elements, model.cutoff)
    phi = np.array([raw for _, _, raw, _ in predict(model, samples)])
    true_b = np.array([-13.5, -1030.2, -2042.7])
    for a, s, p in zip(frames, samples, phi):
        a.calc.results["energy"] = p + np.bincount(s.species, minlength=3) @ true_b
    ase.io.write(tmp_path / "cal.extxyz", frames)
    rep = calibrate(ck, tmp_path / "cal.extxyz", mode="elements", output=tmp_path / "cal.ckpt")
    np.testing.assert_allclose([rep["offsets"][e] for e in "HCO"], true_b, atol=1e-5)
    assert isinstance(load_model(tmp_path / "cal.ckpt"), SO3krates)
    ase.io.write(tmp_path / "start.xyz", frames[0])
    subprocess.run(py + ["md", str(tmp_path / "start.xyz"), "--model", str(tmp_path / "cal.ckpt"),
                         "--steps", "10", "--interval", "5", "--out", str(tmp_path / "md")],
                   check=True, capture_output=True, text=True)
    assert len((tmp_path / "md" / "md_log.csv").read_text().splitlines()) == 1 + 3  # steps 0, 5, 10
