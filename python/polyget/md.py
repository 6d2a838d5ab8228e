"""`polyget md`: Nose-Hoover (chain) NVT with ASE, writing trajectory, energies and RMSD.

Defaults follow the paper: 300 K, 0.5 fs, Maxwell-Boltzmann start.

A watchdog checks every step and stops the run, naming the step, the atoms and the reason, when
a bond stretches past ``bond_stretch`` x its initial length, two atoms come closer than
``min_distance``, a force is not finite, or the temperature passes ``max_temperature``. The log
(``md_log.csv``) and the plot (``md.png``) are written whatever happens, up to the last step
run; an existing output folder is never overwritten without ``overwrite=True``.
"""

import csv
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .contract import DEFAULT_MIN_DISTANCE

OUTPUTS = ("trajectory.extxyz", "md_log.csv", "md.png")


class MDStopped(RuntimeError):
    """The watchdog stopped the run (message: step, atoms, reason; logs are written)."""

    def __init__(self, message: str, step: int, atoms: Tuple[int, ...], reason: str):
        super().__init__(message)
        self.step, self.atoms, self.reason = step, atoms, reason


def kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD between two conformations after optimal superposition (no mass weights)."""
    p = p - p.mean(0)
    q = q - q.mean(0)
    u, s, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((p @ r - q) ** 2, axis=1))))


class Watchdog:
    """Per-step checks of an MD run; :meth:`check` returns None or (reason, atoms, message)."""

    def __init__(self, atoms, temperature: float, bond_stretch: float = 1.6,
                 min_distance: float = DEFAULT_MIN_DISTANCE,
                 max_temperature: Optional[float] = None):
        from ase.neighborlist import natural_cutoffs, neighbor_list

        self.symbols = atoms.get_chemical_symbols()
        self.bond_stretch = float(bond_stretch)
        self.min_distance = float(min_distance)
        self.max_temperature = (float(max_temperature) if max_temperature is not None
                                else 3.0 * temperature + 500.0)
        # bonds of the start structure: covalent radii sum x 1.2
        i, j, d = neighbor_list("ijd", atoms, natural_cutoffs(atoms, mult=1.2))
        keep = i < j
        self.bi, self.bj, self.d0 = i[keep], j[keep], d[keep]

    def _name(self, k: int) -> str:
        return "%s%d" % (self.symbols[k], k)

    def check(self, atoms, forces: Optional[np.ndarray] = None):
        from ase.neighborlist import neighbor_list

        if forces is not None and not np.all(np.isfinite(forces)):
            bad = np.flatnonzero(~np.all(np.isfinite(forces), axis=1))
            names = ", ".join(self._name(int(k)) for k in bad[:5])
            return ("non-finite forces", tuple(int(k) for k in bad[:5]),
                    "non-finite forces on %d atom(s) (%s)" % (bad.size, names))
        pos = atoms.get_positions()
        if not np.all(np.isfinite(pos)):
            bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
            return ("non-finite positions", tuple(int(k) for k in bad[:5]),
                    "non-finite positions of atom(s) %s" % ", ".join(self._name(int(k)) for k in bad[:5]))
        if self.bi.size and self.bond_stretch > 0:
            if atoms.pbc.any():
                d = np.array([atoms.get_distance(a, b, mic=True) for a, b in zip(self.bi, self.bj)])
            else:
                d = np.linalg.norm(pos[self.bj] - pos[self.bi], axis=1)
            ratio = d / self.d0
            k = int(np.argmax(ratio))
            if ratio[k] > self.bond_stretch:
                a, b = int(self.bi[k]), int(self.bj[k])
                return ("bond stretch", (a, b),
                        "bond %s-%s stretched to %.3f A, %.2f x its initial %.3f A (limit %.2f x)"
                        % (self._name(a), self._name(b), d[k], ratio[k], self.d0[k], self.bond_stretch))
        if self.min_distance > 0 and len(atoms) > 1:
            i, j, d = neighbor_list("ijd", atoms, self.min_distance)
            if i.size:
                k = int(np.argmin(d))
                a, b = sorted((int(i[k]), int(j[k])))
                return ("contact", (a, b),
                        "atoms %s and %s are %.3f A apart, closer than %.2f A"
                        % (self._name(a), self._name(b), d[k], self.min_distance))
        t = atoms.get_temperature()
        if not np.isfinite(t) or t > self.max_temperature:
            v2 = (atoms.get_velocities() ** 2).sum(1) * atoms.get_masses()
            hot = tuple(int(k) for k in np.argsort(-v2)[:3])
            return ("temperature runaway", hot,
                    "temperature %.0f K passed the limit %.0f K (hottest atoms %s)"
                    % (t, self.max_temperature, ", ".join(self._name(k) for k in hot)))
        return None


def prepare_output(out_dir, overwrite: bool = False) -> Path:
    """The output folder; refuses to replace an earlier run's files without ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    old = [out / n for n in OUTPUTS if (out / n).exists()]
    if old and not overwrite:
        raise FileExistsError(
            f"--out {out} already holds an MD run ({', '.join(p.name for p in old)}); choose another "
            "--out, or add --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for p in old:
        p.unlink()
    return out


def run_md(structure, model: str, out_dir: str, temperature: float = 300.0, timestep: float = 0.5,
           steps: int = 1000, interval: int = 10, tdamp: Optional[float] = None, seed: int = 0,
           device: str = "cpu", dtype: str = "float64", quiet: bool = False,
           overwrite: bool = False, bond_stretch: float = 1.6,
           min_distance: float = DEFAULT_MIN_DISTANCE,
           max_temperature: Optional[float] = None) -> Dict[str, Any]:
    import ase.io
    from ase import units
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tqdm import tqdm

    from .ase import PolyGETCalculator

    if interval < 1 or steps < 0:
        raise ValueError(f"--interval must be >= 1 and --steps >= 0, got {interval} and {steps}")
    out = prepare_output(out_dir, overwrite)
    atoms = ase.io.read(structure) if not hasattr(structure, "get_positions") else structure.copy()
    atoms.calc = PolyGETCalculator(model, device=device, dtype=dtype)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    tdamp = tdamp if tdamp is not None else 100 * timestep
    dyn = NoseHooverChainNVT(atoms, timestep=timestep * units.fs, temperature_K=temperature, tdamp=tdamp * units.fs)
    dog = Watchdog(atoms, temperature, bond_stretch, min_distance, max_temperature)

    traj_path = out / "trajectory.extxyz"
    ref = atoms.get_positions().copy()
    rows: List[Dict[str, float]] = []
    bar = tqdm(total=steps, disable=quiet or None, desc="md", unit="step")
    t0 = time.time()

    def row():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        return {"step": dyn.nsteps, "time_fs": dyn.nsteps * timestep, "epot_eV": epot, "ekin_eV": ekin,
                "etot_eV": epot + ekin, "temperature_K": atoms.get_temperature(),
                "rmsd_A": kabsch_rmsd(atoms.get_positions(), ref) if not atoms.pbc.any() else float("nan")}

    def log():
        rows.append(row())
        ase.io.write(traj_path, atoms, format="extxyz", append=True)
        bar.update(dyn.nsteps - bar.n)

    def watch():
        forces = atoms.calc.results.get("forces") if atoms.calc is not None else None
        found = dog.check(atoms, forces)
        if found is not None:
            raise _Found(*found)

    stop = None
    try:
        dyn.attach(watch, interval=1)
        dyn.attach(log, interval=interval)  # ASE also calls both at step 0
        dyn.run(steps)
    except _Found as f:
        stop = (f.reason, f.atoms, f.text)
    except Exception as exc:  # the calculator refusing a structure (contact, NaN): same report
        stop = (type(exc).__name__, (), str(exc))
    finally:
        bar.close()
        wall = time.time() - t0
        if stop is not None:
            try:  # the state that tripped the watchdog: last frame and last row
                if not rows or rows[-1]["step"] != dyn.nsteps:
                    rows.append(row())
                    ase.io.write(traj_path, atoms, format="extxyz", append=True)
            except Exception:
                pass
        _write_log(rows, out)
    if stop is not None:
        reason, idx, text = stop
        raise MDStopped(
            f"stopped at step {dyn.nsteps} ({dyn.nsteps * timestep:g} fs): {reason}: {text}. "
            f"{out / 'md_log.csv'}, {out / 'md.png'} and {traj_path} hold the run up to that step "
            "(atom numbers count from 0)", dyn.nsteps, tuple(idx), reason)
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall if wall > 0 else float("nan"),
            "final": rows[-1], "trajectory": str(traj_path)}


class _Found(Exception):
    def __init__(self, reason, atoms, text):
        super().__init__(text)
        self.reason, self.atoms, self.text = reason, atoms, text


def _write_log(rows, out: Path) -> None:
    if not rows:
        return
    with open(out / "md_log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, out / "md.png")


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
