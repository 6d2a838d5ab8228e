"""SO3krates: a Euclidean transformer backbone (Frank, Unke, Mueller, arXiv:2309.15126).

Written for polyget in PyTorch from the paper's equations; the JAX package ``mlff`` (its
reference code) was read for the defaults. Same engine contract as the ET (docs/interfaces.md):
``forward(species, edge_index, edge_vec) -> per-atom energies [N]``, forces by autograd through
``edge_vec``, the ``energy_scale`` / ``atom_offsets`` normalisation, and the attributes
``elements``, ``cutoff``, ``num_layers``, ``receptive_hops``.

Every atom carries invariant features ``x`` [N, F] and "Euclidean variables" ``ev`` [N, M]: one
real spherical-harmonic coordinate vector per degree l = 1..l_max (M = sum (2l + 1), 15 for
l_max = 3), shared by all feature channels. That is what keeps it cheap: no tensor products,
no [N, F, M] equivariant features. One layer (a "Euclidean transformer block") is

* filter ``w_ij = phi_r(rbf(r_ij)) + phi_s(||ev_j - ev_i||_l)``, the second argument being the
  per-degree norms of the EV difference (invariant);
* attention ``alpha_ij^h = <silu(q_i^h), w_ij^h, silu(k_j^h)> / sqrt(d) * C(r_ij)`` with H heads
  for the invariant update and one head per degree l for the EV update;
* ``x_i += sum_j alpha_ij^h v_j^h`` and ``ev_i^l += sum_j alpha_ij^l Y^l(r_ij / r_ij)``;
* a residual MLP, the interaction (exchange) block ``[dx, c] = W [x, ||ev||_l]``,
  ``x += dx``, ``ev^l += c^l ev^l``, and a second residual MLP.

``x`` starts as an element embedding and ``ev`` at zero (as in the sparse ``mlff`` code; a
density-normalised neighbourhood embedding of ``ev``, as in the first SO3krates, was tried and
trained worse on our mini set: experiments/results). The per-atom energy is an MLP of the final
``x``. Every message is multiplied by the cosine cutoff C(r) (value and slope zero at r_c), so
energies and forces are continuous when a neighbour crosses the cutoff. An atom's energy depends
on atoms up to ``num_layers`` edges away (``receptive_hops = num_layers``: one hop per layer).
"""

import math
from typing import List, Tuple

import torch
from torch import Tensor, nn

from .model import ModelConfig, owned_rows
from .radial import ACTIVATIONS, RADIAL_BASES, CosineCutoff, lookup

# ---------------------------------------------------------------------- spherical harmonics

MAX_SUPPORTED_DEGREE = 4


def spherical_harmonics(u: Tensor, max_degree: int) -> Tensor:
    """Real spherical harmonics of degrees 1..max_degree of unit vectors u [E, 3] -> [E, M].

    Cartesian polynomial forms of the orthonormal real harmonics (m = -l..l in that order),
    scaled by sqrt(4 pi / (2l + 1)) so that sum_m Y_lm(u)^2 = 1 for every degree (addition
    theorem). Under a rotation R, Y_l(R u) = D_l(R) Y_l(u) with D_l orthogonal.
    """
    x = u[:, 0]
    y = u[:, 1]
    z = u[:, 2]
    out: List[Tensor] = [y, z, x]  # l = 1, m = -1, 0, 1
    if max_degree >= 2:
        s3 = math.sqrt(3.0)
        xx = x * x
        yy = y * y
        zz = z * z
        out += [s3 * x * y, s3 * y * z, 0.5 * (3.0 * zz - 1.0), s3 * x * z, 0.5 * s3 * (xx - yy)]
        if max_degree >= 3:
            c33 = math.sqrt(5.0 / 8.0)
            c32 = math.sqrt(15.0)
            c31 = math.sqrt(3.0 / 8.0)
            out += [c33 * y * (3.0 * xx - yy), c32 * x * y * z, c31 * y * (5.0 * zz - 1.0),
                    0.5 * z * (5.0 * zz - 3.0), c31 * x * (5.0 * zz - 1.0),
                    0.5 * c32 * z * (xx - yy), c33 * x * (xx - 3.0 * yy)]
            if max_degree >= 4:
                c44 = math.sqrt(35.0) / 2.0
                c43 = math.sqrt(35.0 / 8.0)
                c42 = math.sqrt(5.0) / 2.0
                c41 = math.sqrt(5.0 / 8.0)
                out += [c44 * x * y * (xx - yy), c43 * y * z * (3.0 * xx - yy),
                        c42 * x * y * (7.0 * zz - 1.0), c41 * y * z * (7.0 * zz - 3.0),
                        0.125 * (35.0 * zz * zz - 30.0 * zz + 3.0), c41 * x * z * (7.0 * zz - 3.0),
                        0.5 * c42 * (xx - yy) * (7.0 * zz - 1.0), c43 * x * z * (xx - 3.0 * yy),
                        0.25 * c44 * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy))]
    return torch.stack(out, dim=-1)


def degree_matrix(max_degree: int) -> Tensor:
    """One-hot P [M, L]: P[m, l-1] = 1 where component m belongs to degree l."""
    sizes = [2 * l + 1 for l in range(1, max_degree + 1)]
    p = torch.zeros(sum(sizes), max_degree)
    start = 0
    for k, s in enumerate(sizes):
        p[start:start + s, k] = 1.0
        start += s
    return p


# ---------------------------------------------------------------------- radial basis

class BernsteinBasis(nn.Module):
    """Bernstein polynomials of x = exp(-gamma r) (SpookyNet, SO3krates' default), times C(r).

    b_k(r) = C(r) * binom(K-1, k) x^k (1 - x)^(K-1-k), k = 0..K-1, gamma = 0.9449 / A (0.5 / Bohr).
    """

    def __init__(self, cutoff: float, num_rbf: int, trainable: bool = False, gamma: float = 0.9448630629184640):
        super().__init__()
        if num_rbf < 2:
            raise ValueError(f"the Bernstein basis needs num_rbf >= 2, got {num_rbf}")
        self.cutoff_fn = CosineCutoff(cutoff)
        n = num_rbf - 1
        dtype = torch.get_default_dtype()
        k = torch.arange(num_rbf, dtype=dtype)
        logb = torch.tensor([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                             for i in range(num_rbf)], dtype=dtype)
        self.register_buffer("log_binom", logb, persistent=False)
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("k_rev", float(n) - k, persistent=False)
        if trainable:
            self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        else:
            self.register_buffer("gamma", torch.tensor(float(gamma)))

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        gr = self.gamma * r
        # log form: log x = -gamma r, log(1 - x) = log(-expm1(-gamma r)); finite for r > 0 and no
        # overflowing binomials; x^0 terms have zero (not NaN) derivatives
        logp = self.log_binom - self.k * gr + self.k_rev * torch.log(-torch.expm1(-gr))
        return self.cutoff_fn(r) * torch.exp(logp)


SO3KRATES_BASES = dict(RADIAL_BASES)
SO3KRATES_BASES["bernstein"] = BernsteinBasis


# ---------------------------------------------------------------------- layers

class MLP2(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, activation: str, bias_out: bool = True):
        super().__init__()
        self.lin1 = nn.Linear(n_in, n_hidden)
        self.act = lookup(ACTIVATIONS, activation, "activation")()
        self.lin2 = nn.Linear(n_hidden, n_out, bias=bias_out)
        for lin in (self.lin1, self.lin2):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class EuclideanTransformerBlock(nn.Module):
    """One SO3krates layer: Euclidean attention, residual MLP, exchange block, residual MLP."""

    def __init__(self, hidden: int, num_rbf: int, num_heads: int, max_degree: int, activation: str):
        super().__init__()
        if hidden % num_heads != 0:
            raise ValueError(f"hidden_channels ({hidden}) must be divisible by num_heads ({num_heads})")
        self.hidden = hidden
        self.num_heads = num_heads
        self.num_degrees = max_degree
        self.head_dim = hidden // num_heads
        # H invariant heads + one head per degree, all of width head_dim
        nq = (num_heads + max_degree) * self.head_dim
        self.nq = nq
        self.inv_scale = 1.0 / math.sqrt(self.head_dim)
        self.act = lookup(ACTIVATIONS, activation, "activation")()
        self.radial_filter = MLP2(num_rbf, hidden, nq, activation)
        self.spherical_filter = MLP2(max_degree, max(hidden // 4, 4), nq, activation)
        self.q_proj = nn.Linear(hidden, nq)
        self.k_proj = nn.Linear(hidden, nq)
        self.v_proj = nn.Linear(hidden, hidden)
        self.res1 = MLP2(hidden, hidden, hidden, activation)
        self.exchange = nn.Linear(hidden + max_degree, hidden + max_degree)
        self.res2 = MLP2(hidden, hidden, hidden, activation)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.exchange):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, ev: Tensor, edge_index: Tensor, rbf: Tensor, cut: Tensor,
                ylm: Tensor, deg: Tensor) -> Tuple[Tensor, Tensor]:
        """x [N, F], ev [N, M] -> updated (x, ev); deg [M, L] is the degree one-hot matrix."""
        n = x.shape[0]
        e = rbf.shape[0]
        h, d, f, nl = self.num_heads, self.head_dim, self.hidden, self.num_degrees
        i = edge_index[0]
        j = edge_index[1]

        # filter from the distance and from the per-degree norms of the EV difference
        dev = ev[j] - ev[i]
        w = self.radial_filter(rbf) + self.spherical_filter((dev * dev) @ deg)
        q = self.act(self.q_proj(x))
        k = self.act(self.k_proj(x))
        alpha = (q[i] * w * k[j]).view(e, h + nl, d).sum(dim=-1) * (self.inv_scale * cut.unsqueeze(-1))
        a_inv, a_ev = torch.split(alpha, [h, nl], dim=1)

        v = self.v_proj(x).view(n, h, d)
        x_msg = (a_inv.unsqueeze(-1) * v[j]).reshape(e, f)
        ev_msg = (a_ev @ deg.t()) * ylm
        x = x + torch.zeros(n, f, dtype=x.dtype, device=x.device).index_add_(0, i, x_msg)
        ev = ev + torch.zeros_like(ev).index_add_(0, i, ev_msg)

        x = x + self.res1(self.act(x))
        # exchange: invariants of ev into x, x-dependent scaling of each degree of ev
        c = self.exchange(torch.cat([x, (ev * ev) @ deg], dim=-1))
        dx, cev = torch.split(c, [f, nl], dim=1)
        x = x + dx
        ev = ev + (cev @ deg.t()) * ev
        x = x + self.res2(self.act(x))
        return x, ev


class SO3krates(nn.Module):
    """SO3krates backbone with the polyget engine contract (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if len(set(config.elements)) != len(config.elements) or not config.elements:
            raise ValueError(f"elements must be a non-empty list without repeats, got {config.elements}")
        if not 1 <= int(config.max_degree) <= MAX_SUPPORTED_DEGREE:
            raise ValueError(f"max_degree must be 1..{MAX_SUPPORTED_DEGREE} for SO3krates, got {config.max_degree}")
        self.config = config
        self.elements: List[str] = list(config.elements)
        self.cutoff: float = float(config.cutoff)
        self.num_layers: int = int(config.num_layers)
        self.max_degree: int = int(config.max_degree)
        # element-only embedding (ev starts at zero), then one hop per layer
        self.receptive_hops: int = int(config.num_layers)
        # per-layer halo exchange (embed/interact/readout): (x, ev) exchanged before every layer
        self.num_exchanges: int = int(config.num_layers)
        self.num_rbf: int = int(config.num_rbf)
        hidden = config.hidden_channels
        nelem = len(config.elements)

        self.embedding = nn.Embedding(nelem, hidden)
        self.distance_expansion = lookup(SO3KRATES_BASES, config.rbf_type, "radial basis")(
            config.cutoff, config.num_rbf, config.trainable_rbf)
        self.cutoff_fn = CosineCutoff(config.cutoff)
        self.register_buffer("deg", degree_matrix(self.max_degree), persistent=False)
        self.layers = nn.ModuleList([
            EuclideanTransformerBlock(hidden, config.num_rbf, config.num_heads, self.max_degree, config.activation)
            for _ in range(config.num_layers)
        ])
        self.head = MLP2(hidden, hidden, 1, config.activation)
        # normalisation: per-atom output = energy_scale * network + atom_offsets[species]
        self.register_buffer("energy_scale", torch.tensor(1.0))
        self.register_buffer("atom_offsets", torch.zeros(nelem))

    # ------------------------------------------------------------------------------------
    # The model in pieces for per-layer halo exchange, with the same API and row convention as
    # the ET (nn/model.py, nn/halo.py): owned atoms 0..n_local-1 first, every edge centre
    # i < n_local, ghost rows returned as zeros and filled by the engine before each interact.
    # The exchanged "vec" of SO3krates is its Euclidean variables ev [N, M]
    # (M = sum_{l=1..max_degree} (2l + 1)); engines treat both tensors as rows of numbers.
    #     feats = edge_features(edge_vec)
    #     x, ev = embed(species, edge_index, feats, n_local)
    #     for layer in range(num_layers): exchange(x, ev); x, ev = interact(layer, ...)
    #     atom_energy = readout(species, x, ev, n_local)              # [n_local]
    # num_exchanges = num_layers. forward() is this sequence with n_local = N, no exchange.
    # ------------------------------------------------------------------------------------

    @torch.jit.export
    def edge_features(self, edge_vec: Tensor) -> Tensor:
        """Per-edge quantities packed [E, K + 1 + M]: rbf (K), cutoff C(r), spherical harmonics (M)."""
        r = torch.linalg.vector_norm(edge_vec, dim=-1)
        rbf = self.distance_expansion(r)
        cut = self.cutoff_fn(r)
        ylm = spherical_harmonics(edge_vec / r.unsqueeze(-1), self.max_degree)
        return torch.cat([rbf, cut.unsqueeze(-1), ylm], dim=-1)

    def _unpack(self, feats: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        k = self.num_rbf
        return feats[:, :k], feats[:, k], feats[:, k + 1:]

    @torch.jit.export
    def embed(self, species: Tensor, edge_index: Tensor, feats: Tensor, n_local: int
              ) -> Tuple[Tensor, Tensor]:
        """Element embedding x [N, F] and Euclidean variables ev [N, M] = 0 (no message passing).

        ev is built as a zero-weighted sum over the edges, exactly zero with an exactly zero
        gradient, so that it lies on the autograd path of the edge vectors: an engine whose
        backward pass is autograd through its exchanges (the ML-IAP Kokkos path) then runs one
        reverse exchange per forward exchange, which a position-independent first exchange
        would not get. (The C++ core's backward is explicit and runs every exchange anyway.)"""
        _, cut, ylm = self._unpack(feats)
        x = self.embedding(species)
        ev = torch.zeros(x.shape[0], ylm.shape[1], dtype=x.dtype, device=x.device)
        ev = ev.index_add_(0, edge_index[0], ylm * (0.0 * cut.unsqueeze(-1)))
        return owned_rows(x, n_local), owned_rows(ev, n_local)

    @torch.jit.export
    def interact(self, layer: int, x: Tensor, ev: Tensor, edge_index: Tensor, feats: Tensor,
                 n_local: int) -> Tuple[Tensor, Tensor]:
        """Euclidean transformer block `layer` (0..num_layers-1); reads ghost rows, writes owned rows."""
        if layer < 0 or layer >= self.num_layers:
            raise ValueError("interact: layer index out of range 0..num_layers-1")
        rbf, cut, ylm = self._unpack(feats)
        for k, mod in enumerate(self.layers):
            if k == layer:
                x, ev = mod(x, ev, edge_index, rbf, cut, ylm, self.deg)
        return owned_rows(x, n_local), owned_rows(ev, n_local)

    @torch.jit.export
    def readout(self, species: Tensor, x: Tensor, ev: Tensor, n_local: int) -> Tensor:
        """Per-atom energies (eV) of the owned atoms [n_local]; ev is unused (energy from x)."""
        out = self.head(x[:n_local]).squeeze(-1)
        return out * self.energy_scale + self.atom_offsets[species[:n_local]]

    def forward(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom energies [N] of a whole graph (every atom owned)."""
        n = species.shape[0]
        feats = self.edge_features(edge_vec)
        x, ev = self.embed(species, edge_index, feats, n)
        for layer in range(self.num_layers):
            x, ev = self.interact(layer, x, ev, edge_index, feats, n)
        return self.readout(species, x, ev, n)

    def raw_atom_energies(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom energies without the per-element calibration offsets."""
        return self.forward(species, edge_index, edge_vec) - self.atom_offsets[species]
