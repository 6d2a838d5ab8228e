"""Per-layer halo exchange in Python: the reference for what the engines do.

An engine that splits a structure (MPI subdomains, or one periodic cell whose images are
ghosts) runs the model in pieces (``PolyGET.embed``, ``interact``, ``readout``, see
nn/model.py) on its owned atoms plus a halo of ghost atoms one cutoff wide, and between pieces
fills every ghost row of the node features from the row of the atom it is a copy of.
In the backward pass the gradient that reached a ghost row is added to its owner's row and the
ghost row is zeroed: the exact adjoint of the copy, so one ``backward()`` through the whole
sequence gives the forces of the unsplit model.

``pair_style polyget`` does this in C++ with LAMMPS ``forward_comm``/``reverse_comm``;
ML-IAP Kokkos with ``data.forward_exchange``/``reverse_exchange``. Here the copy is an index
map (``owner[g]`` = row that ghost ``n_local + g`` copies), used by the tests and by
``periodic_halo_graph``.
"""

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

Exchange = Callable[[Tensor], Tensor]


class IndexExchange(torch.autograd.Function):
    """Fill ghost rows from owner rows; backward adds ghost-row gradients to the owners."""

    @staticmethod
    def forward(ctx, t: Tensor, owner: Tensor, n_local: int) -> Tensor:
        ctx.save_for_backward(owner)
        ctx.n_local = n_local
        out = t.clone()
        if owner.numel():
            out[n_local:] = t[owner]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (owner,) = ctx.saved_tensors
        n_local = ctx.n_local
        g = grad.clone()
        if owner.numel():
            g.index_add_(0, owner, grad[n_local:])
            g[n_local:] = 0
        return g, None, None


def index_exchange(owner: Tensor, n_local: int) -> Exchange:
    """An exchange for ``run_pieces``: ghost row n_local + g copies owned row owner[g]."""
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= n_local):
        raise ValueError("index_exchange: every owner must be an owned row 0..n_local-1")
    return lambda t: IndexExchange.apply(t, owner, n_local)


def run_pieces(model, species: Tensor, edge_index: Tensor, edge_vec: Tensor, n_local: int,
               exchange: Optional[Exchange]) -> Tensor:
    """Per-atom energies [n_local] through embed -> (exchange -> interact) x L -> readout.

    ``exchange(t)`` returns t with its ghost rows filled (any leading row dimension: x [N, F]
    and vec [N, 3, F] both pass through it); None means no ghosts (n_local == N).
    """
    feats = model.edge_features(edge_vec)
    x, vec = model.embed(species, edge_index, feats, n_local)
    n_ex = int(model.num_exchanges)
    for layer in range(int(model.num_layers)):
        if exchange is not None:
            x, vec = exchange(x), exchange(vec)
        x, vec = model.interact(layer, x, vec, edge_index, feats, n_local)
    if exchange is not None and n_ex > int(model.num_layers):
        x, vec = exchange(x), exchange(vec)
    return model.readout(species, x, vec, n_local)


def periodic_halo_graph(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One periodic cell as owned atoms plus periodic-image ghosts within one cutoff.

    Returns (owner [G], shifts [G, 3], edge_index [2, E]): node N + g is the image of owned
    atom owner[g] at positions[owner[g]] + shifts[g] @ cell; edges i -> j within the cutoff
    have centres i < N and j any node. Only images that neighbour an owned atom are ghosts
    (the halo of one cutoff).
    """
    from .graph import neighbour_list

    n = len(positions)
    ei, s = neighbour_list(positions, cell, pbc, cutoff)
    ghost_of = {}
    owner, shifts = [], []
    jnode = np.empty(ei.shape[1], dtype=np.int64)
    for k in range(ei.shape[1]):
        j = int(ei[1, k])
        key = (j, int(s[k, 0]), int(s[k, 1]), int(s[k, 2]))
        if key[1:] == (0, 0, 0):
            jnode[k] = j
            continue
        g = ghost_of.get(key)
        if g is None:
            g = ghost_of[key] = n + len(owner)
            owner.append(j)
            shifts.append(key[1:])
        jnode[k] = g
    edge_index = np.stack([ei[0], jnode]).astype(np.int64)
    return (np.asarray(owner, dtype=np.int64), np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
            edge_index)
