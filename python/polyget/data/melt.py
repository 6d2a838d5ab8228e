"""Amorphous periodic melts of polymer chains, written as LAMMPS data files.

    polyget melt FAMILY -L 15 --atoms 10000 --density 1.1 -o melt.data [--linear] [--seed 0]
    polyget melt LAC2 -L 15 --chains 56 -o melt.data

Each chain is an L-loop (cyclic, as in the paper) or, with ``--linear``, the same chain opened
at one link (ends capped with H). A few RDKit ETKDG conformers are embedded and the most compact
ones used. The melt is made in two steps:

1. insertion: rigid chains at random positions and orientations in a cubic periodic box at a
   low density (0.35 g/cm^3, lowered in 5% steps if needed), rejecting any placement with two
   atoms of different chains (or images) closer than ``min_dist``;
2. compression (``compress``): the box shrinks in affine steps of 5% in density to the target;
   after each step the chains relax (FIRE) under harmonic restraints on all 1-2 and 1-3
   distances (bond lengths and angles of the conformer kept; torsions free, so chains fold and
   interpenetrate) and a soft repulsion between all other pairs closer than 2 A (1-4 pairs
   excluded). The closest non-bonded pair and the largest bond/angle-distance error are logged.

This is a starting structure, not an equilibrated melt: inputs/melt_equil.in runs NVT and NPT
with the potential. The file has atom types 1 H, 2 C, 3 O (``pair_coeff * * H C O``),
``atom_style atomic``, ``units metal``.
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


def chain_mol(family: str, L: int, linear: bool = False):
    """RDKit molecule (heavy atoms, implicit H) of one chain: the L-loop of `family`, or with
    `linear` the same chain opened at the link between its last and first repeat unit (same
    stereo, the two ends capped with H). Chem.AddHs of it has the atom order of the conformers."""
    from rdkit import Chem

    from .build import _resolve, find_open_bond, loop_mol, monomer_mol

    fam, smi = _resolve(family)
    mol = loop_mol(smi, L)
    if linear:
        mono = monomer_mol(smi)
        head, tail = find_open_bond(mono, smi)
        n = mono.GetNumAtoms()
        a, b = ((L - 1) * n + head, tail) if L > 1 else (head, tail)
        rw = Chem.RWMol(mol)
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
    return fam, mol


def chain_conformers(family: str, L: int, linear: bool = False, n_conf: int = 4, seed: int = 0):
    """Compact conformers (ase.Atoms, centred) of one chain, most compact first."""
    from .build import embed

    fam, mol = chain_mol(family, L, linear)
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


# ---------------------------------------------------------------------------------------------
# compression to the target density: flexible chains (bond lengths and angles restrained, torsions
# free) pushed apart by a soft repulsion while the box shrinks in small affine steps
# ---------------------------------------------------------------------------------------------
def _topology(conf_mol):
    """(1-2 and 1-3 pairs with their lengths, 1-2/1-3/1-4 exclusion pairs) of one chain."""
    import itertools

    nbr = [[n.GetIdx() for n in a.GetNeighbors()] for a in conf_mol.GetAtoms()]
    bonds = {(min(a, b), max(a, b)) for a in range(len(nbr)) for b in nbr[a]}
    angles = set()
    for c in range(len(nbr)):
        for a, b in itertools.combinations(nbr[c], 2):
            angles.add((min(a, b), max(a, b)))
    tors = set()
    for a, b in bonds:
        for x in nbr[a]:
            for y in nbr[b]:
                if x != b and y != a and x != y:
                    tors.add((min(x, y), max(x, y)))
    restr = np.array(sorted(bonds | angles), dtype=np.int64).reshape(-1, 2)
    excl = np.array(sorted(bonds | angles | tors), dtype=np.int64).reshape(-1, 2)
    return restr, excl


def _min_image(d, box):
    return d - box * np.round(d / box)


def compress(atoms, chain_mol, per: int, density: float, d0: float = 2.0, k_restr: float = 50.0,
             k_rep: float = 5.0, stage: float = 1.05, steps: int = 400, log=None):
    """Shrink the cubic box of `atoms` (n chains of `per` atoms, in the atom order of
    `chain_mol`) to `density` g/cm^3. Energy (arbitrary units): k_restr (r - r0)^2 on 1-2 and
    1-3 pairs (r0 from the chain's conformer: bond lengths and angles kept, torsions free) +
    k_rep (d0 - r)^2 on every other pair closer than d0 (1-4 pairs excluded). FIRE between
    affine shrink steps of `stage` in density."""
    from scipy.spatial import cKDTree

    n_chains = len(atoms) // per
    restr1, excl1 = _topology(chain_mol)
    pos0 = atoms.positions[:per]
    off = (np.arange(n_chains) * per)[:, None, None]
    restr = (restr1[None] + off).reshape(-1, 2)
    box = atoms.cell[0, 0]
    r0 = np.linalg.norm(_min_image(pos0[restr1[:, 1]] - pos0[restr1[:, 0]], box), axis=1)
    r0 = np.tile(r0, n_chains)
    n = len(atoms)
    excl_keys = np.sort(((excl1[None] + off).reshape(-1, 2) @ np.array([n, 1])).ravel())
    mass_g = atoms.get_masses().sum() / AVOGADRO
    pos = atoms.positions.copy()

    def forces(pos, box):
        f = np.zeros_like(pos)
        d = _min_image(pos[restr[:, 1]] - pos[restr[:, 0]], box)
        r = np.linalg.norm(d, axis=1)
        g = (2 * k_restr * (r - r0) / np.maximum(r, 1e-9))[:, None] * d
        np.add.at(f, restr[:, 0], g)
        np.add.at(f, restr[:, 1], -g)
        pairs = cKDTree(np.mod(pos, box), boxsize=box).query_pairs(d0, output_type="ndarray")
        worst = d0
        if len(pairs):
            keys = pairs[:, 0] * n + pairs[:, 1]
            pairs = pairs[~np.isin(keys, excl_keys, assume_unique=False)]
        if len(pairs):
            d = _min_image(pos[pairs[:, 1]] - pos[pairs[:, 0]], box)
            r = np.linalg.norm(d, axis=1)
            worst = float(r.min())
            g = (-2 * k_rep * (d0 - r) / np.maximum(r, 1e-9))[:, None] * d
            np.add.at(f, pairs[:, 0], g)
            np.add.at(f, pairs[:, 1], -g)
        dev = float(np.abs(np.linalg.norm(_min_image(pos[restr[:, 1]] - pos[restr[:, 0]], box),
                                          axis=1) - r0).max()) if len(restr) else 0.0
        return f, worst, dev

    def relax(pos, box):
        # FIRE (Bitzek et al. 2006), unit masses, capped step
        v = np.zeros_like(pos)
        dt, alpha, npos = 0.05, 0.1, 0
        worst = dev = 0.0
        for it in range(steps):
            f, worst, dev = forces(pos, box)
            if worst > 0.9 * d0 and dev < 0.03:
                break
            p = float((f * v).sum())
            if p > 0:
                fn = np.linalg.norm(f) + 1e-30
                v = (1 - alpha) * v + alpha * f * (np.linalg.norm(v) / fn)
                npos += 1
                if npos > 5:
                    dt, alpha = min(dt * 1.1, 0.2), alpha * 0.99
            else:
                v[:] = 0.0
                dt, alpha, npos = dt * 0.5, 0.1, 0
            v += dt * f
            step = dt * v
            big = np.linalg.norm(step, axis=1).max()
            if big > 0.1:
                step *= 0.1 / big
            pos = pos + step
        return pos, worst, dev

    rho = mass_g / (box ** 3 * 1e-24)
    while True:
        target = min(density, rho * stage)
        new_box = (mass_g / target * 1e24) ** (1.0 / 3.0)
        pos = pos * (new_box / box)
        box, rho = new_box, target
        pos, worst, dev = relax(pos, box)
        if log:
            log(f"melt: {rho:.3f} g/cm^3, closest non-bonded pair {worst:.2f} A, "
                f"largest bond/angle-distance error {dev:.3f} A")
        if rho >= density - 1e-12:
            break
    out = atoms.copy()
    out.set_cell(np.eye(3) * box)
    out.positions = np.mod(pos, box)
    out.info.update(density=float(rho), closest_nonbonded=float(worst), geometry_error=float(dev))
    return out


def build_melt(family: str, L: int, n_chains: Optional[int] = None, n_atoms: Optional[int] = None,
               density: float = 0.9, linear: bool = False, seed: int = 0, min_dist: float = 1.7,
               compress_to_density: bool = True, log=None):
    """ase.Atoms of an amorphous periodic melt (see the module docstring)."""
    from rdkit import Chem

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
    # rigid chains pack to a fraction of a melt's density: insert them at a low density, then
    # compress with flexible chains
    start = min(density, 0.35) if compress_to_density else density
    atoms = pack(confs, n_chains, start, seed=seed, min_dist=min_dist, log=log)
    if compress_to_density and atoms.info["density"] < density - 1e-12:
        molh = Chem.AddHs(chain_mol(family, L, linear)[1])
        info = dict(atoms.info)
        atoms = compress(atoms, molh, per, density, log=log)
        atoms.info.update({k: v for k, v in info.items() if k not in atoms.info})
    atoms.info.update(family=confs[0].info["family"], loop=int(L), n_chains=n_chains,
                      topology=confs[0].info["topology"], atoms_per_chain=per,
                      target_density=float(density))
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
                   help="closest allowed distance between atoms of different chains at insertion, "
                        "A (default 1.7)")
    p.add_argument("--no-compress", action="store_true",
                   help="stop after the rigid insertion (reports the density reached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="LAMMPS data file to write")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        if a.atoms is not None and not 1 <= a.atoms <= 10_000_000:
            raise MeltError(f"--atoms must be between 1 and 1e7, got {a.atoms}")
        atoms = build_melt(a.family, a.length, n_chains=a.chains, n_atoms=a.atoms,
                           density=a.density, linear=a.linear, seed=a.seed, min_dist=a.min_dist,
                           compress_to_density=not a.no_compress,
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
             " (target %.3f not reached: inputs/melt_equil.in compresses it)" % a.density,
             time.time() - t0))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
