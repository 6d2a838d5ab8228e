"""Export a polyget checkpoint to the files LAMMPS uses (docs/interfaces.md, section 3).

``python python/export.py CKPT -o potentials/NAME.pt [--dtype float32|float64]
[--device cpu|cuda]`` writes

* ``NAME.pt``: the ML-IAP unified object (``polyget.lammps.mliap.PolyGETMLIAP``, pickled with
  ``torch.save``) for ``pair_style mliap unified NAME.pt 0|1``;
* ``NAME.jit.pt``: the TorchScript model with the contract metadata records
  (:mod:`polyget.contract`) for ``pair_style polyget``, ``polyget._core`` and the ASE calculator
  (the portable form; also what ``mliap unified`` runs, and what the per-layer halo exchange
  runs);
* ``NAME.aoti-tN.pt2`` (``--aoti``, opt-in: minutes of compilation each; one per CPU thread
  count N of ``--aoti-threads 1,2``, default this process's torch thread count): the
  AOTInductor packages of the energy-and-forces function (polyget/compile.py), compiled for
  this machine's CPU (or GPU with ``--device cuda``), each checked against the eager model
  before it is written. The TorchScript metadata names them (``aoti_package``, comma-separated)
  and all carry the weights' ``fingerprint``; ``polyget._core``, ``pair_style polyget`` and
  ``mliap unified`` run the one for their current thread count for whole-graph evaluations,
  else the TorchScript file. ET packages take every layer's edges in parts (``--aoti-chunks``,
  default 4 with the fused operators, else 8: less memory, and faster for the paper-size model
  on this CPU, bench/README.md "Edges in parts"); ``--aoti-chunks 1`` compiles the whole graph
  at once. CPU packages of parts run the messages with polyget's fused operators
  (``--fused-ops``, default when libpolyget_ops.so is built; bench/README.md "Fused messages"),
  on mirrored edges (an edge and its reverse share their filters; "Mirrored edges").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import __version__
from .contract import (DEFAULT_MIN_DISTANCE, MLIAP_VERSION, TORCHSCRIPT_FORMAT,
                       TORCHSCRIPT_VERSION, UNITS, atomic_write, file_kind, kind_advice,
                       metadata_records)
from .lammps.mliap import PolyGETMLIAP


class ExportError(RuntimeError):
    """The input cannot be exported (with a message that says why and what to do)."""


def output_paths(out: str | os.PathLike) -> Tuple[Path, Path]:
    """``potentials/NAME.pt`` -> (``potentials/NAME.pt``, ``potentials/NAME.jit.pt``)."""
    out = Path(out)
    name = out.name
    if name.endswith(".jit.pt"):
        raise ExportError("-o names the ML-IAP file NAME.pt; NAME.jit.pt is written next to it")
    stem = name[:-3] if name.endswith(".pt") else name
    return out.with_name(stem + ".pt"), out.with_name(stem + ".jit.pt")


def metadata_for(model: torch.nn.Module, dtype: str, extra: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
    meta = {
        "format": TORCHSCRIPT_FORMAT,
        "format_version": TORCHSCRIPT_VERSION,
        "elements": [str(e) for e in model.elements],
        "cutoff": float(model.cutoff),
        "num_layers": int(model.num_layers),
        # the model says how far its energies reach; nothing downstream recomputes it
        "receptive_hops": _receptive_hops(model),
        "dtype": dtype,
        "units": dict(UNITS),
        "min_distance": float(getattr(model, "min_distance", DEFAULT_MIN_DISTANCE)),
        "polyget_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "mliap_format_version": MLIAP_VERSION,
    }
    arch = getattr(getattr(model, "config", None), "architecture", None)
    if arch:  # informative only (eager models; the checkpoint export passes it too)
        meta["architecture"] = str(arch)
    pieces = exchange_metadata(model)
    if pieces:  # optional contract keys: per-layer halo exchange
        meta.update(pieces)
    if extra:
        meta.update(extra)
    return meta


def _receptive_hops(model: torch.nn.Module) -> int:
    hops = getattr(model, "receptive_hops", None)
    if hops is None:
        raise ExportError(
            "the model has no receptive_hops attribute (how many cutoff radii its energies "
            "reach); polyget engines read it from the export and never guess it")
    return int(hops)


def exchange_metadata(model: torch.nn.Module) -> Optional[Dict[str, int]]:
    """{"num_exchanges", "exchange_width"} for a model with the pieces API (nn/model.py), else
    None (contract.OPTIONAL_METADATA_KEYS).

    exchange_width = numbers per atom in one exchange (x and vec rows together): what engines
    size their communication buffers with (LAMMPS comm_forward) before the first evaluation.
    """
    if not all(hasattr(model, a) for a in ("edge_features", "embed", "interact", "readout",
                                           "num_exchanges")):
        return None
    p = next(iter(model.parameters()))
    with torch.no_grad():
        species = torch.zeros(1, dtype=torch.long, device=p.device)
        edge_index = torch.zeros(2, 0, dtype=torch.long, device=p.device)
        feats = model.edge_features(torch.zeros(0, 3, dtype=p.dtype, device=p.device))
        x, vec = model.embed(species, edge_index, feats, 1)
    return {"num_exchanges": int(model.num_exchanges),
            "exchange_width": int(x[0].numel() + vec[0].numel())}


def aoti_path(jit_path: str | os.PathLike, threads: Optional[int] = None) -> Path:
    """``NAME.jit.pt`` -> ``NAME.aoti-tN.pt2`` (the package compiled for N CPU threads), or
    ``NAME.aoti.pt2`` without ``threads``."""
    p = Path(jit_path)
    stem = p.name[:-len(".jit.pt")]
    return p.with_name(stem + (".aoti.pt2" if threads is None else ".aoti-t%d.pt2" % threads))


def parse_threads(text: str | int | List[int] | None) -> List[int]:
    """``"1,2"`` -> [1, 2]; None -> [torch.get_num_threads()]."""
    if text is None:
        return [torch.get_num_threads()]
    if isinstance(text, int):
        vals = [text]
    elif isinstance(text, str):
        try:
            vals = [int(t) for t in text.replace(" ", "").split(",") if t]
        except ValueError:
            vals = []
    else:
        vals = [int(t) for t in text]
    if not vals or min(vals) < 1:
        raise ExportError("--aoti-threads wants thread counts >= 1 separated by commas (e.g. "
                          "1,2), got %r" % (text,))
    return sorted(set(vals))


def export_model(model: torch.nn.Module, out: str | os.PathLike, dtype: str = "float64",
                 device: str = "cpu", extra_metadata: Optional[Dict[str, Any]] = None,
                 aoti: bool = False, aoti_threads=None,
                 aoti_chunks: Optional[int] = None,
                 fused_ops: Optional[bool] = None) -> Tuple[Path, Path]:
    """Write NAME.pt and NAME.jit.pt for an (eager or scripted) polyget-contract model, and
    with ``aoti`` the AOTInductor packages NAME.aoti-tN.pt2, one per CPU thread count N in
    ``aoti_threads`` (default: torch.get_num_threads(); "1,2" or [1, 2]; a minute or more of
    compilation each). The C++ core runs the package of its current thread count."""
    if dtype not in ("float32", "float64"):
        raise ExportError("--dtype must be float32 or float64, got %r" % dtype)
    if not (device == "cpu" or device.startswith("cuda")):
        raise ExportError("--device must be cpu or cuda, got %r" % device)
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = model.to(device="cpu", dtype=torch_dtype).eval()
    scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model)
    meta = metadata_for(model, dtype, extra_metadata)
    if extra_metadata is None or "device" not in extra_metadata:
        meta["device"] = device
    pt_path, jit_path = output_paths(out)
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, torch.jit.ScriptModule):
        from .compile import model_fingerprint

        meta["fingerprint"] = model_fingerprint(model)
    if aoti:
        if isinstance(model, torch.jit.ScriptModule):
            raise ExportError("an AOTInductor package needs the eager model, not a TorchScript one")
        from .compile import export_aoti_packages

        threads = parse_threads(aoti_threads) if not device.startswith("cuda") else [1]
        want = {t: aoti_path(jit_path, t) for t in threads}
        written: List[Path] = []
        try:
            written = export_aoti_packages(
                model, want, torch_dtype, device=device,
                metadata={"polyget.elements": " ".join(model.elements),
                          "polyget.cutoff": repr(float(model.cutoff))},
                log=lambda m: print("export: " + m, file=sys.stderr, flush=True),
                chunks=aoti_chunks, fused=fused_ops)
        except Exception as exc:  # the portable files are still written
            print("export: warning: no AOTInductor package (%s: %s); writing the TorchScript "
                  "files only" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""),
                  file=sys.stderr)
            for p in want.values():  # none of them is named, so none is used
                if p.exists():
                    p.unlink()
            written = []
        if written:
            meta["aoti_package"] = ",".join(p.name for p in written)
    extra = metadata_records(meta)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files=extra)
    blob = buf.getvalue()
    atomic_write(jit_path, blob)
    mliap = PolyGETMLIAP(blob, device=device)
    tmp = io.BytesIO()
    torch.save(mliap, tmp)
    atomic_write(pt_path, tmp.getvalue())
    return pt_path, jit_path


def attach_aoti(jit_path: str | os.PathLike, package: str | os.PathLike) -> Path:
    """Name an existing AOTInductor package (compiled earlier for the same weights) in the
    metadata records of NAME.jit.pt (contract record ``aoti_package``, a comma-separated list)
    and of NAME.pt next to it; the package is copied next to them as NAME.aoti-tN.pt2 (N: the
    thread count it was compiled for). Returns the copy's path."""
    import shutil

    from .compile import package_metadata
    from .contract import read_metadata

    jit_path = Path(jit_path)
    meta = read_metadata(jit_path)
    module = torch.jit.load(str(jit_path), map_location="cpu")
    pmeta = package_metadata(package)
    if pmeta.get("polyget.fingerprint") != meta.get("fingerprint"):
        raise ExportError("%s was compiled for other weights (fingerprint %s, the model has %s)"
                          % (package, pmeta.get("polyget.fingerprint"), meta.get("fingerprint")))
    t = pmeta.get("polyget.threads", "dynamic")
    dest = aoti_path(jit_path, int(t) if t.isdigit() else None)
    if Path(package).resolve() != dest.resolve():
        shutil.copy(package, dest)
    names = [n for n in str(meta.get("aoti_package") or "").split(",") if n and n != dest.name]
    meta["aoti_package"] = ",".join(names + [dest.name])
    buf = io.BytesIO()
    torch.jit.save(module, buf, _extra_files=metadata_records(meta))
    blob = buf.getvalue()
    atomic_write(jit_path, blob)
    pt_path = jit_path.with_name(jit_path.name[:-len(".jit.pt")] + ".pt")
    if pt_path.exists():  # the ML-IAP file holds the same TorchScript bytes
        old = torch.load(pt_path, map_location="cpu", weights_only=False)
        tmp = io.BytesIO()
        torch.save(PolyGETMLIAP(blob, device=old.device_request), tmp)
        atomic_write(pt_path, tmp.getvalue())
    return dest


def load_checkpoint_model(ckpt: str | os.PathLike, dtype: str = "float64"):
    """(model, checkpoint dict) of a polyget checkpoint; ExportError for anything else."""
    from .io import ModelFileError, load_checkpoint, model_from_checkpoint

    path = Path(ckpt)
    kind = file_kind(path)
    if kind not in ("checkpoint", "torch-pickle"):
        raise ExportError(kind_advice(path, kind, "checkpoint"))
    try:
        ck = load_checkpoint(path)
    except ModelFileError as exc:
        raise ExportError(str(exc)) from None
    return model_from_checkpoint(ck, dtype).eval(), ck


def export(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str = "float64",
           device: str = "cpu", aoti: bool = False, aoti_threads=None,
           aoti_chunks: Optional[int] = None,
           fused_ops: Optional[bool] = None) -> Tuple[Path, Path]:
    """Checkpoint -> (NAME.pt, NAME.jit.pt)."""
    model, ck = load_checkpoint_model(ckpt, dtype)
    extra = {"source_checkpoint": Path(ckpt).name,
             "architecture": str(ck["hparams"].get("architecture", "et"))}
    if ck.get("calibration"):
        try:
            json.dumps(ck["calibration"])
            extra["calibration"] = ck["calibration"]
        except TypeError:
            pass
    return export_model(model, out, dtype=dtype, device=device, extra_metadata=extra, aoti=aoti,
                        aoti_threads=aoti_threads, aoti_chunks=aoti_chunks,
                        fused_ops=fused_ops)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="export.py",
        description="Export a polyget checkpoint to LAMMPS: NAME.pt (pair_style mliap unified) "
                    "and NAME.jit.pt (pair_style polyget / TorchScript).")
    p.add_argument("checkpoint", help="polyget checkpoint (.ckpt written by `polyget train`)")
    p.add_argument("-o", "--output", required=True, help="output ML-IAP file, e.g. potentials/NAME.pt")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="model precision in LAMMPS (float64: exact forces for tests/NVE; "
                        "float32: faster)")
    p.add_argument("--device", default="cpu",
                   help="device the ML-IAP model runs on: cpu or cuda (falls back to the CPU "
                        "with a warning where CUDA is absent; POLYGET_DEVICE overrides at run time)")
    p.add_argument("--aoti", action=argparse.BooleanOptionalAction, default=False,
                   help="also compile NAME.aoti.pt2 (AOTInductor; minutes to tens of minutes on a "
                        "small CPU; with the paper-size package pair_style polyget took 0.41-0.42x "
                        "of TorchMD-Net's time (2 threads) in interleaved runs; polyget-cho MD "
                        "steps took 0.7x of TorchScript's, bench/README.md; "
                        "a package that fails the export's force check is refused and "
                        "TorchScript is used); default --no-aoti")
    p.add_argument("--aoti-threads", default=None, metavar="N[,M...]",
                   help="CPU thread counts to compile packages for (NAME.aoti-tN.pt2 each; the "
                        "C++ core runs the one matching its thread count, else TorchScript). "
                        "Default: this process's torch thread count (OMP_NUM_THREADS)")
    p.add_argument("--aoti-chunks", type=int, default=None, metavar="K",
                   help="ET packages: take every layer's edges in K parts (peak memory a "
                        "fraction of the whole-graph package's ~1.47 MB per atom: 0.24 MB per "
                        "atom in LAMMPS at 36,000 atoms; faster for the paper-size model). "
                        "Default 4 with the fused operators (mirrored edges: 0.32 MB per atom "
                        "at 3,456 atoms, 5-10%% faster than 8), else 8; 1 compiles the whole "
                        "graph at once; other backbones always 1")
    p.add_argument("--fused-ops", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU packages of ET models with edges in parts: run the messages and "
                        "their gradients with polyget's fused operators (libpolyget_ops.so, "
                        "built by `make setup`; the package then needs it where it runs), "
                        "on mirrored edges (each pair's filters computed once; package format "
                        "2). Default: on when the operators are available")
    args = p.parse_args(argv)
    if args.aoti_chunks is not None and args.aoti_chunks < 1:
        p.error("--aoti-chunks must be >= 1")
    if args.aoti_threads is not None and "--no-aoti" not in (argv or sys.argv):
        args.aoti = True  # --aoti-threads implies --aoti
    if args.aoti:
        print("export: compiling the AOTInductor package (a few minutes; --no-aoti skips it)",
              flush=True)
    try:
        pt, jit = export(args.checkpoint, args.output, dtype=args.dtype, device=args.device,
                         aoti=args.aoti, aoti_threads=args.aoti_threads,
                         aoti_chunks=args.aoti_chunks, fused_ops=args.fused_ops)
    except ExportError as exc:
        print("export: error: %s" % exc, file=sys.stderr)
        return 2
    obj = torch.load(pt, map_location="cpu", weights_only=False)
    m = obj.metadata
    print("wrote %s (ML-IAP unified) and %s (TorchScript)" % (pt, jit))
    for name in filter(None, m.get("aoti_package", "").split(",")):
        print("wrote %s (AOTInductor, used by pair_style polyget / polyget._core / mliap "
              "unified)" % jit.with_name(name))
    print("  elements %s, cutoff %.3g A, %d layers (%d message-passing hops), %s, device %s"
          % (" ".join(m["elements"]), m["cutoff"], m["num_layers"], obj.receptive_hops,
             m["dtype"], obj.device_request))
    if "num_exchanges" in m:
        print("C++ plugin, one rank or many (per-layer halo exchange: %d exchanges of %d numbers "
              "per atom; no comm_modify needed):" % (m["num_exchanges"], m["exchange_width"]))
        print("  pair_style polyget %s\n  pair_coeff * * %s" % (jit, " ".join(m["elements"])))
    print("LAMMPS ML-IAP (units metal), one rank or many:")
    print("  " + obj.deck_lines(path=str(pt)).replace("\n", "\n  "))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
