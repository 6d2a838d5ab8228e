"""python/export.py: checkpoint -> NAME.pt (ML-IAP unified) + NAME.jit.pt (TorchScript)."""

from __future__ import annotations

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
    assert meta["format"] == "polyget-torchscript" and meta["format_version"] == 2
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


def test_metadata_records_are_plain_text(exported):
    """Any TorchScript reader gets the contract with torch.jit.load(..., _extra_files=...)."""
    extra = {"polyget.format": "", "polyget.cutoff": "", "polyget.elements": "",
             "polyget.receptive_hops": "", "polyget.min_distance": ""}
    torch.jit.load(str(exported["jit"]), _extra_files=extra)
    extra = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    assert extra["polyget.format"] == "polyget-torchscript"
    assert float(extra["polyget.cutoff"]) == 4.0 and extra["polyget.elements"] == "H C O"
    assert int(extra["polyget.receptive_hops"]) == 3
    assert float(extra["polyget.min_distance"]) == 0.5


def test_aoti_package_names_and_thread_rules():
    """Per-thread-count package names and the rules that pick one (no compilation here; the
    compiled packages are tested in test_aoti.py, opt-in)."""
    from polyget.compile import find_package, package_mismatch
    from polyget.export import ExportError, aoti_path, parse_threads

    assert aoti_path("d/m.jit.pt", 2).name == "m.aoti-t2.pt2"
    assert aoti_path("d/m.jit.pt").name == "m.aoti.pt2"
    assert parse_threads("2,1,2") == [1, 2] and parse_threads(3) == [3]
    assert parse_threads(None) == [torch.get_num_threads()]
    for bad in ("0", "a,b", "", [0]):
        with pytest.raises(ExportError, match="--aoti-threads"):
            parse_threads(bad)
    meta = {"fingerprint": "abc", "dtype": "float32"}
    pm = {"polyget.format": "polyget-aoti", "polyget.format_version": "1",
          "polyget.fingerprint": "abc", "polyget.dtype": "float32", "polyget.device": "cpu",
          "polyget.isa": "", "polyget.threads": "2"}
    assert package_mismatch(pm, meta, "cpu", 2) is None
    assert "2 thread(s), this run uses 1" in package_mismatch(pm, meta, "cpu", 1)
    assert package_mismatch(dict(pm, **{"polyget.threads": "dynamic"}), meta, "cpu", 1) is None
    assert "stale" in package_mismatch(pm, dict(meta, fingerprint="xyz"), "cpu", 2)
    assert "dtype" in package_mismatch(pm, dict(meta, dtype="float64"), "cpu", 2)
    assert "compiled for cpu" in package_mismatch(pm, meta, "cuda:0", None)
    path, status = find_package(REPO, {"aoti_package": "nope.aoti-t1.pt2", **meta}, "cpu", 1)
    assert path is None and "not found" in status and "--aoti-threads 1" in status
    path, status = find_package(REPO, meta, "cpu", 1)
    assert path is None and status == "TorchScript (no AOTInductor package in the metadata)"
