"""Training configuration: defaults, YAML reading, and validation with clear messages.

Relative paths in a config file (data.train, output) are relative to the folder of that file,
so a config runs the same from any working directory.
"""

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
        "check_units": True,      # stop when the forces do not look like eV/Angstrom
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
        "max_hours": None,        # wall-time budget (hours, summed over --resume runs): stop,
                                  # validate and save when it is spent, e.g. before a Slurm limit
        "val_every": 500,         # steps between validations (and checkpoints)
        "plateau_patience": 30,   # validations without improvement before lr *= plateau_factor
        "plateau_factor": 0.8,
        "min_lr": 1.0e-7,
        "grad_clip": None,
        "compile": False,         # true: the force-only step as one compiled graph (torch.compile;
                                  # minutes of compilation at the first step, then ~2x faster on
                                  # CPU, bench/README.md); loss "forces" only
        "ema_decay": 0.0,         # > 0: validate, save and export an exponential moving average
                                  # of the weights (e.g. 0.99); 0: the raw weights
        "seed": 0,
        "init_from": None,        # a polyget checkpoint to start from (fine-tuning): its weights,
                                  # hyperparameters and elements replace the model section
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


# settings that must be numbers; YAML 1.1 reads `1e-3` (no dot) as a string
FLOAT_KEYS = {"data": ("val_fraction",),
              "training": ("lr", "weight_decay", "plateau_factor", "min_lr", "force_weight",
                           "energy_weight", "grad_clip", "ema_decay")}


def _numbers(cfg: Dict[str, Any]) -> None:
    for section, keys in FLOAT_KEYS.items():
        for key in keys:
            v = cfg[section][key]
            if v is None and key == "grad_clip":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ConfigError(f"{section}.{key} must be a number, got {v!r}")
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise ConfigError(f"{section}.{key} must be a number, got the text {v!r}") from None
            cfg[section][key] = float(v)
    t = cfg["training"]
    if not t["lr"] > 0:
        raise ConfigError(f"training.lr must be > 0, got {t['lr']!r}")
    if not 0 <= t["ema_decay"] < 1:
        raise ConfigError(f"training.ema_decay must be in [0, 1) (0 = off, e.g. 0.99), got {t['ema_decay']!r}")
    if not 0 <= cfg["data"]["val_fraction"] < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg['data']['val_fraction']!r}")


def _relative_to(base: Path, cfg: Dict[str, Any]) -> None:
    def fix(p):
        if isinstance(p, (str, Path)) and str(p) and not Path(p).expanduser().is_absolute():
            return str(base / Path(p).expanduser())
        return str(Path(p).expanduser()) if isinstance(p, (str, Path)) else p

    d = cfg["data"]
    d["train"] = [fix(p) for p in d["train"]] if isinstance(d["train"], list) else fix(d["train"])
    cfg["output"] = fix(cfg["output"])
    if cfg["training"].get("init_from"):
        cfg["training"]["init_from"] = fix(cfg["training"]["init_from"])


def load_config(path_or_dict) -> Dict[str, Any]:
    """Defaults merged with a YAML file (paths relative to its folder) or a dict (paths
    relative to the working directory), checked."""
    base = None
    if isinstance(path_or_dict, (str, Path)):
        if not Path(path_or_dict).is_file():
            raise ConfigError(f"config file {path_or_dict} does not exist")
        with open(path_or_dict) as fh:
            try:
                raw = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path_or_dict} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path_or_dict} must hold a YAML mapping (data:, model:, training:, "
                              f"output:), found {type(raw).__name__}")
        base = Path(path_or_dict).resolve().parent
    else:
        raw = path_or_dict
    cfg = _merge(DEFAULTS, raw, "")
    if base is not None and cfg["data"]["train"] not in (None, "", []):
        _relative_to(base, cfg)
    _numbers(cfg)
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
    if not isinstance(t["compile"], bool):
        raise ConfigError(f"training.compile must be true or false, got {t['compile']!r}")
    if t["compile"] and t["loss"] != "forces":
        raise ConfigError("training.compile works with the force-only loss (training.loss: forces); "
                          "set training.compile: false for the joint loss")
    mh = t["max_hours"]
    if mh is not None and (isinstance(mh, bool) or not isinstance(mh, (int, float)) or not mh > 0):
        raise ConfigError(f"training.max_hours must be a positive number of hours or null, got {mh!r}")
    return cfg
