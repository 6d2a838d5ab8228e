"""Whole-graph vs edges-in-parts AOTInductor packages (compile.LeanEnergyForces), with and
without the fused message operators (ops.py): time and peak memory of one energy + forces call
of the paper-size model, float32.

    .venv/bin/python bench/bench_lean.py [--chunks 1,8,8f] [--threads 2] [--sizes 360,3456]
        [--rounds 7] [--checkpoint CKPT] [--out bench/results]

``--chunks``: package forms, K = edges in K parts (1: the whole graph), Kf = K parts with the
fused operators, Km = K parts, fused, edges mirrored (an edge and its reverse share their
filters; the default form of export). ``--checkpoint``: another model than the random
paper-size one (e.g. potentials/polyget-cho.ckpt); its packages are
build/bench/lean/<stem>-cK-tT.pt2.

Packages are compiled once into build/bench/lean/ from build/bench/paper.ckpt (the weights
run_bench.py uses; made if missing), one per chunk count, for the given CPU thread count, and
checked against eager by the export itself. Freed memory stays in the heap, as in the engines
(contract.keep_freed_memory). Timing: one process loads every package and
alternates them call by call on the same graph (neighbour list made once, not timed), so a
busy machine slows them alike; median and min of the rounds. Memory: a fresh process per
package and size runs two calls and reports its peak resident set (VmHWM), and the same
for a process that loads the package and runs a 2-atom call (the baseline: libraries, weights).
Structures as run_bench.py: the 360-atom CK6 15-loop and periodic LAC2 melts (3,456 / 10,368 /
36,000 atoms). Results: bench/results/lean_<UTC time>.json and .md.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).parent))
PAPER = dict(hidden_channels=128, num_layers=6, num_heads=8, num_rbf=32, cutoff=5.0)
REPS = {360: None, 3456: (2, 2, 3), 10368: (3, 3, 4), 36000: (5, 5, 5)}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def graph(n):
    import torch

    from bench_worker import read_structure
    from polyget.nn.graph import neighbour_list, species_indices

    if n == 360:
        a = read_structure(str(ROOT / "inputs" / "ck6_15loop.data"))
    else:
        a = read_structure(str(ROOT / "inputs" / "melt_lac2.data")).repeat(REPS[n])
    ei, shifts = neighbour_list(a.positions, a.cell.array, a.pbc, PAPER["cutoff"])
    vec = a.positions[ei[1]] - a.positions[ei[0]] + shifts @ a.cell.array
    sp = species_indices(a.get_chemical_symbols(), ["H", "C", "O"])
    return (torch.as_tensor(sp), torch.as_tensor(ei),
            torch.as_tensor(vec, dtype=torch.float32), torch.ones(len(sp)))


def package(form, threads, checkpoint=None):
    """build/bench/lean/paper-cK[f|m]-tT.pt2, compiled if missing (minutes; K > 1 unfused: ~7x
    longer)."""
    import torch

    from polyget.compile import export_aoti
    from polyget.io import atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint
    from polyget.nn import ModelConfig, PolyGET

    # K: parts without the operators; Kf: fused operators, plain edges; Km: fused, mirrored
    chunks, fused, mirrored = int(form.rstrip("fm")), form[-1] in "fm", form.endswith("m")
    stem = Path(checkpoint).stem if checkpoint else "paper"
    out = BUILD / "lean" / f"{stem}-c{form}-t{threads}.pt2"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = Path(checkpoint) if checkpoint else BUILD / "paper.ckpt"
    if not ckpt.exists():
        torch.manual_seed(0)
        atomic_save(make_checkpoint(PolyGET(ModelConfig(**PAPER))), ckpt)
    model = model_from_checkpoint(load_checkpoint(ckpt), "float32").eval()
    t0 = time.time()
    export_aoti(model, out, torch.float32, threads=threads, chunks=chunks, fused=fused,
                mirrored=mirrored)
    log(f"bench_lean: compiled {out.name} in {time.time() - t0:.0f} s")
    return out


def memory_worker(pkg, n, threads):
    """Peak RSS (bytes) of a process that runs ``pkg`` twice on structure n (0: a 2-atom call)."""
    import torch

    from polyget.compile import load_aoti
    from polyget.contract import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()
    run = load_aoti(pkg)
    if n == 0:
        g = (torch.tensor([0, 1]), torch.tensor([[0, 1], [1, 0]]),
             torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), torch.ones(2))
    else:
        g = graph(n)
    for _ in range(2):
        run(g[0], g[1], g[2].clone(), g[3])
    return peak_rss()


def peak_rss():
    """This process's peak resident set (bytes): VmHWM, which starts afresh at exec (ru_maxrss
    does not on Linux: a child forked from a large parent starts with the parent's value)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", default="1,8,8f")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="360,3456")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--checkpoint", default=None,
                    help="model to compile (default: the random paper-size build/bench/paper.ckpt)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-timing", action="store_true",
                    help="memory only (it does not need a quiet machine)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--memory-worker", nargs=3, metavar=("PKG", "N", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        pkg, n, t = args.memory_worker
        print(memory_worker(pkg, int(n), int(t)))
        return
    import torch

    from polyget.compile import _forces_virial, load_aoti
    from polyget.contract import keep_freed_memory

    # as the engines do (mliap unified, polyget._core, the plugin): freed memory stays in the heap
    keep_freed_memory()
    chunks = args.chunks.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.checkpoint:
        from polyget.io import load_checkpoint

        cut = float(load_checkpoint(args.checkpoint)["hparams"].get("cutoff", 5.0))
        if cut != PAPER["cutoff"]:
            ap.error(f"{args.checkpoint}: cutoff {cut} A; the structures here are made for 5 A")
    pkgs = {c: package(c, args.threads, args.checkpoint) for c in chunks}
    torch.set_num_threads(args.threads)
    runs = {c: load_aoti(p) for c, p in pkgs.items()}
    load0 = os.getloadavg()
    result = {"threads": args.threads, "rounds": args.rounds,
              "model": args.checkpoint or PAPER, "dtype": "float32",
              "packages": {str(c): str(p.relative_to(ROOT)) for c, p in pkgs.items()},
              "load_before": load0, "sizes": {}}
    for n in sizes if not args.no_timing else []:
        g = graph(n)
        times = {c: [] for c in chunks}
        ref = None
        for c in chunks:  # warm-up call, and the packages must agree (forces: a mirrored
            # package puts a pair's filter gradient on one of its edges)
            ae, fij = runs[c](g[0], g[1], g[2].clone(), g[3])
            f = _forces_virial(g[1], g[2], fij, len(g[0]))[0]
            if ref is None:
                ref = f
            else:
                err = float((f - ref).abs().max())
                assert err < 1e-3 * max(1.0, float(ref.abs().max())), (c, err)
        for _ in range(args.rounds):
            for c in chunks:
                t0 = time.perf_counter()
                runs[c](g[0], g[1], g[2].clone(), g[3])
                times[c].append(time.perf_counter() - t0)
        entry = {"atoms": int(len(g[0])), "edges": int(g[1].shape[1]), "paths": {}}
        for c in chunks:
            entry["paths"][str(c)] = {"median_s": statistics.median(times[c]), "min_s": min(times[c]),
                                      "times_s": times[c]}
        result["sizes"][str(n)] = entry
        log(f"bench_lean: {n} atoms: " + ", ".join(
            f"chunks {c}: {entry['paths'][str(c)]['median_s']:.3f} s" for c in chunks))
    result["load_after_timing"] = os.getloadavg()
    for n in sizes:
        if str(n) not in result["sizes"]:
            g = graph(n)
            result["sizes"][str(n)] = {"atoms": int(len(g[0])), "edges": int(g[1].shape[1]),
                                       "paths": {str(c): {} for c in chunks}}
    if not args.no_memory:
        for c, p in pkgs.items():
            base = int(subprocess.check_output([sys.executable, __file__, "--memory-worker", str(p), "0",
                                                str(args.threads)]).split()[-1])
            for n in sizes:
                if c == "1" and n == 36000:
                    continue  # ~53 GB (1.47 MB/atom): more than the development machine has
                peak = int(subprocess.check_output([sys.executable, __file__, "--memory-worker", str(p),
                                                    str(n), str(args.threads)]).split()[-1])
                e = result["sizes"][str(n)]
                e["paths"][str(c)].update(peak_bytes=peak, baseline_bytes=base,
                                          bytes_per_atom=(peak - base) / e["atoms"])
                log(f"bench_lean: {n} atoms, chunks {c}: peak {peak / 1e9:.2f} GB "
                    f"({(peak - base) / e['atoms'] / 1e6:.3f} MB/atom above the baseline)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lean_{stamp}.json").write_text(json.dumps(result, indent=1))
    lines = ["| atoms | edges | chunks | median s | min s | peak GB | MB/atom above baseline |",
             "|---|---|---|---|---|---|---|"]
    for n, e in result["sizes"].items():
        for c, r in e["paths"].items():
            lines.append("| %s | %d | %s | %s | %s | %s | %s |" % (
                n, e["edges"], c, "%.3f" % r["median_s"] if "median_s" in r else "-",
                "%.3f" % r["min_s"] if "min_s" in r else "-",
                "%.2f" % (r["peak_bytes"] / 1e9) if "peak_bytes" in r else "-",
                "%.3f" % (r["bytes_per_atom"] / 1e6) if "bytes_per_atom" in r else "-"))
    lines.append("")
    lines.append("load average before / after timing: %s / %s" % (
        " ".join("%.2f" % v for v in load0), " ".join("%.2f" % v for v in result["load_after_timing"])))
    (out / f"lean_{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / f'lean_{stamp}.json'}")


if __name__ == "__main__":
    main()
