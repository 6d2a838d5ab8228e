"""The shipped polyget-cho potential (potentials/README.md): the same forces through every engine,
and the accuracy its model card states.

- ASE (PolyGETCalculator on the TorchScript export and on the float64 checkpoint),
  `pair_style mliap unified polyget-cho.pt 0` and `pair_style polyget polyget-cho.jit.pt` (1 and
  2 MPI ranks) on the 360-atom cyclooctane 15-loop (inputs/ck6_15loop.data): the export is
  float32, so the engines running it agree to float32 rounding (1e-5 eV/A), and the float64
  checkpoint to 1e-4 eV/A;
- force MAE against GFN2-xTB on the shipped evaluation frames of the card
  (experiments/results/generalization-cho-r0-*-subset.extxyz, 400 frames each; the frames of
  round 0's evaluation, used again for round 1, the shipped potential) is the card's
  number to within 0.002 eV/A (float32 vs the card's float32 evaluation: the same numbers up to
  rounding; a changed network, export or data path moves it by far more).
"""

from pathlib import Path

import ase.io
import numpy as np
import pytest

from test_lammps_common import REPO, require_lammps, require_mpirun, run_lmp, write_data

POT = REPO / "potentials"
CARD_MAE = {"test_size": 0.047, "test_family": 0.042, "val": 0.047}  # eV/A, potentials/README.md (round 1)
MAE_TOL = 0.002

DECK = """
units           metal
atom_style      atomic
boundary        s s s
{processors}
read_data       {data}
{pair}
pair_coeff      * * H C O
neighbor        1.0 bin
compute         pe all pe/atom
dump            d all custom 1 {dump} id fx fy fz c_pe
dump_modify     d sort id format float %.12g
thermo_style    custom step pe
thermo_modify   format float %.12g
run             0
"""


@pytest.fixture(scope="module")
def loop15():
    atoms = ase.io.read(REPO / "inputs" / "ck6_15loop.data", format="lammps-data", atom_style="atomic")
    atoms.set_chemical_symbols([{1: "H", 2: "C", 3: "O"}[t] for t in atoms.get_array("type")])
    atoms.pbc = False
    return atoms


def lammps_forces(tmp_path, atoms, pair, tag, nprocs=1):
    work = tmp_path / tag
    work.mkdir()
    data = write_data(work / "data.lmp", atoms)
    deck = DECK.format(processors=f"processors {nprocs} 1 1" if nprocs > 1 else "", data=data,
                       pair=pair, dump=work / "f.dump")
    out = run_lmp(deck, work, nprocs=nprocs).stdout
    rows = np.loadtxt(work / "f.dump", skiprows=9, ndmin=2)
    lines = out.splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    return float(lines[k + 1].split()[1]), rows[:, 1:4], rows[:, 4], out


def test_engines_agree(tmp_path, loop15):
    require_lammps()
    require_mpirun()
    from polyget.ase import PolyGETCalculator

    ref = {}
    for name, path, dtype in (("jit", POT / "polyget-cho.jit.pt", "float32"),
                              ("ckpt", POT / "polyget-cho.ckpt", "float64")):
        a = loop15.copy()
        a.calc = PolyGETCalculator(str(path), dtype=dtype)
        ref[name] = (a.get_potential_energy(), a.get_forces())
    assert np.abs(ref["jit"][1] - ref["ckpt"][1]).max() < 1e-4
    fmax = np.abs(ref["ckpt"][1]).max()
    assert 0.5 < fmax < 20.0  # a real structure with real forces, not zeros

    runs = {"plugin": lammps_forces(tmp_path, loop15, f"pair_style polyget {POT / 'polyget-cho.jit.pt'}",
                                    "plugin"),
            "plugin-2": lammps_forces(tmp_path, loop15,
                                      f"pair_style polyget {POT / 'polyget-cho.jit.pt'}", "plugin2",
                                      nprocs=2),
            "mliap": lammps_forces(tmp_path, loop15,
                                   f"pair_style mliap unified {POT / 'polyget-cho.pt'} 0", "mliap")}
    e_ase, f_ase = ref["jit"]
    for name, (e, f, ae, out) in runs.items():
        np.testing.assert_allclose(f, f_ase, atol=1e-5, rtol=0, err_msg=name)
        # float32 energies of -10,324 eV: a sum over 360 atoms in float32 (ASE) or double
        # (LAMMPS) differs by ~1e-6 relative
        assert abs(e - e_ase) < 2e-6 * abs(e_ase), name
        assert abs(e - ref["ckpt"][0]) < 2e-6 * abs(e_ase), name
        assert abs(ae.sum() - e) < 1e-6 * abs(e), name
        np.testing.assert_allclose(f, ref["ckpt"][1], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("split", sorted(CARD_MAE))
def test_force_mae_as_on_the_card(split):
    from polyget.evaluate import run_eval

    frames = REPO / "experiments" / "results" / f"generalization-cho-r0-{split}-subset.extxyz"
    m = run_eval(str(POT / "polyget-cho.ckpt"), str(frames), dtype="float32")["overall"]
    assert m["n_structures"] == 400
    print(f"{split}: force MAE {m['force_mae']:.4f} eV/A (card {CARD_MAE[split]})")
    assert m["force_mae"] < CARD_MAE[split] + MAE_TOL
    assert m["force_mae"] > CARD_MAE[split] - MAE_TOL  # the same frames: the same number
