"""One environment variable on and off: processes alternated, each timing one exported model
through the C++ core (``polyget._core``, what ``pair_style polyget`` runs) on one structure,
with the machine's core-to-core latency at its start (run_bench.core_latency_ns: the 2-vCPU VM's
near / far modes). For settings read once per process, such as THP_MEM_ALLOC_ENABLE (libtorch's
CPU allocator puts tensors of 2 MB and more on transparent huge pages; the plugin turns it on).

    .venv/bin/python bench/ab_env.py MODEL.jit.pt [--var THP_MEM_ALLOC_ENABLE] [--on 1] [--off 0]
        [--size 360] [--threads 2] [--pairs 6] [--calls 9] [--out bench/results]

Writes bench/results/abenv_<UTC>.json. Time it on a quiet machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r'''
import json, statistics, sys, time
sys.path.insert(0, {bench!r}); sys.path.insert(0, {python!r})
import torch
torch.set_num_threads({threads})
from bench_lean import graph
from polyget.contract import keep_freed_memory
from polyget.native import NativeModel
keep_freed_memory()
s, ei, ev, _ = graph({size})
ev = ev.double()
m = NativeModel({model!r})
m.compute(s, ei, ev)
m.compute(s, ei, ev)
t = []
for _ in range({calls}):
    t0 = time.perf_counter()
    m.compute(s, ei, ev)
    t.append(time.perf_counter() - t0)
huge = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages"):
        huge = int(line.split()[1])
print(json.dumps({{"median_s": statistics.median(t), "min_s": min(t), "anon_huge_kb": huge}}))
'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--var", default="THP_MEM_ALLOC_ENABLE")
    ap.add_argument("--on", default="1")
    ap.add_argument("--off", default="0")
    ap.add_argument("--size", type=int, default=360)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--calls", type=int, default=9)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    from ab_core import save_result
    from run_bench import FAR_NS, core_latency_ns

    code = CHILD.format(bench=str(ROOT / "bench"), python=str(ROOT / "python"),
                        threads=args.threads, size=args.size, model=str(args.model),
                        calls=args.calls)
    runs = []
    load0 = os.getloadavg()
    for k in range(args.pairs):
        for setting in (("on", "off") if k % 2 == 0 else ("off", "on")):
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            env[args.var] = args.on if setting == "on" else args.off
            lat = core_latency_ns()
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(pair=k, setting=setting, core_latency_ns=lat)
            runs.append(r)
            print("%d %-3s %.4f s (min %.4f), huge pages %d kB, core-to-core %s ns"
                  % (k, setting, r["median_s"], r["min_s"], r["anon_huge_kb"],
                     "?" if lat is None else "%.0f" % lat), flush=True)
    ratios = []
    for k in range(args.pairs):
        on = [r for r in runs if r["pair"] == k and r["setting"] == "on"][0]
        off = [r for r in runs if r["pair"] == k and r["setting"] == "off"][0]
        same = all(x["core_latency_ns"] is not None for x in (on, off)) and \
            (on["core_latency_ns"] > FAR_NS) == (off["core_latency_ns"] > FAR_NS)
        ratios.append({"pair": k, "on_over_off": on["median_s"] / off["median_s"], "same_mode": same})
    same = [r["on_over_off"] for r in ratios if r["same_mode"]]
    res = {"model": str(args.model), "var": args.var, "on": args.on, "off": args.off,
           "atoms": args.size, "threads": args.threads, "calls": args.calls, "runs": runs,
           "ratios": ratios, "median_ratio_same_mode": statistics.median(same) if same else None,
           "median_ratio": statistics.median(r["on_over_off"] for r in ratios),
           "load_before": load0, "load_after": os.getloadavg()}
    path = save_result(res, args.out, "abenv")
    print("on / off per pair: %s; median %.3f (pairs in one mode: %s)"
          % (" ".join("%.2f" % r["on_over_off"] for r in ratios), res["median_ratio"],
             "none" if not same else "%.3f of %d" % (res["median_ratio_same_mode"], len(same))))
    print("wrote", path)


if __name__ == "__main__":
    main()
