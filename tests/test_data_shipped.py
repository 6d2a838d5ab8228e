"""The shipped small GFN2-xTB dataset (data/poly-mini-gfn2.extxyz.gz): loads with ase.io.read,
has the promised families/loop sizes/metadata, real labels; splits and stats work on it."""

import json
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "poly-mini-gfn2.extxyz.gz"
MANIFEST = ROOT / "data" / "poly-mini-gfn2.manifest.json"


@pytest.fixture(scope="module")
def frames():
    return ase.io.read(DATA, ":")


def test_file_is_small_and_has_manifest(frames):
    assert DATA.stat().st_size < 4 * 1024 ** 2
    man = json.loads(MANIFEST.read_text())
    assert man["format"] == "polyget-data-manifest"
    assert man["method"] == "GFN2-xTB"
    assert man["units"] == {"energy": "eV", "forces": "eV/Angstrom", "length": "Angstrom"}
    assert man["n_frames"] == len(frames)
    assert sum(sum(v.values()) for v in man["counts"].values()) == len(frames)
    for k in ("tblite", "rdkit", "ase"):
        assert man["versions"][k]


def test_contents(frames):
    from polyget.data.build import min_pair_distance, n_fragments
    from polyget.data.families import get_family

    assert 300 <= len(frames) <= 1000
    fams = Counter(a.info["family"] for a in frames)
    assert len(fams) >= 8
    loops = Counter(int(a.info["loop"]) for a in frames)
    assert set(loops) == {1, 3, 4, 5, 6}
    assert loops[6] >= 20  # the unseen-size test set
    for fam in fams:
        assert {int(a.info["loop"]) for a in frames if a.info["family"] == fam} == {1, 3, 4, 5, 6}
    for a in frames:
        f = get_family(a.info["family"])
        assert a.info["smiles"] == f.smiles
        assert a.info["method"] == "GFN2-xTB"
        assert len(a) == int(a.info["loop"]) * f.n_atoms
        forces = a.get_forces()
        assert forces.shape == (len(a), 3) and np.all(np.isfinite(forces))
        assert np.abs(forces.sum(axis=0)).max() < 1e-2  # isolated molecule: no net force
        e = a.get_potential_energy()
        assert -300 < e / len(a) < -20  # GFN2 total energies: roughly -40 eV per atom
        assert min_pair_distance(a) > 0.7
    for a in frames[::50]:
        assert n_fragments(a) == 1
    ids = [a.info["frame_id"] for a in frames]
    assert len(set(ids)) == len(ids)
    kinds = Counter(a.info["config_type"] for a in frames)
    assert kinds["md"] > kinds["rattle"] > 0


def test_labels_are_real_gfn2(frames):
    pytest.importorskip("tblite")
    from polyget.data.labels import label, make_calculator

    calc = make_calculator("gfn2")
    small = [a for a in frames if len(a) <= 30][::37][:4]
    assert len(small) >= 3
    for a in small:
        fresh = label(a, calc)
        assert fresh.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-5)
        # MD frames were computed with the previous step's density as SCF guess: agreement is at
        # the SCF convergence level (~1e-4 eV/A), far below any method or unit difference
        np.testing.assert_allclose(fresh.get_forces(), a.get_forces(), atol=1e-3)


def test_splits(frames):
    from polyget.data.splits import split_frames

    s = split_frames(frames, test_loops=(6,), heldout_families=("OTH2",), val_fraction=0.1,
                     seed=1)
    assert {int(a.info["loop"]) for a in s["train"] + s["val"]} == {1, 3, 4, 5}
    assert {int(a.info["loop"]) for a in s["test_size"]} == {6}
    assert {a.info["family"] for a in s["test_family"]} == {"OTH2"}
    assert not any(a.info["family"] == "OTH2" for a in s["train"] + s["val"] + s["test_size"])
    n_trainval = len(s["train"]) + len(s["val"])
    assert len(s["val"]) == round(0.1 * n_trainval)
    assert sum(len(v) for v in s.values()) == len(frames)


def test_stats_and_split_commands(frames, tmp_path, capsys):
    from polyget.data import io as dio
    from polyget.data.cli import main

    sub = tmp_path / "sub.extxyz.gz"  # every 5th frame: keeps the test fast
    dio.write_frames(sub, frames[::5])
    assert main(["stats", str(sub), "--plot", str(tmp_path / "fig2.png"),
                 "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "ALL" in out and "LAC2" in out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert rows[-1]["family"] == "ALL" and rows[-1]["frames"] == len(frames[::5])
    assert 0.3 < rows[-1]["force_mean"] < 5.0  # eV/A at 300-600 K
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    assert main(["split", str(sub), "--heldout-families", "ETH", "-o",
                 str(tmp_path / "sp")]) == 0
    counts = json.loads((tmp_path / "sp" / "splits.json").read_text())["counts"]
    assert counts["test_family"] > 0 and counts["test_size"] > 0 and counts["md_only"] == 0
    back = ase.io.read(tmp_path / "sp" / "test_size.extxyz.gz", ":")
    assert len(back) == counts["test_size"]


def test_compare_two_labellings(frames):
    from ase.calculators.singlepoint import SinglePointCalculator

    from polyget.data.stats import compare

    ref = frames[:40]
    other = []
    for a in ref:
        b = a.copy()
        b.info = dict(a.info)
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy() + 3.0 * len(a),
                                       forces=a.get_forces() + 0.1)
        other.append(b)
    same = compare(ref, ref)
    assert same["frames"] == 40 and same["force_mae"] == 0.0 and same["force_r"] > 0.999999
    c = compare(ref, other[::-1])  # matched by frame_id, not by order
    assert c["force_mae"] == pytest.approx(0.1)
    assert c["energy_mae_per_atom"] == pytest.approx(0.0, abs=1e-9)  # constant offset removed
    with pytest.raises(ValueError, match="frame_id"):
        compare(ref, [])


PBE = ROOT / "data" / "poly-mini-pbe.extxyz.gz"


def test_shipped_pbe_check_set(frames):
    from polyget.data.stats import compare

    pbe = ase.io.read(PBE, ":")
    man = json.loads((ROOT / "data" / "poly-mini-pbe.manifest.json").read_text())
    assert len(pbe) == man["n_frames"] == 40
    assert man["method"] == "PBE" and man["method_settings"]["basis"] == "def2-SVP"
    assert {a.info["method"] for a in pbe} == {"PBE"}
    assert {a.info["source_method"] for a in pbe} == {"GFN2-xTB"}
    assert len({a.info["family"] for a in pbe}) == 10
    gfn2 = {a.info["frame_id"]: a for a in frames}
    for a in pbe:
        np.testing.assert_allclose(a.positions, gfn2[a.info["frame_id"]].positions, atol=1e-7)
    # GFN2-xTB vs PBE on the same geometries: a different surface (cf. ENV.md: MAE 0.3 eV/A)
    c = compare(pbe, frames)
    assert c["frames"] == 40
    assert 0.15 < c["force_mae"] < 0.6 and c["force_r"] > 0.9


@pytest.mark.slow
def test_shipped_pbe_labels_are_real():
    pytest.importorskip("pyscf")
    from polyget.data.labels import label, make_calculator

    pbe = ase.io.read(PBE, ":")
    small = min(pbe, key=len)  # a 7-atom ethylene oxide frame: ~5-20 s
    fresh = label(small, make_calculator("pbe"))
    assert fresh.get_potential_energy() == pytest.approx(small.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(fresh.get_forces(), small.get_forces(), atol=1e-4)
