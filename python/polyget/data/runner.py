"""Resumable, parallel dataset generation: build -> relax -> sample (MD + rattle) -> merge.

Layout of an output directory::

    OUT/structures/<FAM>_L<L>.extxyz   relaxed starting conformers (one per trajectory seed)
    OUT/frames/<FAM>_L<L>.extxyz       labelled frames of that system, appended as computed
    OUT/frames/<FAM>_L<L>.failed.jsonl frames skipped because the reference calculation failed
    OUT/frames/<FAM>_L<L>.timing.json  reference-call counts and seconds (summed over resumes)
    OUT/<name>.extxyz.gz               all frames merged (momenta dropped)
    OUT/<name>.manifest.json           method, settings, versions, counts, wall time, timings

Systems run in parallel processes (one system per task, so each file has one writer). Re-running
the same command continues where it stopped: a written frame is never recomputed or duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from ase import Atoms

from . import io as dio
from .families import get_family


@dataclass
class SampleConfig:
    method: str = "gfn2"
    calc_kwargs: dict = field(default_factory=dict)
    families: list[str] = field(default_factory=lambda: ["CK1"])
    loops: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    n_conf: int = 3                      # starting conformers (= MD trajectories) per system
    temperatures: list[float] = field(default_factory=lambda: [300.0, 450.0, 600.0])
    md_frames: int = 10                  # written frames per MD trajectory
    md_frames_by_loop: dict = field(default_factory=dict)   # {loop: md_frames} overrides
    rattle_frames: int = 2               # rattled frames per conformer
    rattle_frames_by_loop: dict = field(default_factory=dict)
    rattle_sigma: float = 0.03           # Angstrom (0.05 gave rare 0.2 A bond squeezes, 33 eV/A)
    stride: int = 20                     # MD steps between written frames
    equil_steps: int = 40                # MD steps before the first written frame
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    relax_steps: int = 30                # FIRE steps of the short reference relaxation
    relax_fmax: float = 0.1
    md_trajs: int | None = None          # conformers that get reference MD (None: all n_conf)
    # cheap samplers (no reference calls between frames; every kept frame is labelled)
    mmff_minimize: bool = False          # MMFF94-minimise the starting conformers first
    mmff_frames: int = 0                 # MMFF94 Langevin MD frames per conformer
    mmff_temperatures: list[float] = field(default_factory=lambda: [300.0, 500.0, 700.0, 900.0])
    mmff_stride: int = 50                # MMFF steps (1 fs) between kept frames
    mmff_equil: int = 200
    nm_frames: int = 0                   # normal-mode displacement frames per conformer
    nm_temperatures: list[float] = field(default_factory=lambda: [300.0, 600.0])
    dedup_rmsd: float = 0.0              # drop frames within this RMSD (A) of a kept one
    seed: int = 0
    name: str = "poly"
    monomers: dict = field(default_factory=dict)   # user monomers {NAME: SMILES}

    def family(self, key: str):
        """Family object of a Poly24 index or of a user monomer NAME in `monomers`."""
        if key in self.monomers:
            from rdkit import Chem

            from .build import loop_mol
            from .families import Family

            smi = self.monomers[key]
            n = Chem.AddHs(loop_mol(smi, 1)).GetNumAtoms()  # also validates ring-opening
            return Family(key, key, smi, "custom", n)
        return get_family(key)

    def frames_for(self, loop: int) -> tuple[int, int]:
        md = int(self.md_frames_by_loop.get(loop, self.md_frames_by_loop.get(str(loop),
                                                                             self.md_frames)))
        rt = int(self.rattle_frames_by_loop.get(loop, self.rattle_frames_by_loop.get(
            str(loop), self.rattle_frames)))
        return md, rt

    def n_md_trajs(self) -> int:
        return self.n_conf if self.md_trajs is None else min(int(self.md_trajs), self.n_conf)

    def planned(self, loop: int) -> int:
        """Frames planned for one system of loop size `loop` (before de-duplication)."""
        md, rt = self.frames_for(loop)
        return self.n_md_trajs() * md + self.n_conf * (rt + self.mmff_frames + self.nm_frames)


PRESETS: dict[str, dict] = {
    # The shipped small dataset data/poly-mini-gfn2.extxyz.gz (a few hundred frames).
    "mini": dict(method="gfn2", name="poly-mini-gfn2",
                 families=["CK1", "CK2", "CK3", "ETH", "LAC1", "LAC2", "LAC3", "LAC4",
                           "LAC5", "OTH2"],
                 loops=[1, 3, 4, 5, 6], n_conf=2, temperatures=[300.0, 600.0],
                 md_frames=5, md_frames_by_loop={1: 6, 6: 3}, rattle_frames=1,
                 rattle_frames_by_loop={1: 2, 6: 0}, stride=20, equil_steps=40, relax_steps=20),
    # The full Poly24-style set: 24 families x L = 1..6, 5 trajectories per system,
    # 24 MD + 6 rattled frames per trajectory -> 24 * 6 * 5 * 30 = 21,600 GFN2 frames.
    "full": dict(method="gfn2", name="poly24-gfn2", families=["all"],
                 loops=[1, 2, 3, 4, 5, 6], n_conf=5, temperatures=[300.0, 400.0, 500.0, 600.0],
                 md_frames=24, rattle_frames=6, stride=20, equil_steps=40, relax_steps=30),
    # Dataset v1 (docs/data.md): 24 families x L = 1..6, 4 conformers per system. Most frames
    # come from cheap dynamics labelled by GFN2 (MMFF94 Langevin MD at 300-900 K, normal-mode
    # displacements at 300/600 K, rattles); a smaller share is true GFN2 Langevin MD (one 500 K
    # trajectory per system) so the reference method's own thermal distribution is there.
    # 4 * (23 + 8 + 3) + 10 = 146 frames per system, 21,024 planned, near-duplicates removed.
    "v1": dict(method="gfn2", name="poly24-v1-gfn2", families=["all"],
               loops=[1, 2, 3, 4, 5, 6], n_conf=4, temperatures=[500.0],
               md_trajs=1, md_frames=10, stride=6, equil_steps=12, rattle_frames=3,
               relax_steps=0, mmff_minimize=True, mmff_frames=23,
               mmff_temperatures=[300.0, 500.0, 700.0, 900.0], mmff_stride=25,
               mmff_equil=100, nm_frames=8, nm_temperatures=[300.0, 600.0],
               dedup_rmsd=0.05),
}
# The held-out DFT check of the full preset: PBE/def2-SVP labels of GFN2 frames of the smallest
# systems (<= 30 atoms), spread over families.
FULL_PBE = dict(n_frames=520, max_atoms=30, method="pbe")


def system_name(family: str, loop: int) -> str:
    return f"{family}_L{loop}"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("polyget", "ase", "numpy", "rdkit", "tblite", "pyscf"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None)
            if mod == "tblite" and out[mod] is None:
                from importlib.metadata import version
                out[mod] = version("tblite")
        except Exception:
            out[mod] = None
    return out


# --------------------------------------------------------------------------- one system


def run_system(cfg: SampleConfig, family: str, loop: int, outdir: str, progress=None) -> dict:
    """Build, relax and sample one system; resumable. Returns a summary dict.

    Trajectory ids (`traj` in info and frame_id), for conformer c of n = n_conf:
    c: reference MD, n + c: rattles, 2n + c: MMFF MD, 3n + c: normal modes.
    """
    from .build import MIN_PAIR_DISTANCE, build, min_pair_distance, n_fragments, relax
    from .labels import LabelError, label, make_calculator, method_name
    from .sampling import TrajectoryStopped, md_frames, rattle_frames

    t0 = time.perf_counter()
    out = Path(outdir)
    (out / "structures").mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    sysname = system_name(family, loop)
    fam = cfg.family(family)
    calc = make_calculator(cfg.method, **cfg.calc_kwargs)
    mname = method_name(cfg.method)
    n_md, n_rt = cfg.frames_for(loop)
    seed = cfg.seed * 1000 + loop
    mmff = None
    if cfg.mmff_minimize or cfg.mmff_frames or cfg.nm_frames:
        from .mmff import MMFFCalculator, loop_molh
        mmff = MMFFCalculator(loop_molh(fam.smiles, loop))

    # 1. starting conformers (cached)
    spath = out / "structures" / f"{sysname}.extxyz"
    confs = dio.read_complete(spath)
    if len(confs) < cfg.n_conf:
        raw = build(fam, loop, n_conf=cfg.n_conf, seed=seed)
        for c in raw[len(confs):]:
            if mmff is not None and cfg.mmff_minimize:
                c = mmff.minimize(c)
            if cfg.relax_steps > 0:
                c = relax(c, calc, fmax=cfg.relax_fmax, steps=cfg.relax_steps)
            c.calc = None
            dio.append_frame(spath, c)
        confs = dio.read_complete(spath)

    # 2. frames so far
    fpath = out / "frames" / f"{sysname}.extxyz"
    failpath = out / "frames" / f"{sysname}.failed.jsonl"
    tpath = out / "frames" / f"{sysname}.timing.json"
    existing = dio.read_complete(fpath)
    by_traj: dict[int, list] = {}
    for a in existing:
        by_traj.setdefault(int(a.info["traj"]), []).append(a)
    dedup = None
    if cfg.dedup_rmsd > 0:
        from .mmff import Deduper
        dedup = Deduper(cfg.dedup_rmsd)
        for a in existing:
            dedup.add(a.get_positions())
    timing = json.loads(tpath.read_text()) if tpath.exists() else {"calls": 0, "seconds": 0.0}
    timing.setdefault("samplers", {})
    timer = {"calls": 0, "seconds": 0.0}
    n_new = n_fail = 0

    def stats(name):
        return timing["samplers"].setdefault(name, {"kept": 0, "label_calls": 0,
                                                    "label_s": 0.0, "dynamics_s": 0.0,
                                                    "duplicates": 0, "rejected": 0})

    def log_fail(traj, k, msg):
        nonlocal n_fail
        n_fail += 1
        with open(failpath, "a") as fh:
            fh.write(json.dumps({"system": sysname, "traj": traj, "index": k,
                                 "reason": msg}) + "\n")

    def emit(fr, traj, sampler):
        nonlocal n_new
        fr.info.update(family=fam.index, loop=int(loop), smiles=fam.smiles, method=mname,
                       system=sysname, frame_id=f"{sysname}/t{traj}/{fr.info['step']}")
        dio.append_frame(fpath, fr)
        if dedup is not None:
            dedup.add(fr.get_positions())
        stats(sampler)["kept"] += 1
        n_new += 1
        if progress is not None:
            progress.put(1)

    def timed(sampler, fn):
        """Run a reference-calling generator step, charging its calls to `sampler`."""
        c0, s0 = timer["calls"], timer["seconds"]
        res = fn()
        st = stats(sampler)
        st["label_calls"] += timer["calls"] - c0
        st["label_s"] += timer["seconds"] - s0
        return res

    def label_positions(pos_list, conf, tid, sampler, extra):
        """Label each candidate position set not yet written (by index), skipping broken and
        duplicate geometries."""
        have = {int(a.info["step"]) for a in by_traj.get(tid, [])}
        n_frag0 = n_fragments(conf)
        for k, pos in enumerate(pos_list):
            if k in have:
                continue
            st = stats(sampler)
            if not np.all(np.isfinite(pos)):      # a cheap trajectory that blew up
                st["rejected"] += 1
                continue
            at = Atoms(conf.get_chemical_symbols(), positions=pos)
            if min_pair_distance(at) < MIN_PAIR_DISTANCE or n_fragments(at) != n_frag0:
                st["rejected"] += 1
                continue
            if dedup is not None and not dedup.is_new(pos):
                st["duplicates"] += 1
                continue
            t = time.perf_counter()
            try:
                lab = label(at, calc)
            except LabelError as exc:
                log_fail(tid, k, str(exc))
                continue
            finally:
                timer["calls"] += 1
                timer["seconds"] += time.perf_counter() - t
                st["label_calls"] += 1
                st["label_s"] += time.perf_counter() - t
            lab.info.update(step=k, traj=int(tid), config_type=sampler, **extra)
            emit(lab, tid, sampler)

    def flush_timing():
        """Accumulate this run's reference-call counts into the timing file (per conformer, so
        an interrupted run keeps what it measured)."""
        timing["calls"] += timer["calls"]
        timing["seconds"] += timer["seconds"]
        timer["calls"], timer["seconds"] = 0, 0.0
        timing["natoms"] = len(confs[0])
        timing["seconds_per_call"] = timing["seconds"] / max(timing["calls"], 1)
        tmp = tpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(timing))
        os.replace(tmp, tpath)

    nc = cfg.n_conf
    for c in range(nc):
        # reference MD trajectory c
        done = by_traj.get(c, [])
        stopped = any(json.loads(x).get("traj") == c and json.loads(x).get("final")
                      for x in (failpath.read_text().splitlines() if failpath.exists() else []))
        if c < cfg.n_md_trajs() and len(done) < n_md and not stopped:
            T = cfg.temperatures[c % len(cfg.temperatures)]
            gen = md_frames(confs[c], calc, temperature_K=T, n_frames=n_md,
                            stride=cfg.stride, timestep_fs=cfg.timestep_fs,
                            friction_per_fs=cfg.friction_per_fs,
                            equil_steps=cfg.equil_steps, seed=seed, traj=c,
                            resume=done[-1] if done else None, frames_done=len(done),
                            timer=timer)
            try:
                while True:
                    fr = timed("md", lambda: next(gen, None))
                    if fr is None:
                        break
                    emit(fr, c, "md")
            except TrajectoryStopped as exc:
                log_fail(c, None, str(exc))
                with open(failpath, "a") as fh:  # mark: do not retry this trajectory
                    fh.write(json.dumps({"system": sysname, "traj": c, "final": True}) + "\n")
        # rattled frames of conformer c (trajectory id nc + c)
        if n_rt > 0:
            tid = nc + c
            have = {int(a.info["step"]) for a in by_traj.get(tid, [])}
            gen = rattle_frames(confs[c], calc, n_frames=n_rt, sigma=cfg.rattle_sigma,
                                seed=seed, traj=tid, skip=have, timer=timer,
                                on_fail=lambda k, m, tid=tid: log_fail(tid, k, m))
            while True:
                fr = timed("rattle", lambda: next(gen, None))
                if fr is None:
                    break
                emit(fr, tid, "rattle")
        # MMFF94 Langevin MD of conformer c (2 nc + c), labelled by the reference method
        if cfg.mmff_frames > 0:
            from .mmff import mmff_md_positions
            tid = 2 * nc + c
            if len(by_traj.get(tid, [])) < cfg.mmff_frames:
                T = cfg.mmff_temperatures[c % len(cfg.mmff_temperatures)]
                t = time.perf_counter()
                pos = mmff_md_positions(confs[c], mmff, temperature_K=T,
                                        n_frames=cfg.mmff_frames, stride=cfg.mmff_stride,
                                        equil_steps=cfg.mmff_equil, seed=seed * 100 + tid)
                stats("mmff-md")["dynamics_s"] += time.perf_counter() - t
                label_positions(pos, confs[c], tid, "mmff-md", {"temperature": float(T)})
        # normal-mode displacements of conformer c (3 nc + c) from its MMFF Hessian
        if cfg.nm_frames > 0:
            from .mmff import mmff_hessian, normal_mode_positions
            tid = 3 * nc + c
            if len(by_traj.get(tid, [])) < cfg.nm_frames:
                T = cfg.nm_temperatures[c % len(cfg.nm_temperatures)]
                t = time.perf_counter()
                x0 = mmff.minimize(confs[c]) if not cfg.mmff_minimize else confs[c]
                pos = normal_mode_positions(x0, mmff_hessian(x0, mmff), temperature_K=T,
                                            n_frames=cfg.nm_frames, seed=seed * 100 + tid)
                stats("normal-mode")["dynamics_s"] += time.perf_counter() - t
                label_positions(pos, x0, tid, "normal-mode", {"temperature": float(T)})
        flush_timing()
    flush_timing()
    return {"system": sysname, "family": fam.index, "loop": int(loop), "natoms": len(confs[0]),
            "new_frames": n_new, "failed": n_fail, "wall_s": time.perf_counter() - t0,
            "timing": timing}


def _worker_init(threads: int):
    from .labels import set_threads
    set_threads(threads)


def _run_system_star(args):
    return run_system(*args)


# --------------------------------------------------------------------------- whole run


def planned_frames(cfg: SampleConfig) -> dict[str, int]:
    out = {}
    for f in _families(cfg):
        for L in cfg.loops:
            out[system_name(f, L)] = cfg.planned(L)
    return out


def _families(cfg: SampleConfig) -> list[str]:
    """Poly24 indices selected by cfg.families, then the user monomers' names."""
    from .families import parse_families
    out = [f.index for f in parse_families(",".join(cfg.families))] if cfg.families else []
    return out + [k for k in cfg.monomers if k not in out]


def set_blas_preload(path: str | None) -> bool:
    """Make worker processes (spawned after this call) preload a BLAS library, e.g. Debian's
    OpenBLAS: the tblite wheel's bundled reference BLAS is ~3.5x slower (same numbers).
    Its directory is added to LD_LIBRARY_PATH so that a libgfortran next to it is found."""
    if not path:
        return False
    p = Path(path).resolve()
    if not p.exists():
        raise ValueError(f"--blas-preload {path}: no such file")
    os.environ["LD_PRELOAD"] = str(p)
    libdirs = [str(p.parent), str(p.parent.parent)]
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        libdirs + [x for x in os.environ.get("LD_LIBRARY_PATH", "").split(":") if x])
    return True


def generate(cfg: SampleConfig, outdir: str, workers: int = 1, threads: int = 1,
             progress_bar: bool = True, blas_preload: str | None = None) -> dict:
    """Run (or resume) every system of cfg; merge; write the manifest. Returns the manifest.

    workers > 1 (or a blas_preload) runs systems in spawned processes."""
    from tqdm import tqdm

    if set_blas_preload(blas_preload):
        workers = max(workers, 1)
        spawn = True
    else:
        spawn = workers > 1

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    t0 = time.perf_counter()
    fams = _families(cfg)
    tasks = [(f, L) for f in fams for L in cfg.loops]
    # biggest first for load balance
    tasks.sort(key=lambda t: -cfg.family(t[0]).n_atoms * t[1])
    plan = planned_frames(cfg)
    done0 = sum(len(dio.read_complete(out / "frames" / f"{system_name(f, L)}.extxyz",
                                      truncate=False)) for f, L in tasks)
    total = sum(plan.values())
    bar = tqdm(total=total, initial=min(done0, total), unit="frame", disable=not progress_bar,
               desc=f"{cfg.name} [{cfg.method}]", smoothing=0.05)
    results, errors = [], {}
    if not spawn:
        class _Q:
            def put(self, n):
                bar.update(n)
        for f, L in tasks:
            try:
                results.append(run_system(cfg, f, L, str(out), _Q()))
            except Exception as exc:  # one broken system must not stop the others
                errors[system_name(f, L)] = f"{type(exc).__name__}: {exc}"
    else:
        import multiprocessing as mp
        import queue as _queue

        ctx = mp.get_context("spawn")
        with ctx.Manager() as mgr:
            q = mgr.Queue()
            with ctx.Pool(workers, initializer=_worker_init, initargs=(threads,)) as pool:
                asyncs = [pool.apply_async(run_system, (cfg, f, L, str(out), q))
                          for f, L in tasks]
                while not all(a.ready() for a in asyncs):
                    try:
                        bar.update(q.get(timeout=0.5))
                    except _queue.Empty:
                        pass
                while not q.empty():
                    bar.update(q.get())
                for (f, L), a in zip(tasks, asyncs):
                    try:
                        results.append(a.get())
                    except Exception as exc:
                        errors[system_name(f, L)] = f"{type(exc).__name__}: {exc}"
    bar.close()
    for k, v in errors.items():
        print(f"polyget data generate: system {k} failed and was skipped: {v}")
    wall = time.perf_counter() - t0
    return finalize(cfg, out, wall_s=wall, errors=errors)


def finalize(cfg: SampleConfig, out: Path, wall_s: float = 0.0,
             errors: dict | None = None) -> dict:
    """Merge per-system files into OUT/<name>.extxyz.gz and write OUT/<name>.manifest.json."""
    out = Path(out)
    frames, counts, timings, failed = [], {}, {}, 0
    for f in _families(cfg):
        for L in cfg.loops:
            s = system_name(f, L)
            fr = dio.read_complete(out / "frames" / f"{s}.extxyz", truncate=False)
            frames.extend(fr)
            counts.setdefault(f, {})[str(L)] = len(fr)
            tp = out / "frames" / f"{s}.timing.json"
            if tp.exists():
                timings[s] = json.loads(tp.read_text())
            fp = out / "frames" / f"{s}.failed.jsonl"
            if fp.exists():
                failed += sum(1 for x in fp.read_text().splitlines()
                              if "reason" in json.loads(x))
    merged = out / f"{cfg.name}.extxyz.gz"
    dio.write_frames(merged, frames)
    man_path = out / f"{cfg.name}.manifest.json"
    prev = json.loads(man_path.read_text()) if man_path.exists() else {}
    manifest = make_manifest(cfg, frames, counts, timings, failed,
                             wall_s + float(prev.get("wall_time_s", 0.0)), merged.name)
    manifest["system_errors"] = errors or {}
    man_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def make_manifest(cfg, frames, counts, timings, failed, wall_s, fname) -> dict:
    from .labels import default_settings, method_name

    settings = default_settings(cfg.method)
    settings.update(cfg.calc_kwargs)
    return {
        "format": "polyget-data-manifest", "format_version": 1,
        "file": fname,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": method_name(cfg.method), "method_settings": settings,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "length": "Angstrom"},
        "sampling": dataclasses.asdict(cfg),
        "versions": _versions(),
        "n_frames": len(frames), "n_failed": failed,
        "n_atoms_total": int(sum(len(a) for a in frames)),
        "counts": counts,
        "wall_time_s": round(wall_s, 1),
        "timing_per_system": {
            k: {"natoms": v.get("natoms"), "reference_calls": v["calls"],
                "seconds": round(v["seconds"], 2),
                "seconds_per_call": round(v["seconds"] / max(v["calls"], 1), 5)}
            for k, v in timings.items()},
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }


# --------------------------------------------------------------------------- label existing


def label_file(inp: str, outp: str, method: str, calc_kwargs: dict | None = None,
               workers: int = 1, threads: int = 1, max_atoms: int | None = None,
               max_loop: int | None = None, n_frames: int | None = None, seed: int = 0, progress_bar: bool = True,
               blas_preload: str | None = None) -> dict:
    """Label the frames of `inp` with `method`, appending to `outp` (resumable by frame_id).

    Frames lacking info['frame_id'] get '<input name>:<index>'. Optional selection: only frames
    with <= max_atoms atoms, then n_frames of them spread evenly over (family, loop) groups.
    Failed frames are logged to <outp>.failed.jsonl and not written.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    frames = dio.read_frames(inp)
    for i, a in enumerate(frames):
        a.info.setdefault("frame_id", f"{Path(inp).name}:{i}")
    if max_loop is not None:
        frames = [a for a in frames if int(a.info.get("loop", 1)) <= max_loop]
    sel = select_frames(frames, max_atoms=max_atoms, n_frames=n_frames, seed=seed)
    done = {a.info.get("frame_id") for a in dio.read_complete(outp)}
    failp = Path(str(outp) + ".failed.jsonl")
    failed_ids = set()
    if failp.exists():
        failed_ids = {json.loads(x)["frame_id"] for x in failp.read_text().splitlines()}
    todo = [a for a in sel if a.info["frame_id"] not in done | failed_ids]
    bar = tqdm(total=len(sel), initial=len(sel) - len(todo), unit="frame",
               disable=not progress_bar, desc=f"label [{method}]")
    n_ok = n_fail = 0
    calls = {"n": 0, "seconds": 0.0, "atoms": 0}

    def handle(res):
        nonlocal n_ok, n_fail
        fid, fr, err, dt = res
        calls["n"] += 1
        calls["seconds"] += dt
        if fr is None:
            n_fail += 1
            with open(failp, "a") as fh:
                fh.write(json.dumps({"frame_id": fid, "reason": err}) + "\n")
        else:
            calls["atoms"] += len(fr)
            dio.append_frame(outp, fr)
            n_ok += 1
        bar.update(1)

    jobs = [(a, method, calc_kwargs or {}) for a in todo]
    if set_blas_preload(blas_preload):
        workers = max(workers, 1)
        spawn = True
    else:
        spawn = workers > 1
    if not spawn:
        for j in jobs:
            handle(_label_one(j))
    else:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(threads,)) as pool:
            for res in pool.imap_unordered(_label_one, jobs):
                handle(res)
    bar.close()
    res = {"selected": len(sel), "new": n_ok, "failed": n_fail,
           "already_done": len(sel) - len(todo), "wall_s": time.perf_counter() - t0,
           "seconds_per_frame": calls["seconds"] / max(calls["n"], 1)}
    _label_manifest(inp, outp, method, calc_kwargs or {}, res, max_atoms, n_frames, seed,
                    max_loop)
    return res


def _label_manifest(inp, outp, method, calc_kwargs, res, max_atoms, n_frames, seed,
                    max_loop=None):
    """<outp minus extension>.manifest.json: method, settings, counts, timings (accumulated)."""
    from .labels import default_settings, method_name

    done = dio.read_complete(outp, truncate=False)
    counts: dict = {}
    for a in done:
        fam, loop = str(a.info.get("family", "?")), str(a.info.get("loop", "?"))
        counts.setdefault(fam, {})
        counts[fam][loop] = counts[fam].get(loop, 0) + 1
    base = str(outp)
    for ext in (".gz", ".extxyz", ".xyz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    path = Path(base + ".manifest.json")
    prev = json.loads(path.read_text()) if path.exists() else {}
    settings = default_settings(method)
    settings.update(calc_kwargs)
    runs = prev.get("runs", []) + [{k: (round(v, 3) if isinstance(v, float) else v)
                                     for k, v in res.items()}]
    man = {"format": "polyget-data-manifest", "format_version": 1, "file": Path(outp).name,
           "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "source": str(inp), "method": method_name(method), "method_settings": settings,
           "units": {"energy": "eV", "forces": "eV/Angstrom", "length": "Angstrom"},
           "selection": {"max_atoms": max_atoms, "max_loop": max_loop, "n_frames": n_frames,
                         "seed": seed},
           "versions": _versions(), "n_frames": len(done), "counts": counts,
           "wall_time_s": round(sum(r["wall_s"] for r in runs), 1), "runs": runs,
           "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    path.write_text(json.dumps(man, indent=1))


_CALC_CACHE: dict = {}


def _label_one(job):
    from .labels import LabelError, label, make_calculator

    atoms, method, kw = job
    key = (method, json.dumps(kw, sort_keys=True))
    if key not in _CALC_CACHE:
        _CALC_CACHE.clear()
        _CALC_CACHE[key] = make_calculator(method, **kw)
    calc = _CALC_CACHE[key]
    keep = {k: v for k, v in atoms.info.items() if k not in ("energy", "free_energy", "stress")}
    if "method" in keep:
        keep["source_method"] = keep.pop("method")
    src = atoms.copy()
    src.calc = None
    for k in ("momenta", "forces"):
        if k in src.arrays:
            del src.arrays[k]
    src.info = keep
    t = time.perf_counter()
    try:
        fr = label(src, calc, method)
    except LabelError as exc:
        return atoms.info["frame_id"], None, str(exc), time.perf_counter() - t
    return atoms.info["frame_id"], fr, None, time.perf_counter() - t


def select_frames(frames, max_atoms=None, n_frames=None, seed=0):
    """Frames with <= max_atoms atoms; then n_frames spread round-robin over (family, loop)."""
    sel = [a for a in frames if max_atoms is None or len(a) <= max_atoms]
    if n_frames is None or n_frames >= len(sel):
        return sel
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for a in sel:
        groups.setdefault((a.info.get("family"), a.info.get("loop")), []).append(a)
    for g in groups.values():
        rng.shuffle(g)
    out, keys, i = [], sorted(groups, key=str), 0
    while len(out) < n_frames:
        for k in keys:
            if i < len(groups[k]) and len(out) < n_frames:
                out.append(groups[k][i])
        i += 1
    return out
