"""Compiled forms of a polyget model (bench/README.md has the measurements).

* :func:`compile_model`: ``torch.compile`` of a model for training and the ASE calculator
  (opt-in: the first call of each new graph size class costs a compilation, tens of seconds on
  a CPU; ``dynamic=True`` so atom and edge counts do not trigger recompiles).
* :func:`export_aoti`: an AOTInductor package ``NAME.aoti.pt2`` of the energy-and-edge-gradient
  function, with dynamic atom and edge counts, for the C++ core (``polyget._core``,
  ``pair_style polyget``). The autograd graph is unfolded with ``make_fx`` into plain aten ops
  (forward and backward in one graph), exported with ``torch.export`` and compiled with
  ``torch._inductor.aoti_compile_and_package``. For ET models the function compiled is
  :class:`LeanEnergyForces` (every layer's edges in ``AOTI_CHUNKS`` parts, run again in the
  backward pass: a fraction of the memory, and for the paper-size model faster on a CPU whose
  caches then hold a part);
  ``chunks=1`` (and other backbones) compile :class:`EnergyForces` whole.

The package's call signature (``EnergyForces``) is
``(species [N] int64, edge_index [2, E] int64, edge_vec [E, 3], atom_weight [N]) ->
(atom_energy [N], fij [E, 3])`` with fij = d(sum_a atom_weight[a] * atom_energy[a]) / d edge_vec.
Its package metadata repeats the model's contract fields (``polyget.*``) so that the loader
can check it belongs to the TorchScript file it sits next to.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

AOTI_FORMAT = "polyget-aoti"
AOTI_FORMAT_VERSION = 1
# packages whose edges come in the mirrored layout (polyget.edge_layout, mirror_edges) are of
# format 2, which runners of format 1 only refuse (they would feed them plain edge lists)
AOTI_FORMAT_MIRRORED = 2
AOTI_FORMAT_VERSIONS = ("1", "2")
AOTI_SUFFIX = ".aoti.pt2"
# smallest atom and edge counts the package accepts; the C++ core runs the TorchScript file
# below them (a rank with one atom or one edge)
AOTI_MIN_ATOMS = 2
AOTI_MIN_EDGES = 2


class EnergyForces(nn.Module):
    """(species, edge_index, edge_vec, atom_weight) -> (atom_energy, fij): what AOTI compiles."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor, atom_weight: Tensor
                ) -> Tuple[Tensor, Tensor]:
        edge_vec.requires_grad_(True)
        atom_energy = self.model(species, edge_index, edge_vec)
        (fij,) = torch.autograd.grad([(atom_energy * atom_weight).sum()], [edge_vec])
        return atom_energy.detach(), fij


class LeanEnergyForces(nn.Module):
    """EnergyForces of an ET model (nn/model.py) with the memory of a few edges' activations.

    The same function as :class:`EnergyForces` (the same operations on the same numbers; only
    the order of some sums differs), with the backward pass written out: the forward sweep keeps
    the node features and summed messages of every layer (node-sized), and each layer's edges
    are run again, ``chunks`` parts one after another, while its gradients are taken. The
    per-edge activations alive at any time are then those of 1/chunks of one layer's edges
    instead of all layers' (bench/README.md, "Edges in parts"), for a second forward pass over
    the edges. Edge counts must be a multiple of ``chunks`` (pad_edges), or of 2 * chunks with
    ``mirrored`` (mirror_edges), where a part is a range of the first half's edges and the same
    range of the second half (their reverses), and the filters are computed for the first half
    only: equal forces and virial, but a pair's filter gradient lands on its first edge.
    """

    def __init__(self, model: nn.Module, chunks: int = 8, fused: bool = False,
                 mirrored: bool = False):
        super().__init__()
        self.model = model
        self.chunks = int(chunks)
        # fused: the messages and their gradients by polyget's operators (ops.py, cpp/ops): one
        # pass over a part's edges each, and no second forward pass over them in the backward
        self.fused = bool(fused)
        # mirrored: the edges come in two halves, edge R + r the reverse of edge r (or a
        # padding edge, cutoff 0; mirror_edges), and the filters, which depend on the distance
        # only, are computed once per pair: on the first half (the operators read them for
        # both; half the filter products and activations)
        self.mirrored = bool(mirrored)
        if self.mirrored and not self.fused:
            raise ValueError("mirrored edges need the fused operators")
        if self.fused:
            why = fused_unsupported(model)
            if why:
                raise ValueError("fused messages: " + why)
            from . import ops

            ops.load(required=True)

    def _parts(self, nedges):
        k = self.chunks
        return [((nedges * a) // k, (nedges * (a + 1)) // k) for a in range(k)]

    def _slices(self, nedges):
        """Each part's edge ranges: one range, or (mirrored) a range of the first half and
        the same range of the second."""
        if not self.mirrored:
            return [[p] for p in self._parts(nedges)]
        half = nedges // 2
        return [[(a, b), (half + a, half + b)] for a, b in self._parts(half)]

    def _filters(self, mod, rbf, perm):
        # mirrored: the filters of a part's first-half edges, which its second half shares
        if self.mirrored:
            rbf = rbf.narrow(0, 0, rbf.shape[0] // 2)
        return _cm_filters(mod, rbf, perm)

    def forward(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor, atom_weight: Tensor
                ) -> Tuple[Tensor, Tensor]:
        m = self.model
        n = species.shape[0]
        ev = edge_vec.detach().requires_grad_(True)
        feats = m.edge_features(ev)
        fd = feats.detach()
        parts = self._slices(edge_vec.shape[0])
        eis = [_take(edge_index, sl, 1) for sl in parts]
        pf = [_take(fd, sl, 0) for sl in parts]
        layers = list(m.layers)
        nl = len(layers)

        # forward sweep without autograd, one part of the edges at a time
        with torch.no_grad():
            x, vec = m.embed(species, edge_index, fd, n)
            saved = []
            for k, mod in enumerate(layers):
                q, kk, v = mod.node_terms(x)
                if self.fused:
                    perm = _component_major(mod).to(v.device)
                    vcm = v.index_select(1, perm)
                xa, va = None, None
                for ei, f in zip(eis, pf):
                    c, cu, rbf = m._unpack(f)
                    if self.fused:
                        a, b = torch.ops.polyget.et_messages(
                            q, kk, vcm, vec, ei[0], ei[1], c, cu, self._filters(mod, rbf, perm),
                            mod.num_heads, k == 0)
                    else:
                        a, b = mod.messages(q, kk, v, vec, ei, c, cu, mod.filters(rbf), k == 0)
                    xa = a if xa is None else xa + a
                    va = b if va is None else va + b
                saved.append((x, vec, xa, va))
                dx, dvec = mod.update(vec, xa, va, k == 0)
                x = x + dx
                vec = dvec if k == 0 else vec + dvec

        xl = x.detach().requires_grad_(True)
        vl = vec.detach().requires_grad_(True)
        ae = m.readout(species, xl, vl, n)
        gx, gv = torch.autograd.grad([(ae * atom_weight).sum()], [xl, vl])
        gparts = [torch.zeros_like(f) for f in pf]
        for k in range(nl - 1, -1, -1):
            mod = layers[k]
            x0, v0, xa0, va0 = saved[k]
            xin = x0.detach().requires_grad_(True)
            vin = v0.detach().requires_grad_(True)
            xa = xa0.detach().requires_grad_(True)
            va = va0.detach().requires_grad_(True)
            dx, dvec = mod.update(vin, xa, va, k == 0)
            if k == 0:
                g = torch.autograd.grad([xin + dx, dvec], [xin, xa, va], [gx, gv])
                gxin, gxa, gva = g[0], g[1], g[2]
                gvin = None
            else:
                g = torch.autograd.grad([xin + dx, vin + dvec], [xin, vin, xa, va], [gx, gv])
                gxin, gvin, gxa, gva = g[0], g[1], g[2], g[3]
            q, kk, v = mod.node_terms(xin)
            ql, kl, vl_ = (t.detach().requires_grad_(True) for t in (q, kk, v))
            gq = torch.zeros_like(q)
            gk = torch.zeros_like(kk)
            gvv = torch.zeros_like(v)
            if self.fused:
                perm = _component_major(mod).to(v.device)
                vcm = v.detach().index_select(1, perm)
            for p, (ei, f) in enumerate(zip(eis, pf)):
                if self.fused:
                    # the operator's backward recomputes what it needs per edge; autograd
                    # takes the gradients of c, cu and the filters back to the edge features
                    # (gv comes in the operator's component-major order: reordered below)
                    fl = f.detach().requires_grad_(True)
                    c, cu, rbf = m._unpack(fl)
                    filt = self._filters(mod, rbf, perm)
                    r = torch.ops.polyget.et_messages_backward(
                        gxa, gva, ql.detach(), kl.detach(), vcm, v0, ei[0], ei[1],
                        c.detach(), cu.detach(), filt.detach(), mod.num_heads, k == 0)
                    gfilt = r[6]
                    if self.mirrored:  # one gradient row per edge: both halves to the shared row
                        h = gfilt.shape[0] // 2
                        gfilt = gfilt.narrow(0, 0, h) + gfilt.narrow(0, h, h)
                    (gf,) = torch.autograd.grad([c, cu, filt], [fl], [r[4], r[5], gfilt])
                    gparts[p] = gparts[p] + gf
                    gq = gq + r[0]
                    gk = gk + r[1]
                    gvv = gvv + r[2]
                    if k > 0:
                        gvin = gvin + r[3]
                    continue
                fl = f.detach().requires_grad_(True)
                c, cu, rbf = m._unpack(fl)
                if k == 0:
                    a, b = mod.messages(ql, kl, vl_, vin, ei, c, cu, mod.filters(rbf), True)
                    gp = torch.autograd.grad([a, b], [ql, kl, vl_, fl], [gxa, gva])
                else:
                    a, b = mod.messages(ql, kl, vl_, vin, ei, c, cu, mod.filters(rbf), False)
                    gp = torch.autograd.grad([a, b], [ql, kl, vl_, fl, vin], [gxa, gva])
                    gvin = gvin + gp[4]
                gq = gq + gp[0]
                gk = gk + gp[1]
                gvv = gvv + gp[2]
                gparts[p] = gparts[p] + gp[3]
            if self.fused:
                gvv = gvv.index_select(1, torch.argsort(perm))
            (g2,) = torch.autograd.grad([q, kk, v], [xin], [gq, gk, gvv])
            gx = gxin + g2
            gv = gvin if gvin is not None else torch.zeros_like(v0)
        if self.mirrored:  # the parts' first halves, then their second halves
            gfeats = torch.cat([g.narrow(0, 0, g.shape[0] // 2) for g in gparts]
                               + [g.narrow(0, g.shape[0] // 2, g.shape[0] // 2) for g in gparts],
                               dim=0)
        else:
            gfeats = torch.cat(gparts, dim=0)
        fl = fd.detach().requires_grad_(True)
        x0, _ = m.embed(species, edge_index, fl, n)
        (ge,) = torch.autograd.grad([x0], [fl], [gx])
        (fij,) = torch.autograd.grad([feats], [ev], [gfeats + ge])
        return ae.detach(), fij


def _take(t: Tensor, ranges, dim: int) -> Tensor:
    """The rows (dim 0) or columns (dim 1) of ``t`` in ``ranges``, concatenated."""
    pieces = [t.narrow(dim, a, b - a) for a, b in ranges]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def _component_major(mod: nn.Module) -> Tensor:
    """Column order that takes a layer's per-head [x | v1 | v2] blocks (v_proj, dv_proj rows)
    to the fused operators' component-major [x | v1 | v2] (F channels each, channel
    h * D + d): new column comp * F + h * D + d = old column h * 3D + comp * D + d."""
    f, h = mod.hidden, mod.num_heads
    d = f // h
    new = torch.arange(3 * f)
    comp, ch = new // f, new % f
    return (ch // d) * 3 * d + comp * d + ch % d


def _cm_filters(mod: nn.Module, rbf: Tensor, perm: Tensor) -> Tensor:
    """mod.filters(rbf) with the dv columns in component-major order (the weight rows reordered,
    so the product writes them there directly)."""
    w = torch.cat([mod.dk_proj.weight, mod.dv_proj.weight.index_select(0, perm.to(rbf.device))], 0)
    b = torch.cat([mod.dk_proj.bias, mod.dv_proj.bias.index_select(0, perm.to(rbf.device))], 0)
    return mod.act(torch.nn.functional.linear(rbf, w, b))


def fused_unsupported(model: nn.Module) -> str:
    """Why ``model`` cannot use the fused message operators ("" if it can): they implement
    the ET layer (nn/attention.py) with the SiLU attention activation."""
    layers = getattr(model, "layers", None)
    if not layers or not all(hasattr(layer, "messages") for layer in layers):
        return "%s has no ET layers" % type(model).__name__
    for layer in layers:
        if not isinstance(layer.attn_act, nn.SiLU):
            return "attention activation %s (the operators implement SiLU)" % (
                type(layer.attn_act).__name__)
    return ""


def pad_edges(edge_index: Tensor, edge_vec: Tensor, multiple: int, length: float
              ) -> Tuple[Tensor, Tensor]:
    """Edges padded to a multiple of ``multiple`` (what a package of LeanEnergyForces takes):
    the added edges join atom 0 to itself at ``length`` (beyond the cutoff: the package's
    ``polyget.pad_length``, twice the cutoff), where the cutoff function and so every message
    are exactly zero; their rows of fij are zero and are dropped by the caller."""
    pad = (-int(edge_vec.shape[0])) % int(multiple)
    if pad == 0:
        return edge_index, edge_vec
    ei = torch.cat([edge_index, edge_index.new_zeros(2, pad)], dim=1)
    far = edge_vec.new_zeros(pad, 3)
    far[:, 0] = float(length)
    return ei, torch.cat([edge_vec, far], dim=0)


def mirror_edges(edge_index: Tensor, edge_vec: Tensor, multiple: int, length: float,
                 rtol: float = 1e-9) -> Tuple[Tensor, Tensor, Tensor]:
    """The edges in the mirrored layout of a package with ``polyget.edge_layout`` mirrored:
    two halves of R rows (R a multiple of ``multiple`` // 2), edge R + r the reverse of edge r.

    An edge (i, j, v) and (j, i, v') with v' = -v (to ``rtol``) are a pair when neither atom
    pair occurs more than once in that direction: the first half holds the one with i < j, the
    second half its reverse. Every other edge (to a ghost atom without its reverse, periodic
    self-images, several images of one pair) keeps a first-half row of its own and faces a
    padding edge, like the rows added to reach the multiple: atom 0 to itself at ``length``
    (beyond the cutoff, where every message is exactly zero). Unpaired edges are always
    correct, only slower, so the matching may miss pairs but never joins two edges that are
    not reverses.

    Returns (edge_index, edge_vec, slot): the new edges, and slot[k] the new position of
    input edge k (the caller reads the package's fij rows back with fij[slot]).
    """
    dev = edge_vec.device
    ei = edge_index.detach().cpu().numpy()
    ev = edge_vec.detach().cpu().to(torch.float64).numpy()
    ne = ei.shape[1]
    i, j = ei[0].astype(np.int64), ei[1].astype(np.int64)
    partner = np.full(ne, -1, dtype=np.int64)
    if ne:
        n = int(max(i.max(), j.max())) + 1
        fwd, rev = i * n + j, j * n + i
        order = np.argsort(fwd, kind="stable")
        sk = fwd[order]
        keys, counts = np.unique(sk, return_counts=True)
        own = counts[np.searchsorted(keys, fwd)]
        at = np.minimum(np.searchsorted(sk, rev), ne - 1)
        found = (sk[at] == rev) & (own == 1) & (i != j)
        cand = np.where(found, order[at], -1)
        # the reverse's atom pair must be unique too, and the vectors opposite
        ok = found & (own[np.maximum(cand, 0)] == 1)
        c = np.maximum(cand, 0)
        close = (np.abs(ev + ev[c]).max(axis=1)
                 <= rtol * np.maximum(np.abs(ev).max(axis=1), 1e-300))
        partner = np.where(ok & close, cand, -1)
    lead = np.nonzero((partner >= 0) & (i < j))[0]
    single = np.nonzero(partner < 0)[0]
    half_mult = max(1, int(multiple) // 2)
    rows = len(lead) + len(single)
    rows = max(half_mult, -(-rows // half_mult) * half_mult)
    slot = np.empty(ne, dtype=np.int64)
    slot[lead] = np.arange(len(lead))
    slot[partner[lead]] = rows + np.arange(len(lead))
    slot[single] = len(lead) + np.arange(len(single))
    out_i = np.zeros((2, 2 * rows), dtype=ei.dtype)
    out_v = np.zeros((2 * rows, 3), dtype=np.float64)
    out_v[:, 0] = float(length)
    out_i[:, slot] = ei
    out_v[slot] = ev
    new_ei = torch.as_tensor(out_i).to(dev)
    new_ev = torch.as_tensor(out_v).to(device=dev, dtype=edge_vec.dtype)
    # exact copies of the input vectors (the float64 round trip is exact for float32 too)
    new_ev[torch.as_tensor(slot, device=dev)] = edge_vec.detach()
    return new_ei, new_ev, torch.as_tensor(slot, device=dev)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the parameters and buffers (names, shapes, dtypes, values), 16 hex digits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(str(a.dtype).encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()[:16]


def example_graph(elements, cutoff: float, n: int = 48, seed: int = 0
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """A random cluster with every element (species, edge_index, edge_vec float64) to trace with."""
    from .nn.graph import neighbour_list

    rng = np.random.default_rng(seed)
    # ~0.1 atoms per cubic Angstrom, like condensed organic matter
    side = (n / 0.1) ** (1.0 / 3.0)
    while True:
        pos = rng.uniform(0.0, side, size=(n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n) * 10
        if d.min() > 0.9:
            break
        side *= 1.02
    species = np.arange(n) % len(elements)
    ei, _ = neighbour_list(pos, np.zeros((3, 3)), [False] * 3, cutoff)
    vec = pos[ei[1]] - pos[ei[0]]
    return torch.as_tensor(species), torch.as_tensor(ei), torch.as_tensor(vec)


def _index_add_as_scatter(x: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1,
                          inplace: bool = False) -> Tensor:
    """index_add written as scatter_reduce(sum) with the index broadcast (stride 0) over the
    source's other dimensions: the same sums in the same order, but Inductor leaves it to ATen's
    scatter_reduce, whose CPU kernel for such an index is parallel, instead of lowering it to
    the serial accumulating index_put_ (bench/README.md, "Compilation")."""
    if alpha != 1:
        source = source * alpha
    shape = [1] * source.dim()
    shape[dim] = -1
    idx = index.view(shape).expand_as(source)
    if inplace:
        return x.scatter_reduce_(dim, idx, source, "sum")
    return x.scatter_reduce(dim, idx, source, "sum")


def _index_add_inplace_as_scatter(x, dim, index, source, *, alpha=1):
    return _index_add_as_scatter(x, dim, index, source, alpha=alpha, inplace=True)


# make_fx decompositions of the traced graphs (index_add also comes from index_select's backward)
_SCATTER_DECOMPOSITIONS = {torch.ops.aten.index_add.default: _index_add_as_scatter,
                           torch.ops.aten.index_add_.default: _index_add_inplace_as_scatter}


def _trace(module: nn.Module, inputs) -> torch.fx.GraphModule:
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    old = fx_config.use_duck_shape
    # no duck shaping: an atom or edge count equal to a feature size must not be specialised
    fx_config.use_duck_shape = False
    try:
        return make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True,
                       decomposition_table=_SCATTER_DECOMPOSITIONS)(*[t.clone() for t in inputs])
    finally:
        fx_config.use_duck_shape = old


class AotiMismatch(RuntimeError):
    """The compiled package does not reproduce the eager model (it is not written)."""


def export_aoti(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype,
                device: str = "cpu", metadata: Optional[Dict[str, str]] = None,
                threads: Optional[int] = None, dynamic_threads: bool = False,
                chunks: Optional[int] = None, fused: Optional[bool] = None,
                mirrored: Optional[bool] = None) -> Path:
    """Compile ``model`` (polyget contract: forward(species, edge_index, edge_vec) -> [N]) to
    an AOTInductor package at ``path``; returns the path. Takes minutes on a small CPU.

    CPU threads: the kernels are compiled for ``threads`` OpenMP threads (default
    ``torch.get_num_threads()``), recorded in the package metadata (``polyget.threads``; the C++
    core uses a package only at that thread count); ``dynamic_threads`` takes the count at run
    time instead (Inductor's ``cpp.dynamic_threads``). The package is run on two graphs after
    compilation and rejected (AotiMismatch, nothing written) unless it reproduces the eager
    model."""
    return export_aoti_packages(model, {threads or torch.get_num_threads(): path}, dtype,
                                device, metadata, dynamic_threads, chunks=chunks,
                                fused=fused, mirrored=mirrored)[0]


def export_aoti_packages(model: nn.Module, paths: Dict[int, str | os.PathLike],
                         dtype: torch.dtype, device: str = "cpu",
                         metadata: Optional[Dict[str, str]] = None,
                         dynamic_threads: bool = False, log=None,
                         chunks: Optional[int] = None, fused: Optional[bool] = None,
                         mirrored: Optional[bool] = None) -> list:
    """One AOTInductor package per CPU thread count (``paths``: threads -> file), from one
    trace and export of the model; each is checked against eager before it is written.
    Returns the paths written, in the order of ``paths``; raises AotiMismatch for the first
    package that fails its check (packages already written stay).

    ``chunks``: the edges of every layer are taken in this many parts (LeanEnergyForces; the
    package then takes edge counts that are a multiple of it, ``polyget.edge_multiple``, and
    load_aoti and the C++ core pad them). Default AOTI_CHUNKS (AOTI_CHUNKS_MIRRORED for
    mirrored packages) for models that support it (ET),
    1 (the whole-graph EnergyForces) otherwise.

    ``fused``: the parts' messages and gradients by polyget's fused CPU operators (ops.py;
    the package then needs libpolyget_ops.so where it runs, metadata ``polyget.fused_ops``).
    Default: for CPU packages of edges in parts when the operators are available.

    ``mirrored``: the edges in the mirrored layout (mirror_edges; format 2, metadata
    ``polyget.edge_layout``), so that an edge and its reverse share their filters (half the
    filter work). Needs ``fused``; default: whenever fused."""
    import time

    import torch._inductor

    model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    asked = chunks
    chunks = lean_chunks(model, chunks)
    fused = _fused_choice(model, chunks, device, fused)
    if mirrored is None:
        mirrored = bool(fused)  # the fused operators share filters between an edge and its reverse
    elif mirrored and not fused:
        raise ValueError("mirrored edges need the fused operators (fused=True)")
    if asked is None and mirrored:
        chunks = AOTI_CHUNKS_MIRRORED
    ep = _export_program(model, dtype, device, chunks, fused, mirrored)
    base = {"polyget.format": AOTI_FORMAT,
            "polyget.format_version": str(AOTI_FORMAT_MIRRORED if mirrored else 1),
            "polyget.edge_layout": "mirrored" if mirrored else "plain",
            "polyget.fingerprint": model_fingerprint(model),
            "polyget.dtype": str(dtype).replace("torch.", ""),
            "polyget.device": device.split(":")[0],
            "polyget.isa": _isa_name() if device == "cpu" else "",
            "polyget.min_atoms": str(AOTI_MIN_ATOMS), "polyget.min_edges": str(AOTI_MIN_EDGES),
            "polyget.edge_multiple": str(2 * chunks if mirrored else chunks),
            "polyget.pad_length": repr(2.0 * float(model.cutoff)),
            "polyget.fused_ops": str(_ops_abi()) if fused else "0"}
    base.update(metadata or {})
    written = []
    for nthreads, path in paths.items():
        path = Path(path)
        meta = dict(base)
        meta["polyget.threads"] = "dynamic" if dynamic_threads else str(int(nthreads))
        options = dict(AOTI_INDUCTOR_OPTIONS if chunks == 1 else LEAN_INDUCTOR_OPTIONS)
        options.update({"cpp.dynamic_threads": bool(dynamic_threads),
                        "aot_inductor.metadata": meta})
        if not dynamic_threads:
            options["cpp.threads"] = int(nthreads)
        tmp = path.with_name(path.name + ".tmp%d.pt2" % os.getpid())
        t0 = time.time()
        with _scatter_as_aten():
            out = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp),
                                                           inductor_configs=options)
        if log:
            log("compiled %s (%s threads) in %.0f s" % (path.name, meta["polyget.threads"],
                                                       time.time() - t0))
        old = torch.get_num_threads()
        try:
            if not dynamic_threads:
                torch.set_num_threads(int(nthreads))
            _verify(model, out, dtype, device)
        except AotiMismatch:
            os.unlink(out)
            raise
        finally:
            torch.set_num_threads(old)
        os.replace(out, path)
        written.append(path)
    return written


# Inductor options for every package (beyond threads and metadata).
# reorder_for_locality off: that post-grad pass moves producers next to their consumers and runs
# on inference graphs only, which our make_fx graph of energy + autograd.grad is. With it on, the
# paper-size float32 package (128 features, 6 layers) gave edge gradients off by 0.4 % relative
# even with the scatter-adds left to ATen (_scatter_as_aten); with it off the package is exact
# (4.8e-7 absolute on the 360-atom 15-loop) and as fast (0.42 s CPU per call against 0.73 s
# eager, 1 thread). Turning off all fusion (max_fusion_size 1) also makes it exact; buffer
# reuse, epilogue fusion and vectorisation do not (bench/README.md, "Compilation").
AOTI_INDUCTOR_OPTIONS: Dict[str, object] = {"reorder_for_locality": False}

# Packages with the edges in parts (LeanEnergyForces, the default for ET models): AOTI_CHUNKS
# parts, compiled without fusion of scheduler nodes. With fusion on, the paper-size package of
# 8 parts gave edge gradients off by 2 % of the largest (5e-3 absolute on a 288-atom melt);
# without it they equal eager (4e-7) and the package is faster than the whole-graph one
# (bench/README.md, "Edges in parts", bench_lean.py, 2 threads): 0.144 against 0.238 s per call on
# the 360-atom 15-loop, 11.0 against 22.7 s on a 10,368-atom melt, peak memory 0.12-0.18 instead
# of ~1.5 MB per atom.
AOTI_CHUNKS = 8
# Fused packages on mirrored edges hold half the filters per part: 4 parts keep about the
# memory of 8 parts without the mirroring (0.32 against 0.30 MB per atom on the 3,456-atom
# melt; 8 mirrored parts: 0.19) and run 5-10 % faster than 8 (bench/README.md, "Mirrored edges").
AOTI_CHUNKS_MIRRORED = 4
LEAN_INDUCTOR_OPTIONS: Dict[str, object] = {"max_fusion_size": 1, "reorder_for_locality": False}


def lean_chunks(model: nn.Module, chunks: Optional[int] = None) -> int:
    """How many parts the package of ``model`` takes the edges in: ``chunks`` (default
    AOTI_CHUNKS) for models built of ET layers (which have ``messages``), else 1."""
    layers = getattr(model, "layers", None)
    lean = (layers is not None and len(layers) > 0 and hasattr(model, "_unpack")
            and all(hasattr(layer, "messages") for layer in layers))
    if chunks is None:
        return AOTI_CHUNKS if lean else 1
    chunks = int(chunks)
    if chunks < 1:
        raise ValueError("chunks must be >= 1 (1: the whole-graph package)")
    if chunks > 1 and not lean:
        raise ValueError("edges in parts (chunks > 1) need an ET model; %s has no per-layer "
                         "messages" % type(model).__name__)
    return chunks


# Inductor options of the compiled training step (CompiledForceLoss): no fusion of scheduler
# nodes (max_fusion_size 1) and no locality reordering. With fusion on, the paper-size step
# compiled (with buffer reuse off; with it on, the generated wrapper used a buffer before
# defining it) but gave parameter gradients 0.3-10 % off eager; with these options they agree
# to float32 rounding (5e-6 relative) and the step took 0.81 s against 1.81 s eager (paper
# size, 360 atoms, 1 thread, bench/README.md).
TRAIN_INDUCTOR_OPTIONS: Dict[str, object] = {"max_fusion_size": 1, "reorder_for_locality": False}


class _scatter_as_aten:
    """Compile with torch's deterministic-algorithms flag on (warn_only), which makes Inductor
    leave the scatter-adds to ATen (``aten.scatter_reduce_.two``, sum; the traced graph writes
    every index_add that way, _index_add_as_scatter) instead of generating them. Without it,
    Inductor (torch 2.13, CPU) fuses a scatter-add into the loop of a later gather that reads
    the scattered buffer, so the gather reads rows before all edges have been added to them:
    wrong edge gradients (relative error 0.1-0.4) for ET models of 3+ layers (bench/README.md).
    The flag is restored afterwards; it matters at compile time only. ATen's CPU kernel for a
    scatter_reduce whose index is broadcast along the feature axes sums each row's edges in
    edge order, so the result does not depend on the thread count, and is parallel; the
    accumulating index_put_ the scatters used to become is serial and 4-20x slower."""

    def __enter__(self):
        self.old = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.old[0], warn_only=self.old[1])
        return False


def _ops_abi() -> int:
    from . import ops

    return ops.ABI_VERSION


def _fused_choice(model: nn.Module, chunks: int, device: str, fused: Optional[bool]) -> bool:
    """Whether a package uses the fused operators: ``fused`` if given (checked), else when it
    takes the edges in parts, runs on the CPU and the operators load."""
    from . import ops

    if fused is None:
        return (chunks > 1 and device.split(":")[0] == "cpu" and not fused_unsupported(model)
                and ops.load())
    if fused:
        if chunks == 1:
            raise ValueError("fused operators need the edges in parts (chunks > 1)")
        if device.split(":")[0] != "cpu":
            raise ValueError("the fused operators run on the CPU only; export %s packages "
                             "without them" % device)
        why = fused_unsupported(model)
        if why:
            raise ValueError("fused operators: " + why)
        ops.load(required=True)
    return bool(fused)


def _export_program(model: nn.Module, dtype: torch.dtype, device: str, chunks: int = 1,
                    fused: bool = False, mirrored: bool = False):
    """torch.export of EnergyForces(model) (LeanEnergyForces with ``chunks`` > 1, its
    messages by polyget's operators if ``fused``, edges in the mirrored layout if
    ``mirrored``), traced through autograd with make_fx; dynamic atom and edge counts (edges:
    multiples of ``chunks``, of 2 * chunks when mirrored)."""
    wrapped = (EnergyForces(model) if chunks == 1
               else LeanEnergyForces(model, chunks, fused=fused, mirrored=mirrored)).eval()
    species, ei, vec = example_graph(list(model.elements), float(model.cutoff))
    if mirrored:
        ei, vec, _ = mirror_edges(ei, vec, 2 * chunks, 2.0 * float(model.cutoff))
        chunks = 2 * chunks
    else:
        ei, vec = pad_edges(ei, vec, chunks, 2.0 * float(model.cutoff))
    inputs = (species.to(device), ei.to(device), vec.to(device=device, dtype=dtype),
              torch.ones(len(species), dtype=dtype, device=device))
    gm = _trace(wrapped, inputs)
    n = torch.export.Dim("natoms", min=AOTI_MIN_ATOMS, max=2 ** 31 - 1)
    if chunks == 1:
        e = torch.export.Dim("nedges", min=AOTI_MIN_EDGES, max=2 ** 31 - 1)
    else:
        # edge counts are chunks * blocks: the parts are [blocks] long, no floor divisions
        e = chunks * torch.export.Dim("edge_blocks", min=1, max=(2 ** 31 - 1) // chunks)
    return torch.export.export(gm, inputs, dynamic_shapes=({0: n}, {1: e}, {0: e}, {0: n}))


def _verify(model: nn.Module, package: str, dtype: torch.dtype, device: str) -> None:
    """Run the package on two graphs (other sizes than the traced one) against eager."""
    run = load_aoti(package)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for n, seed in ((23, 1), (61, 2)):
        species, ei, vec = example_graph(list(model.elements), float(model.cutoff), n=n, seed=seed)
        vec = vec.to(device=device, dtype=dtype)
        species, ei = species.to(device), ei.to(device)
        w = torch.ones(n, dtype=dtype, device=device)
        ae, fij = run(species, ei, vec.clone(), w)
        ev = vec.clone().requires_grad_(True)
        ref_ae = model(species, ei, ev)
        (ref_f,) = torch.autograd.grad(ref_ae.sum(), ev)
        ref_ae = ref_ae.detach()
        # forces and virial (a mirrored package puts a pair's filter gradient on one of its
        # two edges: the same sums over atoms, other rows per edge)
        got, want = _forces_virial(ei, vec, fij, n), _forces_virial(ei, vec, ref_f, n)
        err_e = float((ae - ref_ae).abs().max()) / max(1.0, float(ref_ae.abs().max()))
        err_f = max(float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
                    for a, b in zip(got, want))
        if not (err_e < tol and err_f < tol):
            raise AotiMismatch(
                "the AOTInductor package does not reproduce the model (relative error: energies "
                "%.3g, forces/virial %.3g, tolerance %.1g on a %d-atom test graph); not written"
                % (err_e, err_f, tol, n))


def _forces_virial(edge_index: Tensor, edge_vec: Tensor, fij: Tensor, n: int
                   ) -> Tuple[Tensor, Tensor]:
    """Forces on the atoms and the virial sum_e v_e (x) fij_e from edge gradients fij."""
    fij = fij.to(edge_vec.dtype)
    f = torch.zeros(n, 3, dtype=fij.dtype, device=fij.device)
    f = f.index_add(0, edge_index[1], fij).index_add(0, edge_index[0], -fij)
    return f, edge_vec.T @ fij


def _isa_name() -> str:
    """The CPU vector ISA Inductor compiles for on this machine (avx512, avx2, ...)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = pick_vec_isa()
        return str(isa) if isa else "none"
    except Exception:  # pragma: no cover - depends on the torch build
        return "unknown"


class AotiRunner:
    """A loaded package as (species, edge_index, edge_vec, atom_weight) -> (atom_energy, fij)
    for any edge count: pads the edges to the package's ``polyget.edge_multiple`` (pad_edges)
    and drops the padding's rows of fij."""

    def __init__(self, path: str | os.PathLike):
        import torch._inductor

        self.path = str(path)
        meta = package_metadata(path)
        fmt = meta.get("polyget.format_version")
        if fmt not in AOTI_FORMAT_VERSIONS:
            raise ValueError("%s: a polyget AOTInductor package of format %s; this polyget "
                             "runs formats %s: re-export the model"
                             % (path, fmt, ", ".join(AOTI_FORMAT_VERSIONS)))
        if meta.get("polyget.fused_ops", "0") not in ("", "0"):
            from . import ops

            ops.load(required=True)
            if not ops.runs_version(meta["polyget.fused_ops"]):
                raise ValueError("%s: compiled against polyget operators version %s, this "
                                 "polyget runs %d..%d; re-export the model"
                                 % (path, meta["polyget.fused_ops"], ops.ABI_OLDEST,
                                    ops.ABI_VERSION))
        self.mirrored = meta.get("polyget.edge_layout", "plain") == "mirrored"
        self._run = torch._inductor.aoti_load_package(self.path)
        self.edge_multiple = int(meta.get("polyget.edge_multiple", "1"))
        self.pad_length = float(meta.get("polyget.pad_length", "0") or 0.0)
        if self.edge_multiple > 1 and not self.pad_length > 0.0:
            raise ValueError("%s: package takes edges in multiples of %d but has no "
                             "polyget.pad_length; re-export the model" % (path, self.edge_multiple))

    def __call__(self, species: Tensor, edge_index: Tensor, edge_vec: Tensor, atom_weight: Tensor
                 ) -> Tuple[Tensor, Tensor]:
        n_edges = edge_vec.shape[0]
        if self.mirrored:
            edge_index, edge_vec, slot = mirror_edges(edge_index, edge_vec, self.edge_multiple,
                                                      self.pad_length)
            ae, fij = self._run(species, edge_index, edge_vec, atom_weight)
            return ae, fij.index_select(0, slot)
        if self.edge_multiple > 1 and n_edges % self.edge_multiple:
            edge_index, edge_vec = pad_edges(edge_index, edge_vec, self.edge_multiple,
                                             self.pad_length)
            ae, fij = self._run(species, edge_index, edge_vec, atom_weight)
            return ae, fij[:n_edges]
        return self._run(species, edge_index, edge_vec, atom_weight)


def load_aoti(path: str | os.PathLike) -> AotiRunner:
    """The compiled package as a Python callable (mliap unified, tests, benchmarks)."""
    return AotiRunner(path)


def compile_model(model: nn.Module, mode: Optional[str] = None) -> nn.Module:
    """``torch.compile`` with dynamic shapes (graphs of any size share one compilation)."""
    return torch.compile(model, dynamic=True, mode=mode)


class CompiledForceLoss:
    """Force-only training loss and its parameter gradients as one compiled graph.

    ``torch.compile`` cannot differentiate a compiled model twice (forces are a first
    derivative, the loss gradient a second), so the whole step is unfolded with ``make_fx``
    (forward, force backward with create_graph, loss, parameter backward: plain aten ops) and
    that graph is compiled with ``torch.compile(dynamic=True)``.

    ``step(graph, target_forces, weight)`` returns the loss and leaves the gradients in
    ``p.grad`` (like ``loss.backward()``); ``step.forces`` then holds the predicted forces
    (detached). The model's parameters are read at every call, so the optimizer updates them as
    usual.

    Compiled with TRAIN_INDUCTOR_OPTIONS and the scatter-adds left to ATen (_scatter_as_aten):
    with Inductor's fusion of scheduler nodes on, the paper-size step's parameter gradients were
    off by 0.3-10 % (bench/README.md, "Compilation"); without it they equal eager's (float32
    rounding) and the step is 1.7x (2 threads) to 2.2x (1 thread) faster than eager on this CPU.
    """

    def __init__(self, model: nn.Module, graph, compile: bool = True):
        from torch.func import functional_call

        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        names, bnames = self.names, self.buffer_names
        nparam = len(names)

        def loss_and_grads(*args):
            params = dict(zip(names, [a.detach().requires_grad_(True) for a in args[:nparam]]))
            buffers = dict(zip(bnames, args[nparam:nparam + len(bnames)]))
            species, edge_index, edge_vec, target, weight = args[nparam + len(bnames):]
            edge_vec = edge_vec.detach().requires_grad_(True)
            ae = functional_call(model, (params, buffers), (species, edge_index, edge_vec))
            (fij,) = torch.autograd.grad([ae.sum()], [edge_vec], create_graph=True)
            n = species.shape[0]
            f = torch.zeros(n, 3, dtype=fij.dtype, device=fij.device)
            f = f.index_add(0, edge_index[0], fij).index_add(0, edge_index[1], -fij)
            loss = weight * ((f - target) ** 2).mean()
            grads = torch.autograd.grad([loss], list(params.values()), allow_unused=True)
            return [loss, f.detach()] + [g if g is not None else torch.zeros_like(p)
                                         for g, p in zip(grads, params.values())]

        self._fn = loss_and_grads
        example = self._inputs(graph, torch.zeros(len(graph.species), 3, dtype=graph.edge_vec.dtype,
                                                  device=graph.edge_vec.device), 1.0)
        gm = _trace(loss_and_grads, example)
        self._graph = (torch.compile(gm, dynamic=True, options=dict(TRAIN_INDUCTOR_OPTIONS))
                       if compile else gm)
        self.compiled = bool(compile)
        self.forces: Optional[Tensor] = None

    def _inputs(self, graph, target, weight):
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        w = torch.tensor(float(weight), dtype=graph.edge_vec.dtype, device=graph.edge_vec.device)
        return ([params[n].detach() for n in self.names] + [buffers[n] for n in self.buffer_names]
                + [graph.species, graph.edge_index, graph.edge_vec.detach(), target, w])

    def __call__(self, graph, target: Tensor, weight: float = 1.0) -> Tensor:
        if self.compiled:
            with _scatter_as_aten():  # Inductor compiles at the first call (and new shapes)
                out = self._graph(*self._inputs(graph, target, weight))
        else:
            out = self._graph(*self._inputs(graph, target, weight))
        self.forces = out[1]
        params = dict(self.model.named_parameters())
        for n, g in zip(self.names, out[2:]):
            p = params[n]
            p.grad = g if p.grad is None else p.grad + g
        return out[0]


def compiled_force_loss(model: nn.Module, graph, compile: bool = True) -> CompiledForceLoss:
    return CompiledForceLoss(model, graph, compile)


# ---------------------------------------------------------------------------------------------
# finding and running a package from Python (mliap unified; the C++ core has its own loader,
# cpp/core.cpp Model::load_aoti, with the same rules)
# ---------------------------------------------------------------------------------------------
def package_metadata(path: str | os.PathLike) -> Dict[str, str]:
    """The metadata a package was compiled with (``polyget.*`` keys), without loading it."""
    from torch._C._aoti import AOTIModelPackageLoader  # type: ignore[attr-defined]

    return dict(AOTIModelPackageLoader.load_metadata_from_package(str(path), "model"))


def package_mismatch(pm: Dict[str, str], meta: Dict[str, object], device: str,
                     threads: Optional[int]) -> Optional[str]:
    """Why the package with metadata ``pm`` cannot run the TorchScript file with contract
    metadata ``meta`` on ``device`` at ``threads`` CPU threads (None: any), or None if it can."""
    if (pm.get("polyget.format") != AOTI_FORMAT
            or pm.get("polyget.format_version") not in AOTI_FORMAT_VERSIONS):
        return "not a polyget AOTInductor package of format %s" % " or ".join(AOTI_FORMAT_VERSIONS)
    if not meta.get("fingerprint") or pm.get("polyget.fingerprint") != meta.get("fingerprint"):
        return "its weights fingerprint differs from the model's (stale package)"
    if pm.get("polyget.dtype") != meta.get("dtype"):
        return "dtype %s, the model is %s" % (pm.get("polyget.dtype"), meta.get("dtype"))
    pdev = pm.get("polyget.device", "cpu")
    if (pdev == "cuda") != device.startswith("cuda"):
        return "compiled for %s, running on %s" % (pdev, device)
    if pdev == "cpu":
        isa = pm.get("polyget.isa", "")
        if isa.startswith("avx512") and not str(torch.backends.cpu.get_cpu_capability()).lower().startswith("avx512"):
            return "compiled for %s, this CPU offers %s" % (isa, torch.backends.cpu.get_cpu_capability())
        t = pm.get("polyget.threads", "dynamic")
        if threads is not None and t != "dynamic" and t != str(threads):
            return "compiled for %s thread(s), this run uses %d" % (t, threads)
    return None


def find_package(directory: str | os.PathLike, meta: Dict[str, object], device: str,
                 threads: Optional[int]) -> Tuple[Optional[Path], str]:
    """(path, status) of the package named by ``meta["aoti_package"]`` (comma-separated file
    names in ``directory``) that can run here; path None when none can, status says why."""
    names = [n.strip() for n in str(meta.get("aoti_package") or "").split(",") if n.strip()]
    if os.environ.get("POLYGET_AOTI", "1") == "0":
        return None, "TorchScript (POLYGET_AOTI=0)"
    if not names:
        return None, "TorchScript (no AOTInductor package in the metadata)"
    why = []
    for name in names:
        p = Path(directory) / name
        if not p.is_file():
            why.append("%s not found" % p)
            continue
        try:
            pm = package_metadata(p)
        except Exception as exc:  # pragma: no cover - corrupt file
            why.append("%s unreadable (%s)" % (p, str(exc).splitlines()[0] if str(exc) else exc))
            continue
        bad = package_mismatch(pm, meta, device, threads)
        if bad is None:
            return p, "AOTInductor %s (%s thread(s))" % (p, pm.get("polyget.threads"))
        why.append("%s: %s" % (p.name, bad))
    hint = ("; export with --aoti-threads %d to add one" % threads) if threads else ""
    return None, "TorchScript (no usable AOTInductor package: %s%s)" % ("; ".join(why), hint)
