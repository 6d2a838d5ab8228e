"""Polymer reference data: families, builders, labels, sampling, splits, stats.

Submodules (import what you need; rdkit/tblite/pyscf are imported only where used):

- `families`: the paper's 24 Poly24 families (`FAMILIES`, `get_family`).
- `build`: monomer SMILES -> ring-opened repeat unit -> L-loop macrocycle -> 3D (ETKDG).
- `labels`: `make_calculator("gfn2" | "pbe" | "ase:module:Class")`, `label(atoms, calc)`.
- `sampling`: Langevin MD frames and rattled frames, resumable.
- `runner`: parallel, resumable dataset generation (`generate`, `label_file`), presets.
- `splits`, `stats`, `timing`, `io`, `cli` (`polyget data ...`).

The shipped dataset is `data/poly-mini-gfn2.extxyz.gz` in the repository (see docs/data.md).
"""
