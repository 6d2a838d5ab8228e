"""Checkpoint and model-file reading/writing, with errors a person can act on.

Checkpoint layout and exported file formats: docs/interfaces.md.
"""

import platform
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from . import __version__
from .contract import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, UNITS, ModelFileError,
                       atomic_write, file_kind, kind_advice)
from .contract import load_torchscript as _load_torchscript
from .nn import ModelConfig, PolyGET, build_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    """torch.save through :func:`polyget.contract.atomic_write` (temporary file + rename,
    mode 0644 minus the umask): never a half-written file."""
    atomic_write(path, obj)


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


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a polyget checkpoint dict, or raise ModelFileError saying what the file is."""
    path = Path(path)
    kind = file_kind(path)
    if kind not in ("checkpoint", "torch-pickle"):
        raise ModelFileError(kind_advice(path, kind, "checkpoint"))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean: not ours
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(
            f"{path} is not a polyget checkpoint (torch.load failed: {type(exc).__name__}: "
            f"{first}). Give the .ckpt written by `polyget train`.") from None
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
    """Exported TorchScript model and its metadata (polyget.contract.load_torchscript)."""
    return _load_torchscript(path, device)


def load_any(path: Union[str, Path], device: str = "cpu", dtype: Union[str, torch.dtype] = "float64"):
    """(model, elements, cutoff, metadata) from a checkpoint or an exported .jit.pt file."""
    path = Path(path)
    kind = file_kind(path)
    if kind not in ("checkpoint", "torch-pickle", "torchscript"):
        raise ModelFileError(kind_advice(path, kind, "model"))
    if kind == "torchscript":
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
