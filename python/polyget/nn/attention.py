"""One update layer of the Equivariant Transformer (paper eq. 4).

Scalar features x [N, F] and vector features v [N, 3, F] are updated by multi-head attention
over the edges of the neighbour graph. Unlike TorchMD-Net's ET, the vector messages are also
multiplied by the cosine cutoff, so that the layer output is continuous (C1) in the positions
when a neighbour crosses the cutoff.

Speed (bench/README.md): the per-edge quantities that do not depend on node features (cutoff,
c * unit vector, the distance filters of every layer) are computed once per evaluation by
``PolyGET.edge_features`` and passed in; the cutoff is folded into the [E, F] factors before
they meet the [E, 3, F] vector messages; gathers use ``index_select`` (whose backward is
``index_add``, not the slower accumulating ``index_put``); and a layer whose input vectors are
known to be zero (the first one) skips the vector terms that vanish. The mathematics is that
of ``tests/frozen_et.py`` (equal to 1e-10 in float64, tests/test_speed.py).
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

    def filters(self, rbf: Tensor) -> Tensor:
        """The distance filters [E, 4F] = act([dk_proj(rbf), dv_proj(rbf)]) of this layer."""
        w = torch.cat([self.dk_proj.weight, self.dv_proj.weight], dim=0)
        b = torch.cat([self.dk_proj.bias, self.dv_proj.bias], dim=0)
        return self.act(torch.nn.functional.linear(rbf, w, b))

    def node_terms(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-atom projections (q, k, v) of the layer-normed scalar features."""
        x = self.layernorm(x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def messages(self, q: Tensor, k: Tensor, v: Tensor, vec: Tensor, edge_index: Tensor,
                 c: Tensor, cu: Tensor, filt: Tensor, vec_is_zero: bool = False
                 ) -> Tuple[Tensor, Tensor]:
        """Messages of the given edges summed at their centres: (x_agg [N, F], vec_agg [N, 3, F]).
        A sum over edges, so the edges may be taken in parts (compile.py, lean packages)."""
        n = q.shape[0]
        e = c.shape[0]
        h, d, f = self.num_heads, self.head_dim, self.hidden
        i = edge_index[0]
        j = edge_index[1]
        dk = filt[:, :f]
        dv = filt[:, f:]

        # attention weights: SiLU(q_i . (k_j * dk_ij)) per head, damped by the cutoff
        qk = (q.index_select(0, i) * k.index_select(0, j) * dk).view(e, h, d).sum(dim=-1)
        attn = self.attn_act(qk) * c.unsqueeze(1)
        # per head, v holds [x | v1 | v2] blocks of d channels
        vj = (v.index_select(0, j) * dv).view(e, h, 3, d)
        x_msg = (vj[:, :, 0] * attn.unsqueeze(2)).reshape(e, f)
        v2 = vj[:, :, 2].reshape(e, 1, f)
        # vector message c * (vec_j * v1 + v2 * unit): the cutoff meets the [E, F] factor v1
        # and the [E, 3] unit vector (cu), never an [E, 3, F] tensor
        vec_msg = v2 * cu.unsqueeze(2)
        if not vec_is_zero:
            v1 = (vj[:, :, 1].reshape(e, f) * c.unsqueeze(1)).unsqueeze(1)
            vec_msg = torch.addcmul(vec_msg, vec.index_select(0, j), v1)

        x_agg = torch.zeros(n, f, dtype=q.dtype, device=q.device).index_add_(0, i, x_msg)
        vec_agg = torch.zeros(n, 3, f, dtype=q.dtype, device=q.device).index_add_(0, i, vec_msg)
        return x_agg, vec_agg

    def update(self, vec: Tensor, x_agg: Tensor, vec_agg: Tensor, vec_is_zero: bool = False
               ) -> Tuple[Tensor, Tensor]:
        """(dx, dvec) of the layer from the input vectors and the summed messages."""
        f = self.hidden
        o1, o2, o3 = torch.split(self.o_proj(x_agg), f, dim=1)
        if vec_is_zero:
            # vec_proj(0) = 0: vec_dot = 0 and vec3 = 0
            return o3, vec_agg
        vec1, vec2, vec3 = torch.split(self.vec_proj(vec), f, dim=-1)
        vec_dot = (vec1 * vec2).sum(dim=1)
        dx = vec_dot * o2 + o3
        dvec = vec3 * o1.unsqueeze(1) + vec_agg
        return dx, dvec

    def forward(self, x: Tensor, vec: Tensor, edge_index: Tensor, c: Tensor, cu: Tensor,
                filt: Tensor, vec_is_zero: bool = False) -> Tuple[Tensor, Tensor]:
        """(dx [N, F], dvec [N, 3, F]) from x [N, F], vec [N, 3, F] and the edge quantities
        c = cutoff [E], cu = c * unit vector [E, 3], filt = self.filters(rbf) [E, 4F].

        vec_is_zero: the caller guarantees vec == 0 (the first layer of a whole-graph
        evaluation); the terms that vanish are skipped, the result is the same.
        """
        q, k, v = self.node_terms(x)
        x_agg, vec_agg = self.messages(q, k, v, vec, edge_index, c, cu, filt, vec_is_zero)
        return self.update(vec, x_agg, vec_agg, vec_is_zero)
