"""Energy calibration of a force-only model (paper section 2.2 and a transferable variant).

The network's scalar output Phi is trained only through its gradient, so it is defined up to
a constant per composition. Two calibrations map it to reference energies:

- ``molecule`` (the paper): per molecule, E = W * Phi + b fitted on a few (default 8)
  reference energies of that molecule.
- ``elements`` (transferable): E = Phi + sum_e n_e b_e, per-element offsets fitted by least
  squares over the training set. The offsets are folded into the model (they do not change
  forces), so an unseen polymer gets energies with no reference energy at all. A free global
  scale s (E = s Phi + sum n_e b_e) is fitted too and stored as a diagnostic: s close to 1
  means the learned forces integrate to the reference energy surface.
"""

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .evaluate import predict
from .io import atomic_save, load_checkpoint, model_from_checkpoint
from .train.dataset import DataError, frames_to_samples, read_frames
from .train.trainer import fit_element_offsets


def fit_linear(phi: np.ndarray, e: np.ndarray):
    """Least squares E = W * phi + b; returns (W, b)."""
    a = np.stack([phi, np.ones_like(phi)], axis=1)
    (w, b), *_ = np.linalg.lstsq(a, e, rcond=None)
    return float(w), float(b)


def calibrate(ckpt_path, data, mode: str = "elements", n_ref: int = 8, output: Optional[str] = None,
              seed: int = 0, energy_unit: str = "eV", length_unit: str = "Angstrom") -> Dict[str, Any]:
    if mode not in ("elements", "molecule"):
        raise ValueError(f"mode must be 'elements' or 'molecule', got {mode!r}")
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    samples = frames_to_samples(read_frames(data), model.elements, model.cutoff, energy_unit, length_unit)
    with_e = [s for s in samples if math.isfinite(s.energy)]
    if not with_e:
        raise DataError(f"{data}: no structure has an energy; calibration needs reference energies")
    raw = {id(s): phi for s, _, phi, _ in predict(model, with_e)}
    phi = np.array([raw[id(s)] for s in with_e])
    e = np.array([s.energy for s in with_e])
    calib = dict(ckpt.get("calibration") or {})
    report: Dict[str, Any] = {"mode": mode, "n_structures": len(with_e)}
    if mode == "elements":
        nelem = len(model.elements)
        offsets, _ = fit_element_offsets(with_e, nelem, phi, free_scale=False)
        offsets_s, scale = fit_element_offsets(with_e, nelem, phi, free_scale=True)
        counts = np.array([np.bincount(s.species, minlength=nelem) for s in with_e], dtype=float)
        natoms = counts.sum(1)
        mae = float(np.mean(np.abs(phi + counts @ offsets - e) / natoms))
        mae_s = float(np.mean(np.abs(scale * phi + counts @ offsets_s - e) / natoms))
        calib["elements"] = {"elements": list(model.elements), "offsets": [float(x) for x in offsets],
                             "scale_fit": {"scale": scale, "offsets": [float(x) for x in offsets_s]},
                             "mae_per_atom": mae, "mae_per_atom_scaled": mae_s, "n_structures": len(with_e)}
        state = dict(ckpt["model_state"])
        state["atom_offsets"] = torch.tensor(offsets, dtype=state["atom_offsets"].dtype)
        ckpt["model_state"] = state
        report.update(offsets=dict(zip(model.elements, map(float, offsets))), scale=scale,
                      mae_per_atom=mae, mae_per_atom_scaled=mae_s)
    else:
        groups = defaultdict(list)
        for k, s in enumerate(with_e):
            groups[f"{s.family}/L{s.loop}" if s.family != "unknown" else
                   "".join(f"{el}{c}" for el, c in zip(model.elements, np.bincount(s.species, minlength=len(model.elements))) if c)].append(k)
        rng = np.random.default_rng(seed)
        per = {}
        for key, idx in sorted(groups.items()):
            idx = np.array(idx)
            if len(idx) < 2:
                continue
            ref = np.sort(rng.choice(idx, size=min(n_ref, len(idx)), replace=False))
            w, b = fit_linear(phi[ref], e[ref])
            rest = np.setdiff1d(idx, ref)
            nat = with_e[idx[0]].natoms
            mae = float(np.mean(np.abs(w * phi[rest] + b - e[rest])) / nat) if len(rest) else math.nan
            per[key] = {"W": w, "b": b, "n_ref": int(len(ref)), "mae_per_atom_held_out": mae}
        calib["per_molecule"] = per
        report["per_molecule"] = per
    ckpt["calibration"] = calib
    out = Path(output) if output else Path(ckpt_path).with_name(Path(ckpt_path).stem + "-calibrated.ckpt")
    if out.resolve() == Path(ckpt_path).resolve():
        raise ValueError("refusing to overwrite the input checkpoint; give another --output path")
    atomic_save(ckpt, out)
    report["output"] = str(out)
    return report
