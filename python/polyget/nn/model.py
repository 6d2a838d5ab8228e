"""The PolyGET network: an Equivariant Transformer predicting one invariant scalar per atom.

Input is a graph (species, edge_index, edge_vec), see docs/interfaces.md; the energy of a
structure is the sum of the per-atom outputs and forces are its negative gradient.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from .attention import EquivariantAttention
from .embedding import NeighborEmbedding
from .heads import EquivariantScalar
from .radial import RADIAL_BASES, lookup


@dataclass
class ModelConfig:
    """Hyperparameters of the network; stored in every checkpoint. Defaults follow the paper.

    ``architecture`` picks the backbone (polyget.nn.ARCHITECTURES): "et" (this module, the
    default; checkpoints without the key are ET) or "so3krates" (nn/so3krates.py, which also reads
    ``max_degree``, the highest spherical-harmonic degree of its Euclidean variables).
    """

    architecture: str = "et"
    elements: List[str] = field(default_factory=lambda: ["H", "C", "O"])
    hidden_channels: int = 128
    num_layers: int = 6
    num_heads: int = 8
    num_rbf: int = 32
    cutoff: float = 5.0
    rbf_type: str = "expnorm"
    trainable_rbf: bool = False
    activation: str = "silu"
    attn_activation: str = "silu"
    max_degree: int = 3  # so3krates only

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model hyperparameters {unknown}; known: {sorted(known)}")
        return cls(**d)


class PolyGET(nn.Module):
    """Equivariant Transformer (TorchMD-Net ET style) with smooth cutoff on all messages."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if len(set(config.elements)) != len(config.elements) or not config.elements:
            raise ValueError(f"elements must be a non-empty list without repeats, got {config.elements}")
        self.config = config
        self.elements: List[str] = list(config.elements)
        self.cutoff: float = float(config.cutoff)
        self.num_layers: int = int(config.num_layers)
        # the neighbour embedding is one message-passing hop, then one per attention layer:
        # an atom's energy depends on atoms up to receptive_hops * cutoff away
        self.receptive_hops: int = int(config.num_layers) + 1
        hidden = config.hidden_channels
        nelem = len(config.elements)

        self.embedding = nn.Embedding(nelem, hidden)
        self.distance_expansion = lookup(RADIAL_BASES, config.rbf_type, "radial basis")(
            config.cutoff, config.num_rbf, config.trainable_rbf)
        self.neighbor_embedding = NeighborEmbedding(hidden, config.num_rbf, config.cutoff, nelem)
        self.layers = nn.ModuleList([
            EquivariantAttention(hidden, config.num_rbf, config.num_heads, config.cutoff,
                                 config.activation, config.attn_activation)
            for _ in range(config.num_layers)
        ])
        self.out_norm = nn.LayerNorm(hidden)
        self.head = EquivariantScalar(hidden, config.activation)
        # normalisation: per-atom output = energy_scale * network + atom_offsets[species]
        self.register_buffer("energy_scale", torch.tensor(1.0))
        self.register_buffer("atom_offsets", torch.zeros(nelem))

    def forward(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        r = torch.linalg.vector_norm(edge_vec, dim=-1)
        rbf = self.distance_expansion(r)
        unit = edge_vec / r.unsqueeze(-1)

        x = self.embedding(species)
        x = self.neighbor_embedding(species, x, edge_index, r, rbf)
        vec = torch.zeros(x.shape[0], 3, x.shape[1], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            dx, dvec = layer(x, vec, edge_index, r, rbf, unit)
            x = x + dx
            vec = vec + dvec
        x = self.out_norm(x)
        out = self.head(x, vec)
        return out * self.energy_scale + self.atom_offsets[species]

    def raw_atom_energies(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom energies without the per-element calibration offsets (Phi of the paper)."""
        return self.forward(species, edge_index, edge_vec) - self.atom_offsets[species]
