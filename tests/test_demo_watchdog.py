"""The demo deck's stability watchdog (inputs/demo.in): a run that blows up is stopped early with
LAMMPS' fix halt message and the summary line says UNSTABLE; a normal run says stable."""

from __future__ import annotations

import re

import pytest

from test_lammps_common import REPO, export_tiny, require_lammps, run_lmp

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_lammps()
    d = tmp_path_factory.mktemp("watchdog")
    pt, _, _ = export_tiny(d / "tiny.pt")
    return pt


def _summary(out: str):
    m = re.search(r"demo summary: .*?, ([0-9.]+) steps/s, (\d+) of (\d+) steps, (.*)", out)
    assert m, out[-3000:]
    return float(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4).strip()


def test_demo_summary_stable(tiny, tmp_path):
    proc = run_lmp("", tmp_path, deck_path=REPO / "inputs" / "demo.in", cwd=REPO, name="demo.in",
                   variables={"model": tiny, "steps": 20})
    sps, done, steps, verdict = _summary(proc.stdout)
    assert sps > 0 and done == steps == 20 and verdict == "stable"


def test_demo_watchdog_stops_a_blow_up(tiny, tmp_path):
    """50,000 K: hydrogens move ~0.3 A/fs, bonds pass 2 A within a few fs. The ML-IAP
    minimum-distance check (docs/bad-input.md) would stop this run first (two atoms 0.43 A apart
    at step 3), so it is off here: this test is about the deck's own watchdog."""
    deck = tmp_path / "demo_no_min_distance.in"
    deck.write_text("variable polyget_min_distance equal 0.0\n"
                    + (REPO / "inputs" / "demo.in").read_text())
    proc = run_lmp("", tmp_path, deck_path=deck, cwd=REPO, name="hot.in",
                   variables={"model": tiny, "steps": 400, "T": 50000.0}, check=False)
    assert "Fix halt condition" in proc.stdout, proc.stdout[-3000:]
    _, done, steps, verdict = _summary(proc.stdout)
    assert done < steps == 400
    assert verdict.startswith("UNSTABLE")
