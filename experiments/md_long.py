"""Long, resumable 15-loop MD in LAMMPS (paper Fig. 5 and section 5): Nose-Hoover NVT at 300 K,
0.5 fs, of the CK6, OTH4, LAC2 and LAC5 15-loops with `pair_style polyget` (C++ plugin).

The run is cut into chunks (default 1 ps). Every chunk starts from the previous chunk's restart
file, so the job can be killed at any time and started again with the same command: it goes on
from the last finished chunk (a killed chunk is re-run from its start). The loops are advanced
round-robin, so all four reach about the same simulated time.

    python experiments/md_long.py run --hours 2.5              # resumable; Ctrl-C safe
    python experiments/md_long.py run --hours 2.5 --jobs 2     # two loops at a time (2 cores)
    python experiments/md_long.py nve --ps 0.5                 # NVE drift from each last restart
    python experiments/md_long.py analyse                      # JSON + PNG, GFN2 on own frames

State (restart files, per-chunk thermo logs and thinned dumps) lives in
experiments/results/md_long-cho/<FAMILY>/; `analyse` writes experiments/results/md_long-cho.json
and .png. Every dumped frame is checked by `analyse` with the paper's MDsim criterion (the first
frame where a bond of the start structure is > 0.5 A off its start length); during the run a
`fix halt` on a molecule that falls apart (and, with `--watchdog "bond_stretch 1.6"`, the
plugin's bond watchdog) stops a loop that breaks, and that loop is not continued.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("CK6", "OTH4", "LAC2", "LAC5")
DT_FS = 0.5

HEAD = """
units metal
atom_style atomic
boundary s s s
"""
BODY = """
pair_style polyget {model} threads {threads} {watchdog}
pair_coeff * * H C O
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
timestep {dt}
thermo_style custom step temp pe ke etotal
thermo_modify norm no flush yes format float %.8f
thermo {thermo}
dump d all custom {every} {dump} id type x y z fx fy fz
dump_modify d sort id
compute frag all cluster/atom 2.0
compute fragmax all reduce max c_frag
compute fragmin all reduce min c_frag
variable broken equal c_fragmax>c_fragmin
fix watchdog all halt 100 v_broken > 0 error hard message yes
"""


def _lmp(args):
    return args.lmp or str(REPO / ".venv" / "bin" / "lmp")


def _state(d: Path) -> dict:
    f = d / "state.json"
    return json.loads(f.read_text()) if f.exists() else {"chunks": 0, "steps": 0, "broken": None}


def _write_state(d: Path, st: dict):
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(st, indent=1))
    tmp.replace(d / "state.json")


def _start_data(fam: str, d: Path) -> Path:
    import ase.io
    data = d / "start.data"
    if not data.exists():
        starts = {a.info["family"]: a for a in ase.io.read(
            REPO / "data" / "poly24-v1-gfn2-loops15.extxyz.xz", ":")
            if a.info.get("config_type") == "relaxed"}
        a0 = starts[fam].copy()
        a0.center(vacuum=15.0)
        ase.io.write(d / "start.extxyz", a0)
        ase.io.write(data, a0, format="lammps-data", specorder=["H", "C", "O"], masses=True,
                     units="metal", atom_style="atomic")
    return data


def run_chunk(args, fam: str, d: Path, st: dict) -> bool:
    """One chunk of NVT; returns False when the loop broke (watchdog) and must not go on."""
    k = st["chunks"]
    nsteps = int(round(args.chunk_ps * 1000 / DT_FS))
    dump, log = d / f"chunk{k:04d}.dump", d / f"chunk{k:04d}.log"
    if k == 0:
        start = HEAD + f"read_data {_start_data(fam, d)}\n"
        vel = f"velocity all create {args.T} {args.seed} mom yes rot yes dist gaussian\n"
    else:
        start = HEAD + f"read_restart {d / 'last.restart'}\n"
        vel = ""
    deck = (start + BODY.format(model=Path(args.model).resolve(), threads=args.threads,
                                watchdog=args.watchdog, dt=DT_FS / 1000, thermo=args.every,
                                every=args.every, dump=dump)
            + vel + f"fix nvt all nvt temp {args.T} {args.T} 0.05\n"
            + f"run {nsteps}\nwrite_restart {d / 'next.restart'}\n")
    (d / "chunk.in").write_text(deck)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t = time.time()
    p = subprocess.run([_lmp(args), "-in", str(d / "chunk.in"), "-log", str(log), "-screen", "none"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t
    text = log.read_text() if log.exists() else p.stdout
    if p.returncode != 0 or not (d / "next.restart").exists():
        m = re.search(r"ERROR.*", text + p.stdout)
        msg = m.group(0) if m else f"lmp exited with {p.returncode}"
        if "watchdog" in msg or "Fix halt" in msg:
            st["broken"] = {"chunk": k, "message": msg}
            st.setdefault("walls", []).append(wall)
            _write_state(d, st)
            print(f"{fam}: chunk {k} stopped by the watchdog: {msg}", flush=True)
            return False
        raise RuntimeError(f"{fam}: chunk {k} failed: {msg} (deck {d / 'chunk.in'}, log {log})")
    (d / "next.restart").replace(d / "last.restart")
    _compress(dump)
    st["chunks"] = k + 1
    st["steps"] += nsteps
    st.setdefault("walls", []).append(wall)
    _write_state(d, st)
    print(f"{fam}: chunk {k} done, {st['steps'] * DT_FS / 1000:.1f} ps, {nsteps / wall:.2f} steps/s",
          flush=True)
    return True


def _compress(dump: Path):
    """chunkNNNN.dump -> chunkNNNN.dump.xz (a third of the size; ase.io reads either)."""
    import lzma
    if dump.exists():
        with open(dump, "rb") as src, lzma.open(str(dump) + ".xz", "wb", preset=6) as dst:
            dst.write(src.read())
        dump.unlink()


def _dump_of(d: Path, k: int) -> Path:
    plain = d / f"chunk{k:04d}.dump"
    return plain if plain.exists() else Path(str(plain) + ".xz")


def cmd_run(args):
    if args.jobs > 1:
        return _run_jobs(args)
    out = Path(args.out)
    t_end = time.time() + args.hours * 3600
    fams = args.families.split(",")
    while time.time() < t_end:
        todo = []
        for fam in fams:
            d = out / fam
            d.mkdir(parents=True, exist_ok=True)
            st = _state(d)
            if st["broken"] is None and st["steps"] * DT_FS / 1000 < args.ps - 1e-9:
                todo.append((st["steps"], fam, d, st))
        if not todo:
            print("all loops reached the target or broke", flush=True)
            return
        _, fam, d, st = min(todo)          # the loop that is furthest behind
        run_chunk(args, fam, d, st)


def _run_jobs(args):
    """`run --jobs N`: the loops dealt to N processes (one `run` each, same options, its own
    loops' directories), e.g. one per free core; waits for all. Ctrl-C stops them all."""
    fams = args.families.split(",")
    groups = [g for g in (fams[k::args.jobs] for k in range(args.jobs)) if g]
    base, skip = [], False
    for a in args.argv:           # this command line without --families/--jobs
        if skip:
            skip = False
            continue
        if a in ("--families", "--jobs"):
            skip = True
            continue
        if a.startswith("--families=") or a.startswith("--jobs="):
            continue
        base.append(a)
    procs = [subprocess.Popen([sys.executable, __file__] + base + ["--families", ",".join(g), "--jobs", "1"])
             for g in groups]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    if any(codes):
        raise SystemExit(f"md_long run --jobs: exit codes {codes} (loops {groups})")


def cmd_nve(args):
    """NVE from each loop's last restart: total-energy drift in meV/atom/ps (linear fit)."""
    out = Path(args.out)
    nsteps = int(round(args.ps * 1000 / DT_FS))
    res = {}
    for fam in args.families.split(","):
        d = out / fam
        if not (d / "last.restart").exists():
            continue
        log = d / "nve.log"
        deck = (HEAD + f"read_restart {d / 'last.restart'}\n"
                + BODY.format(model=Path(args.nve_model or args.model).resolve(),
                              threads=args.threads, watchdog=args.watchdog, dt=DT_FS / 1000,
                              thermo=20, every=nsteps, dump=d / "nve.dump")
                + f"fix nve all nve\nrun {nsteps}\n")
        (d / "nve.in").write_text(deck)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        p = subprocess.run([_lmp(args), "-in", str(d / "nve.in"), "-log", str(log), "-screen", "none"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{fam}: NVE failed, see {log}")
        th = _thermo(log.read_text())
        res[fam] = th
        n = _natoms(d)
        t = th[:, 0] * DT_FS / 1000
        slope = np.polyfit(t, th[:, 4], 1)[0]
        print(f"{fam}: NVE {args.ps} ps, drift {slope / n * 1000:.3f} meV/atom/ps", flush=True)


def _thermo(text: str) -> np.ndarray:
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 5 and f[0].isdigit():
            try:
                rows.append([float(x) for x in f])
            except ValueError:
                pass
    return np.array(rows)


def _natoms(d: Path) -> int:
    import ase.io
    return len(ase.io.read(d / "start.extxyz"))


def cmd_analyse(args):
    import ase
    import ase.io

    from polyget.md import kabsch_rmsd
    sys.path.insert(0, str(REPO / "experiments"))
    from md_15loops import bonds_of

    out = Path(args.out)
    res = {"model": args.model, "path": "pair_style polyget (C++ plugin), float32",
           "ensemble": "NVT Nose-Hoover 300 K, Tdamp 50 fs", "timestep_fs": DT_FS, "runs": {}}
    gfn2 = None
    for fam in args.families.split(","):
        d = out / fam
        st = _state(d)
        if st["chunks"] == 0 and not st["broken"]:
            continue
        a0 = ase.io.read(d / "start.extxyz")
        sym = a0.get_chemical_symbols()
        bonds = bonds_of(a0)
        d0 = np.linalg.norm(a0.positions[bonds[:, 0]] - a0.positions[bonds[:, 1]], axis=1)
        steps, rmsd, maxdev, frames = [], [], [], {}
        thermo = []
        nchunks = st["chunks"] + (1 if st["broken"] else 0)
        for k in range(nchunks):
            th = _thermo((d / f"chunk{k:04d}.log").read_text())
            if len(th):
                thermo.append(th)
            for f in ase.io.read(_dump_of(d, k), ":", format="lammps-dump-text"):
                s = int(f.info.get("timestep", 0))
                if s in frames:
                    continue
                frames[s] = f
        first_bad = None
        for s in sorted(frames):
            f = frames[s]
            dd = np.linalg.norm(f.positions[bonds[:, 0]] - f.positions[bonds[:, 1]], axis=1)
            dev = float(np.abs(dd - d0).max())
            steps.append(s)
            maxdev.append(dev)
            rmsd.append(kabsch_rmsd(f.positions, a0.positions))
            if first_bad is None and dev > 0.5:
                first_bad = s
        th = np.concatenate(thermo) if thermo else np.zeros((0, 5))
        _, keep = np.unique(th[:, 0], return_index=True)
        th = th[keep]
        walls = st.get("walls", [])
        r = {"atoms": len(a0), "ps_done": st["steps"] * DT_FS / 1000, "chunks": st["chunks"],
             "watchdog_stop": st["broken"],
             "stable": first_bad is None and not st["broken"],
             "first_step_bond_off_0.5A": first_bad,
             "max_bond_deviation_A": max(maxdev) if maxdev else None,
             "steps_per_s": st["steps"] / sum(walls[:st["chunks"]]) if st["chunks"] else None,
             "frame_steps": steps[::args.thin], "rmsd_A": rmsd[::args.thin],
             "max_bond_dev_A": maxdev[::args.thin],
             "thermo_step": th[::args.thin, 0].tolist(), "temp_K": th[::args.thin, 1].tolist(),
             "pe_eV": th[::args.thin, 2].tolist(),
             "mean_temp_K": float(th[len(th) // 10:, 1].mean()) if len(th) else None}
        if (d / "nve.log").exists():
            nv = _thermo((d / "nve.log").read_text())
            t = (nv[:, 0] - nv[0, 0]) * DT_FS / 1000
            r["nve_ps"] = float(t[-1])
            r["nve_drift_meV_per_atom_per_ps"] = float(np.polyfit(t, nv[:, 4], 1)[0] / len(a0) * 1000)
            r["nve_etot_fluct_meV_per_atom"] = float(nv[:, 4].std() / len(a0) * 1000)
        if args.gfn2_frames > 0 and frames:
            from polyget.data.labels import label, make_calculator
            ss = sorted(frames)
            pick = [ss[i] for i in np.linspace(1, len(ss) - 1, min(args.gfn2_frames, len(ss) - 1)).astype(int)]
            # GFN2 forces of frames labelled before (the picks of a finished loop stay the same)
            cache_file = d / "gfn2_forces.npz"
            cache = dict(np.load(cache_file)) if cache_file.exists() else {}
            fp, fr = [], []
            for s in pick:
                f = frames[s]
                fp.append(f.get_forces().copy())
                key = f"step{s}"
                if key not in cache:
                    gfn2 = gfn2 or make_calculator("gfn2")
                    cache[key] = label(ase.Atoms(sym, positions=f.positions), gfn2).get_forces()
                    np.savez_compressed(cache_file, **cache)
                fr.append(cache[key])
            fp, fr = np.concatenate(fp), np.concatenate(fr)
            cos = np.sum(fp * fr, 1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(fr, axis=1))
            r.update({"gfn2_frames": len(pick), "gfn2_frame_steps": [int(s) for s in pick],
                      "gfn2_force_mae": float(np.abs(fp - fr).mean()),
                      "gfn2_force_cosd": float(np.mean(1 - cos)),
                      "gfn2_force_r": float(np.corrcoef(fp.ravel(), fr.ravel())[0, 1]),
                      "gfn2_scatter": [fr.ravel()[::7].tolist(), fp.ravel()[::7].tolist()]})
        res["runs"][fam] = r
        print(f"{fam}: {r['atoms']} atoms, {r['ps_done']:.1f} ps at {r['steps_per_s'] or 0:.2f} "
              f"steps/s, stable={r['stable']} (max bond deviation {r['max_bond_deviation_A']:.2f} A)"
              + (f", GFN2 force MAE {r['gfn2_force_mae']:.3f} eV/A, CosD {r['gfn2_force_cosd']:.4f}"
                 if "gfn2_force_mae" in r else "")
              + (f", NVE drift {r['nve_drift_meV_per_atom_per_ps']:.3f} meV/atom/ps"
                 if "nve_drift_meV_per_atom_per_ps" in r else ""), flush=True)
    dst = Path(args.results)
    dst.with_suffix(".json").write_text(json.dumps(res, indent=1))
    _plot(res, dst.with_suffix(".png"))
    print(f"wrote {dst.with_suffix('.json')} and {dst.with_suffix('.png')}")


def _plot(res, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    for fam, r in res["runs"].items():
        ps = np.array(r["frame_steps"]) * DT_FS / 1000
        ax[0].plot(ps, r["rmsd_A"], label=fam)
        pe = np.array(r["pe_eV"])
        if len(pe):
            ax[1].plot(np.array(r["thermo_step"]) * DT_FS / 1000, (pe - pe[0]) / r["atoms"], lw=0.6,
                       label=fam)
        if "gfn2_scatter" in r:
            ax[2].scatter(r["gfn2_scatter"][0], r["gfn2_scatter"][1], s=2, label=fam)
    ax[0].set_xlabel("time (ps)")
    ax[0].set_ylabel("RMSD to start (A)")
    ax[1].set_xlabel("time (ps)")
    ax[1].set_ylabel("PE - PE(0) (eV/atom)")
    ax[2].set_xlabel("GFN2-xTB force (eV/A)")
    ax[2].set_ylabel("polyget-cho force (eV/A)")
    ax[2].plot([-8, 8], [-8, 8], "k-", lw=0.5)
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("run", "nve", "analyse"))
    p.add_argument("--model", default=str(REPO / "potentials" / "polyget-cho-r0.jit.pt"),
                   help="the committed trajectories are of round 0 (polyget-cho-r0); keep it to continue them")
    p.add_argument("--nve-model", default=None, help="model for the NVE runs (default --model)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "md_long-cho"))
    p.add_argument("--results", default=str(REPO / "experiments" / "results" / "md_long-cho"))
    p.add_argument("--ps", type=float, default=100.0, help="target NVT time per loop (run); NVE time (nve)")
    p.add_argument("--chunk-ps", type=float, default=1.0)
    p.add_argument("--hours", type=float, default=2.0, help="wall-time budget of this `run`")
    p.add_argument("--every", type=int, default=200, help="steps between dumped frames / thermo rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--watchdog", default="", help="extra pair_style polyget keywords")
    p.add_argument("--T", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=4928459)
    p.add_argument("--thin", type=int, default=1, help="keep every n-th frame in the JSON")
    p.add_argument("--gfn2-frames", type=int, default=8)
    p.add_argument("--lmp", default=None)
    p.add_argument("--jobs", type=int, default=1,
                   help="run: loops advanced by this many processes side by side (one core each)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    {"run": cmd_run, "nve": cmd_nve, "analyse": cmd_analyse}[args.cmd](args)


if __name__ == "__main__":
    main()
