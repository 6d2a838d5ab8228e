"""`polyget md`: Nose-Hoover (chain) NVT with ASE, writing trajectory, energies and RMSD.

Defaults follow the paper: 300 K, 0.5 fs, Maxwell-Boltzmann start.
"""

import csv
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np


def kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD between two conformations after optimal superposition (no mass weights)."""
    p = p - p.mean(0)
    q = q - q.mean(0)
    u, s, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((p @ r - q) ** 2, axis=1))))


def run_md(structure, model: str, out_dir: str, temperature: float = 300.0, timestep: float = 0.5,
           steps: int = 1000, interval: int = 10, tdamp: Optional[float] = None, seed: int = 0,
           device: str = "cpu", dtype: str = "float64", quiet: bool = False) -> Dict[str, Any]:
    import ase.io
    from ase import units
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tqdm import tqdm

    from .ase import PolyGETCalculator

    atoms = ase.io.read(structure) if not hasattr(structure, "get_positions") else structure.copy()
    atoms.calc = PolyGETCalculator(model, device=device, dtype=dtype)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    tdamp = tdamp if tdamp is not None else 100 * timestep
    dyn = NoseHooverChainNVT(atoms, timestep=timestep * units.fs, temperature_K=temperature, tdamp=tdamp * units.fs)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    traj_path = out / "trajectory.extxyz"
    if traj_path.exists():
        traj_path.unlink()
    ref = atoms.get_positions().copy()
    rows = []
    bar = tqdm(total=steps, disable=quiet or None, desc="md", unit="step")
    t0 = time.time()

    def log():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        if not np.isfinite(epot) or not np.all(np.isfinite(atoms.get_positions())):
            raise FloatingPointError(f"MD became non-finite at step {dyn.nsteps}; last frames are in {traj_path}")
        rows.append({"step": dyn.nsteps, "time_fs": dyn.nsteps * timestep, "epot_eV": epot, "ekin_eV": ekin,
                     "etot_eV": epot + ekin, "temperature_K": atoms.get_temperature(),
                     "rmsd_A": kabsch_rmsd(atoms.get_positions(), ref) if not atoms.pbc.any() else float("nan")})
        ase.io.write(traj_path, atoms, format="extxyz", append=True)
        bar.update(dyn.nsteps - bar.n)

    dyn.attach(log, interval=interval)  # ASE also calls it at step 0
    dyn.run(steps)
    bar.close()
    wall = time.time() - t0
    with open(out / "md_log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, out / "md.png")
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall if wall > 0 else float("nan"),
            "final": rows[-1], "trajectory": str(traj_path)}


def _plot(rows, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["time_fs"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    a1.plot(t, [r["rmsd_A"] for r in rows])
    a1.set_ylabel("RMSD (A)")
    a2.plot(t, [r["epot_eV"] for r in rows], label="potential")
    a2.plot(t, [r["etot_eV"] for r in rows], label="total")
    a2.set_ylabel("energy (eV)")
    a2.set_xlabel("time (fs)")
    a2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
