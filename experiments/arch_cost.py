"""Cost of one force-only training step and of one energy+forces call for candidate polyget-cho
architectures, on frames of dataset v1 (interleaved rounds, median; CPU threads as given).

    python experiments/arch_cost.py --data build/poly24-v1-splits/train.extxyz.gz \
        --out experiments/results/arch_cost.json

The machine load is recorded; compare numbers within one run only.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

CANDIDATES = {
    "32x2 (polyget-mini size)": dict(hidden_channels=32, num_layers=2, num_heads=4, num_rbf=16,
                                     cutoff=5.0),
    "64x3": dict(hidden_channels=64, num_layers=3, num_heads=8, num_rbf=32, cutoff=5.0),
    "96x4": dict(hidden_channels=96, num_layers=4, num_heads=8, num_rbf=32, cutoff=5.0),
    "128x6 (paper)": dict(hidden_channels=128, num_layers=6, num_heads=8, num_rbf=32, cutoff=5.0),
}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="experiments/results/arch_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from polyget.nn import ModelConfig, PolyGET
    from polyget.nn.graph import evaluate
    from polyget.train.dataset import collate, frames_to_samples, read_frames

    frames = read_frames(args.data)
    rng = np.random.default_rng(0)
    pick = [frames[int(k)] for k in rng.choice(len(frames), size=args.batch_size * 4,
                                               replace=False)]
    models, batches = {}, {}
    for name, hp in CANDIDATES.items():
        torch.manual_seed(0)
        m = PolyGET(ModelConfig(**hp))
        samples = frames_to_samples(pick, m.elements, m.cutoff)
        batches[name] = [collate(samples[k:k + args.batch_size], torch.float32)
                         for k in range(0, len(samples), args.batch_size)]
        models[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4))
    times = {n: {"train_step_s": [], "infer_s": []} for n in CANDIDATES}
    for r in range(args.rounds + 1):          # round 0 is warm-up
        for name in CANDIDATES:
            m, opt = models[name]
            b = batches[name][r % len(batches[name])]
            t = time.perf_counter()
            out = evaluate(m, b.graph, forces=True, create_graph=True)
            loss = ((out["forces"] - b.forces) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t
            t = time.perf_counter()
            evaluate(m, b.graph, forces=True)
            di = time.perf_counter() - t
            if r:
                times[name]["train_step_s"].append(dt)
                times[name]["infer_s"].append(di)
    natoms = [int(sum(b.graph.species.shape[0] for b in batches[n])) for n in CANDIDATES][0]
    res = {"threads": args.threads, "batch_size": args.batch_size,
           "atoms_per_batch_mean": natoms / len(batches[next(iter(CANDIDATES))]),
           "loadavg": os.getloadavg(), "candidates": {}}
    for name, hp in CANDIDATES.items():
        m = models[name][0]
        res["candidates"][name] = {
            "hparams": hp, "parameters": sum(p.numel() for p in m.parameters()),
            "receptive_field_A": (hp["num_layers"] + 1) * hp["cutoff"],
            "train_step_s": statistics.median(times[name]["train_step_s"]),
            "energy_forces_s": statistics.median(times[name]["infer_s"])}
        c = res["candidates"][name]
        print(f"{name:28s} params {c['parameters']:8d}  train step {c['train_step_s']:.3f} s  "
              f"E+F {c['energy_forces_s']:.3f} s  RF {c['receptive_field_A']:.0f} A")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
