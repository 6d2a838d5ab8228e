"""`polyget data ...`: build structures, generate/label datasets, print stats, split.

Until `polyget data` is wired into the top-level CLI, run ``python -m polyget.data.cli ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _ints(s: str) -> list[int]:
    out = []
    for tok in s.split(","):
        tok = tok.strip()
        if "-" in tok[1:]:
            a, b = tok.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif tok:
            out.append(int(tok))
    return out


def _kwargs(s: str | None) -> dict:
    if not s:
        return {}
    try:
        d = json.loads(s)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--calc-kwargs must be a JSON object, got {s!r} ({exc})")
    if not isinstance(d, dict):
        raise SystemExit(f"--calc-kwargs must be a JSON object, got {s!r}")
    return d


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polyget data",
                                description="Polymer reference data: build, label, stats.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("families", help="list the 24 Poly24 families")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("build", help="3D structures of monomers / L-loops (extxyz)")
    s.add_argument("monomer", nargs="+", help="family index (CK1, LAC2, ...) or monomer SMILES")
    s.add_argument("--loops", default="1", help="loop sizes, e.g. 1,3-6,15 (default 1)")
    s.add_argument("--n-conf", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--relax", default=None, metavar="METHOD",
                   help="short relaxation with this method (gfn2, pbe, ase:mod:Class)")
    s.add_argument("--relax-steps", type=int, default=30)
    s.add_argument("--calc-kwargs", default=None, help="JSON keyword arguments of the method")
    s.add_argument("-o", "--out", required=True, help="output .extxyz")

    s = sub.add_parser("generate", help="build + sample (MD, rattle) + label, resumable")
    s.add_argument("--preset", choices=["mini", "full", "v1"], default=None)
    s.add_argument("--families", default=None, help="'all', a category, or CK1,LAC2,...")
    s.add_argument("--monomer", action="append", default=[], metavar="NAME=SMILES",
                   help="your own cyclic monomer (repeatable), e.g. CL='O=C1CCCCCO1'; "
                        "alone, it replaces the default families")
    s.add_argument("--loops", default=None, help="e.g. 1-6")
    s.add_argument("--method", default=None, help="gfn2 (default), pbe, ase:module:Class")
    s.add_argument("--calc-kwargs", default=None)
    s.add_argument("--n-conf", type=int, default=None)
    s.add_argument("--md-frames", type=int, default=None)
    s.add_argument("--rattle-frames", type=int, default=None)
    s.add_argument("--stride", type=int, default=None)
    s.add_argument("--equil-steps", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--name", default=None)
    s.add_argument("--pbe-frames", type=int, default=None,
                   help="also label this many small frames with PBE (held-out DFT check); "
                        "the full preset uses 520")
    s.add_argument("--pbe-max-atoms", type=int, default=30)
    s.add_argument("--md-loops", default=None, metavar="FAMS",
                   help="also build + relax the 15-loop MD test systems of these families "
                        "(full preset: CK6,OTH4,LAC2,LAC5, as in the paper)")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads per worker")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--blas-preload", default=os.environ.get("POLYGET_BLAS_PRELOAD"),
                   help="BLAS library preloaded in worker processes (e.g. Debian's "
                        "libopenblas.so.0; default $POLYGET_BLAS_PRELOAD)")
    s.add_argument("-o", "--out", required=True, help="output directory")

    s = sub.add_parser("label", help="(re)label the frames of a file; resumable")
    s.add_argument("input")
    s.add_argument("--method", required=True, help="gfn2, pbe, ase:module:Class")
    s.add_argument("--calc-kwargs", default=None)
    s.add_argument("--max-atoms", type=int, default=None)
    s.add_argument("--max-loop", type=int, default=None,
                   help="only frames of loops up to this size (1 = monomers)")
    s.add_argument("--n-frames", type=int, default=None,
                   help="label only this many frames, spread over (family, loop)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--blas-preload", default=os.environ.get("POLYGET_BLAS_PRELOAD"))
    s.add_argument("-o", "--out", required=True, help="output .extxyz (appended)")

    s = sub.add_parser("stats", help="counts, energy and force distributions (Fig. 2 plot)")
    s.add_argument("files", nargs="+")
    s.add_argument("--plot", default=None, help="write the per-family Fig. 2 plot here (.png)")
    s.add_argument("--json", default=None, help="also write the table as JSON")

    s = sub.add_parser("pack", help="rewrite a dataset compactly (.extxyz.xz, rounded numbers) "
                                    "with its manifest, for shipping")
    s.add_argument("input")
    s.add_argument("output", help="e.g. data/NAME.extxyz.xz")
    s.add_argument("--decimals", type=int, default=5,
                   help="decimals kept for positions (A) and forces (eV/A); default 5")

    s = sub.add_parser("report", help="cost per kept frame and force distribution per sampler "
                                      "of a `generate` output folder")
    s.add_argument("outdir")
    s.add_argument("--json", default=None, help="also write the numbers as JSON")
    s.add_argument("--md", default=None, help="also write the tables as markdown")

    s = sub.add_parser("compare", help="force/energy agreement of two labellings (by frame_id)")
    s.add_argument("reference")
    s.add_argument("other")

    s = sub.add_parser("timing", help="measure seconds per reference call; extrapolate a run")
    s.add_argument("--method", default="gfn2")
    s.add_argument("--calc-kwargs", default=None)
    s.add_argument("--systems", default="ETH:1,CK3:1,LAC4:3,LAC5:5,CK6:6",
                   help="FAMILY:LOOP,... to time (default covers 7-144 atoms)")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--preset", choices=["mini", "full"], default="full",
                   help="extrapolate the cost of this preset")
    s.add_argument("--pbe-frames", type=int, default=None,
                   help="(method pbe) extrapolate this many frames of <= --pbe-max-atoms")
    s.add_argument("--pbe-max-atoms", type=int, default=30)
    s.add_argument("--json", default=None)

    s = sub.add_parser("split", help="train/val/test splits by loop size and family")
    s.add_argument("input")
    s.add_argument("--test-loops", default="6")
    s.add_argument("--md-only-loops", default="15")
    s.add_argument("--heldout-families", default="")
    s.add_argument("--val-fraction", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", required=True, help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, KeyError) as exc:
        from .build import BuildError

        if isinstance(exc, (BuildError, KeyError, ValueError)):
            print(f"polyget data {args.cmd}: error: {exc.args[0] if exc.args else exc}",
                  file=sys.stderr)
            return 2
        raise


def _manifest_path(path: str) -> str:
    base = str(path)
    for ext in (".gz", ".xz", ".extxyz", ".xyz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".manifest.json"


def _build_md_loops(cfg, fams: str, out: str, L: int = 15, n_frames: int | None = None) -> None:
    """Labelled L-loops (MD test systems only) -> OUT/<name>-loops<L>.extxyz: the relaxed
    structure plus, when the preset samples with MMFF (v1), `n_frames` MMFF94 Langevin MD
    frames at 300 K and 600 K (half each). Resumable by frame_id."""
    from ase import Atoms

    from . import io as dio
    from .build import build, relax
    from .families import parse_families
    from .labels import label, make_calculator, method_name

    path = os.path.join(out, f"{cfg.name}-loops{L}.extxyz")
    have = {a.info["frame_id"] for a in dio.read_complete(path)}
    calc = make_calculator(cfg.method, **cfg.calc_kwargs)
    if n_frames is None:
        n_frames = 30 if cfg.mmff_frames else 0
    for fam in parse_families(fams):
        base = f"{fam.index}_L{L}"
        want = [f"{base}/relaxed"] + [f"{base}/t{t}/{k}" for t in (0, 1)
                                      for k in range((n_frames + 1 - t) // 2)]
        if all(w in have for w in want):
            continue
        at = build(fam, L, n_conf=1, seed=cfg.seed)[0]
        mm = None
        if cfg.mmff_minimize or n_frames:
            from .mmff import MMFFCalculator, loop_molh
            mm = MMFFCalculator(loop_molh(fam.smiles, L))
            at = mm.minimize(at)
        if cfg.relax_steps > 0:
            at = relax(at, calc, fmax=cfg.relax_fmax, steps=cfg.relax_steps)
        info = dict(family=fam.index, loop=L, smiles=fam.smiles, method=method_name(cfg.method),
                    system=base)
        if f"{base}/relaxed" not in have:
            lab = label(at, calc, cfg.method)
            lab.info.update(info, config_type="relaxed", frame_id=f"{base}/relaxed")
            dio.append_frame(path, lab)
        for t, T in ((0, 300.0), (1, 600.0)):
            n_t = (n_frames + 1 - t) // 2
            if n_t == 0 or all(f"{base}/t{t}/{k}" in have for k in range(n_t)):
                continue
            from .mmff import mmff_md_positions
            pos = mmff_md_positions(at, mm, temperature_K=T, n_frames=n_t, stride=cfg.mmff_stride,
                                    equil_steps=cfg.mmff_equil, seed=cfg.seed * 100 + 15 + t)
            for k, p in enumerate(pos):
                fid = f"{base}/t{t}/{k}"
                if fid in have:
                    continue
                lab = label(Atoms(at.get_chemical_symbols(), positions=p), calc, cfg.method)
                lab.info.update(info, config_type="mmff-md", temperature=T, traj=t, step=k,
                                frame_id=fid)
                dio.append_frame(path, lab)
        print(f"{fam.index} {L}-loop: {len(at)} atoms, {1 + n_frames} frames -> {path}")


def _dispatch(args) -> int:
    if args.cmd == "families":
        from .families import FAMILIES
        from .build import repeat_unit_smiles

        if args.json:
            import dataclasses
            print(json.dumps([dataclasses.asdict(f) for f in FAMILIES.values()], indent=1))
            return 0
        print(f"{'index':6s} {'category':11s} {'atoms':>5s}  {'name':38s} {'SMILES':28s} "
              "repeat unit")
        for f in FAMILIES.values():
            print(f"{f.index:6s} {f.category:11s} {f.n_atoms:5d}  {f.name:38s} {f.smiles:28s} "
                  f"{repeat_unit_smiles(f.smiles)}")
        return 0

    if args.cmd == "build":
        from . import io as dio
        from .build import build, relax

        calc = None
        if args.relax:
            from .labels import make_calculator
            calc = make_calculator(args.relax, **_kwargs(args.calc_kwargs))
        frames = []
        for mono in args.monomer:
            for L in _ints(args.loops):
                for at in build(mono, L, n_conf=args.n_conf, seed=args.seed):
                    if calc is not None:
                        at = relax(at, calc, steps=args.relax_steps)
                    frames.append(at)
                    print(f"{at.info['family']:6s} L={L:<3d} conf {at.info['conformer']}: "
                          f"{len(at)} atoms {at.get_chemical_formula()}")
        dio.write_frames(args.out, frames)
        print(f"wrote {len(frames)} structures to {args.out}")
        return 0

    if args.cmd == "generate":
        from .runner import FULL_PBE, PRESETS, SampleConfig, generate, label_file

        cfg = SampleConfig(**PRESETS[args.preset]) if args.preset else SampleConfig()
        if args.families:
            cfg.families = [args.families]
        for tok in args.monomer:
            name, _, smi = tok.partition("=")
            if not name.strip() or not smi.strip() or "," in name:
                raise ValueError(f"--monomer {tok!r}: expected NAME=SMILES")
            cfg.monomers[name.strip()] = smi.strip()
            cfg.family(name.strip())  # clear error now for a bad SMILES
        if args.monomer and not args.families and not args.preset:
            cfg.families = []
        if args.loops:
            cfg.loops = _ints(args.loops)
        for name in ("method", "n_conf", "md_frames", "rattle_frames", "stride",
                     "equil_steps", "seed", "name"):
            v = getattr(args, name)
            if v is not None:
                setattr(cfg, name, v)
        if args.calc_kwargs:
            cfg.calc_kwargs = _kwargs(args.calc_kwargs)
        from .labels import make_calculator
        make_calculator(cfg.method, **cfg.calc_kwargs)  # fail early on a bad method
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        man = generate(cfg, args.out, workers=args.workers, threads=args.threads,
                       progress_bar=not args.no_progress, blas_preload=args.blas_preload)
        print(f"{man['n_frames']} frames ({man['n_failed']} failed, skipped) -> "
              f"{os.path.join(args.out, man['file'])}")
        if man["system_errors"]:
            print(f"{len(man['system_errors'])} system(s) failed: "
                  f"{', '.join(man['system_errors'])} (see the manifest)", file=sys.stderr)
        md_loops = args.md_loops
        if md_loops is None and args.preset in ("full", "v1"):
            md_loops = "CK6,OTH4,LAC2,LAC5"
        if md_loops:
            _build_md_loops(cfg, md_loops, args.out)
        pbe_n = args.pbe_frames
        if pbe_n is None and args.preset == "full":
            pbe_n = FULL_PBE["n_frames"]
        if pbe_n:
            res = label_file(os.path.join(args.out, man["file"]),
                             os.path.join(args.out, f"{cfg.name}-pbe.extxyz"), "pbe",
                             workers=args.workers, threads=args.threads,
                             max_atoms=args.pbe_max_atoms, n_frames=pbe_n, seed=cfg.seed,
                             progress_bar=not args.no_progress,
                             blas_preload=args.blas_preload)
            print(f"PBE: {res}")
        return 1 if man["system_errors"] else 0

    if args.cmd == "label":
        from .runner import label_file

        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        res = label_file(args.input, args.out, args.method, _kwargs(args.calc_kwargs),
                         workers=args.workers, threads=args.threads, max_atoms=args.max_atoms,
                         max_loop=args.max_loop, n_frames=args.n_frames, seed=args.seed,
                         progress_bar=not args.no_progress, blas_preload=args.blas_preload)
        print(json.dumps(res))
        return 0 if res["failed"] == 0 else 1

    if args.cmd == "stats":
        from .stats import format_table, load, plot_fig2, summarize

        frames = load(args.files)
        rows = summarize(frames)
        print(format_table(rows))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        if args.plot:
            plot_fig2(frames, args.plot)
            print(f"wrote {args.plot}")
        return 0

    if args.cmd == "pack":
        from .io import read_frames, write_frames

        frames = read_frames(args.input)
        write_frames(args.output, frames, decimals=args.decimals)
        size = os.path.getsize(args.output)
        src_man = _manifest_path(args.input)
        if os.path.exists(src_man):
            man = json.loads(open(src_man).read())
            man["file"] = os.path.basename(args.output)
            man["packed"] = {"from": os.path.basename(args.input), "decimals": args.decimals,
                             "size_bytes": size, "n_frames": len(frames)}
            with open(_manifest_path(args.output), "w") as fh:
                json.dump(man, fh, indent=1)
        print(f"{len(frames)} frames -> {args.output} ({size / 1e6:.1f} MB)")
        return 0

    if args.cmd == "report":
        from .stats import format_sampler_report, sampler_report

        rep = sampler_report(args.outdir)
        text = format_sampler_report(rep)
        print(text)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rep, fh, indent=1)
        if args.md:
            with open(args.md, "w") as fh:
                fh.write(text + "\n")
        return 0

    if args.cmd == "compare":
        from .stats import compare, load

        print(json.dumps(compare(load([args.reference]), load([args.other])), indent=1))
        return 0

    if args.cmd == "timing":
        from .runner import FULL_PBE, PRESETS, SampleConfig, _families
        from .timing import estimate, fit_power_law, measure

        systems = []
        for tok in args.systems.split(","):
            fam, L = tok.split(":")
            systems.append((fam.strip(), int(L)))
        rows = measure(args.method, systems, repeats=args.repeats,
                       calc_kwargs=_kwargs(args.calc_kwargs))
        for r in rows:
            print(f"{r['method']:6s} {r['family']:5s} L={r['loop']:<3d} {r['natoms']:4d} atoms "
                  f"{r['seconds_per_call']:9.4f} CPU s ({r['wall_seconds_per_call']:.4f} s wall) "
                  "per energy+forces call")
        res = {"measured": rows}
        if len(rows) >= 2:
            a, b = fit_power_law(rows)
            print(f"fit: t(N) = {a:.3g} * N^{b:.2f} s")
            cfg = SampleConfig(**PRESETS[args.preset])
            res["fit"] = {"a": a, "b": b}
            if args.method.lower() == "pbe":
                n_pbe = args.pbe_frames or FULL_PBE["n_frames"]
                sizes = [cfg.family(f).n_atoms * L for f in _families(cfg) for L in cfg.loops
                         if cfg.family(f).n_atoms * L <= args.pbe_max_atoms]
                per = float(np.mean([a * n ** b for n in sizes]))
                est = {"frames": n_pbe, "cpu_hours": n_pbe * per / 3600.0,
                       "mean_seconds_per_frame": per}
                print(f"PBE held-out set: {n_pbe} frames of <= {args.pbe_max_atoms} atoms: "
                      f"{est['cpu_hours']:.1f} CPU-hours ({per:.1f} s per frame on average)")
            else:
                est = estimate(cfg, a, b)
                print(f"preset {args.preset}: {est['frames']} frames, "
                      f"{est['reference_calls']} reference calls, {est['cpu_hours']:.1f} "
                      f"CPU-hours (per loop size: "
                      + ", ".join(f"L={k}: {v:.1f} h" for k, v in
                                  est["cpu_hours_per_loop"].items()) + ")")
            res["estimate"] = est
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=1)
        return 0

    if args.cmd == "split":
        from .splits import write_splits

        counts = write_splits(args.input, args.out, test_loops=_ints(args.test_loops),
                              md_only_loops=_ints(args.md_only_loops) if args.md_only_loops
                              else [],
                              heldout_families=[f for f in args.heldout_families.split(",")
                                                if f],
                              val_fraction=args.val_fraction, seed=args.seed)
        print(json.dumps(counts))
        return 0
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
