"""`make bench`: polyget's code paths side by side with TorchMD-Net's ET, in one interleaved run.

    .venv/bin/python bench/run_bench.py [--sizes 360,3456,36000] [--dtypes float32,float64]
        [--threads 1,2] [--rounds 5] [--paths tmdnet,eager,ase,native,mliap,plugin]
        [--melt-rounds 3] [--train] [--out bench/results]

Model: the paper size (128 features, 6 layers, 8 heads, 32 RBF, 5 A), random weights (seed 0),
the same hyperparameters for TorchMD-Net 3.1's ET (``vector_cutoff`` on). Structures: the
360-atom CK6 15-loop (inputs/ck6_15loop.data, open boundaries) and periodic melts made by
replicating inputs/melt_lac2.data (288 atoms): 2x2x3 = 3,456 and 5x5x5 = 36,000 atoms.

Every path runs in its own worker process (bench/bench_worker.py; TorchMD-Net in the venv
build/tmdnet made by bench/setup_tmdnet.sh), loaded and warmed up first; then rounds
interleave one call of every path, so that a busy machine slows all paths alike. A call is one
energy + forces evaluation from positions (neighbour list included) or one LAMMPS MD step
(`run 1`). Reported: median and min seconds per call, per atom-step, ratio to TorchMD-Net,
load time, first-call time, peak resident memory per atom, and the machine load (1-minute
load average and the CPU share this run got) before and after each configuration, and each
round's core-to-core latency (bench/core_latency.c): the 2-vCPU VM switches between a near
(~100 ns) and a far (~400 ns) placement of its two cores for tens of seconds at a time, and
two-thread timings follow it, so per-round ratios to TorchMD-Net are also given per mode.

Results: bench/results/bench_<UTC time>.json and .md (the table for bench/README.md).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
TMDNET_PY = ROOT / "build" / "tmdnet" / "bin" / "python"
VENV_PY = Path(sys.executable)
PAPER = dict(hidden_channels=128, num_layers=6, num_heads=8, num_rbf=32, cutoff=5.0)
ALL_PATHS = ["tmdnet", "eager", "ase", "native", "mliap", "plugin"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
def structures(sizes):
    import ase.io

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_worker import read_structure

    BUILD.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in sizes:
        if n == 360:
            out[n] = ROOT / "inputs" / "ck6_15loop.data"
            continue
        reps = {3456: (2, 2, 3), 6912: (2, 3, 4), 10368: (3, 3, 4), 36000: (5, 5, 5),
                288: (1, 1, 1)}.get(n)
        if reps is None:
            raise SystemExit(f"--sizes: {n} is not one of 360, 288, 3456, 6912, 10368, 36000")
        path = BUILD / f"melt_{n}.data"
        if not path.exists():
            melt = read_structure(str(ROOT / "inputs" / "melt_lac2.data")).repeat(reps)
            ase.io.write(path, melt, format="lammps-data", specorder=["H", "C", "O"],
                         atom_style="atomic")
        out[n] = path
    return out


def model_files(dtypes, aoti=True, threads=(1, 2)):
    """Random paper-size checkpoint and its exports (cached in build/bench)."""
    import torch

    from polyget.io import atomic_save, make_checkpoint
    from polyget.nn import ModelConfig, PolyGET

    BUILD.mkdir(parents=True, exist_ok=True)
    ckpt = BUILD / "paper.ckpt"
    if not ckpt.exists():
        torch.manual_seed(0)
        atomic_save(make_checkpoint(PolyGET(ModelConfig(**PAPER))), ckpt)
    files = {"ckpt": ckpt}
    for dt in dtypes:
        pt = BUILD / f"paper-{dt}.pt"
        jit = BUILD / f"paper-{dt}.jit.pt"
        stamp = BUILD / f"paper-{dt}.stamp"
        want = f"{ckpt.stat().st_mtime_ns} aoti={int(aoti)} " + _sources_stamp()
        if not (jit.exists() and stamp.exists() and stamp.read_text() == want):
            from polyget.export import export

            log(f"bench: exporting the paper-size model ({dt}{', AOTInductor: minutes' if aoti else ''})")
            t0 = time.time()
            # one package per thread count the bench runs (the core uses the matching one)
            export(ckpt, pt, dtype=dt, aoti=aoti, aoti_threads=list(threads))
            stamp.write_text(want)
            log(f"bench: export took {time.time() - t0:.0f} s")
        # packages compiled elsewhere for these weights: paper-DT.aoti.ready*.pt2
        for ready in sorted(BUILD.glob(f"paper-{dt}.aoti.ready*.pt2")) if not aoti else []:
            from polyget.export import attach_aoti

            log(f"bench: using the compiled package {ready} as {attach_aoti(jit, ready)}")
        from polyget.contract import read_metadata

        names = [n for n in str(read_metadata(jit).get("aoti_package") or "").split(",") if n]
        files[dt] = {"pt": pt, "jit": jit, "aoti": [BUILD / n for n in names] or None}
    return files


def _sources_stamp():
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "python" / "polyget" / "nn").glob("*.py")) + [ROOT / "python" / "polyget" / "compile.py"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def plugin_path():
    for cand in [ROOT / ".venv" / "lib" / "polyget" / "plugins" / "polygetplugin.so"]:
        if cand.exists():
            return cand
    return None


def cpu_share(t0_wall, t0_cpu):
    """Fraction of one core that this process's children got since (t0_wall, t0_cpu)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime - t0_cpu) / max(1e-9, time.time() - t0_wall)


class Worker:
    def __init__(self, path, data, threads, dtype, files, compile_=False):
        py = TMDNET_PY if path == "tmdnet" else VENV_PY
        args = [str(py), str(Path(__file__).parent / "bench_worker.py"), path, "--data", str(data),
                "--threads", str(threads), "--dtype", dtype, "--hparams", json.dumps(PAPER),
                "--model", str(files["ckpt"]), "--jit", str(files[dtype]["jit"]),
                "--pt", str(files[dtype]["pt"]), "--compile", str(int(compile_))]
        if path == "plugin" and plugin_path() is not None and not _lmp_autoloads():
            args += ["--plugin", str(plugin_path())]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=str(ROOT / "python"))
        if path == "tmdnet":
            env.pop("PYTHONPATH")
        self.path = path
        self.errfile = open(BUILD / f"worker-{path}.log", "w+")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errfile, text=True, env=env, cwd=str(ROOT))
        self.ready = None

    def _readline(self):
        # libraries may print to stdout (Warp does): the protocol lines are JSON objects
        while True:
            line = self.proc.stdout.readline()
            if not line or line.startswith("{"):
                return line

    def wait_ready(self):
        line = self._readline()
        if not line:
            raise RuntimeError(f"{self.path} worker failed to start:\n{self._err()}")
        self.ready = json.loads(line)

    def _err(self):
        self.errfile.seek(0)
        return self.errfile.read()[-3000:]

    def first(self):
        """The first call after loading (its time is reported apart as first_s)."""
        self.proc.stdin.write('{"cmd": "first"}\n')
        self.proc.stdin.flush()
        line = self._readline()
        if not line:
            raise RuntimeError(f"{self.path} worker died in its first call:\n{self._err()}")
        self.ready["first_s"] = json.loads(line)["first_s"]

    def call(self):
        self.proc.stdin.write('{"cmd": "call"}\n')
        self.proc.stdin.flush()
        line = self._readline()
        if not line:
            raise RuntimeError(f"{self.path} worker died:\n{self._err()}")
        return json.loads(line)

    def quit(self):
        self.proc.stdin.write('{"cmd": "quit"}\n')
        self.proc.stdin.flush()
        out = json.loads(self._readline())
        self.proc.wait(timeout=60)
        return out


def _lmp_autoloads():
    return False


# rounds whose core-to-core latency is above this are the machine's "far" mode (bench/README.md)
FAR_NS = 250.0
_LATENCY = []


def core_latency_ns(n=20000):
    """Core-to-core round trip of a cache line in ns (bench/core_latency.c, built once into
    build/bench with the system C compiler), or None where it cannot be built. Labels each
    round: on the 2-vCPU VM it switches between ~100 and ~400 ns and the two-thread timings
    follow it."""
    import ctypes

    if not _LATENCY:
        lib = BUILD / "core_latency.so"
        src = ROOT / "bench" / "core_latency.c"
        try:
            if not lib.exists() or lib.stat().st_mtime < src.stat().st_mtime:
                BUILD.mkdir(parents=True, exist_ok=True)
                subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-pthread",
                                "-o", str(lib), str(src)], check=True, capture_output=True)
            f = ctypes.CDLL(str(lib)).polyget_core_latency_ns
            f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int]
            _LATENCY.append(f)
        except (OSError, subprocess.CalledProcessError) as exc:
            log(f"bench: core-to-core latency not measured ({exc})")
            _LATENCY.append(None)
    f = _LATENCY[0]
    return None if f is None or (os.cpu_count() or 1) < 2 else f(n)


def _mode_ratios(rec):
    """Per-round ratios to TorchMD-Net, split by the round's core-to-core latency."""
    lat = rec.get("core_latency_ns") or []
    ref = rec["paths"].get("tmdnet", {}).get("times") or []
    for d in rec["paths"].values():
        ts = d.get("times") or []
        if not ref or not ts or len(ts) != len(ref) or len(lat) != len(ts):
            continue
        for mode, keep in (("near", lambda x: x <= FAR_NS), ("far", lambda x: x > FAR_NS)):
            rs = [t / r for t, r, x in zip(ts, ref, lat) if x is not None and keep(x)]
            if rs:
                d[f"vs_tmdnet_{mode}"] = statistics.median(rs)
                d[f"rounds_{mode}"] = len(rs)


def run_config(paths, n, data, dtype, threads, rounds, files):
    rec = {"natoms": n, "dtype": dtype, "threads": threads, "load_before": os.getloadavg()[0],
           "paths": {}, "core_latency_ns": []}
    workers = {}
    # start every worker, then wait for each (loads overlap; calls never do)
    started = {p: Worker(p, data, threads, dtype, files) for p in paths}
    loaded = {}
    for p in paths:
        try:
            started[p].wait_ready()
            loaded[p] = started[p]
        except Exception as exc:
            rec["paths"][p] = {"error": str(exc)[-1500:]}
            log(f"bench: {p} failed: {str(exc)[-400:]}")
    for p in loaded:  # first calls one at a time, after every load
        try:
            started[p].first()
            workers[p] = started[p]
            rec["paths"][p] = {"load_s": workers[p].ready["load_s"],
                               "first_s": workers[p].ready["first_s"],
                               "info": workers[p].ready.get("info", {}), "times": []}
            log(f"bench: {n} atoms {dtype} {threads} thr: {p} ready (load {workers[p].ready['load_s']:.1f} s, "
                f"first call {workers[p].ready['first_s']:.2f} s)")
        except Exception as exc:
            rec["paths"][p] = {"error": str(exc)[-1500:]}
            log(f"bench: {p} failed: {str(exc)[-400:]}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0_wall, t0_cpu = time.time(), ru.ru_utime + ru.ru_stime
    for r in range(rounds):
        rec["core_latency_ns"].append(core_latency_ns())
        for p, w in workers.items():
            try:
                rec["paths"][p]["times"].append(w.call()["t"])
            except Exception as exc:
                rec["paths"][p]["error"] = str(exc)[-1500:]
        workers = {p: w for p, w in workers.items() if "error" not in rec["paths"][p]}
    for p, w in workers.items():
        try:
            rec["paths"][p]["maxrss_mb"] = w.quit()["maxrss_mb"]
        except Exception as exc:
            rec["paths"][p]["error"] = str(exc)
    rec["load_after"] = os.getloadavg()[0]
    for p, d in rec["paths"].items():
        if d.get("times"):
            d["median_s"] = statistics.median(d["times"])
            d["min_s"] = min(d["times"])
            d["per_atom_step_us"] = 1e6 * d["median_s"] / n
            if "maxrss_mb" in d:
                d["rss_kb_per_atom"] = 1024.0 * d["maxrss_mb"] / n
    ref = rec["paths"].get("tmdnet", {}).get("median_s")
    if ref:
        for d in rec["paths"].values():
            if "median_s" in d:
                d["vs_tmdnet"] = d["median_s"] / ref
    _mode_ratios(rec)
    return rec


def train_throughput(data, dtype, threads, rounds, files):
    """Training steps (one structure per step, force loss, AdamW) of the paper-size model:
    before (frozen pre-speed network) and after, eager and compiled (training.compile; its
    first call includes the compilation)."""
    return run_config(["train_ref", "train_new", "train_compiled"], 360, data, dtype, threads,
                      rounds, files)


def table(results):
    lines = ["| atoms | dtype | threads | path | median s/call | min s | us/atom-step | x TorchMD-Net | "
             "first call s | load s | peak RSS kB/atom |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in results:
        for p, d in rec["paths"].items():
            if "median_s" not in d:
                lines.append(f"| {rec['natoms']} | {rec['dtype']} | {rec['threads']} | {p} | "
                             f"failed: {d.get('error', '?').splitlines()[-1][:80] if d.get('error') else '?'} |||||||")
                continue
            lines.append(
                f"| {rec['natoms']} | {rec['dtype']} | {rec['threads']} | {p} | {d['median_s']:.3f} | "
                f"{d['min_s']:.3f} | {d['per_atom_step_us']:.0f} | "
                f"{d.get('vs_tmdnet', float('nan')):.2f} | {d['first_s']:.2f} | {d['load_s']:.1f} | "
                f"{d.get('rss_kb_per_atom', float('nan')):.0f} |")
        lat = [x for x in rec.get("core_latency_ns") or [] if x is not None]
        modes = ""
        if lat:
            far = sum(x > FAR_NS for x in lat)
            modes = (f"; core-to-core {min(lat):.0f}-{max(lat):.0f} ns, {len(lat) - far} near / "
                     f"{far} far rounds")
            split = [f"{p} {d[k]:.2f} ({m})" for p, d in rec["paths"].items() if p != "tmdnet"
                     for m in ("near", "far") for k in [f"vs_tmdnet_{m}"] if k in d]
            if split:
                modes += "; x TorchMD-Net per round: " + ", ".join(split)
        lines.append(f"| | | | load avg {rec['load_before']:.1f} -> {rec['load_after']:.1f}{modes} |||||||||")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="360,3456")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paths", default=",".join(ALL_PATHS))
    ap.add_argument("--melt-rounds", type=int, default=3, help="rounds at 36,000 atoms (~30 s per call)")
    ap.add_argument("--train", action="store_true", help="also training throughput before/after")
    ap.add_argument("--no-aoti", action="store_true", help="export without the AOTInductor package")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    dtypes = a.dtypes.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    paths = a.paths.split(",")
    if "tmdnet" in paths and not TMDNET_PY.exists():
        log("bench: build/tmdnet missing (bash bench/setup_tmdnet.sh): TorchMD-Net skipped")
        paths.remove("tmdnet")
    if "plugin" in paths and plugin_path() is None:
        log("bench: the LAMMPS plugin is not built (make setup): pair_style polyget skipped")
        paths.remove("plugin")
    data = structures(sizes)
    files = model_files(dtypes, aoti=not a.no_aoti, threads=threads)
    results = []
    train = []
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(complete):
        # after every configuration, so that a run stopped early keeps what it measured
        info = {"started": started, "host": platform.node(),
                "cpu": platform.processor() or platform.machine(), "ncpu": os.cpu_count(),
                "python": sys.version.split()[0], "model": PAPER, "argv": sys.argv[1:],
                "complete": complete, "results": results, "train": train}
        (out / f"bench_{started}.json").write_text(json.dumps(info, indent=1))
        md = table(results) + ("\n\nTraining (one 360-atom structure per step, float32):\n\n"
                               + table(train) if train else "")
        (out / f"bench_{started}.md").write_text(md + "\n")
        return md

    for n in sizes:
        for dt in dtypes:
            for th in threads:
                # the 36,000-atom melt: only the paths that fit (see bench/README.md)
                ps = paths if n < 20000 else [p for p in paths if p in ("native", "plugin", "tmdnet")]
                results.append(run_config(ps, n, data[n], dt, th, a.rounds if n < 20000 else a.melt_rounds, files))
                log(table([results[-1]]))
                save(False)
    if a.train:
        for th in threads:
            train.append(train_throughput(data[360] if 360 in data else structures([360])[360],
                                          "float32", th, a.rounds, files))
            log(table([train[-1]]))
            save(False)
    print(save(True))


if __name__ == "__main__":
    main()
