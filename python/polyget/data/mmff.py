"""Cheap conformational sampling with RDKit's MMFF94 force field (no reference calls).

The reference method (GFN2-xTB, PBE) labels every written frame, but the dynamics that move
between frames need not be the reference method: MMFF94 Langevin MD and normal-mode
displacements from an MMFF Hessian explore conformations at a tiny fraction of the cost
(docs/data.md has the measured cost per kept frame of each sampler).

`MMFFCalculator` is an ASE calculator over an RDKit molecule whose atom order equals the
Atoms' (the builders' `Chem.AddHs(loop_mol(smiles, L))` order).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

KCAL_MOL = units.kcal / units.mol   # eV per kcal/mol


def loop_molh(smiles: str, loop: int):
    """RDKit molecule (explicit H) of the L-loop, in the atom order of `build.build`."""
    from rdkit import Chem

    from .build import loop_mol
    return Chem.AddHs(loop_mol(smiles, loop))


class MMFFCalculator(Calculator):
    """MMFF94 energy (eV) and forces (eV/A) for Atoms in the atom order of `molh`."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, molh, variant: str = "MMFF94", **kwargs):
        super().__init__(**kwargs)
        from rdkit import Chem
        from rdkit.Chem import AllChem

        self.molh = Chem.Mol(molh)
        n = self.molh.GetNumAtoms()
        if self.molh.GetNumConformers() == 0:
            self.molh.AddConformer(Chem.Conformer(n), assignId=True)
        props = AllChem.MMFFGetMoleculeProperties(self.molh, mmffVariant=variant)
        if props is None:
            raise ValueError(f"MMFF94 has no parameters for {Chem.MolToSmiles(molh)}")
        self.ff = AllChem.MMFFGetMoleculeForceField(self.molh, props,
                                                    ignoreInterfragInteractions=False)
        self.n = n

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) != self.n:
            raise ValueError(f"MMFFCalculator: molecule has {self.n} atoms, Atoms has "
                             f"{len(self.atoms)}")
        pos = self.atoms.get_positions().ravel().tolist()
        e = self.ff.CalcEnergy(pos)
        g = np.asarray(self.ff.CalcGrad(pos), dtype=float).reshape(-1, 3)
        self.results["energy"] = float(e) * KCAL_MOL
        self.results["forces"] = -g * KCAL_MOL

    def regular(self, atoms: Atoms, seed: int = 0, fmax: float = 100.0) -> Atoms:
        """A copy of atoms where MMFF is regular. MMFF's angle terms are singular at exactly
        linear angles, which a minimisation can land on (seen: 2,000 eV/A on one ester O of
        a LAC3 2-loop, and a NaN trajectory after it). Then rattle by 0.01 A (seeded) and
        minimise again, up to 5 times."""
        at = atoms.copy()
        for k in range(6):
            at.calc = self
            f = at.get_forces()
            if np.all(np.isfinite(f)) and np.abs(f).max() < fmax:
                break
            at.rattle(0.01, seed=int(seed) * 7 + k)
            at = self.minimize(at)
        at.calc = None
        return at

    def minimize(self, atoms: Atoms, max_iters: int = 2000) -> Atoms:
        """MMFF-minimised copy of atoms (RDKit's BFGS)."""
        conf = self.molh.GetConformer()
        for k, p in enumerate(atoms.get_positions()):
            conf.SetAtomPosition(k, p.tolist())
        from rdkit.Chem import AllChem
        props = AllChem.MMFFGetMoleculeProperties(self.molh)
        ff = AllChem.MMFFGetMoleculeForceField(self.molh, props)
        ff.Minimize(maxIts=int(max_iters))
        out = atoms.copy()
        out.set_positions(np.asarray(ff.Positions(), dtype=float).reshape(-1, 3))
        return out


def mmff_md_positions(atoms0: Atoms, calc: MMFFCalculator, *, temperature_K: float,
                      n_frames: int, stride: int, equil_steps: int, timestep_fs: float = 1.0,
                      friction_per_fs: float = 0.02, seed: int = 0) -> list[np.ndarray]:
    """Positions every `stride` steps of an MMFF Langevin trajectory (deterministic in seed).

    Cheap enough to recompute from the start on resume, so no state is stored."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    at = calc.regular(atoms0, seed=seed)
    at.calc = calc
    MaxwellBoltzmannDistribution(at, temperature_K=temperature_K,
                                 rng=np.random.default_rng([seed, 17]))
    Stationary(at)
    ZeroRotation(at)
    dyn = Langevin(at, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False,
                   rng=np.random.default_rng([seed, 23]))
    def advance(n_steps: int, k: int) -> None:
        """n_steps of MD; if MMFF blows up (rare at 700-900 K), restart the chunk from the last
        good state with fresh velocities (seeded by chunk and attempt: still deterministic)."""
        good_p, good_v = at.get_positions().copy(), at.get_velocities().copy()
        for attempt in range(4):
            with np.errstate(all="ignore"):
                dyn.run(n_steps)
            if np.all(np.isfinite(at.get_positions())):
                return
            at.set_positions(good_p)
            at.set_velocities(good_v)
            MaxwellBoltzmannDistribution(at, temperature_K=temperature_K,
                                         rng=np.random.default_rng([seed, 31, k, attempt]))
            Stationary(at)
            ZeroRotation(at)
        at.set_positions(np.full_like(good_p, np.nan))   # give up: the caller drops the rest

    advance(equil_steps, 1_000_000)
    out = []
    for k in range(n_frames):
        if not np.all(np.isfinite(at.get_positions())):
            out.append(at.get_positions().copy())
            continue
        advance(stride, k)
        out.append(at.get_positions().copy())
    return out


def mmff_hessian(atoms: Atoms, calc: MMFFCalculator, delta: float = 5e-3) -> np.ndarray:
    """Cartesian Hessian (eV/A^2) by central differences of MMFF forces."""
    pos0 = atoms.get_positions()
    n = len(atoms)
    h = np.zeros((3 * n, 3 * n))
    at = atoms.copy()
    at.calc = calc
    for k in range(3 * n):
        a, c = divmod(k, 3)
        fp = fm = None
        for sgn in (1, -1):
            p = pos0.copy()
            p[a, c] += sgn * delta
            at.set_positions(p)
            f = at.get_forces().ravel()
            if sgn == 1:
                fp = f
            else:
                fm = f
        h[k] = -(fp - fm) / (2 * delta)
    return 0.5 * (h + h.T)


def normal_mode_positions(atoms: Atoms, hessian: np.ndarray, *, temperature_K: float,
                          n_frames: int, seed: int = 0, min_wavenumber: float = 100.0,
                          max_amplitude: float = 0.3) -> list[np.ndarray]:
    """Normal-mode sampling: independent harmonic displacements along the mass-weighted modes
    with a Boltzmann-distributed energy per mode at `temperature_K`.

    Soft modes (below `min_wavenumber` cm^-1; rotations, translations, torsions) are treated as
    that stiff so the displacement stays local; a mode's amplitude is capped at
    `max_amplitude` A. Deterministic in (seed, frame index)."""
    m = np.repeat(atoms.get_masses(), 3)
    mw = hessian / np.sqrt(np.outer(m, m))
    w2, modes = np.linalg.eigh(mw)                   # eV / (A^2 amu)
    # omega (rad/s) -> wavenumber: sqrt(w2 eV/A^2/amu) in s^-1 via ASE units
    conv = np.sqrt(units._e / units._amu) * 1e10     # sqrt(eV/(A^2 amu)) -> rad/s
    c_cm = units._c * 100.0
    wmin = (2 * np.pi * c_cm * min_wavenumber / conv) ** 2
    w2 = np.maximum(w2, wmin)
    kT = units.kB * temperature_K
    out = []
    pos0 = atoms.get_positions()
    for k in range(n_frames):
        rng = np.random.default_rng([seed, 7919, k])
        # harmonic oscillator at temperature T: q ~ N(0, kT / w2) (mass-weighted coordinate)
        q = rng.normal(0.0, np.sqrt(kT / w2))
        dx = (modes @ q) / np.sqrt(m)
        dx = dx.reshape(-1, 3)
        norm = np.linalg.norm(dx, axis=1).max()
        if norm > max_amplitude:
            dx *= max_amplitude / norm
        out.append(pos0 + dx)
    return out


def kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD after optimal superposition (the one implementation: polyget.md.kabsch_rmsd)."""
    from ..md import kabsch_rmsd as _rmsd
    return _rmsd(p, q)


class Deduper:
    """Rejects conformations within `threshold` A RMSD (after superposition) of a kept one."""

    def __init__(self, threshold: float = 0.05):
        self.threshold = float(threshold)
        self.kept: list[np.ndarray] = []

    def is_new(self, pos: np.ndarray) -> bool:
        return all(kabsch_rmsd(pos, q) >= self.threshold for q in self.kept)

    def add(self, pos: np.ndarray) -> None:
        self.kept.append(np.asarray(pos, dtype=float).copy())
