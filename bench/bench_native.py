"""Benchmark: LAMMPS `pair_style polyget` (C++ plugin) vs `pair_style mliap unified` (Python).

Runs the 360-atom 15-loop NVT deck (inputs/nvt_15loop.in: Nose-Hoover 300 K, 0.5 fs) with each
pair style on 1 and 2 MPI ranks and records LAMMPS' "Performance: ... timesteps/s".

    .venv/bin/python bench/bench_native.py [--model potentials/polyget-mini.pt] [--steps 200]
        [--ranks 1 2] [--out bench/results]

--model names the ML-IAP file NAME.pt; NAME.jit.pt next to it is used for pair_style polyget
(both are written by python/export.py). Without a shipped model, --random builds a randomly
initialised PolyGET with the given --layers/--hidden/--cutoff (timings only depend on the
architecture, not on the weights). Results: bench/results/native_<timestamp>.json and
bench/results/native.md (markdown table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
LMP = VENV / "bin" / "lmp"
MPIRUN = VENV / "bin" / "mpirun"
DECK = REPO / "inputs" / "nvt_15loop.in"
DATA = REPO / "inputs" / "ck6_15loop.data"


def steps_per_second(output: str):
    m = re.findall(r"Performance:.*?([0-9.]+) timesteps/s", output)
    return float(m[-1]) if m else None


def make_deck(style: str, work: Path) -> Path:
    """inputs/nvt_15loop.in with its pair_style line set for `style` (polyget or mliap)."""
    text = DECK.read_text()
    if style == "polyget":
        text, n = re.subn(r"^pair_style\s+mliap unified \$\{model\}\s+\d+\s*$",
                          "pair_style      polyget ${model}", text, flags=re.M)
        if n != 1:
            raise SystemExit(f"bench: cannot find the pair_style line in {DECK}")
    path = work / f"nvt_15loop.{style}.in"
    path.write_text(text)
    return path


def run(style: str, model: Path, nprocs: int, steps: int, work: Path, ghostcut: float):
    deck = make_deck(style, work)
    cmd = [str(LMP), "-in", str(deck), "-log", str(work / f"log.{style}.{nprocs}"),
           "-var", "model", str(model), "-var", "data", str(DATA), "-var", "steps", str(steps),
           "-var", "ghostcut", f"{ghostcut:.2f}"]
    if nprocs > 1:
        cmd = [str(MPIRUN), "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"bench: {style} on {nprocs} rank(s) failed:\n{out[-3000:]}")
    pe = re.findall(r"^\s*\d+\s+[\d.]+\s+[\d.]+\s+(-?[\d.]+(?:e[-+]?\d+)?)", out, flags=re.M)
    return {"style": style, "ranks": nprocs, "steps": steps, "steps_per_s": steps_per_second(out),
            "final_pe": float(pe[-1]) if pe else None}


def random_model(out_pt: Path, layers: int, hidden: int, cutoff: float, heads: int, rbf: int):
    import torch

    from polyget.export import export_model
    from polyget.nn import ModelConfig, PolyGET

    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=layers, hidden_channels=hidden, cutoff=cutoff, num_heads=heads,
                      num_rbf=rbf)
    model = PolyGET(cfg).double().eval()
    pt, jit = export_model(model, out_pt, dtype="float64")
    return pt, jit, cfg.to_dict()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "potentials" / "polyget-mini.pt"))
    p.add_argument("--random", action="store_true", help="benchmark a random-weight PolyGET")
    # --random defaults: the polyget-mini architecture (potentials/polyget-mini.yaml)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--rbf", type=int, default=16)
    p.add_argument("--cutoff", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--styles", nargs="+", default=["polyget", "mliap"])
    p.add_argument("--repeat", type=int, default=2,
                   help="runs per (style, ranks), interleaved; the table shows the best (least "
                        "disturbed by other load on the machine), the JSON all of them")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    if not LMP.exists():
        raise SystemExit(f"bench: {LMP} not found: run `make setup`")
    work = Path(tempfile.mkdtemp(prefix="polyget-bench-"))
    if args.random:
        pt, jit, config = random_model(work / "random.pt", args.layers, args.hidden, args.cutoff,
                                       args.heads, args.rbf)
        model_desc = {"random": True, **config}
    else:
        pt = Path(args.model)
        jit = pt.with_name(pt.name[:-3] + ".jit.pt") if pt.name.endswith(".pt") else pt
        if not pt.is_file() or not jit.is_file():
            raise SystemExit(f"bench: {pt} / {jit} missing: export a model or use --random")
        model_desc = {"random": False, "path": str(pt)}
    from polyget import contract

    meta = contract.read_metadata(jit)
    hops = int(meta["receptive_hops"])
    ghostcut = contract.halo_cutoff(hops, meta["cutoff"], 2.0)  # the deck's skin is 2.0
    model_desc.update({k: meta[k] for k in ("elements", "cutoff", "num_layers", "dtype")})
    model_desc["receptive_hops"] = hops

    load_before = os.getloadavg()
    runs = []
    for rep in range(args.repeat):
        for nprocs in args.ranks:
            for style in args.styles:
                model = jit if style == "polyget" else pt
                r = run(style, model, nprocs, args.steps, work, ghostcut)
                r["repeat"] = rep
                print(f"{style:8s} {nprocs} rank(s): {r['steps_per_s']} steps/s", flush=True)
                runs.append(r)
    rows = []
    for nprocs in args.ranks:
        for style in args.styles:
            mine = [r for r in runs if r["style"] == style and r["ranks"] == nprocs]
            best = max(mine, key=lambda r: r["steps_per_s"] or 0.0)
            rows.append({"style": style, "ranks": nprocs, "steps": args.steps,
                         "steps_per_s": best["steps_per_s"],
                         "all_steps_per_s": [r["steps_per_s"] for r in mine]})

    import torch

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "benchmark": "nvt_15loop (360 atoms, Nose-Hoover 300 K, 0.5 fs)",
        "deck": str(DECK.relative_to(REPO)), "data": str(DATA.relative_to(REPO)),
        "model": model_desc, "best": rows, "runs": runs, "utc": stamp,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "omp_num_threads": 1},
        "note": "CPU only; other jobs may share the machine: compare within one run",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"native_{stamp}.json").write_text(json.dumps(result, indent=2))
    lines = ["| pair style | ranks | steps/s (best) | all runs |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['style']} | {r['ranks']} | {r['steps_per_s']} | "
                     f"{', '.join(str(x) for x in r['all_steps_per_s'])} |")
    table = "\n".join(lines)
    md = (f"# pair_style polyget vs mliap unified ({stamp})\n\n{result['benchmark']}; model: "
          f"{json.dumps(model_desc)}; {os.cpu_count()} CPU cores, OMP_NUM_THREADS=1, "
          f"{args.steps} steps, {args.repeat} interleaved runs each; load average before "
          f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (a busy machine slows "
          f"everything: compare within one table).\n\n{table}\n")
    (out / "native.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
