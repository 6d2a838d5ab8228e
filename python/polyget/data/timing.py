"""Measure the cost of one reference calculation (energy + forces) per method and system size,
and extrapolate the cost of a whole generation run (`polyget data timing`)."""

from __future__ import annotations

import time

import numpy as np


def measure(method: str, systems: list[tuple[str, int]], repeats: int = 3, seed: int = 0,
            calc_kwargs: dict | None = None) -> list[dict]:
    """Seconds per energy+forces call for each (family, loop), on rattled ETKDG structures.

    The first call on each system is a warm-up and not counted."""
    from .build import build
    from .labels import label, make_calculator

    calc = make_calculator(method, **(calc_kwargs or {}))
    rows = []
    for fam, L in systems:
        at = build(fam, L, n_conf=1, seed=seed)[0]
        rng = np.random.default_rng(seed)
        label(at, calc)  # warm-up (imports, basis setup)
        ts, cs = [], []
        for _ in range(repeats):
            b = at.copy()
            b.positions += rng.normal(0, 0.02, b.positions.shape)
            t, c = time.perf_counter(), time.process_time()
            label(b, calc)
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
        # CPU seconds of this process: what a quiet machine gives per thread; wall seconds
        # are longer when other jobs share the cores
        rows.append({"method": method, "family": fam, "loop": L, "natoms": len(at),
                     "seconds_per_call": float(np.median(cs)),
                     "wall_seconds_per_call": float(np.median(ts)), "repeats": repeats})
    return rows


def fit_power_law(rows: list[dict]) -> tuple[float, float]:
    """t(N) = a * N**b fitted (log-log least squares) to the measured rows."""
    n = np.log([r["natoms"] for r in rows])
    t = np.log([r["seconds_per_call"] for r in rows])
    b, loga = np.polyfit(n, t, 1)
    return float(np.exp(loga)), float(b)


def estimate(cfg, a: float, b: float) -> dict:
    """Reference calls and CPU seconds of a generation run with t(N) = a N^b per call."""
    from .runner import _families

    calls = seconds = frames = 0.0
    per_loop: dict[int, float] = {}
    for f in _families(cfg):
        n1 = cfg.family(f).n_atoms
        for L in cfg.loops:
            md, rt = cfg.frames_for(L)
            c = cfg.n_conf * (1 + cfg.equil_steps + md * cfg.stride + rt + cfg.relax_steps)
            s = c * a * (n1 * L) ** b
            calls += c
            seconds += s
            frames += cfg.n_conf * (md + rt)
            per_loop[L] = per_loop.get(L, 0.0) + s
    return {"frames": int(frames), "reference_calls": int(calls), "cpu_seconds": seconds,
            "cpu_hours": seconds / 3600.0,
            "cpu_hours_per_loop": {k: v / 3600.0 for k, v in sorted(per_loop.items())}}
