"""Force metrics: MAE and RMSE over components (eV/A) and the paper's cosine distance (CosD)."""

from collections import defaultdict
from typing import Dict, Iterable, List

import numpy as np


def force_metrics(pred: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    diff = pred - ref
    cos = np.sum(pred * ref, axis=1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return {"force_mae": float(np.mean(np.abs(diff))),
            "force_rmse": float(np.sqrt(np.mean(diff ** 2))),
            "force_cosd": float(np.mean(1.0 - cos)),
            "n_atoms": int(len(ref))}


class MetricAccumulator:
    """Collects predicted/reference forces per structure; reports overall, per family, per loop."""

    def __init__(self):
        self.pred: List[np.ndarray] = []
        self.ref: List[np.ndarray] = []
        self.groups: Dict[str, Dict[str, List[int]]] = {"family": defaultdict(list), "loop": defaultdict(list)}

    def add(self, pred: np.ndarray, ref: np.ndarray, family: str, loop: int) -> None:
        k = len(self.pred)
        self.pred.append(pred)
        self.ref.append(ref)
        self.groups["family"][str(family)].append(k)
        self.groups["loop"][str(loop)].append(k)

    def _metrics(self, idx: Iterable[int]) -> Dict[str, float]:
        idx = list(idx)
        m = force_metrics(np.concatenate([self.pred[k] for k in idx]), np.concatenate([self.ref[k] for k in idx]))
        m["n_structures"] = len(idx)
        return m

    def summary(self) -> Dict:
        if not self.pred:
            return {}
        out = {"overall": self._metrics(range(len(self.pred)))}
        for name, groups in self.groups.items():
            out[f"per_{name}"] = {key: self._metrics(idx) for key, idx in sorted(groups.items())}
        return out
