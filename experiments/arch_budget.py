"""Accuracy per CPU-hour of the polyget-cho candidate architectures (issue 13, item 1).

Every candidate of ``arch_cost.CANDIDATES`` (32x2, 64x3, 96x4 and the paper's 128x6) is trained
from scratch, force-only, on dataset v1's training split with the same data, seed, batch (4),
learning-rate schedule and **the same wall-time budget on one thread** (``training.max_hours``),
then scored like the ablations on frames no arm trained on: seen loop sizes (split ``val``),
unseen 6-loops (``test_size``) and held-out families (``test_family``). Beside the accuracy the
table has each network's cost of one energy+forces call on the 360-atom CK6 15-loop (float32,
1 thread, interleaved rounds in this process), so accuracy and MD speed can be read together.

Resumable: re-running continues an unfinished arm (``polyget train --resume``) and reuses the
scores of finished ones. The machine load and the CPU time each training got (a wall-time budget is fair only if every
arm had the same share of a core) are recorded; compare numbers within one run.

    python experiments/arch_budget.py --hours 0.25

Writes experiments/results/arch_budget.json and .png (validation force MAE against wall time).
"""

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from ablations import _score  # noqa: E402  (same scoring as the ablations)
from arch_cost import CANDIDATES  # noqa: E402


def _slug(name: str) -> str:
    return name.split()[0]


def _write_cfg(path: Path, train: Path, out: Path, hp: dict, hours: float, val_every: int, seed: int):
    import yaml
    cfg = {"data": {"train": str(train), "val_fraction": 0.01},
           "model": dict(hp),
           "training": {"loss": "forces", "lr": 1.0e-3, "batch_size": 4, "max_steps": 10 ** 7,
                        "max_hours": float(hours), "val_every": int(val_every), "plateau_patience": 4,
                        "plateau_factor": 0.8, "threads": 1, "dtype": "float32", "seed": seed,
                        "grad_clip": 10.0},
           "output": str(out)}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _curve(out: Path):
    f = out / "log.csv"
    if not f.exists():
        return [], [], []
    rows = [r for r in csv.DictReader(f.open()) if r.get("val_force_mae")]
    return ([int(r["step"]) for r in rows], [float(r["elapsed_s"]) for r in rows],
            [float(r["val_force_mae"]) for r in rows])


def _md_cost(ckpts: dict, structure: Path, rounds: int) -> dict:
    """Seconds per energy+forces call on one structure, float32, 1 thread, interleaved rounds."""
    import torch

    from polyget.io import load_checkpoint, model_from_checkpoint
    from polyget.nn.graph import atoms_to_graph, evaluate

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "bench"))
    from bench_worker import read_structure   # LAMMPS data file, types 1-3 = H, C, O

    atoms = read_structure(str(structure))
    models, graphs = {}, {}
    for name, ck in ckpts.items():
        m = model_from_checkpoint(load_checkpoint(ck)).eval().float()
        models[name] = m
        graphs[name] = atoms_to_graph(atoms, m.elements, m.cutoff).to("cpu", torch.float32)
    times = {n: [] for n in models}
    for r in range(rounds + 1):
        for name, m in models.items():
            t = time.perf_counter()
            evaluate(m, graphs[name], forces=True)
            if r:
                times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", default=str(REPO / "build" / "poly24-v1-splits"))
    p.add_argument("--work", default=str(REPO / "build" / "arch_budget"))
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "arch_budget"))
    p.add_argument("--hours", type=float, default=0.25, help="wall-time training budget per architecture")
    p.add_argument("--arms", default=None, help="comma list of architectures (e.g. 64x3,128x6)")
    p.add_argument("--max-frames", type=int, default=600, help="frames per scoring split")
    p.add_argument("--structure", default=str(REPO / "inputs" / "ck6_15loop.data"),
                   help="structure for the energy+forces timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from polyget.data.io import read_frames

    sp, work, out = Path(args.splits), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    cost = json.loads((REPO / "experiments" / "results" / "arch_cost.json").read_text())["candidates"]
    arms = {n: hp for n, hp in CANDIDATES.items()
            if not args.arms or _slug(n) in args.arms.split(",")}
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    res = {"hours_per_arm": args.hours, "threads": 1, "batch_size": 4, "lr": 1e-3,
           "loss": "forces", "train_data": str(sp / "train.extxyz.gz"), "arms": prev.get("arms", {})}
    train_for_offsets = None
    for name, hp in arms.items():
        run = work / _slug(name)
        run.mkdir(exist_ok=True)
        cfg = run / "config.yaml"
        est_steps = args.hours * 3600 / cost[name]["train_step_s"]
        _write_cfg(cfg, sp / "train.extxyz.gz", run, hp, args.hours, max(25, int(est_steps / 8)), args.seed)
        if res["arms"].get(name, {}).get("hours") == args.hours:
            continue
        print(f"{name}: training {args.hours} h on 1 thread", flush=True)
        load0 = os.getloadavg()
        t0 = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [sys.executable, "-m", "polyget.cli", "train", str(cfg)]
        if (run / "last.ckpt").exists():
            cmd.append("--resume")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if train_for_offsets is None:
            tr = read_frames(sp / "train.extxyz.gz")
            train_for_offsets = tr[:: max(1, len(tr) // 2000)][:2000]
        scores = _score(run / "best.ckpt", sp, work, args.max_frames, train_for_offsets)
        steps, elapsed, curve = _curve(run)
        res["arms"][name] = {"hparams": hp, "hours": args.hours, "steps": steps[-1] if steps else 0,
                             "parameters": cost[name]["parameters"],
                             "receptive_field_A": cost[name]["receptive_field_A"],
                             "val_steps": steps, "val_elapsed_s": elapsed, "val_force_mae": curve,
                             "wall_s_this_run": wall, "cpu_s_this_run": cpu,
                             "loadavg_before": load0,
                             "loadavg_after": os.getloadavg(), "scores": scores}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    done = {n: work / _slug(n) / "best.ckpt" for n in res["arms"] if (work / _slug(n) / "best.ckpt").exists()}
    if done:
        res["md_cost_structure"] = args.structure
        res["md_cost_loadavg"] = os.getloadavg()
        for n, s in _md_cost(done, Path(args.structure), args.rounds).items():
            res["arms"][n]["energy_forces_s"] = s
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    for name, r in res["arms"].items():
        s = r["scores"]
        print(f"{name:28s} {r['steps']:6d} steps  " + "  ".join(
            f"{k} {v['force_mae']:.4f}" for k, v in s.items())
            + f"  E+F {r.get('energy_forces_s', float('nan')):.3f} s", flush=True)
    _plot(res, out.with_suffix(".png"))


def _plot(res, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in res["arms"].items():
        ax[0].plot(np.array(r["val_elapsed_s"]) / 60, r["val_force_mae"], marker=".", label=name)
    ax[0].set_xlabel("training wall time, 1 thread (min)")
    ax[0].set_ylabel("validation force MAE (eV/A)")
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=7)
    ax[0].set_title(f"same budget ({res['hours_per_arm']} h) per architecture")
    for name, r in res["arms"].items():
        if "energy_forces_s" in r:
            ax[1].scatter(r["energy_forces_s"], r["scores"]["held-out families"]["force_mae"], label=name)
    ax[1].set_xlabel("energy+forces call, 360 atoms, 1 thread (s)")
    ax[1].set_ylabel("held-out families force MAE (eV/A)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
