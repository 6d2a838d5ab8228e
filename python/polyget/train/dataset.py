"""Reading labelled structures (any format ase.io reads) into graphs, batching, splitting."""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase.data import atomic_numbers

from ..nn.graph import Graph, neighbour_list, species_indices

# Conversion factors to polyget's internal units (eV, Angstrom).
ENERGY_UNITS = {"eV": 1.0, "Hartree": 27.211386245988, "Ha": 27.211386245988,
                "kcal/mol": 0.0433641043, "kJ/mol": 0.0103642688, "Ry": 13.605693122994}
LENGTH_UNITS = {"Angstrom": 1.0, "A": 1.0, "Bohr": 0.529177210903, "nm": 10.0}


class DataError(ValueError):
    """The dataset cannot be used as given."""


@dataclass
class Sample:
    species: np.ndarray        # [N] model element indices
    positions: np.ndarray      # [N, 3] Angstrom
    cell: np.ndarray           # [3, 3]
    edge_index: np.ndarray     # [2, E]
    shifts: np.ndarray         # [E, 3]
    forces: Optional[np.ndarray]  # [N, 3] eV/A
    energy: float              # eV, nan if absent
    family: str
    loop: int
    index: int                 # position in the source file(s)

    @property
    def natoms(self) -> int:
        return len(self.species)


def read_frames(paths: Union[str, Sequence[str]], index: str = ":") -> list:
    """All frames of one or more files (extxyz, VASP OUTCAR/vasprun, CP2K, ASE db...)."""
    import ase.io

    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"dataset file {p} does not exist")
        if index == ":":  # compressed extxyz: decompressed in memory first (10-25x faster)
            from ..data.io import read_frames as _read_all
            got = _read_all(p)
        else:
            got = ase.io.read(str(p), index=index)
        frames.extend(got if isinstance(got, list) else [got])
    if not frames:
        raise DataError(f"no structures found in {list(paths)}")
    return frames


def _labels(atoms) -> Tuple[Optional[np.ndarray], float]:
    forces = energy = None
    calc = atoms.calc
    if calc is not None and hasattr(calc, "results"):
        forces = calc.results.get("forces")
        energy = calc.results.get("energy", calc.results.get("free_energy"))
    if forces is None:
        for key in ("forces", "force", "REF_forces", "DFT_forces"):
            if key in atoms.arrays:
                forces = atoms.arrays[key]
                break
    if energy is None:
        for key in ("energy", "REF_energy", "DFT_energy", "free_energy"):
            if key in atoms.info:
                energy = atoms.info[key]
                break
    return (None if forces is None else np.asarray(forces, dtype=np.float64),
            math.nan if energy is None else float(energy))


def infer_elements(frames) -> List[str]:
    syms = {s for a in frames for s in a.get_chemical_symbols()}
    return sorted(syms, key=lambda s: atomic_numbers[s])


def frames_to_samples(frames, elements: Sequence[str], cutoff: float, energy_unit: str = "eV",
                      length_unit: str = "Angstrom", require_forces: bool = True) -> List[Sample]:
    if energy_unit not in ENERGY_UNITS:
        raise DataError(f"unknown energy unit {energy_unit!r}; choose one of {sorted(ENERGY_UNITS)}")
    if length_unit not in LENGTH_UNITS:
        raise DataError(f"unknown length unit {length_unit!r}; choose one of {sorted(LENGTH_UNITS)}")
    ef, lf = ENERGY_UNITS[energy_unit], LENGTH_UNITS[length_unit]
    samples = []
    for k, atoms in enumerate(frames):
        forces, energy = _labels(atoms)
        if forces is None and require_forces:
            raise DataError(f"frame {k} has no forces; polyget trains on forces (extxyz 'forces' column, "
                            "or any ase.io format that stores forces)")
        pos = atoms.get_positions() * lf
        cell = atoms.get_cell().array * lf
        if forces is not None:
            forces = forces * (ef / lf)
            if not np.all(np.isfinite(forces)):
                raise DataError(f"frame {k} has NaN/inf forces; remove it from the dataset")
        energy = energy * ef
        try:
            species = species_indices(atoms.get_chemical_symbols(), elements)
            edge_index, shifts = neighbour_list(pos, cell, atoms.get_pbc(), cutoff)
        except ValueError as exc:
            raise DataError(f"frame {k}: {exc}") from None
        samples.append(Sample(species, pos, cell, edge_index, shifts, forces, energy,
                              str(atoms.info.get("family", "unknown")), int(atoms.info.get("loop", 0)), k))
    check_units(samples)
    return samples


def check_units(samples: Sequence[Sample]) -> None:
    f = np.concatenate([s.forces.ravel() for s in samples if s.forces is not None] or [np.zeros(1)])
    med = float(np.median(np.abs(f)))
    if med > 50.0:
        raise DataError(f"median |force component| is {med:.1f}: that is not eV/Angstrom for a molecule near "
                        "equilibrium. Set data.energy_unit / data.length_unit in the config (e.g. Hartree, Bohr).")
    if 0 < med < 1e-3:
        warnings.warn(f"median |force component| is {med:.2e} eV/A: very small; check the units of the data")


@dataclass
class Batch:
    graph: Graph
    forces: Optional[torch.Tensor]
    energy: torch.Tensor        # [B] (nan where absent)
    natoms: torch.Tensor        # [B]
    families: List[str]
    loops: List[int]


def collate(samples: Sequence[Sample], dtype=torch.float32, device="cpu") -> Batch:
    offsets = np.cumsum([0] + [s.natoms for s in samples[:-1]])
    species = np.concatenate([s.species for s in samples])
    edge_index = np.concatenate([s.edge_index + o for s, o in zip(samples, offsets)], axis=1)
    vecs = [s.positions[s.edge_index[1]] - s.positions[s.edge_index[0]] + s.shifts @ s.cell for s in samples]
    batch = np.concatenate([np.full(s.natoms, k) for k, s in enumerate(samples)])
    has_f = all(s.forces is not None for s in samples)
    graph = Graph(torch.from_numpy(species), torch.from_numpy(edge_index),
                  torch.from_numpy(np.concatenate(vecs)), torch.from_numpy(batch), len(samples)).to(device, dtype)
    forces = torch.from_numpy(np.concatenate([s.forces for s in samples])).to(device, dtype) if has_f else None
    energy = torch.tensor([s.energy for s in samples], dtype=dtype, device=device)
    natoms = torch.tensor([s.natoms for s in samples], dtype=dtype, device=device)
    return Batch(graph, forces, energy, natoms, [s.family for s in samples], [s.loop for s in samples])


def split(samples: Sequence[Sample], val_fraction: float = 0.05, by: Optional[str] = None,
          val_values: Sequence = (), seed: int = 0) -> Tuple[List[Sample], List[Sample]]:
    """Random split (val_fraction) or by 'family' / 'loop' (val_values go to validation)."""
    if by is None:
        n = len(samples)
        n_val = max(1, int(round(val_fraction * n))) if n > 1 else 0
        perm = np.random.default_rng(seed).permutation(n)
        val_idx = set(perm[:n_val].tolist())
        train = [s for k, s in enumerate(samples) if k not in val_idx]
        val = [s for k, s in enumerate(samples) if k in val_idx]
    elif by in ("family", "loop"):
        values = {str(v) for v in val_values}
        if not values:
            raise DataError(f"split by {by} needs data.val_values (the {by} values to hold out)")
        val = [s for s in samples if str(getattr(s, by)) in values]
        train = [s for s in samples if str(getattr(s, by)) not in values]
    else:
        raise DataError(f"data.split_by must be null, 'family' or 'loop', got {by!r}")
    if not train:
        raise DataError("the training split is empty; check data.val_fraction / data.val_values")
    return train, val
