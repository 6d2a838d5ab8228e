"""Dataset v1 (data/poly24-v1-*): all 24 families at every loop size, real GFN2-xTB labels, the
15-loop MD test systems, the PBE check set; and each sampler of the v1 preset on a small system.
"""

import json
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
V1 = DATA / "poly24-v1-gfn2.extxyz.xz"
LOOPS15 = DATA / "poly24-v1-gfn2-loops15.extxyz.xz"
PBE = DATA / "poly24-v1-pbe.extxyz.xz"


@pytest.fixture(scope="module")
def v1():
    from polyget.data.io import read_frames  # ase.io.read, decompressed in memory first
    return read_frames(V1)


def test_v1_families_and_loops(v1):
    from polyget.data.families import FAMILIES

    assert len(v1) >= 20000
    counts = Counter((a.info["family"], int(a.info["loop"])) for a in v1)
    assert {f for f, _ in counts} == set(FAMILIES)
    for fam in FAMILIES:
        for L in range(1, 7):
            # balanced: every system within 18 % of the planned 146 frames (the 7-atom ethylene oxide
            # monomer loses the most to de-duplication: 121)
            assert 120 <= counts[(fam, L)] <= 146, (fam, L, counts[(fam, L)])
    samplers = Counter(a.info["config_type"] for a in v1)
    assert set(samplers) == {"md", "rattle", "mmff-md", "normal-mode"}
    assert samplers["md"] >= 0.06 * len(v1)          # the reference method's own MD is there
    ids = [a.info["frame_id"] for a in v1]
    assert len(set(ids)) == len(ids)


def test_v1_labels_are_sane(v1):
    from polyget.data.families import get_family

    for a in v1[::97]:
        f = a.get_forces()
        assert len(a) == int(a.info["loop"]) * get_family(a.info["family"]).n_atoms
        assert np.all(np.isfinite(f)) and np.abs(f.sum(axis=0)).max() < 1e-2
        assert -300 < a.get_potential_energy() / len(a) < -20
        assert a.info["method"] == "GFN2-xTB"
    fmax = np.array([np.abs(a.get_forces()).max() for a in v1[::11]])
    assert np.median(fmax) > 0.5 and fmax.max() < 40.0   # neither all tiny nor exploding


def test_v1_manifest(v1):
    man = json.loads((DATA / "poly24-v1-gfn2.manifest.json").read_text())
    assert man["n_frames"] == len(v1) and man["method"] == "GFN2-xTB"
    assert man["units"] == {"energy": "eV", "forces": "eV/Angstrom", "length": "Angstrom"}
    assert man["sampling"]["mmff_frames"] > 0 and man["sampling"]["dedup_rmsd"] > 0
    for k in ("tblite", "rdkit", "ase"):
        assert man["versions"][k]
    s = man["timing_per_system"]["CK1_L1"]
    assert s["reference_calls"] > 0 and s["seconds_per_call"] > 0


def test_size_on_disk():
    total = sum(p.stat().st_size for p in DATA.glob("poly24-v1-*"))
    assert total < 50 * 1024 ** 2


def test_v1_relabel_random_frames_with_gfn2(v1):
    """A few random small frames re-labelled with GFN2 now give the stored forces."""
    pytest.importorskip("tblite")
    from polyget.data.labels import label, make_calculator

    rng = np.random.default_rng(2026)
    small = [a for a in v1 if len(a) <= 40]
    calc = make_calculator("gfn2")
    for k in rng.choice(len(small), size=4, replace=False):
        a = small[int(k)]
        lab = label(a.copy(), calc)
        assert np.abs(lab.get_forces() - a.get_forces()).max() < 1e-3
        assert abs(lab.get_potential_energy() - a.get_potential_energy()) < 1e-3


def test_15_loops():
    frames = ase.io.read(LOOPS15, ":")  # small file: ase.io.read directly
    sizes = {"CK6": 360, "OTH4": 360, "LAC2": 180, "LAC5": 240}
    c = Counter(a.info["family"] for a in frames)
    for fam, n in sizes.items():
        assert c[fam] >= 25
        assert all(len(a) == n for a in frames if a.info["family"] == fam)
    for a in frames:
        assert int(a.info["loop"]) == 15 and np.all(np.isfinite(a.get_forces()))


def test_pbe_check_set(v1):
    """310 PBE/def2-SVP frames of monomers and 2-loops (<= 18 atoms, 14 families), drawn from
    the GFN2 set by frame_id (docs/data.md)."""
    pbe = ase.io.read(PBE, ":")
    assert len(pbe) >= 300
    gfn2 = {a.info["frame_id"]: a for a in v1}
    fams = set()
    for a in pbe:
        g = gfn2[a.info["frame_id"]]                       # drawn from the GFN2 set
        assert np.allclose(a.get_positions(), g.get_positions(), atol=1e-6)
        assert len(a) <= 18 and int(a.info["loop"]) <= 2
        assert a.info["method"] == "PBE" and np.all(np.isfinite(a.get_forces()))
        fams.add(a.info["family"])
    assert len(fams) >= 12
    assert {int(a.info["loop"]) for a in pbe} == {1, 2}


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", ["mmff-md", "normal-mode", "rattle", "md"])
def test_each_sampler_on_a_small_system(tmp_path, sampler):
    """Each sampler of the v1 preset alone on ethylene oxide's 2-loop: finite GFN2 labels and
    geometries that pass the builders' checks (no pair closer than 0.7 A, one molecule)."""
    pytest.importorskip("tblite")
    from polyget.data.build import min_pair_distance, n_fragments
    from polyget.data.runner import PRESETS, SampleConfig, run_system

    cfg = SampleConfig(**{**PRESETS["v1"], "families": ["ETH"], "loops": [2], "n_conf": 2,
                          "md_trajs": 0, "md_frames": 0, "rattle_frames": 0, "mmff_frames": 0,
                          "nm_frames": 0})
    n = 3
    if sampler == "mmff-md":
        cfg.mmff_frames, cfg.mmff_stride, cfg.mmff_equil = n, 20, 20
    elif sampler == "normal-mode":
        cfg.nm_frames = n
    elif sampler == "rattle":
        cfg.rattle_frames = n
    else:
        cfg.md_trajs, cfg.md_frames, cfg.stride, cfg.equil_steps = 1, n, 4, 4
    res = run_system(cfg, "ETH", 2, str(tmp_path))
    frames = ase.io.read(tmp_path / "frames" / "ETH_L2.extxyz", ":")
    assert res["new_frames"] == len(frames) >= n
    for a in frames:
        assert a.info["config_type"] == sampler
        assert np.all(np.isfinite(a.get_forces())) and np.isfinite(a.get_potential_energy())
        assert min_pair_distance(a) > 0.7 and n_fragments(a) == 1
    timing = json.loads((tmp_path / "frames" / "ETH_L2.timing.json").read_text())
    st = timing["samplers"][sampler]
    assert st["kept"] == len(frames) and st["label_calls"] >= len(frames)
    # resuming computes nothing new
    assert run_system(cfg, "ETH", 2, str(tmp_path))["new_frames"] == 0


def test_dedup_drops_near_duplicates():
    from polyget.data.mmff import Deduper, kabsch_rmsd

    rng = np.random.default_rng(0)
    p = rng.normal(size=(10, 3))
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))                        # a proper rotation
    assert kabsch_rmsd(p, p @ rot.T + 1.0) < 1e-6            # rotation + translation
    d = Deduper(0.05)
    d.add(p)
    assert not d.is_new(p @ rot.T + 0.001)
    assert d.is_new(p + rng.normal(0, 0.2, size=p.shape))


def test_mmff_forces_are_the_gradient():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from polyget.data.build import mol_to_atoms
    from polyget.data.mmff import MMFFCalculator

    m = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(m, randomSeed=1)
    a = mol_to_atoms(m)
    calc = MMFFCalculator(m)
    a.calc = calc
    f = a.get_forces()
    num = calc.calculate_numerical_forces(a, d=1e-4)
    assert np.abs(f - num).max() < 1e-4
