"""Neighbour lists and edge vectors (periodic or not), and energy/force/stress evaluation.

Neighbour lists come from vesin. Edge convention (docs/interfaces.md): edge_index[0] = i
(centre), edge_index[1] = j (neighbour), edge_vec = r_j - r_i + S @ cell, full list.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

MIN_DISTANCE = 0.4  # Angstrom; closer pairs mean overlapping atoms (or wrong units)


class StructureError(ValueError):
    """The input structure cannot be evaluated (unknown element, NaN, overlapping atoms...)."""


def species_indices(symbols: Sequence[str], elements: Sequence[str]) -> np.ndarray:
    """Map chemical symbols to indices in the model's element list, with a clear error."""
    index = {s: k for k, s in enumerate(elements)}
    unknown = sorted({s for s in symbols if s not in index})
    if unknown:
        raise StructureError(
            f"element(s) {unknown} not in this model; the model knows {list(elements)}. "
            "Use a model trained on these elements, or remove those atoms.")
    return np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], cutoff: float
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Full neighbour list: edge_index [2, E] (int64) and integer cell shifts S [E, 3]."""
    from vesin import NeighborList

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise StructureError("positions contain NaN or inf; check the structure (or the MD run that made it)")
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if pbc.any():
        vol = abs(np.linalg.det(cell))
        if not np.isfinite(vol) or vol < 1e-6:
            raise StructureError("periodic structure with a zero-volume cell; set a cell or pbc=False")
    else:
        cell = np.zeros((3, 3))
    if len(positions) == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, d = nl.compute(points=positions, box=cell, periodic=pbc.tolist() if pbc.any() else False,
                                 quantities="ijSd")
    if len(d) and d.min() < MIN_DISTANCE:
        k = int(np.argmin(d))
        raise StructureError(
            f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.3f} A apart (< {MIN_DISTANCE} A): overlapping "
            "atoms. Check the structure and its length units (polyget uses Angstrom).")
    edge_index = np.stack([i, j]).astype(np.int64)
    return edge_index, shifts.astype(np.int64)


def edge_vectors(positions: Tensor, edge_index: Tensor, shifts: Tensor, cell: Tensor) -> Tensor:
    """r_j - r_i + S @ cell for every edge."""
    vec = positions[edge_index[1]] - positions[edge_index[0]]
    if shifts.numel():
        vec = vec + shifts.to(cell.dtype) @ cell
    return vec


@dataclass
class Graph:
    """A (batched) graph ready for the model. ``batch`` maps atoms to structures."""

    species: Tensor
    edge_index: Tensor
    edge_vec: Tensor
    batch: Tensor
    num_graphs: int

    def to(self, device, dtype) -> "Graph":
        return Graph(self.species.to(device), self.edge_index.to(device),
                     self.edge_vec.to(device=device, dtype=dtype), self.batch.to(device), self.num_graphs)


def atoms_to_graph(atoms, elements: Sequence[str], cutoff: float) -> Graph:
    """One ase.Atoms -> Graph (float64 edge vectors; cast with Graph.to)."""
    species = species_indices(atoms.get_chemical_symbols(), elements)
    pos = atoms.get_positions()
    edge_index, shifts = neighbour_list(pos, atoms.get_cell().array, atoms.get_pbc(), cutoff)
    vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts @ atoms.get_cell().array
    n = len(atoms)
    return Graph(torch.from_numpy(species), torch.from_numpy(edge_index), torch.from_numpy(vec),
                 torch.zeros(n, dtype=torch.long), 1)


def evaluate(model, graph: Graph, forces: bool = True, stress: bool = False,
             create_graph: bool = False) -> Dict[str, Tensor]:
    """Energies (per atom, per structure), forces and the virial sum_e r_e (x) dE/dr_e.

    Forces come from one backward pass w.r.t. the edge vectors: F_i += fij, F_j -= fij with
    fij = dE/d(r_j - r_i). The same formula serves ASE, training and (in C++) LAMMPS.
    """
    edge_vec = graph.edge_vec
    if (forces or stress) and not edge_vec.requires_grad:
        edge_vec = edge_vec.detach().requires_grad_(True)
    atom_e = model(graph.species, graph.edge_index, edge_vec)
    n = atom_e.shape[0]
    energy = torch.zeros(graph.num_graphs, dtype=atom_e.dtype, device=atom_e.device).index_add_(0, graph.batch, atom_e)
    out = {"atom_energies": atom_e, "energy": energy}
    if forces or stress:
        (fij,) = torch.autograd.grad(energy.sum(), edge_vec, create_graph=create_graph)
        if forces:
            f = torch.zeros(n, 3, dtype=fij.dtype, device=fij.device)
            f = f.index_add(0, graph.edge_index[0], fij).index_add(0, graph.edge_index[1], -fij)
            out["forces"] = f
        if stress:
            # virial W_ab = sum_e r_a dE/dr_b (per structure); stress = W / V
            w = edge_vec.detach().unsqueeze(2) * fij.unsqueeze(1)
            eb = graph.batch[graph.edge_index[0]]
            out["virial"] = torch.zeros(graph.num_graphs, 3, 3, dtype=w.dtype, device=w.device).index_add_(0, eb, w)
        out["fij"] = fij
    return out
