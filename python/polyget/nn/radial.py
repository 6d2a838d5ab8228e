"""Radial pieces: the smooth cosine cutoff and the radial basis functions.

Every function here goes to zero, with zero slope, at the cutoff, so that energies and forces
are continuous when a neighbour enters or leaves the cutoff sphere.
"""

import math
from typing import Dict, Type

import torch
from torch import Tensor, nn


class CosineCutoff(nn.Module):
    """C(r) = (cos(pi r / rc) + 1) / 2 for r < rc, else 0. C and dC/dr vanish at rc."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        inside = (r < self.cutoff).to(r.dtype)
        return 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0) * inside


class ExpNormalSmearing(nn.Module):
    """ExpNormal basis (PhysNet / TorchMD-Net style), multiplied by the cosine cutoff.

    phi_k(r) = C(r) * exp(-beta_k (exp(-alpha r) - mu_k)^2), alpha = 5 / rc.
    Means and widths are trainable when ``trainable`` is true.
    """

    def __init__(self, cutoff: float, num_rbf: int, trainable: bool = False):
        super().__init__()
        self.cutoff_fn = CosineCutoff(cutoff)
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff)
        means = torch.linspace(start, 1.0, num_rbf)
        betas = torch.full((num_rbf,), (2.0 / num_rbf * (1.0 - start)) ** -2)
        if trainable:
            self.means = nn.Parameter(means)
            self.betas = nn.Parameter(betas)
        else:
            self.register_buffer("means", means)
            self.register_buffer("betas", betas)

    def forward(self, r: Tensor) -> Tensor:
        return self.expand(r, self.cutoff_fn(r))

    def expand(self, r: Tensor, c: Tensor) -> Tensor:
        """The basis [E, num_rbf] given the cutoff c = C(r) [E] (computed once by the model)."""
        r = r.unsqueeze(-1)
        return c.unsqueeze(-1) * torch.exp(-self.betas * (torch.exp(-self.alpha * r) - self.means) ** 2)


class GaussianSmearing(nn.Module):
    """Gaussians on a uniform grid in r, multiplied by the cosine cutoff."""

    def __init__(self, cutoff: float, num_rbf: int, trainable: bool = False):
        super().__init__()
        self.cutoff_fn = CosineCutoff(cutoff)
        offsets = torch.linspace(0.0, cutoff, num_rbf)
        widths = torch.full((num_rbf,), -0.5 / float(offsets[1] - offsets[0]) ** 2)
        if trainable:
            self.offsets = nn.Parameter(offsets)
            self.widths = nn.Parameter(widths)
        else:
            self.register_buffer("offsets", offsets)
            self.register_buffer("widths", widths)

    def forward(self, r: Tensor) -> Tensor:
        return self.expand(r, self.cutoff_fn(r))

    def expand(self, r: Tensor, c: Tensor) -> Tensor:
        """The basis [E, num_rbf] given the cutoff c = C(r) [E] (computed once by the model)."""
        r = r.unsqueeze(-1)
        return c.unsqueeze(-1) * torch.exp(self.widths * (r - self.offsets) ** 2)


RADIAL_BASES: Dict[str, Type[nn.Module]] = {
    "expnorm": ExpNormalSmearing,
    "gauss": GaussianSmearing,
}

ACTIVATIONS: Dict[str, Type[nn.Module]] = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def lookup(table: Dict[str, Type[nn.Module]], name: str, what: str) -> Type[nn.Module]:
    """Return ``table[name]`` or raise an error listing the valid names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]
