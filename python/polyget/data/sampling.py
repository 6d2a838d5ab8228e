"""Sampling: short reference MD (Langevin) and rattled conformers, labelled frame by frame.

Every yielded frame carries energy and forces of the reference method (a SinglePointCalculator)
and, for MD, its momenta, so an interrupted trajectory continues from its last written frame
without recomputing it: the integrator restarts from the stored positions, momenta and forces.
The Langevin noise of chunk k (the `stride` steps leading to frame k) is drawn from a generator
seeded by (seed, trajectory, k), so a resumed trajectory follows the same recipe as an
uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from .build import MIN_PAIR_DISTANCE, min_pair_distance, n_fragments
from .labels import LabelError, label


class TrajectoryStopped(RuntimeError):
    """MD cannot go on (failed SCF or a broken/colliding molecule); the frame is not written."""


def _frame(atoms: Atoms, e: float, f: np.ndarray, with_momenta: bool) -> Atoms:
    out = Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions(),
                info=dict(atoms.info))
    if with_momenta:
        out.set_momenta(atoms.get_momenta())
    out.calc = SinglePointCalculator(out, energy=float(e), forces=np.array(f, dtype=float))
    return out


def _check_geometry(atoms: Atoms, n_frag0: int) -> None:
    d = min_pair_distance(atoms)
    if d < MIN_PAIR_DISTANCE:
        raise TrajectoryStopped(f"atoms {d:.2f} A apart (< {MIN_PAIR_DISTANCE} A)")
    nf = n_fragments(atoms)
    if nf != n_frag0:
        raise TrajectoryStopped(f"molecule broke into {nf} fragments")


def md_frames(atoms0: Atoms, calc, *, temperature_K: float, n_frames: int, stride: int,
              timestep_fs: float = 0.5, friction_per_fs: float = 0.02, equil_steps: int = 0,
              seed: int = 0, traj: int = 0, resume: Atoms | None = None,
              frames_done: int = 0, timer: dict | None = None) -> Iterator[Atoms]:
    """Langevin MD frames (every `stride` steps) at `temperature_K` from `atoms0`.

    `resume`: the last written frame of this trajectory (with momenta, energy, forces, info
    'step'); generation continues after it. Yields frames with info step, temperature, traj.
    Raises TrajectoryStopped when the reference calculation fails or the molecule breaks.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:  # ASE >= 3.27
        from ase.md.velocitydistribution import thermalize_momenta as _mb
    except ImportError:  # pragma: no cover
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _mb

    timer = timer if timer is not None else {}
    timer.setdefault("calls", 0)
    timer.setdefault("seconds", 0.0)
    atoms = atoms0.copy()
    atoms.calc = calc
    n_frag0 = n_fragments(atoms0)

    def forces_now(step_fn=None):
        """Energy and forces at the current positions (after one MD step if step_fn)."""
        t = time.perf_counter()
        try:
            if step_fn is not None:
                step_fn()
            e_, f_ = float(atoms.get_potential_energy()), np.array(atoms.get_forces())
        except Exception as exc:  # SCF failure in tblite/pyscf/any calculator
            raise TrajectoryStopped(f"reference calculation failed: {type(exc).__name__}: "
                                    f"{exc}") from exc
        finally:
            timer["calls"] += 1
            timer["seconds"] += time.perf_counter() - t
        if not np.isfinite(e_) or not np.all(np.isfinite(f_)):
            raise TrajectoryStopped("reference calculation gave non-finite energy/forces")
        return e_, f_

    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False,
                   rng=np.random.default_rng([seed, traj, 0]))
    if resume is not None:
        atoms.set_positions(resume.get_positions())
        atoms.set_momenta(resume.get_momenta())
        e, f = resume.get_potential_energy(), resume.get_forces()
        step = int(resume.info["step"])
    else:
        rng = np.random.default_rng([seed, traj, 1_000_003])
        _mb(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        e, f = forces_now()
        step = 0
        dyn.rng = np.random.default_rng([seed, traj, 999_999])
        for _ in range(equil_steps):
            e, f = forces_now(lambda: dyn.step(f))
            step += 1
        _check_geometry(atoms, n_frag0)
    for k in range(frames_done, n_frames):
        dyn.rng = np.random.default_rng([seed, traj, k + 1])
        for _ in range(stride):
            e, f = forces_now(lambda: dyn.step(f))
            step += 1
        _check_geometry(atoms, n_frag0)
        atoms.info.update(step=step, temperature=float(temperature_K), traj=int(traj),
                          config_type="md")
        yield _frame(atoms, e, f, with_momenta=True)


def rattle_frames(atoms0: Atoms, calc, *, n_frames: int, sigma: float = 0.05, seed: int = 0,
                  traj: int = 0, skip: set[int] | frozenset = frozenset(),
                  timer: dict | None = None,
                  on_fail=None) -> Iterator[Atoms]:
    """Frames of `atoms0` with Gaussian displacements (std `sigma` A), labelled; index k is
    reproducible from (seed, traj, k), and indices in `skip` are not computed. A failed
    calculation calls on_fail(k, message) and the frame is skipped."""
    timer = timer if timer is not None else {}
    timer.setdefault("calls", 0)
    timer.setdefault("seconds", 0.0)
    n_frag0 = n_fragments(atoms0)
    for k in range(n_frames):
        if k in skip:
            continue
        at = atoms0.copy()
        rng = np.random.default_rng([seed, traj, k])
        at.positions += rng.normal(0.0, sigma, size=at.positions.shape)
        if min_pair_distance(at) < MIN_PAIR_DISTANCE or n_fragments(at) != n_frag0:
            if on_fail:
                on_fail(k, "rattled geometry too close or broken")
            continue
        t = time.perf_counter()
        try:
            lab = label(at, calc)
        except LabelError as exc:
            if on_fail:
                on_fail(k, str(exc))
            continue
        finally:
            timer["calls"] += 1
            timer["seconds"] += time.perf_counter() - t
        lab.info.update(step=k, traj=int(traj), config_type="rattle", sigma=float(sigma))
        yield lab
