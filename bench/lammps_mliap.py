"""Steps/s of the NVT deck (inputs/nvt_15loop.in) through `pair_style mliap unified`, 1..N ranks.

System: the cyclooctane 15-loop (360 atoms, inputs/ck6_15loop.data), Nose-Hoover 300 K, 0.5 fs.
Writes bench/results/lammps_mliap_<tag>.json and prints a markdown table.

    .venv/bin/python bench/lammps_mliap.py [--model potentials/polyget-mini.pt] [--ranks 1 2]
        [--steps 200] [--threads 1]

A model that is not given is exported first from a fresh (untrained) network with the given
size (--layers, --hidden, --cutoff): the timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
LMP = REPO / ".venv" / "bin" / "lmp"
MPIRUN = REPO / ".venv" / "bin" / "mpirun"


def export_fresh(out: Path, layers: int, hidden: int, cutoff: float, dtype: str) -> Path:
    import torch

    from polyget.export import export_model
    from polyget.nn import ModelConfig, PolyGET

    torch.manual_seed(0)
    cfg = ModelConfig(hidden_channels=hidden, num_layers=layers, num_heads=4 if hidden < 64 else 8,
                      num_rbf=16 if hidden < 64 else 32, cutoff=cutoff)
    pt, _ = export_model(PolyGET(cfg), out, dtype=dtype)
    return pt


def run(model: Path, ranks: int, steps: int, threads: int, ghostcut: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [str(LMP), "-in", str(REPO / "inputs" / "nvt_15loop.in"), "-log", "none",
           "-var", "model", str(model), "-var", "steps", str(steps),
           "-var", "ghostcut", "%.2f" % ghostcut]
    if ranks > 1:
        cmd = [str(MPIRUN), "-np", str(ranks)] + cmd
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:])
    m = re.findall(r"Performance:.*?([0-9.]+) timesteps/s", proc.stdout)
    loop = re.findall(r"Loop time of ([0-9.]+) on (\d+) procs", proc.stdout)
    return {"ranks": ranks, "threads_per_rank": threads, "steps": steps,
            "steps_per_s": float(m[-1]), "loop_time_s": float(loop[-1][0]), "wall_s": wall}


def cpu_probe() -> dict:
    """Wall time of a CPU-bound loop alone and with two copies at once: whether the machine
    really gives two free cores (on a shared machine it often does not)."""
    code = "s = 0\nfor i in range(10_000_000): s += i"
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code], check=True)
    one = time.time() - t0
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for p in procs:
        p.wait()
    two = time.time() - t0
    return {"one_process_s": round(one, 3), "two_processes_s": round(two, 3),
            "effective_cores_for_2": round(2 * one / two, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="exported NAME.pt (default: a fresh network)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--cutoff", type=float, default=4.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)

    from polyget.lammps.mliap import read_metadata

    load_before = os.getloadavg()
    probe = cpu_probe()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else export_fresh(
            Path(tmp) / "bench.pt", args.layers, args.hidden, args.cutoff, args.dtype)
        meta = read_metadata(str(model))
        hops = meta["receptive_hops"]
        ghostcut = hops * meta["cutoff"] + 2.0 + 0.01
        rows = [run(model, n, args.steps, args.threads, ghostcut) for n in args.ranks]
    result = {
        "system": "cyclooctane 15-loop (inputs/ck6_15loop.data), 360 atoms, NVT 300 K, 0.5 fs",
        "pair_style": "mliap unified (ghostneigh 1, comm_modify cutoff %.2f)" % ghostcut,
        "model": {k: meta.get(k) for k in ("elements", "cutoff", "num_layers", "receptive_hops",
                                           "dtype")},
        "model_file": str(args.model or "fresh network (untrained)"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1min_before_after": [load_before[0], os.getloadavg()[0]],
                    "cpu_probe": probe,
                    "note": "shared machine: other jobs ran at the same time"},
        "runs": rows,
    }
    out = REPO / "bench" / "results" / ("lammps_mliap_%s.json" % args.tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| ranks | threads/rank | steps | steps/s | loop time (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %d | %.2f | %.1f |" % (r["ranks"], r["threads_per_rank"], r["steps"],
                                                 r["steps_per_s"], r["loop_time_s"]))
    print("CPU probe: %.2f effective cores for 2 processes" % probe["effective_cores_for_2"])
    print("written", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
