"""Scaling of `pair_style polyget`: ghost shell (before) vs per-layer halo exchange (after).

One command:

    .venv/bin/python bench/bench_scaling.py                   # ~1e3 and ~1e4 atoms, 1 and 2 ranks
    .venv/bin/python bench/bench_scaling.py --sizes 1e3 1e4 1e5 --ranks 1 2 4 --steps 5

Systems: the 288-atom gamma-butyrolactone melt cell (inputs/melt_lac2.data, 0.80 g/cm^3)
replicated by LAMMPS `replicate` to about 1e3 (2x2x1 = 1152), 1e4 (3x3x4 = 10368) and 1e5
(7x7x7 = 98784) atoms. Model: the paper-size PolyGET (6 layers, 5 A cutoff, 32 features,
random weights: timings depend on the architecture only), exported float32 (--dtype).
For each (size, mode, ranks) it runs `replicate`, 2 warm-up steps, then --steps NVE steps
and records, per rank (POLYGET_STATS=1 in the plugin): owned atoms, ghost atoms in the model
graph, graph edges, model seconds, peak resident memory; and LAMMPS' loop time per step.

A ghost-shell run whose predicted graph (owned + ghosts, from the box geometry) exceeds
--max-shell-nodes is not run (it would not fit in memory here): its predicted ghost count is
recorded instead, marked "predicted". Results: bench/results/scaling_<utc>.json and
bench/results/scaling.md (tables + the projection to 64 ranks, see `project`).
The machine's load average is recorded before and after: compare numbers within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
CELL = REPO / "inputs" / "melt_lac2.data"
REPLICAS = {"1e3": (2, 2, 1), "1e4": (3, 3, 4), "1e5": (7, 7, 7)}
SKIN = 1.0

DECK = """
units           metal
atom_style      atomic
boundary        p p p
{processors}
read_data       {data}
replicate       {rx} {ry} {rz}
pair_style      polyget {model} ghosts {mode}
pair_coeff      * * H C O
neighbor        {skin} bin
neigh_modify    every 1 delay 0 check yes
velocity        all create 300.0 4928459 mom yes rot no dist gaussian
timestep        0.0005
fix             1 all nve
thermo_style    custom step pe ke press
thermo          1
run             2
run             {steps}
"""


def paper_model(work: Path, dtype: str):
    import torch

    from polyget.export import export_model
    from polyget.nn import ModelConfig, PolyGET

    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=6, hidden_channels=32, num_heads=8, num_rbf=32, cutoff=5.0)
    model = PolyGET(cfg).eval()
    _, jit = export_model(model, work / "paper.pt", dtype=dtype)
    return jit, cfg.to_dict()


def cell_info():
    from ase.io import read

    a = read(CELL, format="lammps-data", units="metal", atom_style="atomic")
    return len(a), a.cell.lengths(), a.get_masses().sum() / 6.02214076e23 / (a.get_volume() * 1e-24)


def predicted_ghosts(n_atoms, box, grid, cut):
    """Ghost atoms of one brick subdomain (uniform density): atoms within `cut` of it."""
    sub = [box[k] / grid[k] for k in range(3)]
    vol = sub[0] * sub[1] * sub[2]
    rho = n_atoms / (box[0] * box[1] * box[2])
    ext = (sub[0] + 2 * cut) * (sub[1] + 2 * cut) * (sub[2] + 2 * cut)
    return rho * (ext - vol)


def grid_for(nprocs):
    return {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2)}.get(nprocs, (nprocs, 1, 1))


def run_one(work, jit, size, mode, nprocs, steps, timeout):
    rx, ry, rz = REPLICAS[size]
    g = grid_for(nprocs)
    deck = DECK.format(processors="processors %d %d %d" % g if nprocs > 1 else "",
                       data=CELL, rx=rx, ry=ry, rz=rz, model=jit, mode=mode, skin=SKIN, steps=steps)
    name = f"{size}-{mode}-np{nprocs}"
    (work / f"{name}.in").write_text(deck)
    cmd = [str(LMP), "-in", f"{name}.in", "-log", f"{name}.log"]
    if nprocs > 1:
        cmd = [str(MPIRUN), "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", POLYGET_STATS="1")
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"size": size, "mode": mode, "ranks": nprocs, "error": f"timeout after {timeout} s"}
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"size": size, "mode": mode, "ranks": nprocs,
                "error": f"exit {proc.returncode}: {out[-1500:]}"}
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", out)
    loop_s, _, nsteps, natoms = loops[-1]
    per_rank = []
    for m in re.finditer(r"polyget stats: rank (\d+) mode (\w+) calls (\d+) max_nlocal (\d+) "
                         r"max_nghost (\d+) max_edges (\d+) model_s ([0-9.]+) peak_rss_mb ([0-9.]+)", out):
        per_rank.append({"rank": int(m[1]), "calls": int(m[3]), "nlocal": int(m[4]),
                         "nghost": int(m[5]), "edges": int(m[6]), "model_s": float(m[7]),
                         "peak_rss_mb": float(m[8])})
    per_rank.sort(key=lambda r: r["rank"])
    return {"size": size, "mode": mode, "ranks": nprocs, "grid": g, "atoms": int(natoms),
            "steps": int(nsteps), "s_per_step": float(loop_s) / int(nsteps), "per_rank": per_rank}


def project(rows, cfg, n_cell, cell_box, max_ranks=64):
    """Strong and weak scaling projection from the measured per-rank work.

    Model: time per step of one rank = a * (owned + ghost nodes) + b * edges, fitted (least
    squares) to the measured exchange runs (model_s / calls), plus the exchanges themselves,
    taken as free here (they move (owned + ghost) x 4F numbers per layer between neighbours:
    ~1 MB per rank per step at 1e4 atoms/rank, milliseconds on a cluster network). Ghost
    counts from the geometry of cubic subdomains; edges per owned atom as measured.
    """
    import numpy as np

    pts = [(r["nlocal"] + r["nghost"], r["edges"], r["model_s"] / max(1, r["calls"]))
           for row in rows if row.get("mode") == "exchange" and "per_rank" in row
           for r in row["per_rank"] if r["calls"]]
    if len(pts) < 2:
        return None
    X = np.array([[p[0], p[1]] for p in pts], dtype=float)
    y = np.array([p[2] for p in pts])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    a, b = (max(float(c), 0.0) for c in coef)
    if a == 0.0 and b == 0.0:
        return None
    epa = np.mean([r["edges"] / max(1, r["nlocal"]) for row in rows if row.get("mode") == "exchange"
                   and "per_rank" in row for r in row["per_rank"] if r["nlocal"]])
    rho = n_cell / float(np.prod(cell_box))
    cut_x = cfg["cutoff"] + SKIN
    cut_s = (cfg["num_layers"] + 1) * cfg["cutoff"] + SKIN

    def step_time(n_atoms, p, cut):
        side = (n_atoms / rho) ** (1 / 3)
        sub = side / p ** (1 / 3)
        own = n_atoms / p
        if p == 1:
            ghosts = rho * ((side + 2 * cut) ** 3 - side ** 3)
        else:
            ghosts = rho * ((sub + 2 * cut) ** 3 - sub ** 3)
        # edges: owned rows only for exchange; the shell also builds edges of ghosts
        edges = epa * (own if cut == cut_x else own + ghosts)
        return a * (own + ghosts) + b * edges, ghosts

    out = {"fit": {"s_per_node": a, "s_per_edge": b, "edges_per_atom": float(epa)},
           "strong": [], "weak": []}
    for n_atoms in (1e4, 1e5, 1e6):
        t1, _ = step_time(n_atoms, 1, cut_x)
        for p in (1, 2, 4, 8, 16, 32, 64):
            if p > max_ranks:
                break
            tx, gx = step_time(n_atoms, p, cut_x)
            ts, gs = step_time(n_atoms, p, cut_s)
            out["strong"].append({"atoms": int(n_atoms), "ranks": p, "exchange_s": tx,
                                  "exchange_ghosts": gx, "exchange_speedup": t1 / tx,
                                  "exchange_efficiency": t1 / tx / p, "shell_s": ts,
                                  "shell_ghosts": gs, "shell_speedup": t1 / ts})
    for per in (1e3, 1e4):
        t1, _ = step_time(per, 1, cut_x)
        for p in (1, 8, 64):
            tx, gx = step_time(per * p, p, cut_x)
            out["weak"].append({"atoms_per_rank": int(per), "ranks": p, "exchange_s": tx,
                                "efficiency": t1 / tx})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1e3", "1e4"], choices=list(REPLICAS))
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["shell", "exchange"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--max-shell-nodes", type=float, default=60000,
                   help="skip ghost-shell runs whose predicted graph is larger (memory)")
    p.add_argument("--timeout", type=int, default=3000)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    if not LMP.exists():
        raise SystemExit(f"bench: {LMP} not found: run `make setup`")

    work = Path(tempfile.mkdtemp(prefix="polyget-scaling-"))
    jit, cfg = paper_model(work, args.dtype)
    n_cell, cell_box, density = cell_info()
    load_before = os.getloadavg()
    rows = []
    for size in args.sizes:
        rep = REPLICAS[size]
        n_atoms = n_cell * rep[0] * rep[1] * rep[2]
        box = [cell_box[k] * rep[k] for k in range(3)]
        for nprocs in args.ranks:
            for mode in args.modes:
                cut = cfg["cutoff"] + SKIN if mode == "exchange" else \
                    (cfg["num_layers"] + 1) * cfg["cutoff"] + SKIN
                pred = predicted_ghosts(n_atoms, box, grid_for(nprocs), cut)
                if mode == "shell" and n_atoms / nprocs + pred > args.max_shell_nodes:
                    row = {"size": size, "mode": mode, "ranks": nprocs, "atoms": n_atoms,
                           "skipped": "predicted graph of %.0f nodes per rank > --max-shell-nodes"
                                      % (n_atoms / nprocs + pred)}
                else:
                    row = run_one(work, jit, size, mode, nprocs, args.steps, args.timeout)
                row["predicted_ghosts_per_rank"] = pred
                row["loadavg"] = os.getloadavg()
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_rank"}), flush=True)

    import torch

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    proj = project(rows, cfg, n_cell, cell_box)
    result = {"benchmark": "pair_style polyget, ghosts shell vs exchange", "cell": str(CELL.relative_to(REPO)),
              "cell_atoms": n_cell, "density_g_cm3": density, "model": {**cfg, "dtype": args.dtype,
              "random_weights": True}, "skin": SKIN, "steps": args.steps, "rows": rows,
              "projection": proj, "utc": stamp, "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "omp_num_threads": 1}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scaling_{stamp}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out / "scaling.md").write_text(md)
    print(md)
    return 0


def markdown(result):
    L = [f"# pair_style polyget scaling ({result['utc']})", "",
         f"Paper-size model (6 layers, 5 A, 32 features, {result['model']['dtype']}, random "
         f"weights); {result['cell']} ({result['cell_atoms']} atoms, "
         f"{result['density_g_cm3']:.2f} g/cm^3) replicated; skin {result['skin']} A; "
         f"{result['steps']} NVE steps after 2 warm-up; OMP_NUM_THREADS=1; "
         f"{result['machine']['cpu_count']} CPU cores; load average before "
         f"{result['loadavg_before'][0]:.1f}, after {result['loadavg_after'][0]:.1f}.", "",
         "| atoms | mode | ranks | ghost atoms / rank | edges / rank | peak RSS / rank (MB) | s / step |",
         "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "per_rank" in r and r["per_rank"]:
            pr = r["per_rank"]
            gh = "/".join(str(x["nghost"]) for x in pr)
            ed = "/".join(str(x["edges"]) for x in pr)
            mem = "/".join("%.0f" % x["peak_rss_mb"] for x in pr)
            L.append(f"| {r['atoms']} | {r['mode']} | {r['ranks']} | {gh} | {ed} | {mem} | "
                     f"{r['s_per_step']:.3g} |")
        else:
            why = r.get("skipped") or r.get("error", "")[:80]
            L.append(f"| {r.get('atoms', r['size'])} | {r['mode']} | {r['ranks']} | "
                     f"~{r['predicted_ghosts_per_rank']:.0f} (predicted) | | | not run: {why} |")
    proj = result.get("projection")
    if proj:
        f = proj["fit"]
        L += ["", "Projection (a model, not a measurement): per-rank step time = "
              f"{f['s_per_node']:.3g} s x nodes + {f['s_per_edge']:.3g} s x edges, fitted to the "
              f"exchange runs above; {f['edges_per_atom']:.1f} edges per owned atom; cubic "
              "subdomains; communication time neglected (see bench/README.md).", "",
              "| atoms | ranks | exchange: ghosts/rank | s/step | speedup | efficiency | shell: ghosts/rank | speedup |",
              "|---|---|---|---|---|---|---|---|"]
        for s in proj["strong"]:
            L.append(f"| {s['atoms']:.0e} | {s['ranks']} | {s['exchange_ghosts']:.0f} | "
                     f"{s['exchange_s']:.3g} | {s['exchange_speedup']:.1f} | "
                     f"{s['exchange_efficiency']:.2f} | {s['shell_ghosts']:.0f} | {s['shell_speedup']:.2f} |")
        L += ["", "| atoms per rank | ranks | s/step | weak-scaling efficiency |", "|---|---|---|---|"]
        for w in proj["weak"]:
            L.append(f"| {w['atoms_per_rank']} | {w['ranks']} | {w['exchange_s']:.3g} | {w['efficiency']:.2f} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
