"""Gated equivariant output blocks (PaiNN / TorchMD-Net style) giving one scalar per atom."""

from typing import Tuple

import torch
from torch import Tensor, nn

from .radial import ACTIVATIONS, lookup


def safe_norm(v: Tensor, dim: int) -> Tensor:
    # sqrt(|v|^2 + eps): finite first and second derivatives at v = 0 (isolated atoms have v = 0)
    return torch.sqrt((v * v).sum(dim=dim) + 1e-12)


class GatedEquivariantBlock(nn.Module):
    def __init__(self, hidden: int, out: int, activation: str = "silu", scalar_activation: bool = False):
        super().__init__()
        self.out = out
        self.vec1_proj = nn.Linear(hidden, hidden, bias=False)
        self.vec2_proj = nn.Linear(hidden, out, bias=False)
        act = lookup(ACTIVATIONS, activation, "activation")
        self.update_net = nn.Sequential(nn.Linear(2 * hidden, hidden), act(), nn.Linear(hidden, 2 * out))
        self.use_act = scalar_activation
        self.act = act()
        nn.init.xavier_uniform_(self.vec1_proj.weight)
        nn.init.xavier_uniform_(self.vec2_proj.weight)
        for m in self.update_net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        vec1 = safe_norm(self.vec1_proj(v), dim=-2)
        vec2 = self.vec2_proj(v)
        x, gate = torch.split(self.update_net(torch.cat([x, vec1], dim=-1)), self.out, dim=-1)
        v = gate.unsqueeze(1) * vec2
        if self.use_act:
            x = self.act(x)
        return x, v


class EquivariantScalar(nn.Module):
    """Two gated equivariant blocks: F -> F/2 -> 1 scalar per atom."""

    def __init__(self, hidden: int, activation: str = "silu"):
        super().__init__()
        self.block1 = GatedEquivariantBlock(hidden, hidden // 2, activation, scalar_activation=True)
        self.block2 = GatedEquivariantBlock(hidden // 2, 1, activation)

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        x, v = self.block1(x, v)
        x, v = self.block2(x, v)
        # v is unused after the last block; the 0 * v term keeps it in the autograd graph
        return x.squeeze(-1) + 0.0 * v.sum(dim=(1, 2))
