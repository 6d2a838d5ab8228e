"""Warm from the first step (issue 10, item 4): step-by-step times of a fresh LAMMPS run.

    .venv/bin/python bench/bench_warmup.py [--path plugin|mliap] [--threads 2] [--steps 12]

Loads the paper-size float32 export of `make bench` (build/bench, made by bench/run_bench.py)
into a fresh LAMMPS (`pair_style polyget` or `mliap unified`), 360-atom CK6 15-loop, NVE
0.5 fs, then times `run 0` (setup + first force call) and each following `run 1` on its own.
Prints one JSON line: load time, run-0 time, per-step times, and each step's ratio to the
median of steps 6..N (steady state). Run it alone on a quiet machine.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--path", default="plugin", choices=["plugin", "mliap"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_worker import make_lammps, read_structure

    files = ROOT / "build" / "bench"
    ns = argparse.Namespace(threads=args.threads, data=str(ROOT / "inputs" / "ck6_15loop.data"),
                            pt=str(files / f"paper-{args.dtype}.pt"),
                            jit=str(files / f"paper-{args.dtype}.jit.pt"),
                            plugin=str(ROOT / ".venv" / "lib" / "polyget" / "plugins" / "polygetplugin.so"))
    t0 = time.perf_counter()
    call, info = make_lammps(ns, read_structure(ns.data), args.path)  # includes `run 0`
    load_and_run0 = time.perf_counter() - t0
    steps = []
    for _ in range(args.steps):
        t = time.perf_counter()
        call()
        steps.append(time.perf_counter() - t)
    steady = statistics.median(steps[5:])
    print(json.dumps({"path": args.path, "threads": args.threads, "dtype": args.dtype,
                      "load_plus_run0_s": load_and_run0, "run0_s": info["run0_s"],
                      "step_s": steps, "steady_median_s": steady,
                      "ratio_to_steady": [s / steady for s in steps],
                      "max_ratio_after_first": max(s / steady for s in steps[1:]),
                      "loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
