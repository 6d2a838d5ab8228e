"""The 24 monomer families of the PolyGET paper (Table 1, "Poly24") as data.

Each family is a cyclic C/H/O monomer given by SMILES. The paper's Table 1 "# Atoms" column is
the monomer atom count (H included); every SMILES below reproduces it (checked by the tests).
A loop of size L (the paper's "L-loop polymer") has L times as many atoms.

Where the paper is ambiguous we picked a chemically sensible monomer with the right atom count:

- LAC1 and LAC2 are both printed as "gamma-butyrolactone" (9 and 12 atoms). 9 atoms is
  beta-propiolactone (C3H4O2); 12 atoms is gamma-butyrolactone (C4H6O2). The paper's 15-loop of
  LAC2 has 180 atoms = 15 x 12, consistent with gamma-butyrolactone.
- LAC7 "delta-caprolactone" is read literally: 6-methyl-oxan-2-one (delta-hexalactone), 18 atoms.
- LAC9 (-)-menthide is 7-isopropyl-4-methyl-oxepan-2-one (Baeyer-Villiger product of menthone),
  written (4R,7S): the configuration of (-)-menthone (2S,5R), kept by the oxygen insertion.
  Energies and forces are the same for both enantiomers; only the relative configuration counts.
- OTH1, OTH3, OTH4, OTH6, OTH7, OTH8 are "n-alkane substituted delta-valerolactone" with 18, 21,
  24, 30, 33, 42 atoms: delta-valerolactone (15 atoms) plus an n-alkyl chain of 1, 2, 3, 5, 6, 9
  carbons (each CH2 adds 3 atoms); OTH5 is the n-butyl member (27 atoms). We put the chain on the
  alpha carbon (3-alkyl-oxan-2-one): on the delta carbon, the methyl and pentyl members would
  duplicate LAC7 (delta-hexalactone) and LAC8 (delta-decalactone). OTH4's 15-loop then has
  15 x 24 = 360 atoms, as in the paper.
- Stereocentres are written explicitly (one fixed configuration per family), so every repeat
  unit of a loop has the same configuration (isotactic chains) and builds are reproducible.

The bond broken by ring-opening polymerisation is chosen by `polyget.data.build.find_open_bond`
(acyl-oxygen bond of a lactone, else a C-O bond of a cyclic ether, else a C-C ring bond); a
family may override it with atom-map numbers 1 and 2 on the two atoms of that bond.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = ("cycloalkane", "ether", "lactone", "other")


@dataclass(frozen=True)
class Family:
    index: str
    name: str
    smiles: str
    category: str
    n_atoms: int  # monomer atom count, H included (paper's Table 1)
    note: str = ""


def _f(index, name, smiles, category, n_atoms, note=""):
    return Family(index, name, smiles, category, n_atoms, note)


FAMILIES: dict[str, Family] = {
    f.index: f
    for f in [
        _f("CK1", "cyclopropane", "C1CC1", "cycloalkane", 9),
        _f("CK2", "cyclobutane", "C1CCC1", "cycloalkane", 12),
        _f("CK3", "cyclopentane", "C1CCCC1", "cycloalkane", 15),
        _f("CK4", "cyclohexane", "C1CCCCC1", "cycloalkane", 18),
        _f("CK5", "cycloheptane", "C1CCCCCC1", "cycloalkane", 21),
        _f("CK6", "cyclooctane", "C1CCCCCCC1", "cycloalkane", 24),
        _f("ETH", "ethylene oxide", "C1CO1", "ether", 7),
        _f("LAC1", "beta-propiolactone", "O=C1CCO1", "lactone", 9,
           "paper prints gamma-butyrolactone with 9 atoms; 9 atoms = beta-propiolactone"),
        _f("LAC2", "gamma-butyrolactone", "O=C1CCCO1", "lactone", 12),
        _f("LAC3", "1,4-dioxan-2-one", "O=C1COCCO1", "lactone", 13),
        _f("LAC4", "delta-valerolactone", "O=C1CCCCO1", "lactone", 15),
        _f("LAC5", "3-methyl-1,4-dioxan-2-one", "C[C@@H]1OCCOC1=O", "lactone", 16),
        _f("LAC6", "beta-methyl-delta-valerolactone", "C[C@@H]1CCOC(=O)C1", "lactone", 18),
        _f("LAC7", "delta-caprolactone", "C[C@@H]1CCCC(=O)O1", "lactone", 18,
           "6-methyl-oxan-2-one (delta-hexalactone)"),
        _f("LAC8", "delta-decalactone", "CCCCC[C@@H]1CCCC(=O)O1", "lactone", 30),
        _f("LAC9", "(-)-menthide", "CC(C)[C@@H]1CC[C@@H](C)CC(=O)O1", "lactone", 30,
           "(4R,7S)-7-isopropyl-4-methyl-oxepan-2-one: configuration of (-)-menthone (2S,5R) kept"),
        _f("OTH1", "alpha-methyl-delta-valerolactone", "C[C@@H]1CCCOC1=O", "other", 18,
           "paper: n-alkane substituted delta-valerolactone (18 atoms): methyl on C-alpha"),
        _f("OTH2", "alpha-methylene-gamma-butyrolactone", "C=C1CCOC1=O", "other", 13),
        _f("OTH3", "alpha-ethyl-delta-valerolactone", "CC[C@@H]1CCCOC1=O", "other", 21,
           "paper: n-alkane substituted delta-valerolactone (21 atoms): ethyl on C-alpha"),
        _f("OTH4", "alpha-propyl-delta-valerolactone", "CCC[C@@H]1CCCOC1=O", "other", 24,
           "paper: n-alkane substituted delta-valerolactone (24 atoms): n-propyl on C-alpha"),
        _f("OTH5", "alpha-n-butyl-delta-valerolactone", "CCCC[C@@H]1CCCOC1=O", "other", 27,
           "paper: n-butyl delta-valerolactone (27 atoms): n-butyl on C-alpha"),
        _f("OTH6", "alpha-pentyl-delta-valerolactone", "CCCCC[C@@H]1CCCOC1=O", "other", 30,
           "paper: n-alkane substituted delta-valerolactone (30 atoms): n-pentyl on C-alpha"),
        _f("OTH7", "alpha-hexyl-delta-valerolactone", "CCCCCC[C@@H]1CCCOC1=O", "other", 33,
           "paper: n-alkane substituted delta-valerolactone (33 atoms): n-hexyl on C-alpha"),
        _f("OTH8", "alpha-nonyl-delta-valerolactone", "CCCCCCCCC[C@@H]1CCCOC1=O", "other", 42,
           "paper: n-alkane substituted delta-valerolactone (42 atoms): n-nonyl on C-alpha"),
    ]
}

# The paper's 15-loop MD test systems and their atom counts (Section 5.1).
PAPER_15_LOOPS = {"CK6": 360, "OTH4": 360, "LAC2": 180, "LAC5": 240}


def get_family(key: str) -> Family:
    """Family by index (case-insensitive), e.g. ``get_family("lac2")``."""
    k = key.strip().upper()
    if k not in FAMILIES:
        raise KeyError(
            f"unknown family {key!r}; known families: {', '.join(FAMILIES)} "
            "(or your own monomer: `polyget data build SMILES`, "
            "`polyget data generate --monomer NAME=SMILES`)"
        )
    return FAMILIES[k]


def parse_families(spec: str | None) -> list[Family]:
    """'all', a category name, or a comma-separated list of indices -> families."""
    if spec is None or spec.strip().lower() == "all":
        return list(FAMILIES.values())
    out: list[Family] = []
    for tok in spec.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.lower() in CATEGORIES:
            out.extend(f for f in FAMILIES.values() if f.category == tok.lower())
        else:
            out.append(get_family(tok))
    seen: set[str] = set()
    return [f for f in out if not (f.index in seen or seen.add(f.index))]
