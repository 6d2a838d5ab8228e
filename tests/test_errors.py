"""Bad input gives an error that says what is wrong and what to do."""

import pickle

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import polymer_like, tiny_model
from polyget.ase import PolyGETCalculator
from polyget.io import ModelFileError, atomic_save, load_checkpoint, load_model, make_checkpoint
from polyget.nn.graph import StructureError


def test_unknown_element_names_model_elements(ckpt_path):
    atoms = polymer_like()
    atoms[0].symbol = "N"
    calc = PolyGETCalculator(ckpt_path)
    with pytest.raises(StructureError, match=r"\['N'\].*\['H', 'C', 'O'\]"):
        calc.get_forces(atoms)


def test_nan_positions(ckpt_path):
    atoms = polymer_like()
    atoms.positions[3, 1] = np.nan
    with pytest.raises(StructureError, match="NaN"):
        PolyGETCalculator(ckpt_path).get_potential_energy(atoms)


def test_overlapping_atoms_and_wrong_units(ckpt_path):
    atoms = polymer_like()
    atoms.positions *= 0.1  # nm given as Angstrom
    with pytest.raises(StructureError, match="overlapping.*Angstrom"):
        PolyGETCalculator(ckpt_path).get_forces(atoms)


def test_stress_needs_periodic_cell(ckpt_path):
    with pytest.raises(StructureError, match="periodic"):
        PolyGETCalculator(ckpt_path).get_stress(polymer_like())


@pytest.mark.parametrize("kind", ["missing", "text", "pickle", "torch_dict", "version", "torchscript"])
def test_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / f"model.{kind}"
    if kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "torch_dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "version":
        ck = make_checkpoint(tiny_model())
        ck["format_version"] = 999
        atomic_save(ck, path)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(tiny_model()), str(path))
    expected = {"missing": "no such file", "text": "not a polyget checkpoint", "pickle": "not a polyget checkpoint",
                "torch_dict": "not a polyget checkpoint", "version": "format 999",
                "torchscript": "TorchScript"}[kind]
    with pytest.raises(ModelFileError, match=expected):
        load_checkpoint(path)
    if kind != "torchscript":  # the calculator takes TorchScript only with polyget metadata
        with pytest.raises(ModelFileError):
            PolyGETCalculator(path)


def test_torchscript_without_metadata_is_refused(tmp_path):
    path = tmp_path / "bare.jit.pt"
    torch.jit.save(torch.jit.script(tiny_model()), str(path))
    with pytest.raises(ModelFileError, match="metadata"):
        PolyGETCalculator(path)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "m.ckpt"
    atomic_save(make_checkpoint(tiny_model()), path)
    before = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"x": Boom()}, path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]


def test_cuda_request_without_cuda(ckpt_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="cuda"):
        PolyGETCalculator(ckpt_path, device="cuda")


def test_model_config_errors():
    from polyget.nn import ModelConfig, PolyGET

    with pytest.raises(ValueError, match="divisible"):
        PolyGET(ModelConfig(hidden_channels=30, num_heads=4))
    with pytest.raises(ValueError, match="radial basis"):
        PolyGET(ModelConfig(rbf_type="bessel"))
    with pytest.raises(ValueError, match="unknown model hyperparameters"):
        ModelConfig.from_dict({"hiden": 3})
