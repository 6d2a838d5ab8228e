"""polyget._core (C++ core, pybind11) against the Python model.

Float64 agreement to 1e-10 (energy, per-atom energies, forces, virial) on isolated and periodic
structures, for the analytic toy model and for a small random PolyGET; buffer reuse; the file and
input errors a user can meet.
"""

import pickle

import numpy as np
import pytest
import torch

from test_native_common import (TOY_ELEMENTS, ReferenceCalculator, ToyMessagePassing, edges, export_toy,
                                periodic_melt, reference, ring_polymer, save_jit, species_of,
                                toy_metadata)

native = pytest.importorskip("polyget.native")
if not native.available():  # built by `make setup`; absent only when the build was skipped
    pytest.fail(f"polyget._core is not built: {native._IMPORT_ERROR}; run bash scripts/build_native.sh",
                pytrace=False)

from polyget.native import ModelError, NativeModel  # noqa: E402

TOL = 1e-10


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    return export_toy(tmp_path_factory.mktemp("toy") / "toy.jit.pt", cutoff=4.0, num_layers=2)


def native_forces(n, edge_index, fij):
    f = np.zeros((n, 3))
    np.add.at(f, edge_index[0], fij)
    np.add.at(f, edge_index[1], -fij)
    return f


def run_native(model, atoms, elements, cutoff):
    ei, S = edges(atoms, cutoff)
    vec = atoms.positions[ei[1]] - atoms.positions[ei[0]] + S @ atoms.cell.array
    e, ae, fij = model.compute(species_of(atoms, elements), ei, vec)
    f = native_forces(len(atoms), ei, fij)
    w = -(vec[:, :, None] * fij[:, None, :]).sum(0)  # LAMMPS virial sum r (x) F
    return e, ae, f, w


def check_against_reference(model, module, atoms, elements, cutoff):
    e, ae, f, w = run_native(model, atoms, elements, cutoff)
    e_ref, f_ref, s_ref, ae_ref = reference(module, atoms, elements, cutoff)
    assert abs(e - e_ref) < TOL * max(1.0, abs(e_ref))
    np.testing.assert_allclose(ae, ae_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(f, f_ref, atol=TOL, rtol=0)
    assert np.abs(f_ref).max() > 1e-3  # a real test: forces are not all zero
    if s_ref is not None:
        stress = -w / atoms.get_volume()
        voigt = np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])
        np.testing.assert_allclose(voigt, s_ref, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- toy model

def test_reference_path_against_finite_differences():
    """The Python reference the C++ core is held to: forces and stress by ASE finite
    differences (so the two paths cannot agree on a common mistake)."""
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    atoms = periodic_melt()
    atoms.calc = ReferenceCalculator(ToyMessagePassing())
    f = atoms.get_forces()
    f_fd = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 5, 17])
    np.testing.assert_allclose(f[[0, 5, 17]], f_fd, atol=1e-7, rtol=0)
    s = atoms.get_stress()
    s_fd = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(s, s_fd, atol=1e-8, rtol=0)


def small_cell():
    """A cell shorter than the cutoff: atoms see their own periodic images (i == j edges)."""
    from ase import Atoms

    return Atoms("CH2O", positions=[[0, 0, 0], [1.09, 0, 0], [-0.4, 1.0, 0.2], [0.3, -0.5, 1.4]],
                 cell=[3.3, 3.6, 3.9], pbc=True)


STRUCTURES = {"isolated": lambda: ring_polymer(20, oxygen_every=4), "periodic": periodic_melt,
              "small_cell": small_cell}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_toy_matches_python(toy_path, structure):
    atoms = STRUCTURES[structure]()
    model = NativeModel(toy_path)
    module = torch.jit.load(str(toy_path))
    assert model.elements == TOY_ELEMENTS and model.cutoff == 4.0 and model.num_layers == 2
    check_against_reference(model, module, atoms, TOY_ELEMENTS, model.cutoff)


def test_nlocal_sums_owned_atoms_only(toy_path):
    """energy = sum over atoms < nlocal; fij = d(E_owned)/d(edge_vec) for every edge."""
    atoms = ring_polymer(12)
    ei, S = edges(atoms, 4.0)
    vec = atoms.positions[ei[1]] - atoms.positions[ei[0]]
    nlocal = 17
    e, ae, fij = NativeModel(toy_path).compute(species_of(atoms), ei, vec, nlocal)
    module = torch.jit.load(str(toy_path))
    v = torch.tensor(vec, requires_grad=True)
    ae_ref = module(torch.from_numpy(species_of(atoms)), torch.from_numpy(ei), v)
    (g,) = torch.autograd.grad(ae_ref[:nlocal].sum(), v)
    assert abs(e - float(ae_ref[:nlocal].sum().detach())) < TOL
    np.testing.assert_allclose(ae, ae_ref.detach().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(fij, g.numpy(), atol=TOL, rtol=0)


def test_torch_in_torch_out(toy_path):
    atoms = ring_polymer(8)
    ei, _ = edges(atoms, 4.0)
    vec = atoms.positions[ei[1]] - atoms.positions[ei[0]]
    model = NativeModel(toy_path)
    e1, ae1, f1 = model.compute(species_of(atoms), ei, vec)
    e2, ae2, f2 = model.compute(torch.from_numpy(species_of(atoms)), torch.from_numpy(ei), torch.from_numpy(vec))
    assert isinstance(ae2, torch.Tensor) and isinstance(f2, torch.Tensor) and f2.dtype == torch.float64
    # (the TorchScript executor re-optimises after its first runs: equal to rounding, not bits)
    assert abs(e1 - e2) < 1e-12
    np.testing.assert_allclose(f1, f2.numpy(), atol=1e-14, rtol=0)


def test_no_reallocation_when_counts_do_not_grow(toy_path):
    model = NativeModel(toy_path)
    big = ring_polymer(20)
    small = ring_polymer(10)
    run_native(model, big, TOY_ELEMENTS, 4.0)
    n_alloc = model._model.num_allocations
    caps = (model._model.atom_capacity, model._model.edge_capacity)
    for atoms in (small, big, small, big):
        run_native(model, atoms, TOY_ELEMENTS, 4.0)
    assert model._model.num_allocations == n_alloc
    assert (model._model.atom_capacity, model._model.edge_capacity) == caps
    run_native(model, ring_polymer(40), TOY_ELEMENTS, 4.0)  # grows once
    assert model._model.num_allocations > n_alloc


def test_isolated_atoms_and_empty_input(toy_path):
    model = NativeModel(toy_path)
    e, ae, fij = model.compute(np.array([0, 1, 2]), np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3)))
    module = torch.jit.load(str(toy_path))
    ref = module(torch.tensor([0, 1, 2]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    np.testing.assert_allclose(ae, ref.numpy(), atol=TOL, rtol=0)
    assert fij.shape == (0, 3) and abs(e - float(ref.sum())) < TOL
    e, ae, fij = model.compute(np.zeros(0, dtype=np.int64), np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3)))
    assert e == 0.0 and ae.shape == (0,) and fij.shape == (0, 3)


def test_float32_model(tmp_path):
    path = export_toy(tmp_path / "toy32.jit.pt", dtype=torch.float32)
    model = NativeModel(path)
    assert model.dtype == "float32"
    atoms = ring_polymer(10)
    e, ae, f, _ = run_native(model, atoms, TOY_ELEMENTS, 4.0)
    e_ref, f_ref, _, _ = reference(ToyMessagePassing(3, 4.0, 2, torch.float64), atoms)
    assert abs(e - e_ref) < 1e-4 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, atol=1e-4)


# ----------------------------------------------------------------------------- real network

def small_polyget():
    nn = pytest.importorskip("polyget.nn")
    torch.manual_seed(0)
    cfg = nn.ModelConfig(elements=["H", "C", "O"], hidden_channels=16, num_layers=2, num_heads=2,
                         num_rbf=8, cutoff=4.0)
    model = nn.PolyGET(cfg).double().eval()
    with torch.no_grad():  # non-trivial normalisation, so that the offsets are exercised
        model.energy_scale.fill_(0.7)
        model.atom_offsets.copy_(torch.tensor([-13.6, -1029.0, -2035.0], dtype=torch.float64))
    return model


def export_polyget(model, path):
    """The real exporter's TorchScript file (python/export.py writes the same NAME.jit.pt)."""
    from polyget.export import export_model

    pt, jit = export_model(model, str(path).replace(".jit.pt", ".pt"), dtype="float64")
    return jit


@pytest.mark.parametrize("structure", ["isolated", "periodic"])
def test_polyget_network_matches_eager_python(tmp_path, structure):
    model = small_polyget()
    path = export_polyget(model, tmp_path / "net.jit.pt")
    atoms = ring_polymer(12, oxygen_every=3) if structure == "isolated" else periodic_melt()
    native_model = NativeModel(path)
    check_against_reference(native_model, model, atoms, model.elements, model.cutoff)


def test_polyget_reach_is_num_layers_plus_one():
    """The default halo (receptive_hops = num_layers + 1) is right for PolyGET: on a chain of
    atoms 3.5 A apart (cutoff 4), atom 0's energy moves with atom num_layers + 1 and not with
    num_layers + 2. If the architecture changes, the C++ default must follow."""
    model = small_polyget()
    n = model.num_layers + 4
    pos = torch.tensor([[3.5 * k, 0.2 * (k % 3), 0.3 * (k % 2)] for k in range(n)],
                       dtype=torch.float64, requires_grad=True)
    ei = torch.tensor([(i, j) for i in range(n) for j in range(n) if abs(i - j) == 1]).T.contiguous()
    species = torch.tensor([k % 3 for k in range(n)])
    e = model(species, ei, pos[ei[1]] - pos[ei[0]])
    (g,) = torch.autograd.grad(e[0], pos)
    reach = model.num_layers + 1
    assert g[reach].norm() > 0
    assert torch.all(g[reach + 1:] == 0)


def test_receptive_hops_metadata(tmp_path):
    """Read from the export, never recomputed: a file without it is refused."""
    meta = toy_metadata(ToyMessagePassing())
    path = save_jit(ToyMessagePassing(), tmp_path / "d.jit.pt", meta, drop=("receptive_hops",))
    expect_error(path, "no receptive_hops record", "python/export.py")
    assert NativeModel(export_toy(tmp_path / "t.jit.pt")).receptive_hops == 2
    expect_error(export_toy(tmp_path / "b.jit.pt", meta={"receptive_hops": 0}), "receptive_hops")


def test_ase_calculator_native_backend(tmp_path):
    """PolyGETCalculator(backend='native') == backend='torch' on an exported file."""
    ase_mod = pytest.importorskip("polyget.ase")
    model = small_polyget()
    path = export_polyget(model, tmp_path / "net.jit.pt")
    atoms = periodic_melt()
    results = {}
    for backend in ("torch", "native"):
        a = atoms.copy()
        a.calc = ase_mod.PolyGETCalculator(str(path), device="cpu", dtype="float64", backend=backend)
        results[backend] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
    assert abs(results["torch"][0] - results["native"][0]) < TOL * max(1, abs(results["torch"][0]))
    np.testing.assert_allclose(results["native"][1], results["torch"][1], atol=TOL, rtol=0)
    np.testing.assert_allclose(results["native"][2], results["torch"][2], atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- errors

def expect_error(path, *fragments, device="cpu"):
    with pytest.raises(ModelError) as err:
        NativeModel(path, device=device)
    msg = str(err.value)
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.jit.pt", "cannot open model file", "nope.jit.pt")


def test_mliap_pickle_is_refused(tmp_path):
    """A torch.save'd Python object (what the ML-IAP NAME.pt is) is not TorchScript."""
    path = tmp_path / "polyget.pt"
    torch.save({"some": "object", "weights": torch.zeros(3)}, path)
    export_toy(tmp_path / "polyget.jit.pt")
    expect_error(path, "torch.save() pickle", "mliap unified", "polyget.jit.pt exists")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(pickle.dumps([1, 2, 3]))
    expect_error(junk, "not a PyTorch/TorchScript file")


def test_torchscript_without_metadata(tmp_path):
    path = save_jit(ToyMessagePassing(), tmp_path / "bare.jit.pt", None)
    expect_error(path, "without polyget metadata")


def test_format_1_file_is_refused_with_advice(tmp_path):
    scripted = torch.jit.script(ToyMessagePassing())
    path = tmp_path / "old.jit.pt"
    torch.jit.save(scripted, str(path), _extra_files={"metadata.json": "{}"})
    expect_error(path, "older polyget (TorchScript format 1", "python/export.py")


@pytest.mark.parametrize("version, hint", [(3, "update polyget"), (1, "re-run python/export.py")])
def test_other_format_version(tmp_path, version, hint):
    path = export_toy(tmp_path / "v.jit.pt", meta={"format_version": version})
    expect_error(path, f"format_version {version}", "reads format_version 2", hint)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jit.pt"
    path.write_bytes(b"")
    expect_error(path, "empty (0 bytes")


@pytest.mark.parametrize("override, fragment", [
    ({"format": "something-else"}, "format is 'something-else'"),
    ({"units": {"energy": "kcal/mol", "length": "Angstrom"}}, "energy=kcal/mol"),
    ({"dtype": "float16"}, "dtype is 'float16'"),
    ({"receptive_hops": 5}, "model.receptive_hops = 2"),
    ({"min_distance": -1.0}, "min_distance must be a number >= 0"),
    ({"dtype": "float32"}, "parameters are"),
    ({"cutoff": -1.0}, "cutoff must be a positive"),
    ({"cutoff": 5.0}, "model.cutoff = 4"),
    ({"num_layers": 3}, "model.num_layers = 2"),
    ({"elements": []}, "elements is empty"),
    ({"elements": ["H", "H", "O"]}, "repeated symbol"),
])
def test_bad_metadata(tmp_path, override, fragment):
    path = export_toy(tmp_path / "bad.jit.pt", meta=override)
    if override.get("dtype") == "float32":  # float64 buffers declared float32: the check must see it
        model = ToyMessagePassing()
        model.register_parameter("w", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))
        path = save_jit(model, tmp_path / "bad.jit.pt", toy_metadata(model, **override))
    expect_error(path, fragment)


def test_missing_metadata_key(tmp_path):
    model = ToyMessagePassing()
    meta = toy_metadata(model)
    path = save_jit(model, tmp_path / "m.jit.pt", meta, drop=("num_layers",))
    expect_error(path, "no num_layers record", "python/export.py")


def test_cuda_request_without_cuda(toy_path):
    if native.cuda_available():
        pytest.skip("a GPU is available here: the CUDA path is exercised instead")
    expect_error(toy_path, "cuda", device="cuda")


def test_bad_inputs(toy_path):
    model = NativeModel(toy_path)
    ei = np.array([[0, 1], [1, 0]])
    vec = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    with pytest.raises(ModelError, match="not an element index"):
        model.compute(np.array([0, 7]), ei, vec)
    with pytest.raises(ModelError, match="refers to an atom outside"):
        model.compute(np.array([0, 1]), np.array([[0, 2], [1, 0]]), vec)
    with pytest.raises(ModelError, match="zero length"):
        model.compute(np.array([0, 1]), np.array([[0, 1], [0, 0]]), np.array([[0.0, 0, 0], [-1.0, 0, 0]]))
    # a periodic self-image (i == j, non-zero vector) is a legitimate edge
    model.compute(np.array([0, 1]), np.array([[0, 1], [0, 1]]), vec)
    with pytest.raises(ModelError, match=r"edge_vec must have shape \[E, 3\]"):
        model.compute(np.array([0, 1]), ei, vec[:1])
    with pytest.raises(ModelError, match="nlocal"):
        model.compute(np.array([0, 1]), ei, vec, nlocal=3)


def test_import_error_message_is_actionable():
    import polyget.native as nat

    saved = nat._core, nat._IMPORT_ERROR
    try:
        nat._core, nat._IMPORT_ERROR = None, ImportError("No module named 'polyget._core'")
        with pytest.raises(ImportError, match="build_native.sh"):
            nat.NativeModel("x.jit.pt")
    finally:
        nat._core, nat._IMPORT_ERROR = saved


def test_metadata_roundtrip(toy_path):
    model = NativeModel(toy_path)
    meta = model.metadata
    assert meta["format"] == "polyget-torchscript" and meta["elements"] == TOY_ELEMENTS
    from polyget import contract

    python_side = contract.read_metadata(toy_path)
    assert {k: python_side[k] for k in meta} == meta
