"""15-loop MD in LAMMPS (paper Fig. 5): Nose-Hoover NVT at 300 K, 0.5 fs, of the CK6, OTH4, LAC2
and LAC5 15-loops (360/360/180/240 atoms) with a polyget potential; then

- stability: the first frame where a bond of the starting structure is > 0.5 A off its start
  length (the paper's MDsim criterion), or where the molecule broke;
- RMSD to the start and potential energy per frame (Fig. 5e-h);
- force correlation with GFN2-xTB on frames of our own trajectories (Fig. 5a-d): MAE, cosine
  distance, R.

    python experiments/md_15loops.py --model potentials/polyget-cho.pt --steps 2000 \
        --out experiments/results/md_15loops

Writes OUT.json and OUT.png. Starting structures: the relaxed 15-loops of dataset v1
(data/poly24-v1-gfn2-loops15.extxyz.xz).
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("CK6", "OTH4", "LAC2", "LAC5")
DECK = """
units metal
atom_style atomic
boundary s s s
read_data {data}
pair_style mliap unified {model} 0
pair_coeff * * H C O
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 {seed} mom yes rot yes dist gaussian
fix nvt all nvt temp 300.0 300.0 0.05
timestep 0.0005
compute frag all cluster/atom 2.0
compute fragmax all reduce max c_frag
compute fragmin all reduce min c_frag
variable broken equal c_fragmax>c_fragmin
fix watchdog all halt 20 v_broken > 0 error continue message yes
thermo_style custom step temp pe etotal
thermo {every}
dump d all custom {every} {dump} id type x y z fx fy fz
dump_modify d sort id
run {steps}
"""


def bonds_of(atoms):
    from ase.neighborlist import NeighborList, natural_cutoffs
    nl = NeighborList(natural_cutoffs(atoms, mult=1.15), self_interaction=False, bothways=False)
    nl.update(atoms)
    return np.array([(i, j) for i in range(len(atoms)) for j in nl.get_neighbors(i)[0]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="potentials/polyget-cho.pt")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=50, help="steps between saved frames")
    p.add_argument("--gfn2-frames", type=int, default=8, help="frames per run labelled by GFN2")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--lmp", default=str(REPO / ".venv" / "bin" / "lmp"))
    p.add_argument("--out", default="experiments/results/md_15loops")
    args = p.parse_args(argv)

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from polyget.data.labels import label, make_calculator
    from polyget.md import kabsch_rmsd

    starts = {a.info["family"]: a for a in ase.io.read(
        REPO / "data" / "poly24-v1-gfn2-loops15.extxyz.xz", ":")
        if a.info.get("config_type") == "relaxed"}
    out = Path(args.out)
    work = out.parent / (out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    gfn2 = make_calculator("gfn2")
    res = {"model": args.model, "steps": args.steps, "timestep_fs": 0.5, "temperature_K": 300.0,
           "runs": {}}
    for fam in args.families.split(","):
        a0 = starts[fam].copy()
        a0.center(vacuum=15.0)
        data = work / f"{fam}.data"
        ase.io.write(data, a0, format="lammps-data", specorder=["H", "C", "O"], masses=True,
                     units="metal", atom_style="atomic")
        dump = work / f"{fam}.dump"
        deck = work / f"{fam}.in"
        deck.write_text(DECK.format(data=data, model=Path(args.model).resolve(), seed=4928459,
                                    every=args.every, dump=dump, steps=args.steps))
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        t = time.time()
        proc = subprocess.run([args.lmp, "-in", str(deck), "-log", str(work / f"{fam}.log")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - t
        frames = ase.io.read(dump, ":", format="lammps-dump-text")
        sym = a0.get_chemical_symbols()
        model_forces = [f.get_forces().copy() for f in frames]   # before the symbols change
        for f in frames:
            f.calc = None
            f.set_chemical_symbols(sym)
        bonds = bonds_of(a0)
        d0 = np.linalg.norm(a0.positions[bonds[:, 0]] - a0.positions[bonds[:, 1]], axis=1)
        first_bad, rmsd, maxdev = None, [], []
        for k, f in enumerate(frames):
            d = np.linalg.norm(f.positions[bonds[:, 0]] - f.positions[bonds[:, 1]], axis=1)
            dev = float(np.abs(d - d0).max())
            maxdev.append(dev)
            rmsd.append(kabsch_rmsd(f.positions, a0.positions))
            if first_bad is None and dev > 0.5:
                first_bad = k * args.every
        pe = [float(x.split()[2]) for x in proc.stdout.splitlines()
              if len(x.split()) == 4 and x.split()[0].isdigit()]
        # force correlation with GFN2 on evenly spaced frames of this trajectory
        pick = np.linspace(1, len(frames) - 1, min(args.gfn2_frames, len(frames) - 1)).astype(int)
        fp, fr = [], []
        for k in pick:
            f = frames[k]
            fp.append(model_forces[k])
            lab = label(ase.Atoms(sym, positions=f.positions), gfn2)
            fr.append(lab.get_forces())
        fp, fr = np.concatenate(fp), np.concatenate(fr)
        cos = np.sum(fp * fr, 1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(fr, axis=1))
        n_done = len(frames) * args.every - args.every
        res["runs"][fam] = {
            "atoms": len(a0), "steps_done": n_done, "wall_s": wall,
            "steps_per_s": n_done / wall if wall > 0 else None,
            "stable": first_bad is None and "Fix halt" not in proc.stdout,
            "first_step_bond_off_0.5A": first_bad, "max_bond_deviation_A": max(maxdev),
            "rmsd_A": rmsd, "pe_eV": pe, "frame_every_steps": args.every,
            "gfn2_force_mae": float(np.abs(fp - fr).mean()),
            "gfn2_force_cosd": float(np.mean(1 - cos)),
            "gfn2_force_r": float(np.corrcoef(fp.ravel(), fr.ravel())[0, 1]),
            "gfn2_frames": len(pick)}
        r = res["runs"][fam]
        print(f"{fam}: {r['atoms']} atoms, {n_done} steps at {r['steps_per_s']:.1f} steps/s, "
              f"stable={r['stable']} (max bond deviation {r['max_bond_deviation_A']:.2f} A), "
              f"GFN2 force MAE {r['gfn2_force_mae']:.3f} eV/A, CosD {r['gfn2_force_cosd']:.3f}",
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for fam, r in res["runs"].items():
        t = np.arange(len(r["rmsd_A"])) * r["frame_every_steps"] * 0.5e-3
        ax[0].plot(t, r["rmsd_A"], label=fam)
        pe = np.array(r["pe_eV"])
        ax[1].plot(np.arange(len(pe)) * r["frame_every_steps"] * 0.5e-3, (pe - pe[0]) / r["atoms"],
                   label=fam)
    ax[0].set_xlabel("time (ps)")
    ax[0].set_ylabel("RMSD to start (A)")
    ax[1].set_xlabel("time (ps)")
    ax[1].set_ylabel("PE - PE(0) (eV/atom)")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
