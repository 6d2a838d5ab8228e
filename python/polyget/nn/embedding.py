"""Atom-type embedding plus the neighbour embedding (a cutoff-weighted continuous filter)."""

import torch
from torch import Tensor, nn

from .radial import CosineCutoff


class NeighborEmbedding(nn.Module):
    """x_i <- W [x_i, sum_j emb(z_j) * (W_d rbf(r_ij)) C(r_ij)]."""

    def __init__(self, hidden: int, num_rbf: int, cutoff: float, num_elements: int):
        super().__init__()
        self.embedding = nn.Embedding(num_elements, hidden)
        self.distance_proj = nn.Linear(num_rbf, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.cutoff = CosineCutoff(cutoff)
        nn.init.xavier_uniform_(self.distance_proj.weight)
        nn.init.zeros_(self.distance_proj.bias)
        nn.init.xavier_uniform_(self.combine.weight)
        nn.init.zeros_(self.combine.bias)

    def forward(self, species: Tensor, x: Tensor, edge_index: Tensor, c: Tensor, rbf: Tensor) -> Tensor:
        """c: the cosine cutoff of every edge [E] (computed once per evaluation by the model)."""
        w = self.distance_proj(rbf) * c.unsqueeze(-1)
        msg = self.embedding(species).index_select(0, edge_index[1]) * w
        agg = torch.zeros_like(x).index_add_(0, edge_index[0], msg)
        return self.combine(torch.cat([x, agg], dim=-1))
