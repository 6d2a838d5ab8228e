"""Structure builders: monomer -> ring-opened repeat unit -> cyclic "loop" polymer of size L.

A loop of size L is the ring-opened repeat unit written head to tail L times and closed into one
macrocycle (the paper's L-loop polymers), so it has exactly L times the monomer's atoms.
L = 1 gives back the monomer itself. 3D coordinates come from RDKit ETKDGv3 (macrocycle torsion
preferences on, fixed seed); a short relaxation with the reference method is done by the caller
(`relax`).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from .families import Family, get_family

RDLogger.DisableLog("rdApp.*")

MIN_PAIR_DISTANCE = 0.7  # Angstrom: no built or sampled structure may have a closer pair


class BuildError(ValueError):
    """A monomer cannot be parsed, ring-opened or embedded; the message names it."""


# --------------------------------------------------------------------------- monomer / bonds


def monomer_mol(smiles: str) -> Chem.Mol:
    """RDKit molecule (heavy atoms, implicit H) from a monomer SMILES; clear error if invalid."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise BuildError(f"empty monomer SMILES {smiles!r}")
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise BuildError(f"invalid SMILES {smiles!r}: RDKit could not parse it")
    if Chem.GetFormalCharge(mol) != 0 or any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        raise BuildError(f"monomer {smiles!r} is charged or a radical; only neutral closed-shell "
                         "monomers are supported")
    return mol


def find_open_bond(mol: Chem.Mol, smiles: str = "?") -> tuple[int, int]:
    """The ring bond (head, tail) broken by ring-opening polymerisation.

    Chosen, in order: atoms carrying atom-map numbers 1 and 2 (user override); the acyl-oxygen
    bond of a lactone (ring C(=O)-O); a C-O bond of a cyclic ether; a C-C single ring bond.
    Only non-aromatic single ring bonds qualify. The repeat unit runs tail ... head, and unit
    i's head bonds to unit i+1's tail.
    """
    mapped = {a.GetAtomMapNum(): a.GetIdx() for a in mol.GetAtoms() if a.GetAtomMapNum()}
    if 1 in mapped or 2 in mapped:
        if not (1 in mapped and 2 in mapped):
            raise BuildError(f"monomer {smiles!r}: atom-map numbers 1 and 2 must mark both atoms "
                             "of the bond to open")
        bond = mol.GetBondBetweenAtoms(mapped[1], mapped[2])
        if bond is None or not bond.IsInRing():
            raise BuildError(f"monomer {smiles!r}: atoms mapped 1 and 2 are not joined by a ring "
                             "bond, so it cannot be ring-opened there")
        if bond.GetIsAromatic() or bond.GetBondType() != Chem.BondType.SINGLE:
            raise BuildError(f"monomer {smiles!r}: the marked bond is not a single bond")
        return mapped[1], mapped[2]
    if mol.GetRingInfo().NumRings() == 0:
        raise BuildError(f"monomer {smiles!r} has no ring, so it cannot ring-open into a loop "
                         "polymer")
    cands = [b for b in mol.GetBonds()
             if b.IsInRing() and not b.GetIsAromatic() and b.GetBondType() == Chem.BondType.SINGLE]
    if not cands:
        raise BuildError(f"monomer {smiles!r} has no non-aromatic single ring bond to open")

    def is_carbonyl_c(atom):
        return atom.GetSymbol() == "C" and any(
            b.GetBondType() == Chem.BondType.DOUBLE and b.GetOtherAtom(atom).GetSymbol() == "O"
            for b in atom.GetBonds())

    def key(b):
        x, y = b.GetBeginAtom(), b.GetEndAtom()
        pair = {x.GetSymbol(), y.GetSymbol()}
        if pair == {"C", "O"}:
            c, o = (x, y) if x.GetSymbol() == "C" else (y, x)
            return (0 if is_carbonyl_c(c) else 1, b.GetIdx()), (c.GetIdx(), o.GetIdx())
        if pair == {"C"}:
            return (2, b.GetIdx()), (x.GetIdx(), y.GetIdx())
        return (3, b.GetIdx()), (x.GetIdx(), y.GetIdx())

    ranked = sorted(key(b) for b in cands)
    if ranked[0][0][0] == 3:
        raise BuildError(f"monomer {smiles!r}: no C-O or C-C ring bond to open (only "
                         "heteroatom-heteroatom ring bonds)")
    return ranked[0][1]


def _perm_parity(a: list, b: list) -> int:
    """Parity (0 even, 1 odd) of the permutation taking list a to list b (same items)."""
    a = list(a)
    pos = {v: i for i, v in enumerate(a)}
    perm = [pos[v] for v in b]
    parity, seen = 0, [False] * len(perm)
    for i in range(len(perm)):
        if not seen[i]:
            j, length = i, 0
            while not seen[j]:
                seen[j] = True
                j = perm[j]
                length += 1
            parity ^= (length - 1) & 1
    return parity


def loop_mol(smiles: str, L: int) -> Chem.Mol:
    """Cyclic L-loop polymer of a monomer (heavy atoms, implicit H), stereo carried over."""
    if int(L) < 1:
        raise BuildError(f"loop size must be >= 1, got {L}")
    L = int(L)
    mono = monomer_mol(smiles)
    head, tail = find_open_bond(mono, smiles)
    for a in mono.GetAtoms():
        a.SetAtomMapNum(0)
    n = mono.GetNumAtoms()

    def nbr_tokens(m, idx, link_pairs):
        out = []
        for b in m.GetAtomWithIdx(idx).GetBonds():
            o = b.GetOtherAtomIdx(idx)
            out.append("LINK" if (min(idx, o), max(idx, o)) in link_pairs else o % n)
        return out

    chiral = [a.GetIdx() for a in mono.GetAtoms()
              if a.GetChiralTag() in (Chem.ChiralType.CHI_TETRAHEDRAL_CW,
                                      Chem.ChiralType.CHI_TETRAHEDRAL_CCW)]
    ref = {i: nbr_tokens(mono, i, {(min(head, tail), max(head, tail))}) for i in chiral
           if i in (head, tail)}

    rw = Chem.RWMol()
    for _ in range(L):
        rw.InsertMol(mono)
    for i in range(L):
        rw.RemoveBond(i * n + head, i * n + tail)
    links = set()
    for i in range(L):
        x, y = i * n + head, ((i + 1) % L) * n + tail
        rw.AddBond(x, y, Chem.BondType.SINGLE)
        links.add((min(x, y), max(x, y)))
    for i in range(L):
        for k, toks in ref.items():
            idx = i * n + k
            if _perm_parity(toks, nbr_tokens(rw, idx, links)):
                atom = rw.GetAtomWithIdx(idx)
                atom.InvertChirality()
    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # pragma: no cover - only for odd user monomers
        raise BuildError(f"monomer {smiles!r}: the ring-opened {L}-loop is not a valid "
                         f"molecule ({exc})") from exc
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def repeat_unit_smiles(smiles: str) -> str:
    """SMILES of the ring-opened repeat unit with '*' at both open ends (tail first)."""
    mono = monomer_mol(smiles)
    head, tail = find_open_bond(mono, smiles)
    for a in mono.GetAtoms():
        a.SetAtomMapNum(0)
    rw = Chem.RWMol(mono)
    rw.RemoveBond(head, tail)
    dh = rw.AddAtom(Chem.Atom(0))
    dt = rw.AddAtom(Chem.Atom(0))
    rw.AddBond(head, dh, Chem.BondType.SINGLE)
    rw.AddBond(tail, dt, Chem.BondType.SINGLE)
    m = rw.GetMol()
    Chem.SanitizeMol(m)
    return Chem.MolToSmiles(m, rootedAtAtom=dt)


def loop_smiles(smiles: str, L: int) -> str:
    return Chem.MolToSmiles(loop_mol(smiles, L))


def formula(smiles: str, L: int = 1) -> str:
    """Hill formula of the L-loop (e.g. 'C4H6O2' for gamma-butyrolactone, L=1)."""
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula
    return CalcMolFormula(loop_mol(smiles, L))


# --------------------------------------------------------------------------- 3D embedding


def _resolve(family_or_smiles) -> tuple[str, str]:
    """(family index or 'custom', monomer SMILES)."""
    if isinstance(family_or_smiles, Family):
        return family_or_smiles.index, family_or_smiles.smiles
    s = str(family_or_smiles)
    try:
        fam = get_family(s)
        return fam.index, fam.smiles
    except KeyError:
        monomer_mol(s)  # raises a clear error for invalid SMILES
        return "custom", s


def mol_to_atoms(molh: Chem.Mol, conf_id: int = -1) -> Atoms:
    conf = molh.GetConformer(conf_id)
    return Atoms([a.GetSymbol() for a in molh.GetAtoms()], positions=conf.GetPositions())


def embed(mol: Chem.Mol, n_conf: int = 1, seed: int = 0, name: str = "?") -> list[Atoms]:
    """ETKDGv3 conformers (H added) as ASE Atoms; BuildError if embedding fails."""
    molh = Chem.AddHs(mol)
    ring_size = max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.useMacrocycleTorsions = True
    params.useMacrocycle14config = True
    params.pruneRmsThresh = -1.0
    cids = list(AllChem.EmbedMultipleConfs(molh, numConfs=int(n_conf), params=params))
    if len(cids) < n_conf or ring_size > 40 and not cids:
        params.useRandomCoords = True
        cids = list(AllChem.EmbedMultipleConfs(molh, numConfs=int(n_conf), params=params))
    if len(cids) < n_conf:
        raise BuildError(f"{name}: RDKit ETKDG embedded only {len(cids)} of {n_conf} conformers")
    out = []
    for cid in cids:
        at = mol_to_atoms(molh, cid)
        if min_pair_distance(at) < MIN_PAIR_DISTANCE:
            raise BuildError(f"{name}: embedded conformer {cid} has atoms closer than "
                             f"{MIN_PAIR_DISTANCE} A")
        out.append(at)
    return out


def build(family_or_smiles, L: int = 1, n_conf: int = 1, seed: int = 0) -> list[Atoms]:
    """Unrelaxed 3D conformers of the L-loop of a family (index) or monomer SMILES.

    info: family, loop, smiles (the monomer SMILES), conformer, seed.
    """
    fam, smi = _resolve(family_or_smiles)
    mol = loop_mol(smi, L)
    confs = embed(mol, n_conf=n_conf, seed=seed, name=f"{fam} (SMILES {smi!r}) {L}-loop")
    for i, at in enumerate(confs):
        at.info.update(family=fam, loop=int(L), smiles=smi, conformer=i, seed=int(seed))
    return confs


def relax(atoms: Atoms, calc, fmax: float = 0.1, steps: int = 50) -> Atoms:
    """Short relaxation (FIRE) of a copy of atoms with the given ASE calculator."""
    from ase.optimize import FIRE

    at = atoms.copy()
    at.calc = calc
    opt = FIRE(at, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    at.calc = None
    at.info["relax_steps"] = int(opt.nsteps)
    return at


# --------------------------------------------------------------------------- checks


def min_pair_distance(atoms: Atoms) -> float:
    p = atoms.get_positions()
    if len(p) < 2:
        return float("inf")
    d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    d[np.diag_indices(len(p))] = np.inf
    return float(d.min())


def n_fragments(atoms: Atoms, mult: float = 1.2) -> int:
    """Number of connected fragments with covalent-radius bonds (ASE natural cutoffs x mult)."""
    from ase.neighborlist import natural_cutoffs, NeighborList
    from scipy.sparse.csgraph import connected_components

    nl = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True)
    nl.update(atoms)
    n, _ = connected_components(nl.get_connectivity_matrix(sparse=True))
    return int(n)
