"""The `polyget` command: train, eval, calibrate, md, export, data, melt."""

import argparse
import json
import sys
from typing import List, Optional


def _train(a):
    from .train.trainer import train

    res = train(a.config, resume=a.resume, overwrite=a.overwrite)
    print(json.dumps(res, indent=2))


def _eval(a):
    from .evaluate import run_eval

    res = run_eval(a.checkpoint, a.data, a.out, a.batch_size, a.dtype, a.device)
    ov = res["overall"]
    print(f"force MAE {ov['force_mae']:.4f} eV/A  RMSE {ov['force_rmse']:.4f}  CosD {ov['force_cosd']:.4f}  "
          f"({ov['n_structures']} structures)")
    for name in ("per_family", "per_loop"):
        for key, m in res[name].items():
            print(f"  {name[4:]:6s} {key:10s} MAE {m['force_mae']:.4f}  RMSE {m['force_rmse']:.4f}  "
                  f"CosD {m['force_cosd']:.4f}  n={m['n_structures']}")
    if a.out:
        print(f"wrote {a.out}/metrics.json and {a.out}/parity.png")


def _calibrate(a):
    from .calibrate import calibrate

    print(json.dumps(calibrate(a.checkpoint, a.data, a.mode, a.n_ref, a.output), indent=2))


def _md(a):
    from .md import run_md

    res = run_md(a.structure, a.model, a.out, a.temperature, a.timestep, a.steps, a.interval,
                 seed=a.seed, device=a.device, dtype=a.dtype, overwrite=a.overwrite,
                 bond_stretch=a.bond_stretch, min_distance=a.min_distance,
                 max_temperature=a.max_temperature)
    print(json.dumps(res, indent=2, default=str))




def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from .data.cli import main as data_main

        return data_main(argv[1:]) or 0
    if argv and argv[0] == "melt":
        from .data.melt import main as melt_main

        return melt_main(argv[1:]) or 0
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:]) or 0
    p = argparse.ArgumentParser(prog="polyget", description="PolyGET force fields for polymers")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config (force-only loss by default)")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true", help="continue OUTPUT/last.ckpt exactly")
    t.add_argument("--overwrite", action="store_true", help="start again in an existing output folder")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="force MAE/RMSE/CosD per family and loop size")
    e.add_argument("checkpoint")
    e.add_argument("data", nargs="+")
    e.add_argument("--out", help="folder for metrics.json and parity.png")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_eval)

    c = sub.add_parser("calibrate", help="fit energy calibration (per element offsets, or per molecule W, b)")
    c.add_argument("checkpoint")
    c.add_argument("data", nargs="+")
    c.add_argument("--mode", choices=["elements", "molecule"], default="elements")
    c.add_argument("--n-ref", type=int, default=8, help="reference energies per molecule (mode molecule)")
    c.add_argument("-o", "--output", help="output checkpoint (default: NAME-calibrated.ckpt)")
    c.set_defaults(func=_calibrate)

    m = sub.add_parser("md", help="Nose-Hoover NVT with ASE (300 K, 0.5 fs defaults)")
    m.add_argument("structure", help="any file ase.io reads")
    m.add_argument("--model", required=True, help=".ckpt or .jit.pt")
    m.add_argument("--out", default="md-out")
    m.add_argument("--temperature", type=float, default=300.0, help="K")
    m.add_argument("--timestep", type=float, default=0.5, help="fs")
    m.add_argument("--steps", type=int, default=1000)
    m.add_argument("--interval", type=int, default=10, help="steps between logged frames")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="cpu")
    m.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    m.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    m.add_argument("--bond-stretch", type=float, default=1.6,
                   help="watchdog: stop when a bond of the start structure exceeds this x its length (0: off)")
    m.add_argument("--min-distance", type=float, default=0.5,
                   help="watchdog: stop when two atoms come closer than this (A; 0: off)")
    m.add_argument("--max-temperature", type=float, default=None,
                   help="watchdog: stop above this temperature (K; default 3 x T + 500)")
    m.set_defaults(func=_md)

    sub.add_parser("export", help="checkpoint -> LAMMPS files (see python/export.py --help)")
    sub.add_parser("data", help="build / label / inspect reference datasets (polyget data --help)")
    sub.add_parser("melt", help="amorphous periodic melt of N chains -> LAMMPS data file (polyget melt --help)")

    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, FloatingPointError) as exc:
        print(f"polyget {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
