"""Training-paradigm ablations (paper Fig. 7a and 7c) on dataset v1, one budget for every arm:

- ``multi-forces``: all 21 training families, force-only loss (PolyGET's paradigm);
- ``multi-joint``: the same data and steps, joint energy + force loss (the "original" paradigm of
  TorchMD-Net / NequIP). Weight: TorchMD-Net's usual 0.2 : 0.8 on the *total* energy, written as
  our per-atom energy MSE: energy_weight = 0.25 x mean(N^2) over the training frames;
- ``single-<FAM>``: one family's training frames only (L <= 5), force-only, same steps.

Every arm is the same network (64 features, 3 layers, 8 heads, 5 A: polyget-cho's size), seed,
batch (4) and number of steps, from scratch. Scored on fixed frames the arms never trained on:
seen loop sizes (split ``val``), unseen 6-loops (``test_size``), held-out families
(``test_family``): force MAE and cosine distance overall and per family; energies by the
per-polymer calibration of eq. 3 (8 conformations) and by per-element offsets fitted on training
frames. Resumable: re-running continues unfinished arms (``polyget train --resume``) and reuses
finished scores.

    python experiments/ablations.py --steps 1500 --single LAC2,CK6

Writes experiments/results/ablations.json and .png (val-curve of Fig. 7c and bars of Fig. 7a).
"""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"seen (val)": "val", "unseen 6-loops": "test_size", "held-out families": "test_family"}
PAPER = {"fig7a": "ET: multi-molecule force-only training lowers force MAE vs single-molecule; "
                  "TorchMD-Net (joint) and NequIP gain nothing from multi-molecule data",
         "fig7c": "validation force MAE of ET, joint ('Original') vs force-only ('PolyGET'): "
                  "force-only converges lower"}


def _write_cfg(path: Path, train: Path, out: Path, loss: str, ew: float, steps: int, seed: int):
    import yaml
    cfg = {"data": {"train": str(train), "val_fraction": 0.03},
           "model": {"hidden_channels": 64, "num_layers": 3, "num_heads": 8, "num_rbf": 32,
                     "cutoff": 5.0},
           "training": {"loss": loss, "energy_weight": float(ew), "lr": 1.0e-3, "batch_size": 4,
                        "max_steps": steps, "val_every": max(50, steps // 15), "plateau_patience": 4,
                        "plateau_factor": 0.8, "threads": 1, "dtype": "float32", "seed": seed,
                        "grad_clip": 10.0},
           "output": str(out)}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _train(cfg: Path, out: Path):
    cmd = [sys.executable, "-m", "polyget.cli", "train", str(cfg)]
    if (out / "last.ckpt").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _score(ckpt: Path, sp: Path, work: Path, max_frames: int, train_frames):
    import torch

    sys.path.insert(0, str(REPO / "experiments"))
    from energies import per_system, phi_and_energy
    from polyget.data.io import read_frames, write_frames
    from polyget.evaluate import run_eval
    from polyget.io import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(1)
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    known = set(model.elements)   # a single-family model knows only its family's elements
    tr = phi_and_energy(model, [a for a in train_frames if set(a.get_chemical_symbols()) <= known])
    a = np.stack([r["counts"] for r in tr])
    offsets = np.linalg.lstsq(a, np.array([r["e"] - r["phi"] for r in tr]), rcond=None)[0]
    res = {}
    for name, split in SPLITS.items():
        sub = work / f"{split}-subset.extxyz"
        if not sub.exists():
            fr = read_frames(sp / f"{split}.extxyz.gz")
            write_frames(sub, fr[:: max(1, len(fr) // max_frames)][:max_frames])
        # (CK6: H, C): score it on the frames it can evaluate ("frames" says how many)
        fr = read_frames(sub)
        if not all(set(a.get_chemical_symbols()) <= known for a in fr):
            sub = work / f"{split}-subset-{'-'.join(model.elements)}.extxyz"
            write_frames(sub, [a for a in fr if set(a.get_chemical_symbols()) <= known])
        m = run_eval(str(ckpt), str(sub), dtype="float32")
        rows = phi_and_energy(model, read_frames(sub))
        el = [1e3 * abs(r["phi"] + r["counts"] @ offsets - r["e"]) / r["n"] for r in rows]
        systems = per_system(rows, 8, np.random.default_rng(0))
        res[name] = {"force_mae": m["overall"]["force_mae"], "force_cosd": m["overall"]["force_cosd"],
                     "frames": m["overall"]["n_structures"],
                     "per_family_force_mae": {k: v["force_mae"] for k, v in (m.get("per_family") or {}).items()},
                     "energy_per_polymer_mev_per_atom": float(np.mean(
                         [s["mae_mev_per_atom_linear"] for s in systems.values()])) if systems else None,
                     "energy_systems": len(systems),
                     "energy_per_element_mev_per_atom": float(np.mean(el))}
    return res


def _curve(out: Path):
    f = out / "log.csv"
    if not f.exists():
        return [], []
    rows = [r for r in csv.DictReader(f.open()) if r.get("val_force_mae")]
    return [int(r["step"]) for r in rows], [float(r["val_force_mae"]) for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", default=str(REPO / "build" / "poly24-v1-splits"))
    p.add_argument("--work", default=str(REPO / "build" / "ablations"))
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "ablations"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--single", default="LAC2,CK6", help="families for the single-family arms")
    p.add_argument("--arms", default=None, help="comma list to run only some arms")
    p.add_argument("--max-frames", type=int, default=600, help="frames per scoring split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from polyget.data.io import read_frames, write_frames

    sp, work = Path(args.splits), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_all = read_frames(sp / "train.extxyz.gz")
    n2 = float(np.mean([len(a) ** 2 for a in train_all]))
    arms = {"multi-forces": (sp / "train.extxyz.gz", "forces", 0.0),
            "multi-joint": (sp / "train.extxyz.gz", "joint", 0.25 * n2)}
    for fam in filter(None, args.single.split(",")):
        f = work / f"train-{fam}.extxyz"
        if not f.exists():
            write_frames(f, [a for a in train_all if a.info.get("family") == fam])
        arms[f"single-{fam}"] = (f, "forces", 0.0)
    if args.arms:
        arms = {k: v for k, v in arms.items() if k in args.arms.split(",")}
    train_for_offsets = train_all[:: max(1, len(train_all) // 2000)][:2000]

    out = Path(args.out)
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    res = {"steps": args.steps, "batch_size": 4, "model": "ET 64x3, 8 heads, 32 RBF, 5 A",
           "mean_N2_train": n2, "paper": PAPER, "arms": prev.get("arms", {})}
    for name, (data, loss, ew) in arms.items():
        run = work / name
        run.mkdir(exist_ok=True)
        cfg = run / "config.yaml"
        _write_cfg(cfg, data, run, loss, ew, args.steps, args.seed)
        done = res["arms"].get(name, {}).get("steps") == args.steps
        if not done:
            print(f"{name}: training ({loss}, energy_weight {ew:.0f}, {args.steps} steps)", flush=True)
            _train(cfg, run)
            ck = run / "best.ckpt"
            scores = _score(ck, sp, work, args.max_frames, train_for_offsets)
            steps, curve = _curve(run)
            res["arms"][name] = {"loss": loss, "energy_weight": ew, "train_data": str(data),
                                 "train_frames": len(read_frames(data)) if name.startswith("single") else len(train_all),
                                 "steps": args.steps, "val_steps": steps, "val_force_mae": curve,
                                 "scores": scores}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        s = res["arms"][name]["scores"]
        print(f"{name}: " + "; ".join(f"{k} F {v['force_mae']:.4f} CosD {v['force_cosd']:.4f} "
                                      f"E(eq3) {v['energy_per_polymer_mev_per_atom'] or float('nan'):.2f} "
                                      f"E(elem) {v['energy_per_element_mev_per_atom']:.1f}"
                                      for k, v in s.items()), flush=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    _plot(res, out.with_suffix(".png"), args.single.split(","))


def _plot(res, png, singles):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in res["arms"].items():
        if r["val_steps"]:
            ax[0].plot(r["val_steps"], r["val_force_mae"], marker=".", label=name)
    ax[0].set_xlabel("training step (batch 4)")
    ax[0].set_ylabel("own validation force MAE (eV/A)")
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=7)
    ax[0].set_title("Fig. 7c analogue")
    labels, single, multi = [], [], []
    for fam in singles:
        r = res["arms"].get(f"single-{fam}")
        m = res["arms"].get("multi-forces")
        if not r or not m:
            continue
        for split in ("seen (val)", "unseen 6-loops"):
            a = r["scores"][split]["per_family_force_mae"].get(fam)
            b = m["scores"][split]["per_family_force_mae"].get(fam)
            if a is not None and b is not None:
                labels.append(f"{fam}\n{split}")
                single.append(a)
                multi.append(b)
    x = np.arange(len(labels))
    ax[1].bar(x - 0.2, single, 0.4, label="single-family")
    ax[1].bar(x + 0.2, multi, 0.4, label="multi-family")
    ax[1].set_xticks(x)
    ax[1].set_xticklabels(labels, fontsize=7)
    ax[1].set_ylabel("force MAE on that family (eV/A)")
    ax[1].legend(fontsize=7)
    ax[1].set_title("Fig. 7a analogue (force-only, same steps)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
