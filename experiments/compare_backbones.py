"""ET vs SO3krates with the same small budget on the shipped mini dataset.

Both backbones are trained force-only with the model sections of configs/train-mini.yaml (ET)
and configs/train-so3krates-mini.yaml (SO3krates), the same data split (6-loops held out), the
same optimiser, batch size, seed and number of steps. Reported per backbone:

* force MAE on the training loops (seen) and on the held-out 6-loops (unseen), eV/A;
* CPU time per training step (median over the logged run, batch of 4 structures);
* CPU time per MD step (one energy + forces call) of the 360-atom 15-loop in inputs/ck6_15loop.data,
  TorchScript, float32 and float64 (median of --repeat calls);
* optionally (--md-steps N) a short Langevin MD of that 15-loop at 300 K: whether every bond of
  the start structure stays within 1.5x its length (stability), and the wall time.

    nice -n 10 .venv/bin/python experiments/compare_backbones.py --steps 400 --threads 1 \
        --out experiments/results/compare_backbones.json
    nice -n 10 .venv/bin/python experiments/compare_backbones.py --timing-only 10 \
        --out experiments/results/compare_backbones_timing.json     # interleaved timing only
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"et": REPO / "configs" / "train-mini.yaml", "so3krates": REPO / "configs" / "train-so3krates-mini.yaml"}


def force_mae(trainer, samples):
    saved = trainer.val_set
    trainer.val_set = samples
    _, summary = trainer.validate()
    trainer.val_set = saved
    return float(summary["overall"]["force_mae"])


def md_step_time(model, atoms, dtype, repeat):
    from polyget.nn.graph import atoms_to_graph, evaluate

    m = torch.jit.script(model.to(dtype).eval())
    g = atoms_to_graph(atoms, model.elements, model.cutoff).to("cpu", dtype)
    evaluate(m, g)
    evaluate(m, g)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        evaluate(m, g)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), int(g.edge_index.shape[1])


def md_stability(ckpt, atoms, steps):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.neighborlist import natural_cutoffs, neighbor_list

    from polyget.ase import PolyGETCalculator

    atoms = atoms.copy()
    atoms.pbc = False
    atoms.calc = PolyGETCalculator(str(ckpt), dtype="float32")
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms))
    keep = i < j
    i, j = i[keep], j[keep]
    d0 = np.linalg.norm(atoms.positions[j] - atoms.positions[i], axis=1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
                   rng=np.random.default_rng(1))
    worst = [1.0]

    def check():
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i], axis=1)
        worst[0] = max(worst[0], float((d / d0).max()))

    dyn.attach(check, interval=10)
    t0 = time.perf_counter()
    dyn.run(steps)
    return {"steps": steps, "dt_fs": 0.5, "max_bond_stretch": worst[0], "stable": worst[0] < 1.5,
            "wall_s": time.perf_counter() - t0}


def interleaved_timing(archs, rounds, threads, workdir):
    """CPU time per training step (batch of 4 mini-set structures) and per energy + forces call
    of the 360-atom 15-loop (TorchScript, float32 and float64), the backbones interleaved in
    each round so that both see the same machine load; medians over the rounds."""
    import ase.io

    from polyget.nn.graph import atoms_to_graph, evaluate
    from polyget.train.dataset import collate
    from polyget.train.trainer import Trainer, batch_loss

    atoms = ase.io.read(REPO / "inputs" / "ck6_15loop.data", format="lammps-data", atom_style="atomic")
    setups = {}
    for arch in archs:
        cfg = yaml.safe_load(open(CONFIGS[arch]))
        cfg["data"]["train"] = str((CONFIGS[arch].parent / cfg["data"]["train"]).resolve())
        cfg["training"].update(max_steps=1, threads=threads)
        cfg["output"] = str(Path(workdir) / ("timing-" + arch))
        tr = Trainer(cfg, quiet=True)
        batches = [collate([tr.train_set[k] for k in b]) for b in tr.batches_of_epoch(0)[:rounds]]
        md = {}
        for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
            import copy

            m = torch.jit.script(copy.deepcopy(tr.model).to(dt).eval())
            g = atoms_to_graph(atoms, m.elements, m.cutoff).to("cpu", dt)
            for _ in range(3):  # TorchScript profiling runs
                evaluate(m, g)
            md[name] = (m, g)
        setups[arch] = (tr, batches, md)
    times = {a: {"train_step": [], "md_float32": [], "md_float64": []} for a in archs}
    for r in range(rounds):
        for arch in archs:
            tr, batches, md = setups[arch]
            t0 = time.perf_counter()
            loss, _ = batch_loss(tr.model, batches[r % len(batches)], tr.cfg["training"], True)
            tr.opt.zero_grad()
            loss.backward()
            tr.opt.step()
            times[arch]["train_step"].append(time.perf_counter() - t0)
            for name in ("float32", "float64"):
                m, g = md[name]
                t0 = time.perf_counter()
                evaluate(m, g)
                times[arch]["md_" + name].append(time.perf_counter() - t0)
    return {a: {k: statistics.median(v) for k, v in t.items()} for a, t in times.items()}


def run_backbone(arch, steps, threads, repeat, md_steps, workdir):
    import ase.io

    from polyget.train.trainer import Trainer

    cfg = yaml.safe_load(open(CONFIGS[arch]))
    cfg["data"]["train"] = str((CONFIGS[arch].parent / cfg["data"]["train"]).resolve())
    cfg["training"].update(max_steps=steps, val_every=steps, threads=threads)
    cfg["output"] = str(Path(workdir) / arch)
    tr = Trainer(cfg, quiet=True)
    nparams = sum(p.numel() for p in tr.model.parameters())
    mae0_unseen = force_mae(tr, tr.val_set)
    t0 = time.perf_counter()
    tr.run()
    train_wall = time.perf_counter() - t0
    res = {
        "architecture": arch, "config": str(CONFIGS[arch].relative_to(REPO)), "model": cfg["model"],
        "parameters": nparams, "steps": steps, "batch_size": cfg["training"]["batch_size"],
        "train_structures": len(tr.train_set), "heldout_structures": len(tr.val_set),
        "force_mae_unseen_at_init": mae0_unseen,
        "force_mae_seen": force_mae(tr, tr.train_set),
        "force_mae_unseen_6loops": force_mae(tr, tr.val_set),
        "train_wall_s": train_wall, "train_s_per_step": train_wall / steps,
    }
    atoms = ase.io.read(REPO / "inputs" / "ck6_15loop.data", format="lammps-data", atom_style="atomic")
    model = tr.model.cpu()
    for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
        t, nedges = md_step_time(model, atoms, dt, repeat)
        res[f"md_step_s_360_{name}"] = t
    res["edges_360"] = nedges
    if md_steps:
        res["md"] = md_stability(Path(workdir) / arch / "last.ckpt", atoms, md_steps)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--md-steps", type=int, default=0)
    p.add_argument("--arch", nargs="+", default=["et", "so3krates"])
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "compare_backbones.json"))
    p.add_argument("--timing-only", type=int, default=0, metavar="ROUNDS",
                   help="only the interleaved timing (ROUNDS rounds), no training")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.timing_only:
        with tempfile.TemporaryDirectory() as work:
            res = interleaved_timing(a.arch, a.timing_only, a.threads, work)
        out = {"timing": res, "rounds": a.timing_only, "threads": a.threads, "torch": torch.__version__,
               "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
               "note": "interleaved rounds, medians; untrained weights (cost does not depend on them)"}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        print("| backbone | s/train step (4 structures) | ms/MD step 360 atoms f32 | f64 |")
        print("|---|---|---|---|")
        for arch, t in res.items():
            print(f"| {arch} | {t['train_step']:.3f} | {1e3 * t['md_float32']:.0f} | {1e3 * t['md_float64']:.0f} |")
        return
    with tempfile.TemporaryDirectory() as work:
        rows = [run_backbone(arch, a.steps, a.threads, a.repeat, a.md_steps, work) for arch in a.arch]
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = None
    out = {"results": rows, "threads": a.threads, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "loadavg_at_end": load,
           "note": "same steps, batch, lr, seed and split for both; shared, loaded CPU"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    hdr = ("| backbone | params | steps | MAE seen | MAE 6-loops (unseen) | s/train step | "
           "ms/MD step 360 at. f32 | f64 |")
    print(hdr)
    print("|" + "---|" * 8)
    for r in rows:
        print(f"| {r['architecture']} | {r['parameters']} | {r['steps']} | {r['force_mae_seen']:.3f} | "
              f"{r['force_mae_unseen_6loops']:.3f} | {r['train_s_per_step']:.3f} | "
              f"{1e3 * r['md_step_s_360_float32']:.0f} | {1e3 * r['md_step_s_360_float64']:.0f} |")
    for r in rows:
        if "md" in r:
            print(f"{r['architecture']}: {r['md']}")


if __name__ == "__main__":
    main()
