"""One update layer of the Equivariant Transformer (paper eq. 4).

Scalar features x [N, F] and vector features v [N, 3, F] are updated by multi-head attention
over the edges of the neighbour graph. Unlike TorchMD-Net's ET, the vector messages are also
multiplied by the cosine cutoff, so that the layer output is continuous (C1) in the positions
when a neighbour crosses the cutoff.
"""

from typing import Tuple

import torch
from torch import Tensor, nn

from .radial import ACTIVATIONS, CosineCutoff, lookup


class EquivariantAttention(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, num_heads: int, cutoff: float,
                 activation: str = "silu", attn_activation: str = "silu"):
        super().__init__()
        if hidden % num_heads != 0:
            raise ValueError(f"hidden_channels ({hidden}) must be divisible by num_heads ({num_heads})")
        self.hidden = hidden
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.layernorm = nn.LayerNorm(hidden)
        self.act = lookup(ACTIVATIONS, activation, "activation")()
        self.attn_act = lookup(ACTIVATIONS, attn_activation, "attention activation")()
        self.cutoff = CosineCutoff(cutoff)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, 3 * hidden)
        self.o_proj = nn.Linear(hidden, 3 * hidden)
        self.vec_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        self.dk_proj = nn.Linear(num_rbf, hidden)
        self.dv_proj = nn.Linear(num_rbf, 3 * hidden)
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.dk_proj, self.dv_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.vec_proj.weight)

    def forward(self, x: Tensor, vec: Tensor, edge_index: Tensor, r: Tensor, rbf: Tensor,
                unit: Tensor) -> Tuple[Tensor, Tensor]:
        n = x.shape[0]
        e = r.shape[0]
        h, d, f = self.num_heads, self.head_dim, self.hidden
        i = edge_index[0]
        j = edge_index[1]

        x = self.layernorm(x)
        q = self.q_proj(x).view(n, h, d)
        k = self.k_proj(x).view(n, h, d)
        v = self.v_proj(x).view(n, h, 3 * d)
        vec1, vec2, vec3 = torch.split(self.vec_proj(vec), f, dim=-1)
        vec_dot = (vec1 * vec2).sum(dim=1)

        dk = self.act(self.dk_proj(rbf)).view(e, h, d)
        dv = self.act(self.dv_proj(rbf)).view(e, h, 3 * d)
        c = self.cutoff(r)

        # attention weights: SiLU(q_i . (k_j * dk_ij)) per head, damped by the cutoff
        attn = self.attn_act((q[i] * k[j] * dk).sum(dim=-1)) * c.unsqueeze(1)
        vj = v[j] * dv
        x_msg, v1, v2 = torch.split(vj, d, dim=2)
        x_msg = (x_msg * attn.unsqueeze(2)).reshape(e, f)
        vec_msg = vec[j] * v1.reshape(e, 1, f) + v2.reshape(e, 1, f) * unit.unsqueeze(2)
        vec_msg = vec_msg * c.view(e, 1, 1)  # the cutoff on vector messages: smooth at rc

        x_agg = torch.zeros(n, f, dtype=x.dtype, device=x.device).index_add_(0, i, x_msg)
        vec_agg = torch.zeros(n, 3, f, dtype=x.dtype, device=x.device).index_add_(0, i, vec_msg)

        o1, o2, o3 = torch.split(self.o_proj(x_agg), f, dim=1)
        dx = vec_dot * o2 + o3
        dvec = vec3 * o1.unsqueeze(1) + vec_agg
        return dx, dvec
