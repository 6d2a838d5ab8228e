"""One engine contract: python/polyget/contract.py and cpp/contract.h read the same exported file
to the same fields and apply the same rules with the same messages."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from conftest import tiny_model
from polyget import contract
from polyget.export import export_model
from polyget.io import atomic_save, make_checkpoint

core = pytest.importorskip("polyget._core", reason="polyget._core not built (make setup)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    pt, jit = export_model(tiny_model(torch.float64), d / "tiny.pt", dtype="float64",
                           extra_metadata={"calibration": {"offsets": [1.0, 2.0]}})
    return {"pt": pt, "jit": jit}


def contract_fields(meta):
    keys = [k for k, _ in contract.METADATA_KEYS if k not in ("energy_unit", "length_unit")]
    keys += [k for k, _ in contract.OPTIONAL_METADATA_KEYS if k in meta]
    return {k: meta[k] for k in keys + ["units"]}


def test_python_and_cpp_read_the_same_fields(exported):
    py = contract.read_metadata(exported["jit"])
    cpp = core.read_metadata(str(exported["jit"]))
    assert set(cpp) == set(contract_fields(py))
    for key, value in contract_fields(py).items():
        assert cpp[key] == value, key
        assert type(cpp[key]) is type(value), key
    # the NativeModel sees the same, and the ML-IAP pickle carries the same bytes
    assert core.Model(str(exported["jit"]), "cpu").metadata == cpp
    assert contract_fields(contract.read_metadata(exported["pt"])) == contract_fields(py)
    # exact doubles (no rounding through text)
    assert cpp["cutoff"] == py["cutoff"] == 4.0 and cpp["min_distance"] == 0.5
    # optional per-layer exchange records (PolyGET has the pieces: one exchange per layer)
    assert cpp["num_exchanges"] == py["num_exchanges"] == 2 and cpp["exchange_width"] == 128
    assert py["calibration"] == {"offsets": [1.0, 2.0]}  # provenance: Python only


def test_shipped_potential_is_read_alike():
    path = os.path.join(os.path.dirname(__file__), "..", "potentials", "polyget-mini.jit.pt")
    py = contract.read_metadata(path)
    assert core.read_metadata(path) == contract_fields(py)
    assert py["format_version"] == contract.TORCHSCRIPT_VERSION == core.FORMAT_VERSION


def test_same_constants():
    assert core.FORMAT == contract.TORCHSCRIPT_FORMAT
    assert core.EV_TO_KCAL_PER_MOL == contract.EV_TO_KCAL_PER_MOL
    assert core.DEFAULT_MIN_DISTANCE == contract.DEFAULT_MIN_DISTANCE
    assert core.RECORD_PREFIX == contract.RECORD_PREFIX
    assert list(core.METADATA_KEYS) == [k for k, _ in contract.METADATA_KEYS]
    assert core.SPECIAL_BONDS_MESSAGE == contract.SPECIAL_BONDS_MESSAGE
    assert core.MLIAP_MIN_DISTANCE_OVERRIDE == contract.MLIAP_MIN_DISTANCE_OVERRIDE
    assert core.PAIR_MIN_DISTANCE_OVERRIDE == contract.PAIR_MIN_DISTANCE_OVERRIDE


@pytest.mark.parametrize("style", ["metal", "real", "lj", "si", "electron"])
def test_same_unit_rule(style):
    py = contract.lammps_energy_factor(style)
    assert core.lammps_energy_factor(style) == (-1.0 if py is None else py)
    assert core.units_message(style) == contract.units_message(style)


@pytest.mark.parametrize("hops, cutoff, skin", [(3, 4.0, 2.0), (7, 5.0, 1.0), (1, 3.3, 0.3)])
def test_same_halo_rule(hops, cutoff, skin):
    assert core.halo_cutoff(hops, cutoff, skin) == contract.halo_cutoff(hops, cutoff, skin)
    assert core.comm_cutoff_suggestion(hops, cutoff, skin) == \
        contract.comm_cutoff_suggestion(hops, cutoff, skin)
    for rank, ngpu in [(0, 4), (5, 4), (3, 0), (-1, 2)]:
        assert core.gpu_for_rank(rank, ngpu) == contract.gpu_for_rank(rank, ngpu)


@pytest.mark.parametrize("nbonds, lj, coul", [
    (0, [1, 0, 0, 0], [1, 0, 0, 0]),          # no bonds: nothing to drop
    (10, [1, 0, 0, 0], [1, 0, 0, 0]),         # LAMMPS default with bonds: drops
    (10, [1, 1, 1, 1], [1, 1, 1, 1]),
    (10, [1, 1, 1, 0], [1, 1, 1, 0]),         # 1-4 only: still drops (built from bonds)
    (10, [1, 1, 0, 1], [1, 1, 0.5, 1]),       # coul non-zero keeps the pair
    (10, [1, 1e-10, 1, 1], [1, 0, 1, 1]),
])
def test_same_special_bonds_rule(nbonds, lj, coul):
    lj, coul = [float(x) for x in lj], [float(x) for x in coul]
    assert core.special_bonds_drop_pairs(nbonds, lj, coul) == \
        contract.special_bonds_drop_pairs(nbonds, lj, coul)


def test_special_bonds_rule_values():
    assert contract.special_bonds_drop_pairs(5, [1, 1, 1, 0.0], [1, 1, 1, 0.0])
    assert not contract.special_bonds_drop_pairs(5, [1, 0.0, 1, 1], [1, 0.5, 1, 1])


def test_same_min_distance_message():
    args = (1234, 17, 42, 0.0543, 0.5)
    for hint in (contract.MLIAP_MIN_DISTANCE_OVERRIDE, contract.PAIR_MIN_DISTANCE_OVERRIDE):
        assert core.min_distance_message(*args, hint) == contract.min_distance_message(*args, hint)
    msg = contract.min_distance_message(*args, contract.PAIR_MIN_DISTANCE_OVERRIDE)
    assert "atoms 17 and 42 are 0.0543 A apart at step 1234" in msg


@pytest.mark.parametrize("ntypes, given", [
    (3, ["H", "C", "O"]), (3, ["H", "C"]), (2, ["H", "C", "O"]), (2, ["H", "NULL"]),
    (2, ["H", "N"]), (1, []),
])
def test_same_pair_coeff_rule(ntypes, given):
    elements = ["H", "C", "O"]
    py = contract.check_elements_for_types(ntypes, given, elements)
    assert core.check_elements_for_types(ntypes, given, elements) == (py or "")


def test_file_kinds(exported, tmp_path):
    ck = tmp_path / "m.ckpt"
    atomic_save(make_checkpoint(tiny_model(torch.float64)), ck)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"w": torch.zeros(2)}, tmp_path / "dict.pt")
    foreign = tmp_path / "foreign.jit.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    kinds = {p.name: contract.file_kind(p) for p in
             [exported["pt"], exported["jit"], ck, tmp_path / "empty.pt", tmp_path / "text.pt",
              tmp_path / "dict.pt", foreign, tmp_path / "missing.pt", tmp_path]}
    assert kinds == {"tiny.pt": "mliap", "tiny.jit.pt": "torchscript", "m.ckpt": "checkpoint",
                     "empty.pt": "empty", "text.pt": "other", "dict.pt": "torch-pickle",
                     "foreign.jit.pt": "torchscript-foreign", "missing.pt": "missing",
                     tmp_path.name: "directory"}
    # the C++ reader refuses the same files, naming what they are
    for name, frag in [("tiny.pt", "torch.save() pickle"), ("empty.pt", "empty (0 bytes"),
                       ("text.pt", "not a PyTorch/TorchScript file"),
                       ("foreign.jit.pt", "without polyget metadata")]:
        path = exported["pt"] if name == "tiny.pt" else tmp_path / name
        with pytest.raises(core.ModelError, match=frag.replace("(", r"\(").replace(")", r"\)")):
            core.read_metadata(str(path))


def test_atomic_write_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = contract.atomic_write(tmp_path / "a" / "x.bin", b"123")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644 and p.read_bytes() == b"123"
        os.umask(0o077)
        p = contract.atomic_write(tmp_path / "y.ckpt", {"a": torch.zeros(1)})
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_records_roundtrip_exactly():
    meta = {"format": contract.TORCHSCRIPT_FORMAT, "format_version": contract.TORCHSCRIPT_VERSION,
            "elements": ["H", "C"], "cutoff": 0.1 + 0.2, "num_layers": 3, "receptive_hops": 4,
            "dtype": "float32", "units": dict(contract.UNITS), "min_distance": 1 / 3,
            "polyget_version": "x", "torch_version": "y", "extra": [1, 2]}
    recs = contract.metadata_records(meta)
    back = contract.parse_records(recs, "t")
    assert back == meta
    assert np.float64(back["cutoff"]) == 0.1 + 0.2


@pytest.mark.parametrize("records, message", [
    ({"polyget.num_exchanges": "2"}, "has only one of num_exchanges and exchange_width"),
    ({"polyget.num_exchanges": "5", "polyget.exchange_width": "128"},
     "num_exchanges must be num_layers or num_layers + 1, found 5"),
    ({"polyget.num_exchanges": "2", "polyget.exchange_width": "0"},
     "exchange_width must be an integer >= 1, found 0"),
])
def test_same_optional_exchange_rules(tmp_path, exported, records, message):
    """The optional per-layer exchange records are checked alike (same messages)."""
    import zipfile

    src = zipfile.ZipFile(exported["jit"])
    extra = {n.split("/extra/", 1)[1]: src.read(n).decode() for n in src.namelist() if "/extra/" in n}
    for k in ("polyget.num_exchanges", "polyget.exchange_width"):
        extra.pop(k, None)
    extra.update(records)
    path = tmp_path / "bad.jit.pt"
    torch.jit.save(torch.jit.load(str(exported["jit"])), str(path), _extra_files=extra)
    with pytest.raises(Exception) as py_err:
        contract.read_metadata(path)
    with pytest.raises(Exception) as cpp_err:
        core.read_metadata(str(path))
    assert message in str(py_err.value)
    assert str(py_err.value) == str(cpp_err.value)


@pytest.mark.parametrize("env,want", [("", True), ("system", False)])
def test_keep_freed_memory_once_per_process(env, want):
    """The Python engines keep freed memory in the heap as the plugin does; POLYGET_MALLOC=system
    keeps glibc's defaults (in a fresh process: the setting is process-wide)."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    code = ("from polyget import contract; a = contract.keep_freed_memory(); "
            "b = contract.keep_freed_memory(); print(a, b)")
    envd = {k: v for k, v in os.environ.items() if k != "POLYGET_MALLOC"}
    if env:
        envd["POLYGET_MALLOC"] = env
    out = subprocess.run([sys.executable, "-c", code], env=envd, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(want), str(want)]
