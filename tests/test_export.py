"""python/export.py: checkpoint -> NAME.pt (ML-IAP unified) + NAME.jit.pt (TorchScript)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import polymer_like, tiny_model
from polyget.io import atomic_save, load_torchscript, make_checkpoint
from polyget.lammps.mliap import PolyGETMLIAP, load, read_metadata

from test_lammps_common import REPO

# --no-aoti: the AOTInductor package (minutes of compilation) has its own test (test_aoti.py)
EXPORT = [sys.executable, str(REPO / "python" / "export.py"), "--no-aoti"]


def run_export(*args):
    return subprocess.run(EXPORT + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model = tiny_model(torch.float64)
    ckpt = d / "tiny.ckpt"
    atomic_save(make_checkpoint(model), ckpt)
    res = run_export(ckpt, "-o", d / "out" / "tiny.pt")
    assert res.returncode == 0, res.stdout
    return {"dir": d, "ckpt": ckpt, "model": model, "out": res.stdout,
            "pt": d / "out" / "tiny.pt", "jit": d / "out" / "tiny.jit.pt"}


def test_writes_both_files_with_metadata(exported):
    assert exported["pt"].is_file() and exported["jit"].is_file()
    meta = read_metadata(str(exported["jit"]))
    assert meta["format"] == "polyget-torchscript" and meta["format_version"] == 1
    assert meta["elements"] == ["H", "C", "O"]
    assert meta["cutoff"] == 4.0 and meta["num_layers"] == 2 and meta["dtype"] == "float64"
    assert meta["receptive_hops"] == 3
    assert meta["units"] == {"energy": "eV", "length": "Angstrom"}
    assert meta["polyget_version"] and meta["torch_version"]
    obj = load(str(exported["pt"]))
    assert isinstance(obj, PolyGETMLIAP)
    assert obj.metadata["elements"] == meta["elements"] and obj.num_layers == 2
    assert "pair_style mliap unified" in exported["out"]
    assert "comm_modify cutoff 14.0" in exported["out"]


def test_jit_loads_with_polyget_io_and_matches_eager(exported):
    module, meta = load_torchscript(exported["jit"])
    a = polymer_like()
    from polyget.nn.graph import atoms_to_graph

    g = atoms_to_graph(a, meta["elements"], meta["cutoff"])
    e1 = module(g.species, g.edge_index, g.edge_vec.double())
    e2 = exported["model"](g.species, g.edge_index, g.edge_vec.double())
    np.testing.assert_allclose(e1.detach().numpy(), e2.detach().numpy(), atol=1e-12)


def test_mliap_file_holds_the_same_torchscript(exported):
    obj = load(str(exported["pt"]))
    assert obj.torchscript == exported["jit"].read_bytes()
    assert obj.rcutfac == pytest.approx(2.0)


def test_float32_and_cuda_request(exported, tmp_path):
    res = run_export(exported["ckpt"], "-o", tmp_path / "m32", "--dtype", "float32",
                     "--device", "cuda")
    assert res.returncode == 0, res.stdout
    assert (tmp_path / "m32.pt").is_file() and (tmp_path / "m32.jit.pt").is_file()
    obj = load(str(tmp_path / "m32.pt"))
    assert obj.dtype_name == "float32" and obj.device_request == "cuda"
    module, meta = load_torchscript(tmp_path / "m32.jit.pt")
    assert meta["dtype"] == "float32"
    assert next(module.parameters()).dtype == torch.float32


@pytest.mark.parametrize("kind", ["text", "dict", "pickle", "jit", "mliap", "missing"])
def test_refuses_non_polyget_files(exported, tmp_path, kind):
    bad = tmp_path / ("bad_" + kind)
    if kind == "text":
        bad.write_text("not a checkpoint\n")
    elif kind == "dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    elif kind == "pickle":
        bad.write_bytes(pickle.dumps({"format": "something-else"}))
    elif kind == "jit":
        bad = exported["jit"]
    elif kind == "mliap":
        bad = exported["pt"]
    res = run_export(bad, "-o", tmp_path / "x.pt")
    assert res.returncode == 2, res.stdout
    assert "export: error:" in res.stdout
    assert "Traceback" not in res.stdout
    if kind in ("jit", "mliap"):
        assert "not a training checkpoint" in res.stdout
    elif kind == "missing":
        assert "no such file" in res.stdout
    else:
        assert "not a polyget checkpoint" in res.stdout
    assert not (tmp_path / "x.pt").exists()


def test_polyget_cli_export(exported, tmp_path):
    res = subprocess.run([sys.executable, "-m", "polyget.cli", "export", str(exported["ckpt"]),
                          "-o", str(tmp_path / "c.pt"), "--no-aoti"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300,
                         cwd=str(REPO / "python"))
    if res.returncode != 0 and "No module named" in res.stdout:
        pytest.skip("polyget.cli is not runnable as a module here")
    assert res.returncode == 0, res.stdout
    assert (tmp_path / "c.jit.pt").is_file()


def test_metadata_json_is_plain_json(exported):
    extra = {"metadata.json": ""}
    torch.jit.load(str(exported["jit"]), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["format"] == "polyget-torchscript"
