"""Two exported models through the C++ core (``polyget._core``, what ``pair_style polyget``
runs), alternated call by call in one process on the same structure: per-call times and their
ratio per round. For comparing package forms of the same weights (e.g. 8 against 4 mirrored
parts: export both, or attach_aoti a package from ``bench_lean.py`` to a copy of the
TorchScript file).

    .venv/bin/python bench/ab_core.py A.jit.pt B.jit.pt [--size 360] [--threads 2] [--rounds 11]
        [--out bench/results]

Or one model under two values of an environment variable read at every call (e.g. the fused
operators' POLYGET_OPS_SPLIT), set before each call of the same process:

    .venv/bin/python bench/ab_core.py M.jit.pt --env POLYGET_OPS_SPLIT=edges,atoms

Each round is labelled with the core-to-core latency measured before it (run_bench.py
core_latency_ns: the 2-vCPU VM's near and far modes) and ratios are given per mode.

Writes bench/results/abcore_<UTC>.json. Time it on a quiet machine.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))


def save_result(res: dict, out, prefix: str) -> Path:
    """res as bench/results-style JSON: OUT/PREFIX_<UTC time>.json; returns the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime(prefix + "_%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(res, indent=1))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b", nargs="?", help="second model (default: a again, with --env)")
    ap.add_argument("--env", help="VAR=A_VALUE,B_VALUE: set before each call of a / b")
    ap.add_argument("--size", type=int, default=360)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bench_lean import graph
    from polyget.contract import keep_freed_memory
    from polyget.native import NativeModel

    keep_freed_memory()
    species, edge_index, edge_vec, _ = graph(args.size)
    edge_vec = edge_vec.double()
    from run_bench import FAR_NS, core_latency_ns

    if args.b is None and not args.env:
        ap.error("give a second model, or --env VAR=A,B")
    env = {}
    if args.env:
        var, _, vals = args.env.partition("=")
        va, _, vb = vals.partition(",")
        env = {"a": (var, va), "b": (var, vb)}
    a = NativeModel(args.a)
    models = {"a": a, "b": NativeModel(args.b) if args.b else a}

    def call(k):
        if env:
            os.environ[env[k][0]] = env[k][1]
        t0 = time.perf_counter()
        models[k].compute(species, edge_index, edge_vec)
        return time.perf_counter() - t0

    for k in models:
        call(k)
        call(k)
    times = {k: [] for k in models}
    lat = []
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        lat.append(core_latency_ns())
        for k in models:
            times[k].append(call(k))
    ratios = [b / a for a, b in zip(times["a"], times["b"])]
    by_mode = {}
    for mode, keep in (("near", lambda x: x <= FAR_NS), ("far", lambda x: x > FAR_NS)):
        rs = [r for r, x in zip(ratios, lat) if x is not None and keep(x)]
        if rs:
            by_mode[mode] = {"rounds": len(rs), "median_ratio": statistics.median(rs),
                             "median_s": {k: statistics.median(
                                 [t for t, x in zip(times[k], lat) if x is not None and keep(x)])
                                 for k in times}}
    res = {"a": args.a, "b": args.b or args.a, "env": args.env,
           "status": {k: m.aoti_status for k, m in models.items()},
           "core_latency_ns": lat, "by_mode": by_mode,
           "atoms": int(len(species)), "edges": int(edge_index.shape[1]),
           "threads": args.threads, "times_s": times, "ratio_b_over_a": ratios,
           "median_ratio": statistics.median(ratios),
           "median_s": {k: statistics.median(v) for k, v in times.items()},
           "load_before": load0, "load_after": os.getloadavg()}
    path = save_result(res, args.out, "abcore")
    print("a %.3f s, b %.3f s per call (medians); b / a per round: %s (median %.2f)"
          % (res["median_s"]["a"], res["median_s"]["b"], " ".join("%.2f" % r for r in ratios),
             res["median_ratio"]))
    for mode, d in by_mode.items():
        print("%s mode (%d rounds): a %.3f s, b %.3f s, b / a %.2f" % (
            mode, d["rounds"], d["median_s"]["a"], d["median_s"]["b"], d["median_ratio"]))
    print("wrote", path)


if __name__ == "__main__":
    main()
