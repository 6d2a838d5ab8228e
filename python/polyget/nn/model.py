"""The PolyGET network: an Equivariant Transformer predicting one invariant scalar per atom.

Input is a graph (species, edge_index, edge_vec), see docs/interfaces.md; the energy of a
structure is the sum of the per-atom outputs and forces are its negative gradient.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from .attention import EquivariantAttention
from .embedding import NeighborEmbedding
from .heads import EquivariantScalar
from .radial import RADIAL_BASES, CosineCutoff, lookup


def owned_rows(t: Tensor, n_local: int) -> Tensor:
    """Rows 0..n_local-1 of t, ghost rows zero (no-op when there are no ghosts): what every
    piece of a backbone returns for per-layer exchange (ET here, SO3krates in so3krates.py)."""
    n = t.shape[0]
    if n_local >= n:
        return t
    shape = [n - n_local] + list(t.shape[1:])
    return torch.cat([t[:n_local], torch.zeros(shape, dtype=t.dtype, device=t.device)], dim=0)


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
        # per-layer halo exchange (see embed/interact/readout): node features are exchanged
        # before every interaction layer; readout needs owned rows only
        self.num_exchanges: int = int(config.num_layers)
        hidden = config.hidden_channels
        nelem = len(config.elements)
        self.hidden: int = int(hidden)
        self.num_rbf: int = int(config.num_rbf)

        self.embedding = nn.Embedding(nelem, hidden)
        self.distance_expansion = lookup(RADIAL_BASES, config.rbf_type, "radial basis")(
            config.cutoff, config.num_rbf, config.trainable_rbf)
        # the cosine cutoff, computed once per evaluation (edge_features)
        self.cutoff_fn = CosineCutoff(config.cutoff)
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

    # ------------------------------------------------------------------------------------
    # The model in pieces, for engines that exchange node features between message-passing
    # hops (per-layer halo exchange: pair_style polyget, ML-IAP Kokkos). Row convention:
    # nodes are in engine order, owned atoms 0..n_local-1 first, then ghosts; every edge has
    # its centre i < n_local. Each piece computes the rows of owned atoms and returns ghost
    # rows as zeros; the engine fills them from the ghosts' owners ("exchange") before the
    # next piece reads them, and in the backward pass adds ghost-row gradients to the owners.
    # The sequence is
    #     feats = edge_features(edge_vec)
    #     x, vec = embed(species, edge_index, feats, n_local)
    #     for layer in range(num_layers): exchange(x, vec); x, vec = interact(layer, ...)
    #     [exchange(x, vec) if num_exchanges == num_layers + 1]
    #     atom_energy = readout(species, x, vec, n_local)            # [n_local]
    # so num_exchanges (read it, do not recompute it) exchanges happen per evaluation.
    # forward() is this sequence with n_local = N and no exchange.
    # ------------------------------------------------------------------------------------

    @torch.jit.export
    def edge_features(self, edge_vec: Tensor) -> Tensor:
        """Per-edge quantities every piece reads, computed once per evaluation and packed
        [E, 4 + num_rbf]: the cosine cutoff c, c * unit vector (3), the radial basis (cutoff
        included). The distance filters are computed per layer (one matrix product for dk and
        dv): packing them here too makes every slice's backward allocate the whole block."""
        r = torch.linalg.vector_norm(edge_vec, dim=-1)
        c = self.cutoff_fn(r)
        rbf = self.distance_expansion.expand(r, c)
        cu = edge_vec * (c / r).unsqueeze(-1)
        return torch.cat([c.unsqueeze(-1), cu, rbf], dim=-1)

    def _unpack(self, feats: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(c [E], cu [E, 3], rbf [E, R]) of packed edge features."""
        return feats[:, 0], feats[:, 1:4], feats[:, 4:]

    @torch.jit.export
    def embed(self, species: Tensor, edge_index: Tensor, feats: Tensor, n_local: int
              ) -> Tuple[Tensor, Tensor]:
        """Node features after the neighbour embedding: x [N, F], vec [N, 3, F]."""
        c, cu, rbf = self._unpack(feats)
        x = self.embedding(species)
        x = self.neighbor_embedding(species, x, edge_index, c, rbf)
        vec = torch.zeros(x.shape[0], 3, x.shape[1], dtype=x.dtype, device=x.device)
        return owned_rows(x, n_local), vec

    @torch.jit.export
    def interact(self, layer: int, x: Tensor, vec: Tensor, edge_index: Tensor, feats: Tensor,
                 n_local: int) -> Tuple[Tensor, Tensor]:
        """Attention layer `layer` (0..num_layers-1); reads ghost rows, writes owned rows."""
        if layer < 0 or layer >= self.num_layers:
            raise ValueError("interact: layer index out of range 0..num_layers-1")
        c, cu, rbf = self._unpack(feats)
        for k, mod in enumerate(self.layers):
            if k == layer:
                dx, dvec = mod(x, vec, edge_index, c, cu, mod.filters(rbf), False)
                x = x + dx
                vec = vec + dvec
        return owned_rows(x, n_local), owned_rows(vec, n_local)

    @torch.jit.export
    def readout(self, species: Tensor, x: Tensor, vec: Tensor, n_local: int) -> Tensor:
        """Per-atom energies (eV) of the owned atoms [n_local]."""
        x = self.out_norm(x[:n_local])
        out = self.head(x, vec[:n_local])
        return out * self.energy_scale + self.atom_offsets[species[:n_local]]

    def forward(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom energies [N] of a whole graph (every atom owned)."""
        n = species.shape[0]
        feats = self.edge_features(edge_vec)
        x, vec = self.embed(species, edge_index, feats, n)
        c, cu, rbf = self._unpack(feats)
        # interact() for every layer, with vec known to be zero before the first one
        for k, mod in enumerate(self.layers):
            dx, dvec = mod(x, vec, edge_index, c, cu, mod.filters(rbf), k == 0)
            x = x + dx
            vec = dvec if k == 0 else vec + dvec
        return self.readout(species, x, vec, n)

    def raw_atom_energies(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom energies without the per-element calibration offsets (Phi of the paper)."""
        return self.forward(species, edge_index, edge_vec) - self.atom_offsets[species]
