"""Checkpoint and model-file reading/writing, with errors a person can act on.

Checkpoint layout and exported file formats: docs/interfaces.md.
"""

import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from . import __version__
from .nn import ModelConfig, PolyGET, build_model

CHECKPOINT_FORMAT = "polyget-checkpoint"
CHECKPOINT_VERSION = 1
TORCHSCRIPT_FORMAT = "polyget-torchscript"
TORCHSCRIPT_VERSION = 1
UNITS = {"energy": "eV", "length": "Angstrom"}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ModelFileError(RuntimeError):
    """A file that should hold a polyget model does not, or cannot be used as given."""


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def versions() -> Dict[str, str]:
    import ase
    import numpy

    return {"polyget": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "ase": ase.__version__, "python": platform.python_version()}


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_checkpoint(model: PolyGET, **extra: Any) -> Dict[str, Any]:
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "hparams": model.config.to_dict(),
        "elements": list(model.elements),
        "units": dict(UNITS),
        # float64 storage is lossless for float32 models and keeps calibration offsets exact
        "model_state": {k: (v.detach().cpu().double() if v.is_floating_point() else v.detach().cpu())
                        for k, v in model.state_dict().items()},
        "calibration": {},
        "normalisation": {"energy_scale": float(model.energy_scale)},
        "versions": versions(),
    }
    ckpt.update(extra)
    return ckpt


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a polyget checkpoint dict, or raise ModelFileError saying what the file is."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if _is_torchscript(path):
        raise ModelFileError(
            f"{path} is a TorchScript file (an exported model), not a training checkpoint. "
            "Use it with PolyGETCalculator or LAMMPS `pair_style polyget`; export needs the .ckpt file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean: not ours
        raise ModelFileError(
            f"{path} is not a polyget checkpoint (torch.load failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Give the .ckpt written by `polyget train`.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path} is a PyTorch file but not a polyget checkpoint (no format={CHECKPOINT_FORMAT!r} "
            "entry). Give the .ckpt written by `polyget train`.")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise ModelFileError(
            f"{path} is a polyget checkpoint of format {ckpt.get('format_version')}; this polyget "
            f"({__version__}) reads format {CHECKPOINT_VERSION}. Use the polyget version that wrote it.")
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], dtype: Union[str, torch.dtype] = "float64") -> PolyGET:
    """Model in ``dtype``; cast before loading so float64 offsets are not rounded through float32.

    The backbone comes from hparams["architecture"] ("et" when absent: older checkpoints)."""
    model = build_model(ModelConfig.from_dict(ckpt["hparams"])).to(parse_dtype(dtype))
    model.load_state_dict(ckpt["model_state"])
    return model


def load_model(path: Union[str, Path], device: str = "cpu", dtype: Union[str, torch.dtype] = "float64") -> PolyGET:
    """Eager PolyGET model from a checkpoint, in eval mode, on ``device`` with ``dtype``."""
    model = model_from_checkpoint(load_checkpoint(path), dtype)
    return model.to(device=device).eval()


def load_torchscript(path: Union[str, Path], device: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Exported TorchScript model and its metadata, checking the format version."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if not _is_torchscript(path):
        raise ModelFileError(f"{path} is not a TorchScript file; expected NAME.jit.pt from python/export.py")
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    if not extra["metadata.json"]:
        raise ModelFileError(f"{path} is TorchScript but has no polyget metadata.json; re-export it with python/export.py")
    meta = json.loads(extra["metadata.json"])
    if meta.get("format") != TORCHSCRIPT_FORMAT:
        raise ModelFileError(f"{path}: metadata format {meta.get('format')!r} is not {TORCHSCRIPT_FORMAT!r}")
    if meta.get("format_version") != TORCHSCRIPT_VERSION:
        raise ModelFileError(
            f"{path} was exported with format {meta.get('format_version')}; this polyget reads format "
            f"{TORCHSCRIPT_VERSION}: re-run python/export.py on the checkpoint")
    return module, meta


def load_any(path: Union[str, Path], device: str = "cpu", dtype: Union[str, torch.dtype] = "float64"):
    """(model, elements, cutoff, metadata) from a checkpoint or an exported .jit.pt file."""
    path = Path(path)
    if _is_torchscript(path):
        module, meta = load_torchscript(path, device)
        want = parse_dtype(dtype)
        if meta.get("dtype") and DTYPES[meta["dtype"]] != want:
            module = module.to(want)
        return module.eval(), list(meta["elements"]), float(meta["cutoff"]), meta
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, dtype).to(device=device).eval()
    meta = {"elements": list(model.elements), "cutoff": model.cutoff, "num_layers": model.num_layers,
            "calibration": ckpt.get("calibration", {}), "units": ckpt.get("units", UNITS)}
    return model, list(model.elements), model.cutoff, meta
