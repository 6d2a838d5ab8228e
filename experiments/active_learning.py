"""One active-learning round for polyget-cho (issue: stability by construction).

1. ``md``: the potential's own MD in LAMMPS (`pair_style polyget`, Nose-Hoover, 0.5 fs) of the
   6-loop of every family (the 15-loops run in experiments/md_long.py) at a high temperature
   (default 600 K), with the plugin's watchdog (`bond_stretch 1.6`): which runs break, and when;
2. ``label``: frames of those trajectories (every ``--every`` steps; for a run that broke, the
   frames before the break) labelled with GFN2-xTB -> data file; frames of the held-out
   families (CK4, LAC7, OTH5) go to a separate file that is only evaluated on, never trained
   on, so those families stay a test of generalisation;
3. ``train``: polyget-cho continued (`training.init_from`) on the training split plus the new
   frames;
4. step 1 again with the new model; ``report`` writes JSON: stability of both rounds, and the
   force MAE of both models on the new frames (training families / held-out families) and on
   the card's evaluation frames (experiments/results/generalization-cho-r0-*-subset.extxyz).

Every stage skips what it has already done (re-run to continue).

    python experiments/active_learning.py md --model potentials/polyget-cho-r0.jit.pt --tag r0
    python experiments/active_learning.py label --tag r0
    python experiments/active_learning.py train --steps 1500
    python experiments/active_learning.py md --model runs/polyget-cho-r1/polyget-cho-r1.jit.pt --tag r1
    python experiments/active_learning.py report
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HELDOUT = ("CK4", "LAC7", "OTH5")
DT_FS = 0.5
DECK = """units metal
atom_style atomic
boundary s s s
read_data {data}
pair_style polyget {model} threads 1 bond_stretch 1.6 bond_every 10
pair_coeff * * H C O
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
timestep {dt}
velocity all create {T} {seed} mom yes rot yes dist gaussian
fix nvt all nvt temp {T} {T} 0.05
thermo_style custom step temp pe etotal
thermo {every}
dump d all custom {every} {dump} id type x y z
dump_modify d sort id
run {steps}
"""


def starts(loop: int):
    """The lowest-energy GFN2 frame of each family's `loop`-loop in dataset v1."""
    from polyget.data.io import read_frames
    best = {}
    for a in read_frames(REPO / "data" / "poly24-v1-gfn2.extxyz.xz"):
        if int(a.info.get("loop", -1)) != loop:
            continue
        fam = a.info["family"]
        e = a.get_potential_energy()
        if fam not in best or e < best[fam][0]:
            best[fam] = (e, a)
    return {f: v[1] for f, v in sorted(best.items())}


def cmd_md(args):
    import ase.io
    work = Path(args.work) / f"md-{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    st = starts(args.loop)
    lmp = args.lmp or str(REPO / ".venv" / "bin" / "lmp")
    for fam, a0 in st.items():
        if fam in res or (args.families and fam not in args.families.split(",")):
            continue
        a0 = a0.copy()
        a0.calc = None
        a0.center(vacuum=15.0)
        data = work / f"{fam}.data"
        ase.io.write(work / f"{fam}-start.extxyz", a0)
        ase.io.write(data, a0, format="lammps-data", specorder=["H", "C", "O"], masses=True,
                     units="metal", atom_style="atomic")
        deck = work / f"{fam}.in"
        deck.write_text(DECK.format(data=data, model=Path(args.model).resolve(), dt=DT_FS / 1000,
                                    T=args.T, seed=args.seed, every=args.every,
                                    dump=work / f"{fam}.dump", steps=args.steps))
        t = time.time()
        p = subprocess.run([lmp, "-in", str(deck), "-log", str(work / f"{fam}.log"), "-screen", "none"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        wall = time.time() - t
        text = (work / f"{fam}.log").read_text() + p.stdout
        m = re.search(r"polyget watchdog: step (\d+): .*?(?=\(/|$)", text)
        r = {"atoms": len(a0), "steps": args.steps, "wall_s": wall, "returncode": p.returncode,
             "stable": p.returncode == 0, "heldout": fam in HELDOUT}
        if m:
            r["broke_at_step"] = int(m.group(1))
            r["watchdog"] = m.group(0).strip()
        elif p.returncode != 0:
            r["error"] = (re.findall(r"ERROR.*", text) or [f"rc {p.returncode}"])[-1]
        res[fam] = r
        res_path.write_text(json.dumps(res, indent=1))
        print(f"{args.tag} {fam}: {len(a0)} atoms, "
              + ("stable" if r["stable"] else f"BROKE at step {r.get('broke_at_step')}: "
                 + r.get("watchdog", r.get("error", ""))[:160]) + f" ({wall:.0f} s)", flush=True)
    n_bad = sum(not r["stable"] for r in res.values())
    print(f"{args.tag}: {n_bad} of {len(res)} runs broke at {args.T} K within {args.steps} steps")


def cmd_label(args):
    import ase
    import ase.io

    from polyget.data.labels import label, make_calculator
    work = Path(args.work)
    md = work / f"md-{args.tag}"
    res = json.loads((md / "results.json").read_text())
    out = work / f"al-{args.tag}-gfn2.extxyz"
    done = {a.info["frame_id"] for a in ase.io.read(out, ":")} if out.exists() else set()
    gfn2 = make_calculator("gfn2")
    n_new = 0
    held = work / f"al-{args.tag}-heldout-eval.extxyz"     # evaluation only, never trained on
    done |= {a.info["frame_id"] for a in ase.io.read(held, ":")} if held.exists() else set()
    for fam, r in res.items():
        dst = held if fam in HELDOUT else out
        a0 = ase.io.read(md / f"{fam}-start.extxyz")
        frames = ase.io.read(md / f"{fam}.dump", ":", format="lammps-dump-text")
        # steps 0 .. the last dumped; skip the start frame (it is in the data set already)
        pick = list(range(1, len(frames)))[:: args.stride]
        for k in pick:
            fid = f"AL-{args.tag}/{fam}_L{args.loop}/{k * args.every}"
            if fid in done:
                continue
            a = ase.Atoms(a0.get_chemical_symbols(), positions=frames[k].positions)
            try:
                lab = label(a, gfn2)
            except Exception as e:     # GFN2 did not converge: skip the frame, say so
                print(f"label {fid}: {e}", flush=True)
                continue
            lab.info.update({"family": fam, "loop": args.loop, "config_type": f"al-{args.tag}",
                             "temperature": args.T, "frame_id": fid, "method": "GFN2-xTB",
                             "system": f"{fam}_L{args.loop}"})
            ase.io.write(dst, lab, append=True, format="extxyz")
            n_new += 1
    n = len(ase.io.read(out, ":")) if out.exists() else 0
    print(f"label: {n_new} new frames, {n} in {out}")


def cmd_train(args):
    import yaml
    work = Path(args.work)
    frames = sorted(str(p) for p in work.glob("al-*-gfn2.extxyz"))   # not *-heldout-eval
    if args.control:       # the same continued training without the new frames
        frames = []
    cfg = {"data": {"train": [str(REPO / "build" / "poly24-v1-splits" / "train.extxyz.gz")]
                    + frames * args.repeat, "val_fraction": 0.03},
           "training": {"loss": "forces", "lr": args.lr, "batch_size": 4, "max_steps": args.steps,
                        "val_every": 250, "plateau_patience": 4, "plateau_factor": 0.8,
                        "threads": 1, "dtype": "float32", "grad_clip": 10.0, "ema_decay": 0.99,
                        "init_from": str(REPO / "potentials" / "polyget-cho-r0.ckpt")},
           "output": str(REPO / "runs" / ("polyget-cho-r1-control" if args.control else "polyget-cho-r1"))}
    path = work / ("train-r1-control.yaml" if args.control else "train-r1.yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "polyget.cli", "train", str(path)]
    if (Path(cfg["output"]) / "last.ckpt").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)


def cmd_report(args):
    work = Path(args.work)
    out = {"temperature_K": args.T, "steps": args.steps, "timestep_fs": DT_FS,
           "watchdog": "pair_style polyget bond_stretch 1.6 bond_every 10", "rounds": {}}
    for md in sorted(work.glob("md-*")):
        res = json.loads((md / "results.json").read_text())
        out["rounds"][md.name[3:]] = {
            "runs": res, "broken": sorted(f for f, r in res.items() if not r["stable"]),
            "broken_heldout": sorted(f for f, r in res.items() if not r["stable"] and r["heldout"]),
            "n": len(res)}
    from polyget.evaluate import run_eval
    models = {"r0": REPO / "potentials" / "polyget-cho-r0.ckpt",
              "r1": REPO / "runs" / "polyget-cho-r1" / "best.ckpt",
              # control: continued the same way without the MD frames (train --control)
              "r1-control": REPO / "runs" / "polyget-cho-r1-control" / "best.ckpt"}
    sets = {"AL frames, training families (600 K MD, trained on by r1)": work / "al-r0-gfn2.extxyz",
            "AL frames, held-out families (600 K MD, never trained on)": work / "al-r0-heldout-eval.extxyz"}
    for split in ("val", "test_size", "test_family"):
        sets[f"card set {split}"] = REPO / "experiments" / "results" / f"generalization-cho-r0-{split}-subset.extxyz"
    out["force_mae"] = {}
    for name, path in sets.items():
        if not path.exists():
            continue
        out["force_mae"][name] = {}
        for tag, ck in models.items():
            if ck.exists():
                m = run_eval(str(ck), str(path), dtype="float32")["overall"]
                out["force_mae"][name][tag] = {"mae": m["force_mae"], "cosd": m["force_cosd"],
                                               "frames": m["n_structures"]}
        print(name + ": " + ", ".join(f"{t} {v['mae']:.4f} eV/A" for t, v in out["force_mae"][name].items()),
              flush=True)
    dst = Path(args.results)
    dst.with_suffix(".json").write_text(json.dumps(out, indent=1))
    for tag, r in out["rounds"].items():
        print(f"{tag}: {len(r['broken'])} of {r['n']} broke: {', '.join(r['broken']) or '-'}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(out["force_mae"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(names))
    for k, tag in enumerate(("r0", "r1", "r1-control")):
        ax.bar(x + (k - 1) * 0.27, [out["force_mae"][n].get(tag, {}).get("mae", np.nan) for n in names],
               0.27, label=f"polyget-cho {tag}")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace(" (", "\n(") for n in names], fontsize=6)
    ax.set_ylabel("force MAE vs GFN2-xTB (eV/A)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst.with_suffix(".png"), dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("md", "label", "train", "report"))
    p.add_argument("--model", default=str(REPO / "potentials" / "polyget-cho-r0.jit.pt"))
    p.add_argument("--tag", default="r0")
    p.add_argument("--work", default=str(REPO / "build" / "active-learning"))
    p.add_argument("--results", default=str(REPO / "experiments" / "results" / "active_learning"))
    p.add_argument("--loop", type=int, default=6)
    p.add_argument("--T", type=float, default=600.0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=100, help="steps between dumped frames")
    p.add_argument("--stride", type=int, default=2, help="label every n-th dumped frame")
    p.add_argument("--seed", type=int, default=8812)
    p.add_argument("--repeat", type=int, default=10, help="times the AL frames enter the training data")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--families", default=None, help="comma list (default: all)")
    p.add_argument("--control", action="store_true",
                   help="train: the same continued training without the new frames (control)")
    p.add_argument("--lmp", default=None)
    args = p.parse_args(argv)
    {"md": cmd_md, "label": cmd_label, "train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
