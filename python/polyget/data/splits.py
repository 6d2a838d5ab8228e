"""Splits as in the paper: train (+val) on monomers and loops L <= 5, test on L = 6 (unseen
larger polymers) and on held-out families; 15-loops are MD test systems only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test_size", "test_family", "md_only")


def assign(info: dict, test_loops=(6,), md_only_loops=(15,), heldout_families=()) -> str:
    """Split name of one frame from its info ('family', 'loop'); 'val' is drawn later."""
    fam = str(info.get("family", "")).upper()
    loop = int(info.get("loop", 1))
    if loop in set(md_only_loops):
        return "md_only"
    if fam in {f.upper() for f in heldout_families}:
        return "test_family"
    if loop in set(test_loops):
        return "test_size"
    return "train"


def split_frames(frames, test_loops=(6,), md_only_loops=(15,), heldout_families=(),
                 val_fraction=0.05, seed=0) -> dict[str, list]:
    """Frames -> {'train', 'val', 'test_size', 'test_family', 'md_only'} (lists of Atoms).

    val: a random fraction of the training frames (seeded)."""
    out = {k: [] for k in SPLITS}
    for a in frames:
        out[assign(a.info, test_loops, md_only_loops, heldout_families)].append(a)
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(out["train"])))
    idx = rng.permutation(len(out["train"]))
    val_idx = set(idx[:n_val].tolist())
    out["val"] = [a for i, a in enumerate(out["train"]) if i in val_idx]
    out["train"] = [a for i, a in enumerate(out["train"]) if i not in val_idx]
    return out


def write_splits(inp, outdir, **kw) -> dict[str, int]:
    """Split a dataset file into OUT/<split>.extxyz.gz (non-empty splits) + OUT/splits.json."""
    from . import io as dio

    frames = dio.read_frames(inp)
    parts = split_frames(frames, **kw)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {k: len(v) for k, v in parts.items()}
    for k, v in parts.items():
        if v:
            dio.write_frames(out / f"{k}.extxyz.gz", v)
    (out / "splits.json").write_text(json.dumps(
        {"input": str(inp), "counts": counts,
         "settings": {k: list(v) if isinstance(v, (list, tuple)) else v
                      for k, v in kw.items()}}, indent=1))
    return counts
