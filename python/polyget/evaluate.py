"""`polyget eval`: force MAE / RMSE / cosine distance overall, per family, per loop size."""

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .io import load_checkpoint, model_from_checkpoint, parse_dtype
from .nn.graph import evaluate
from .train.dataset import collate, frames_to_samples, read_frames
from .train.metrics import MetricAccumulator


def predict(model, samples, batch_size: int = 8, dtype=torch.float64, device="cpu"):
    """Yields (sample, forces [N,3] numpy, raw energy Phi, calibrated energy) per sample."""
    model = model.to(device=device, dtype=dtype).eval()
    for k in range(0, len(samples), batch_size):
        chunk = samples[k:k + batch_size]
        batch = collate(chunk, dtype, device)
        out = evaluate(model, batch.graph, forces=True)
        f = out["forces"].detach().cpu().double().numpy()
        offs = model.atom_offsets[batch.graph.species].detach()
        raw = torch.zeros(len(chunk), dtype=dtype, device=device).index_add_(0, batch.graph.batch, offs)
        e = out["energy"].detach().cpu().double().numpy()
        raw = e - raw.cpu().double().numpy()
        start = 0
        for j, s in enumerate(chunk):
            yield s, f[start:start + s.natoms], float(raw[j]), float(e[j])
            start += s.natoms


def run_eval(ckpt_path, data, out_dir: Optional[str] = None, batch_size: int = 8, dtype: str = "float64",
             device: str = "cpu", energy_unit: str = "eV", length_unit: str = "Angstrom") -> Dict[str, Any]:
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    samples = frames_to_samples(read_frames(data), model.elements, model.cutoff, energy_unit, length_unit)
    acc = MetricAccumulator()
    e_err = []
    for s, f, raw, e in predict(model, samples, batch_size, parse_dtype(dtype), device):
        acc.add(f, s.forces, s.family, s.loop)
        if math.isfinite(s.energy) and ckpt.get("calibration", {}).get("elements"):
            e_err.append((e - s.energy) / s.natoms)
    result = acc.summary()
    if e_err:
        result["overall"]["energy_mae_per_atom_elements_calibration"] = float(np.mean(np.abs(e_err)))
    result["model"] = str(ckpt_path)
    result["data"] = [str(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        from .train.plots import plot_parity

        plot_parity(np.concatenate(acc.pred), np.concatenate(acc.ref), out / "parity.png",
                    f"force MAE {result['overall']['force_mae']:.4f} eV/A")
    return result
