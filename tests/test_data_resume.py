"""Resumable generation and labelling: an interrupted run continues without recomputing or
duplicating frames, and gives the same dataset as an uninterrupted run."""

import json
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("tblite")

from polyget.data import io as dio  # noqa: E402
from polyget.data.runner import SampleConfig, generate, label_file  # noqa: E402

CALC_MODULE = textwrap.dedent('''
    import numpy as np
    from tblite.ase import TBLite

    class CountingGFN2(TBLite):
        """GFN2-xTB that records every geometry it computes and can 'crash' the process."""
        geometries = []
        crash_at = None

        def __init__(self, **kw):
            super().__init__(method="GFN2-xTB", verbosity=0, **kw)

        def calculate(self, atoms=None, properties=None, system_changes=None):
            cls = type(self)
            if cls.crash_at is not None and len(cls.geometries) >= cls.crash_at:
                raise KeyboardInterrupt("simulated crash")
            cls.geometries.append(np.array(atoms.positions))
            super().calculate(atoms, properties or ["energy"], system_changes or [])
''')


@pytest.fixture
def counting(tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    (d / "crashcalc_mod.py").write_text(CALC_MODULE)
    monkeypatch.syspath_prepend(str(d))
    sys.modules.pop("crashcalc_mod", None)
    import crashcalc_mod

    yield crashcalc_mod.CountingGFN2
    sys.modules.pop("crashcalc_mod", None)


def _cfg(name="t"):
    return SampleConfig(method="ase:crashcalc_mod:CountingGFN2", families=["ETH"], loops=[1, 2],
                        n_conf=2, temperatures=[300.0, 600.0], md_frames=4, rattle_frames=2,
                        stride=3, equil_steps=3, relax_steps=3, name=name)


def _by_id(frames):
    return {a.info["frame_id"]: a for a in frames}


def test_interrupted_generation_resumes_without_recompute(tmp_path, counting):
    cfg = _cfg()
    ref = generate(cfg, str(tmp_path / "ref"), workers=1, progress_bar=False)
    n_calls_ref = len(counting.geometries)
    assert ref["n_frames"] == 2 * 2 * (4 + 2) == 24
    assert ref["counts"] == {"ETH": {"1": 12, "2": 12}}
    ref_frames = _by_id(dio.read_frames(tmp_path / "ref" / "t.extxyz.gz"))

    # crash inside an MD trajectory: two calls after the 2nd frame of trajectory 0 of the first
    # system was computed (so that trajectory has 2 of its 4 frames on disk)
    ref_geoms = list(counting.geometries)
    second = sorted((a for a in ref_frames.values()
                     if a.info["system"] == "ETH_L2" and a.info["traj"] == 0),
                    key=lambda a: a.info["step"])[1]
    idx = [i for i, g in enumerate(ref_geoms) if g.shape == second.positions.shape
           and np.abs(g - second.positions).max() < 1e-6]
    assert len(idx) == 1
    counting.geometries.clear()
    counting.crash_at = idx[0] + 2
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, str(run), workers=1, progress_bar=False)
    written = [a for f in sorted((run / "frames").glob("*.extxyz"))
               for a in dio.read_complete(f)]
    assert 0 < len(written) < 24
    per_traj = {}
    for a in written:
        key = (a.info["system"], int(a.info["traj"]))
        per_traj[key] = per_traj.get(key, 0) + 1
    assert per_traj == {("ETH_L2", 0): 2}, per_traj
    # a half-written frame at the end of a file (crash during a write) is dropped
    last = sorted((run / "frames").glob("*.extxyz"))[-1]
    n_last = len(dio.read_complete(last))
    with open(last, "a") as fh:
        fh.write("21\nProperties=species:S:1:pos:R:3 energy=-1.0\nC 0.0 0.0\n")
    assert len(dio.read_complete(last)) == n_last
    assert last.read_text().endswith("\n") and "energy=-1.0" not in last.read_text()

    counting.geometries.clear()
    counting.crash_at = None
    man = generate(cfg, str(run), workers=1, progress_bar=False)
    resumed_calls = list(counting.geometries)
    assert man["n_frames"] == 24 and man["counts"] == ref["counts"]
    final = dio.read_frames(run / "t.extxyz.gz")
    ids = [a.info["frame_id"] for a in final]
    assert len(ids) == len(set(ids)) == 24          # no duplicates
    assert set(ids) == set(ref_frames)
    # no frame written before the crash was computed again
    for a in written:
        for g in resumed_calls:
            if g.shape == a.positions.shape:
                assert np.abs(g - a.positions).max() > 1e-6, a.info["frame_id"]
    assert len(resumed_calls) < n_calls_ref
    # and the resumed dataset is the uninterrupted one (MD continues from stored momenta)
    for a in final:
        r = ref_frames[a.info["frame_id"]]
        np.testing.assert_allclose(a.positions, r.positions, atol=1e-5)
        assert a.get_potential_energy() == pytest.approx(r.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), r.get_forces(), atol=1e-3)
    # per-frame metadata
    a = final[0]
    assert {"family", "loop", "smiles", "method", "frame_id", "config_type"} <= set(a.info)
    assert "momenta" not in a.arrays  # dropped from the merged file
    manifest = json.loads((run / "t.manifest.json").read_text())
    assert manifest["method"] == "ase:crashcalc_mod:CountingGFN2"
    assert manifest["units"]["forces"] == "eV/Angstrom"
    assert set(manifest["timing_per_system"]) == {"ETH_L1", "ETH_L2"}


def test_interrupted_labelling_resumes(tmp_path, counting):
    src = tmp_path / "in.extxyz"
    from polyget.data.build import build

    frames = build("ETH", 1, n_conf=6, seed=3)
    dio.write_frames(src, frames)
    out = tmp_path / "out.extxyz"
    counting.geometries.clear()
    counting.crash_at = 4
    with pytest.raises(KeyboardInterrupt):
        label_file(str(src), str(out), "ase:crashcalc_mod:CountingGFN2", progress_bar=False)
    assert len(dio.read_complete(out)) == 4
    counting.geometries.clear()
    counting.crash_at = None
    res = label_file(str(src), str(out), "ase:crashcalc_mod:CountingGFN2", progress_bar=False)
    assert res == {**res, "selected": 6, "new": 2, "failed": 0, "already_done": 4}
    assert len(counting.geometries) == 2               # only the two missing frames computed
    done = dio.read_complete(out)
    assert [a.info["frame_id"] for a in done] == [f"in.extxyz:{i}" for i in range(6)]
    # a third run has nothing to do
    res = label_file(str(src), str(out), "ase:crashcalc_mod:CountingGFN2", progress_bar=False)
    assert res["new"] == 0 and res["already_done"] == 6
    man = json.loads((tmp_path / "out.manifest.json").read_text())
    assert man["n_frames"] == 6 and man["counts"] == {"ETH": {"1": 6}}
    assert [r["new"] for r in man["runs"]] == [2, 0]  # the crashed run wrote no manifest


def test_parallel_run_equals_serial(tmp_path):
    cfg = SampleConfig(method="gfn2", families=["ETH", "CK1"], loops=[1], n_conf=1,
                       md_frames=2, rattle_frames=1, stride=2, equil_steps=2, relax_steps=2,
                       name="p")
    a = generate(cfg, str(tmp_path / "serial"), workers=1, progress_bar=False)
    b = generate(cfg, str(tmp_path / "par"), workers=2, progress_bar=False)
    assert a["counts"] == b["counts"] == {"ETH": {"1": 3}, "CK1": {"1": 3}}
    fa = _by_id(dio.read_frames(tmp_path / "serial" / "p.extxyz.gz"))
    fb = _by_id(dio.read_frames(tmp_path / "par" / "p.extxyz.gz"))
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_allclose(fa[k].get_forces(), fb[k].get_forces(), atol=1e-6)



def test_generate_cli_with_user_monomer(tmp_path, capsys):
    from polyget.data.cli import main

    out = tmp_path / "ox"
    rc = main(["generate", "--monomer", "OXE=C1COC1", "--loops", "1,2", "--n-conf", "1",
               "--md-frames", "2", "--rattle-frames", "1", "--stride", "2", "--equil-steps",
               "2", "--workers", "1", "--no-progress", "--name", "ox", "-o", str(out)])
    assert rc == 0
    man = json.loads((out / "ox.manifest.json").read_text())
    assert man["counts"] == {"OXE": {"1": 3, "2": 3}}
    frames = dio.read_frames(out / "ox.extxyz.gz")
    assert sorted({len(a) for a in frames}) == [10, 20]  # oxetane C3H6O, its 2-loop
    assert {a.info["smiles"] for a in frames} == {"C1COC1"}
    assert main(["generate", "--monomer", "BAD=CCO", "-o", str(tmp_path / "bad")]) == 2
    assert "'CCO' has no ring" in capsys.readouterr().err
    assert main(["generate", "--monomer", "nosmiles", "-o", str(tmp_path / "bad")]) == 2
    assert "expected NAME=SMILES" in capsys.readouterr().err


def test_a_failing_system_does_not_stop_the_run(tmp_path, monkeypatch):
    import polyget.data.runner as R

    real = R.run_system

    def flaky(cfg, family, loop, outdir, progress=None):
        if family == "CK1":
            raise RuntimeError("embedding failed (simulated)")
        return real(cfg, family, loop, outdir, progress)

    monkeypatch.setattr(R, "run_system", flaky)
    cfg = SampleConfig(method="gfn2", families=["ETH", "CK1"], loops=[1], n_conf=1,
                       md_frames=1, rattle_frames=1, stride=2, equil_steps=0, relax_steps=0,
                       name="f")
    man = generate(cfg, str(tmp_path), workers=1, progress_bar=False)
    assert man["counts"] == {"ETH": {"1": 2}, "CK1": {"1": 0}}
    assert man["system_errors"] == {"CK1_L1": "RuntimeError: embedding failed (simulated)"}
