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
REPLICAS = {"1e3": (2, 2, 1), "3e3": (2, 2, 3), "5e3": (3, 3, 2), "1e4": (3, 3, 4),
            "1e5": (7, 7, 7), "issue": (1, 1, 1)}
# "issue": the box of issue 11 (three 6-loops in 48 x 20 x 20 A, here gamma-butyrolactone:
# 216 atoms), written by issue_box(); the other sizes replicate CELL
# model architectures: the paper's depth, and polyget-mini's (shallow: its ghost shell fits in
# memory, so the shell can be measured against the exchange on the same system)
MODELS = {"paper": dict(num_layers=6, hidden_channels=32, num_heads=8, num_rbf=32, cutoff=5.0),
          "mini": dict(num_layers=2, hidden_channels=32, num_heads=4, num_rbf=16, cutoff=4.0)}
SKIN = 1.0
# graph edges per owned atom in the 0.80 g/cm^3 cell (measured: 35.1 at 5 A, ~18 at 4 A), used
# only to predict memory before a run
EDGES_PER_ATOM = {"paper": 35.2, "mini": 18.5}
BASE_RSS_MB = 200.0  # resident memory of a rank before the model runs (LAMMPS + torch libraries)

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


def make_model(name: str, work: Path, dtype: str):
    import torch

    from polyget.export import export_model
    from polyget.nn import ModelConfig, PolyGET

    torch.manual_seed(0)
    cfg = ModelConfig(**MODELS[name])
    model = PolyGET(cfg).eval()
    _, jit = export_model(model, work / f"{name}.pt", dtype=dtype)
    return jit, cfg.to_dict()


def mem_available_mb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def issue_box(path: Path) -> Path:
    """Three LAC2 6-loops side by side along x in a 48 x 20 x 20 A periodic box."""
    from polyget.data.build import build
    from polyget.data.melt import write_lammps_data

    mol = build("LAC2", 6, n_conf=1, seed=0)[0]
    mol.positions -= mol.positions.mean(axis=0)
    atoms = None
    for k in range(3):
        m = mol.copy()
        m.positions += [8.0 + 16.0 * k, 10.0, 10.0]
        atoms = m if atoms is None else atoms + m
    atoms.set_cell([48.0, 20.0, 20.0])
    atoms.pbc = True
    atoms.wrap()
    write_lammps_data(path, atoms, "three LAC2 6-loops, %d atoms, 48 x 20 x 20 A" % len(atoms))
    return path


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
    data = issue_box(work / "issue.data") if size == "issue" else CELL
    deck = DECK.format(processors="processors %d %d %d" % g if nprocs > 1 else "",
                       data=data, rx=rx, ry=ry, rz=rz, model=jit,
                       mode="exchange recompute yes" if mode == "recompute" else mode, skin=SKIN,
                       steps=steps)
    if mode == "fold":
        deck = deck.replace("read_data", "atom_modify     map yes\nread_data")
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
                         r"max_nghost (\d+) max_edges (\d+) model_s ([0-9.]+) peak_rss_mb ([0-9.]+)"
                         r"(?: base_rss_mb ([0-9.]+))?", out):
        per_rank.append({"rank": int(m[1]), "calls": int(m[3]), "nlocal": int(m[4]),
                         "nghost": int(m[5]), "edges": int(m[6]), "model_s": float(m[7]),
                         "peak_rss_mb": float(m[8]),
                         # before the model was loaded: libraries, LAMMPS and its atoms
                         "base_rss_mb": float(m[9]) if m[9] else None})
    per_rank.sort(key=lambda r: r["rank"])
    return {"size": size, "mode": mode, "ranks": nprocs, "grid": g, "atoms": int(natoms),
            "steps": int(nsteps), "s_per_step": float(loop_s) / int(nsteps), "per_rank": per_rank}


def project(rows, cfg, n_cell, cell_box, model="paper", max_ranks=64):
    """Strong and weak scaling projection from the measured per-rank work (a model, stated as
    such in the tables).

    Per-rank time per step = a * (edges + c * nodes): nodes = owned + ghost atoms of the rank's
    model graph, edges = its graph edges; c = the multiply-adds of one node over those of one
    edge in a layer (17 F^2 for the node projections vs 4 F n_rbf + 20 F for the edge filters
    and messages: 3.7 for the paper model), a fitted (least squares) to the measured exchange
    runs of `model` (LAMMPS loop time per step after warm-up; the rank with the largest graph
    sets the pace). Ghost counts of cubic subdomains from the geometry; edges per owned atom as
    measured. The exchanges themselves are not in the model: per step they move
    (owned + ghost) x exchange_width numbers to the neighbour ranks num_layers times each way
    (~1 MB per rank per step at 1e4 atoms per rank: milliseconds on a cluster interconnect,
    against seconds of model time per step on a CPU).
    """
    import numpy as np

    F, nrbf = cfg["hidden_channels"], cfg["num_rbf"]
    c = 17.0 * F * F / (4.0 * F * nrbf + 20.0 * F)
    pts = []
    for row in rows:
        if row.get("model") != model or row.get("mode") != "exchange" or not row.get("per_rank"):
            continue
        slow = max(row["per_rank"], key=lambda r: r["edges"] + c * (r["nlocal"] + r["nghost"]))
        pts.append((slow["nlocal"] + slow["nghost"], slow["edges"], row["s_per_step"]))
    if not pts:
        return None
    work = np.array([p[1] + c * p[0] for p in pts])
    t = np.array([p[2] for p in pts])
    a = float((work * t).sum() / (work * work).sum())
    epa = np.mean([r["edges"] / max(1, r["nlocal"]) for row in rows
                   if row.get("model") == model and row.get("mode") == "exchange"
                   for r in row.get("per_rank", []) if r["nlocal"]])
    rho = n_cell / float(np.prod(cell_box))
    cut_x = cfg["cutoff"] + SKIN
    cut_s = (cfg["num_layers"] + 1) * cfg["cutoff"] + SKIN

    def step_time(n_atoms, p, cut, shell):
        side = (n_atoms / rho) ** (1 / 3)
        sub = side / p ** (1 / 3)
        own = n_atoms / p
        ghosts = rho * ((sub + 2 * cut) ** 3 - sub ** 3)
        edges = epa * (own + ghosts if shell else own)  # the shell also builds ghosts' edges
        return a * (edges + c * (own + ghosts)), ghosts

    out = {"model": model, "fit": {"s_per_edge": a, "node_weight": c, "edges_per_atom": float(epa),
                                   "points": pts,
                                   "residuals_s": [float(x) for x in t - a * work]},
           "strong": [], "weak": []}
    for n_atoms in (1e4, 1e5, 1e6):
        t1, _ = step_time(n_atoms, 1, cut_x, False)
        for p in (1, 2, 4, 8, 16, 32, 64):
            if p > max_ranks:
                break
            tx, gx = step_time(n_atoms, p, cut_x, False)
            ts, gs = step_time(n_atoms, p, cut_s, True)
            out["strong"].append({"atoms": int(n_atoms), "ranks": p, "exchange_s": tx,
                                  "exchange_ghosts": gx, "exchange_speedup": t1 / tx,
                                  "exchange_efficiency": t1 / tx / p, "shell_s": ts,
                                  "shell_ghosts": gs, "shell_speedup": t1 / ts})
    for per in (1e3, 1e4):
        t1, _ = step_time(per, 1, cut_x, False)
        for p in (1, 8, 64):
            tx, gx = step_time(per * p, p, cut_x, False)
            out["weak"].append({"atoms_per_rank": int(per), "ranks": p, "exchange_s": tx,
                                "ghosts": gx, "efficiency": t1 / tx})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["mini@1e3", "paper@issue", "paper@1e3", "paper@5e3", "paper@1e4"],
                   help="MODEL@SIZE, MODEL in %s, SIZE in %s" % (list(MODELS), list(REPLICAS)))
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["exchange", "fold", "shell"],
                   help="ghosts modes of pair_style polyget (fold: one rank only; recompute: "
                        "exchange with `recompute yes`)")
    p.add_argument("--issue-ranks", type=int, nargs="+", default=[1, 2, 4],
                   help="ranks for the issue-11 box (4 on 2 cores is oversubscribed)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--max-shell-nodes", type=float, default=20000,
                   help="skip ghost-shell runs whose predicted graphs (all ranks) are larger")
    p.add_argument("--timeout", type=int, default=3000)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--reproject", metavar="JSON",
                   help="recompute the projection and tables of an earlier results file (no runs)")
    args = p.parse_args(argv)
    if args.reproject:
        result = json.loads(Path(args.reproject).read_text())
        cfg = {k: v for k, v in result["models"]["paper"].items()}
        n_cell = result["cell_atoms"]
        from ase.io import read

        a = read(REPO / result["cell"], format="lammps-data", units="metal", atom_style="atomic")
        result["projection"] = project(result["rows"], cfg, n_cell, a.cell.lengths())
        Path(args.reproject).write_text(json.dumps(result, indent=2))
        md = markdown(result)
        (Path(args.out) / "scaling.md").write_text(md)
        print(md)
        return 0
    if not LMP.exists():
        raise SystemExit(f"bench: {LMP} not found: run `make setup`")

    work = Path(tempfile.mkdtemp(prefix="polyget-scaling-"))
    n_cell, cell_box, density = cell_info()
    load_before = os.getloadavg()
    rows = []
    cfgs = {}
    mb_per_edge = {}  # per model: largest peak RSS per graph edge seen so far (conservative)
    for case in args.cases:
        mname, size = case.split("@")
        if mname not in cfgs:
            cfgs[mname] = make_model(mname, work, args.dtype)
        jit, cfg = cfgs[mname]
        rep = REPLICAS[size]
        n_atoms = n_cell * rep[0] * rep[1] * rep[2]
        box = [cell_box[k] * rep[k] for k in range(3)]
        if size == "issue":
            n_atoms, box = 216, [48.0, 20.0, 20.0]
        for nprocs in (args.issue_ranks if size == "issue" else args.ranks):
            for mode in args.modes:
                if mode == "fold" and nprocs > 1:
                    continue  # one rank only
                mkey = mname + "/recompute" if mode == "recompute" else mname
                cut = cfg["cutoff"] + SKIN if mode in ("exchange", "recompute") else \
                    (cfg["num_layers"] + 1) * cfg["cutoff"] + SKIN
                pred = predicted_ghosts(n_atoms, box, grid_for(nprocs), cut)
                if mode == "fold":
                    pred = 0.0  # images folded onto owned atoms: no ghost nodes
                # edges: owned rows only (exchange, fold) or owned + ghost rows (shell)
                edges = EDGES_PER_ATOM[mname] * (n_atoms / nprocs + (pred if mode == "shell" else 0))
                need_mb = nprocs * (BASE_RSS_MB + mb_per_edge.get(mkey, 0.0) * edges)
                base = {"model": mname, "size": size, "mode": mode, "ranks": nprocs,
                        "atoms": n_atoms, "predicted_ghosts_per_rank": pred}
                if mode == "shell" and nprocs * (n_atoms / nprocs + pred) > args.max_shell_nodes:
                    row = dict(base, skipped="ghost shell of %.0f nodes per rank (> --max-shell-nodes"
                                             " %.0f in total)" % (n_atoms / nprocs + pred,
                                                                  args.max_shell_nodes))
                elif mode == "shell" and mname not in mb_per_edge:
                    row = dict(base, skipped="no measured memory per edge for this model yet "
                                             "(run its exchange first: --modes exchange shell)")
                elif need_mb > 0.6 * mem_available_mb():
                    row = dict(base, skipped="needs ~%.0f MB (measured MB per edge x predicted "
                                             "edges), %.0f MB available" % (need_mb, mem_available_mb()))
                else:
                    row = dict(base, **run_one(work, jit, size, mode, nprocs, args.steps, args.timeout))
                    for r in row.get("per_rank", []):
                        if r["edges"]:
                            mb_per_edge[mkey] = max(mb_per_edge.get(mkey, 0.0),
                                                    (r["peak_rss_mb"] - BASE_RSS_MB) / r["edges"])
                row["loadavg"] = os.getloadavg()
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_rank"}), flush=True)

    import torch

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    proj = project(rows, cfgs["paper"][1], n_cell, cell_box) if "paper" in cfgs else None
    result = {"benchmark": "pair_style polyget, ghosts shell vs exchange", "cell": str(CELL.relative_to(REPO)),
              "cell_atoms": n_cell, "density_g_cm3": density,
              "models": {k: {**v[1], "dtype": args.dtype, "random_weights": True} for k, v in cfgs.items()},
              "skin": SKIN, "steps": args.steps, "rows": rows, "ranks": args.ranks,
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
    models = "; ".join(f"{k}: {v['num_layers']} layers, {v['cutoff']} A, {v['hidden_channels']} "
                       f"features" for k, v in result["models"].items())
    dtype = next(iter(result["models"].values()))["dtype"]
    L = [f"# pair_style polyget scaling ({result['utc']})", "",
         f"Models ({dtype}, random weights): {models}. "
         f"{result['cell']} ({result['cell_atoms']} atoms, "
         f"{result['density_g_cm3']:.2f} g/cm^3) replicated; skin {result['skin']} A; "
         f"{result['steps']} NVE steps after 2 warm-up; OMP_NUM_THREADS=1; "
         f"{result['machine']['cpu_count']} CPU cores; load average before "
         f"{result['loadavg_before'][0]:.1f}, after {result['loadavg_after'][0]:.1f}.", "",
         "| model | atoms | mode | ranks | ghost atoms / rank | edges / rank | peak RSS / rank (MB) | "
         "model memory / rank (MB) | s / step |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "per_rank" in r and r["per_rank"]:
            pr = r["per_rank"]
            gh = "/".join(str(x["nghost"]) for x in pr)
            ed = "/".join(str(x["edges"]) for x in pr)
            mem = "/".join("%.0f" % x["peak_rss_mb"] for x in pr)
            # peak RSS minus the peak before the model was loaded (libraries, LAMMPS, atoms)
            own = "/".join("%.0f" % (x["peak_rss_mb"] - x["base_rss_mb"]) if x.get("base_rss_mb")
                           else "" for x in pr)
            L.append(f"| {r['model']} | {r['atoms']} | {r['mode']} | {r['ranks']} | {gh} | {ed} | "
                     f"{mem} | {own} | {r['s_per_step']:.3g} |")
        else:
            why = r.get("skipped") or ("failed: " + r.get("error", "").strip().splitlines()[-1][:80]
                                       if r.get("error") else "")
            L.append(f"| {r['model']} | {r['atoms']} | {r['mode']} | {r['ranks']} | "
                     f"~{r['predicted_ghosts_per_rank']:.0f} (predicted) | | | | not run: {why} |")
    proj = result.get("projection")
    if proj:
        f = proj["fit"]
        L += ["", f"Projection for the {proj['model']} model (a model, not a measurement): "
              f"per-rank step time = {f['s_per_edge']:.3g} s x (edges + {f['node_weight']:.2f} x "
              f"nodes), fitted to the exchange runs above; {f['edges_per_atom']:.1f} edges per "
              "owned atom; cubic subdomains; communication time neglected (bench/README.md). "
              "Speedups are relative to 1 rank with per-layer exchange.", "",
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
