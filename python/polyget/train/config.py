"""Training configuration: defaults, YAML reading, and validation with clear messages."""

import copy
from pathlib import Path
from typing import Any, Dict

import yaml

from ..nn.model import ModelConfig

DEFAULTS: Dict[str, Any] = {
    "data": {
        "train": None,            # path or list of paths (any ase.io format with forces)
        "val_fraction": 0.05,     # random hold-out when split_by is null
        "split_by": None,         # null | family | loop
        "val_values": [],         # families or loop sizes held out when split_by is set
        "energy_unit": "eV",      # units of the files: eV | Hartree | kcal/mol | kJ/mol | Ry
        "length_unit": "Angstrom",  # Angstrom | Bohr | nm
        "elements": None,         # null: inferred from the data, ordered by atomic number
    },
    "model": ModelConfig().to_dict(),
    "training": {
        "loss": "forces",         # forces (the paper's force-only objective) | joint
        "force_weight": 1.0,
        "energy_weight": 1.0,     # joint loss only (per-atom energy MSE)
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "batch_size": 8,          # structures per batch
        "max_steps": 10000,
        "val_every": 500,         # steps between validations (and checkpoints)
        "plateau_patience": 30,   # validations without improvement before lr *= plateau_factor
        "plateau_factor": 0.8,
        "min_lr": 1.0e-7,
        "grad_clip": None,
        "seed": 0,
        "dtype": "float32",
        "device": "cpu",
        "threads": None,
    },
    "output": "runs/polyget",
}
del DEFAULTS["model"]["elements"]  # taken from data.elements (or inferred)


class ConfigError(ValueError):
    pass


def _merge(base: Dict[str, Any], new: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        if key not in base:
            raise ConfigError(f"unknown setting {where}{key!r}; known: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(path_or_dict) -> Dict[str, Any]:
    if isinstance(path_or_dict, (str, Path)):
        with open(path_or_dict) as fh:
            raw = yaml.safe_load(fh) or {}
    else:
        raw = path_or_dict
    cfg = _merge(DEFAULTS, raw, "")
    t = cfg["training"]
    if cfg["data"]["train"] in (None, "", []):
        raise ConfigError("data.train is required: the dataset file(s) to train on")
    from ..nn import ARCHITECTURES

    if cfg["model"]["architecture"] not in ARCHITECTURES:
        raise ConfigError(f"model.architecture must be one of {sorted(ARCHITECTURES)}, "
                          f"got {cfg['model']['architecture']!r}")
    if t["loss"] not in ("forces", "joint"):
        raise ConfigError(f"training.loss must be 'forces' or 'joint', got {t['loss']!r}")
    if t["dtype"] not in ("float32", "float64"):
        raise ConfigError(f"training.dtype must be float32 or float64, got {t['dtype']!r}")
    for key in ("batch_size", "max_steps", "val_every", "plateau_patience"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {t[key]!r}")
    return cfg
