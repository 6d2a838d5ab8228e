"""experiments/md_long.py (the long 15-loop MD) is resumable: a run cut into restart chunks and
continued by a second invocation gives the trajectory of one unbroken run (positions to 1e-8 A,
float64 toy model), and a loop whose watchdog fires is recorded as broken and not continued."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from test_native_common import export_toy
from test_native_lammps import LMP, PLUGIN

pytestmark = pytest.mark.lammps

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "experiments"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    if LMP is None or not PLUGIN.is_file():
        pytest.skip("pair_style polyget plugin not built (make setup)")
    return export_toy(tmp_path_factory.mktemp("toy") / "toy.jit.pt", cutoff=4.0, num_layers=2)


def _final(out, fam="LAC2"):
    import ase.io
    st = json.loads((out / fam / "state.json").read_text())
    k = st["chunks"] - 1
    import md_long
    return st, ase.io.read(md_long._dump_of(out / fam, k), -1, format="lammps-dump-text")


def test_chunks_and_resume_equal_one_run(toy, tmp_path):
    import md_long
    common = ["--families", "LAC2", "--model", str(toy), "--every", "10", "--lmp", LMP]
    # one chunk of 20 steps
    md_long.main(["run", "--ps", "0.01", "--chunk-ps", "0.01", "--out", str(tmp_path / "one")] + common)
    # chunks of 10 steps: the first invocation stops at its target, the second continues it
    md_long.main(["run", "--ps", "0.005", "--chunk-ps", "0.005", "--out", str(tmp_path / "two")] + common)
    st, _ = _final(tmp_path / "two")
    assert st["chunks"] == 1 and st["steps"] == 10
    md_long.main(["run", "--ps", "0.01", "--chunk-ps", "0.005", "--out", str(tmp_path / "two")] + common)
    st1, a = _final(tmp_path / "one")
    st2, b = _final(tmp_path / "two")
    assert st1["steps"] == st2["steps"] == 20 and st2["chunks"] == 2
    assert np.abs(a.positions - b.positions).max() < 1e-8
    assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-7


def test_broken_loop_is_not_continued(toy, tmp_path):
    """The toy potential pulls every pair towards 1.6 A: with bond_stretch 1.3 the C-H bonds
    trip the plugin's watchdog; the state records it and a further call runs nothing."""
    import md_long
    args = ["run", "--families", "LAC2", "--model", str(toy), "--every", "10", "--lmp", LMP,
            "--ps", "0.1", "--chunk-ps", "0.05", "--watchdog", "bond_stretch 1.3",
            "--out", str(tmp_path)]
    md_long.main(args)
    st = json.loads((tmp_path / "LAC2" / "state.json").read_text())
    assert st["broken"] and "polyget watchdog: step" in st["broken"]["message"]
    assert st["chunks"] == 0
    md_long.main(args)
    assert json.loads((tmp_path / "LAC2" / "state.json").read_text()) == st


def test_jobs_run_loops_side_by_side_as_one_process_would(toy, tmp_path):
    """`run --jobs 2` deals the loops to two processes; each loop's trajectory is the one a
    single process gives."""
    import md_long
    common = ["--model", str(toy), "--every", "10", "--lmp", LMP, "--ps", "0.005",
              "--chunk-ps", "0.005", "--families", "LAC2,LAC5"]
    md_long.main(["run", "--out", str(tmp_path / "serial")] + common)
    md_long.main(["run", "--out", str(tmp_path / "jobs"), "--jobs", "2"] + common)
    for fam in ("LAC2", "LAC5"):
        st1, a = _final(tmp_path / "serial", fam)
        st2, b = _final(tmp_path / "jobs", fam)
        assert st1["steps"] == st2["steps"] == 10
        assert np.abs(a.positions - b.positions).max() < 1e-8
