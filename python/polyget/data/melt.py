"""Amorphous periodic melts of polymer chains, written as LAMMPS data files.

    polyget melt FAMILY -L 15 --atoms 10000 --density 0.9 -o melt.data [--linear] [--seed 0]
    polyget melt LAC2 -L 15 --chains 56 -o melt.data

Each chain is an L-loop (cyclic, as in the paper) or, with ``--linear``, the same chain opened
at one link (ends capped with H). A few RDKit ETKDG conformers are embedded and the most compact
ones are used; chains are inserted one by one at random positions and orientations in an
orthogonal periodic box sized for the target density, rejecting any placement with two atoms of
different chains (or images) closer than ``min_dist``. If the target density cannot be packed
the box is enlarged in steps of 5% in volume, and the density reached is reported (the
equilibration deck inputs/melt_equil.in then runs NVT and NPT with the potential). The file has
atom types 1 H, 2 C, 3 O (``pair_coeff * * H C O``) and ``atom_style atomic``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

AVOGADRO = 6.02214076e23
SPECORDER = ["H", "C", "O"]


class MeltError(ValueError):
    """The melt cannot be built as asked (with what to change)."""


def chain_conformers(family: str, L: int, linear: bool = False, n_conf: int = 4, seed: int = 0):
    """Compact conformers (ase.Atoms, centred) of one chain, most compact first."""
    from rdkit import Chem

    from .build import _resolve, embed, find_open_bond, loop_mol, monomer_mol

    fam, smi = _resolve(family)
    mol = loop_mol(smi, L)
    if linear:
        # open the link between the last and the first repeat unit (loop_mol's ordering):
        # a linear chain of L units with the same stereo, the two ends capped with H
        mono = monomer_mol(smi)
        head, tail = find_open_bond(mono, smi)
        n = mono.GetNumAtoms()
        a, b = (L - 1) * n + head, tail
        rw = Chem.RWMol(mol)
        if L == 1:
            # a 1-loop is the monomer ring itself: open its ring bond
            a, b = head, tail
        if rw.GetBondBetweenAtoms(a, b) is None:  # pragma: no cover - loop_mol invariant
            raise MeltError(f"{fam}: cannot find the link bond to open for a linear chain")
        rw.RemoveBond(a, b)
        for k in (a, b):
            atom = rw.GetAtomWithIdx(k)
            atom.SetNoImplicit(False)
            atom.SetNumExplicitHs(0)
        mol = rw.GetMol()
        Chem.SanitizeMol(mol)
        Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    confs = embed(mol, n_conf=n_conf, seed=seed, name=f"{fam} {'linear' if linear else 'loop'} L={L}")
    out = []
    for c in confs:
        c.positions -= c.get_center_of_mass()
        rg = float(np.sqrt(((c.positions ** 2).sum(1) * c.get_masses()).sum() / c.get_masses().sum()))
        out.append((rg, c))
    out.sort(key=lambda t: t[0])
    for _, c in out:
        c.info.update(family=fam, loop=int(L), topology="linear" if linear else "loop")
    return [c for _, c in out]


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pack(confs, n_chains: int, density: float, seed: int = 0, min_dist: float = 1.7,
         tries: int = 400, max_grow: int = 40, log=None):
    """Insert n_chains copies (random conformer of `confs`, random rotation) into a cubic
    periodic box at `density` g/cm^3 (lowered in 5% volume steps when packing fails)."""
    from ase import Atoms
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    self_pairs = [_self_pairs(c, min_dist) for c in confs]
    mass_g = sum(confs[0].get_masses()) * n_chains / AVOGADRO
    for grow in range(max_grow + 1):
        rho = density / (1.05 ** grow)
        box = (mass_g / rho * 1e24) ** (1.0 / 3.0)
        if max(np.ptp(c.positions, axis=0).min() for c in confs) > box:
            continue
        placed: List[np.ndarray] = []
        tree = None
        pending = np.zeros((0, 3))
        ok = True
        for m in range(n_chains):
            for t in range(tries):
                ic = int(rng.integers(len(confs))) if t % 2 else 0
                trial = confs[ic].positions @ _random_rotation(rng).T + rng.uniform(0, box, 3)
                trial = np.mod(trial, box)
                # the chain must not touch its own periodic images
                if len(cKDTree(trial, boxsize=box).query_pairs(min_dist)) > self_pairs[ic]:
                    continue
                if tree is not None and np.isfinite(tree.query(trial, distance_upper_bound=min_dist)[0]).any():
                    continue
                if len(pending) and (cKDTree(pending, boxsize=box).query(
                        trial, distance_upper_bound=min_dist)[0] < np.inf).any():
                    continue
                placed.append(trial)
                pending = np.concatenate([pending, trial])
                if len(pending) > 2000:  # rebuild the big tree now and then
                    tree = cKDTree(np.concatenate(placed), boxsize=box)
                    pending = np.zeros((0, 3))
                break
            else:
                ok = False
                break
        if ok:
            atoms = Atoms(cell=np.eye(3) * box, pbc=True)
            symbols = confs[0].get_chemical_symbols()
            for pos in placed:
                atoms += Atoms(symbols, positions=pos)
            # molecule ids (for analysis; atom_style atomic drops them in the data file)
            atoms.set_array("mol-id", np.repeat(np.arange(1, n_chains + 1), len(confs[0])))
            atoms.info.update(density=float(rho), target_density=float(density), n_chains=n_chains)
            return atoms
        if log:
            log(f"melt: could not insert chain {m + 1}/{n_chains} at {rho:.3f} g/cm^3; "
                f"trying {density / 1.05 ** (grow + 1):.3f}")
    raise MeltError(f"could not pack {n_chains} chains even at {density / 1.05 ** max_grow:.3f} "
                    "g/cm^3: use shorter chains, fewer chains, or a lower --density")


def _self_pairs(conf, min_dist: float) -> int:
    """Pairs closer than min_dist inside one chain (bonded atoms): allowed."""
    from scipy.spatial import cKDTree

    return len(cKDTree(conf.positions).query_pairs(min_dist))


def build_melt(family: str, L: int, n_chains: Optional[int] = None, n_atoms: Optional[int] = None,
               density: float = 0.9, linear: bool = False, seed: int = 0, min_dist: float = 1.7,
               log=None):
    """ase.Atoms of an amorphous periodic melt (see the module docstring)."""
    if L < 1:
        raise MeltError(f"chain length L must be >= 1, got {L}")
    if not density > 0:
        raise MeltError(f"density must be > 0 g/cm^3, got {density}")
    confs = chain_conformers(family, L, linear=linear, seed=seed)
    per = len(confs[0])
    if n_chains is None:
        if n_atoms is None:
            raise MeltError("give the number of chains (--chains) or of atoms (--atoms)")
        n_chains = max(1, int(round(n_atoms / per)))
    if n_chains < 1:
        raise MeltError("need at least one chain")
    # a chain cannot be distinguished in the packing if conformers differ in atom order
    confs = [c for c in confs if c.get_chemical_symbols() == confs[0].get_chemical_symbols()]
    atoms = pack(confs, n_chains, density, seed=seed, min_dist=min_dist, log=log)
    atoms.info.update(family=confs[0].info["family"], loop=int(L),
                      topology=confs[0].info["topology"], atoms_per_chain=per)
    return atoms


def write_lammps_data(path, atoms, comment: str) -> None:
    """ase.io lammps-data, atom types 1 H, 2 C, 3 O, units metal, atom_style atomic."""
    from ase.io import write

    a = atoms.copy()
    for k in list(a.arrays):
        if k not in ("numbers", "positions"):
            del a.arrays[k]
    write(str(path), a, format="lammps-data", specorder=SPECORDER, masses=True, units="metal",
          atom_style="atomic")
    text = Path(path).read_text().splitlines()
    text[0] = comment
    Path(path).write_text("\n".join(text) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="polyget melt",
        description="Build an amorphous periodic melt of polymer chains as a LAMMPS data file "
                    "(atom types 1 H, 2 C, 3 O; atom_style atomic; units metal). Equilibrate it "
                    "with inputs/melt_equil.in.")
    p.add_argument("family", help="family index (e.g. LAC2, CK6; see polyget data families) or a "
                                  "monomer SMILES")
    p.add_argument("-L", "--length", type=int, default=15, help="repeat units per chain (default 15)")
    p.add_argument("--linear", action="store_true", help="linear chains (default: loops, as in the paper)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--chains", type=int, help="number of chains")
    g.add_argument("--atoms", type=int, help="approximate number of atoms (rounded to whole chains)")
    p.add_argument("--density", type=float, default=0.9, help="target density in g/cm^3 (default 0.9)")
    p.add_argument("--min-dist", type=float, default=1.7,
                   help="closest allowed distance between atoms of different chains, A (default 1.7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="LAMMPS data file to write")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        if a.atoms is not None and not 1 <= a.atoms <= 10_000_000:
            raise MeltError(f"--atoms must be between 1 and 1e7, got {a.atoms}")
        atoms = build_melt(a.family, a.length, n_chains=a.chains, n_atoms=a.atoms,
                           density=a.density, linear=a.linear, seed=a.seed, min_dist=a.min_dist,
                           log=lambda s: print(s, file=sys.stderr))
    except (MeltError, ValueError, KeyError) as exc:
        print(f"polyget melt: error: {exc}", file=sys.stderr)
        return 2
    info = atoms.info
    comment = ("amorphous melt: %d %s %s chains of L=%d (%d atoms each), %d atoms, %.3f g/cm^3, "
               "seed %d (polyget melt)" % (info["n_chains"], info["family"], info["topology"],
                                           a.length, info["atoms_per_chain"], len(atoms),
                                           info["density"], a.seed))
    write_lammps_data(a.output, atoms, comment)
    print("wrote %s: %d atoms (%d chains x %d), box %.2f A, density %.3f g/cm^3%s, %.1f s"
          % (a.output, len(atoms), info["n_chains"], info["atoms_per_chain"], atoms.cell[0, 0],
             info["density"],
             "" if abs(info["density"] - a.density) < 1e-9 else
             " (target %.3f could not be packed; NPT in inputs/melt_equil.in compresses it)" % a.density,
             time.time() - t0))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
