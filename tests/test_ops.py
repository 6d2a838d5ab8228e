"""polyget's fused message operators (cpp/ops, python/polyget/ops.py): their values and
gradients equal the eager ET layer's to 1e-10 in float64, for both thread counts and for
layer 0 (zero input vectors); the packages' function with them equals the eager model; bad
input gets a clear error."""

import pytest
import torch

from conftest import polymer_like, tiny_model
from polyget import ops
from polyget.compile import _component_major
from polyget.nn.attention import EquivariantAttention
from polyget.nn.graph import atoms_to_graph

pytestmark = pytest.mark.skipif(not ops.load(), reason="libpolyget_ops.so not built (make setup)")


def _inputs(n, e, f, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, f, generator=g, dtype=dtype)
    k = torch.randn(n, f, generator=g, dtype=dtype)
    v = torch.randn(n, 3 * f, generator=g, dtype=dtype)
    vec = torch.randn(n, 3, f, generator=g, dtype=dtype)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, torch.argsort(ei[0], stable=True)]
    c = torch.rand(e, generator=g, dtype=dtype)
    cu = torch.randn(e, 3, generator=g, dtype=dtype)
    filt = torch.randn(e, 4 * f, generator=g, dtype=dtype)
    return q, k, v, vec, ei, c, cu, filt


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("vec_is_zero", [False, True])
@pytest.mark.parametrize("f,heads", [(32, 4), (24, 4), (16, 1)])
def test_et_messages_equal_eager_layer(threads, vec_is_zero, f, heads):
    """Forward sums and every input gradient of polyget::et_messages[_backward] against
    EquivariantAttention.messages and autograd (float64, 1e-10), heads of 8, 6 and 16 channels
    (vectorised loops with and without remainders), edges in any order; the operators take v
    and the dv filters in component-major column order."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mod = EquivariantAttention(f, 8, heads, 5.0).double()
        q, k, v, vec, ei, c, cu, filt = _inputs(37, 700, f)
        perm = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(5))
        ei, c, cu, filt = ei[:, perm], c[perm], cu[perm], filt[perm]
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, vec, c, cu, filt)]
        a, b = mod.messages(leaves[0], leaves[1], leaves[2], leaves[3], ei, leaves[4], leaves[5],
                            leaves[6], vec_is_zero)
        ga, gb = torch.randn_like(a), torch.randn_like(b)
        ref = torch.autograd.grad([a, b], leaves, [ga, gb], allow_unused=True)
        # the operators take v and dv in component-major order (compile._component_major)
        perm = _component_major(mod)
        vcm = v.index_select(1, perm)
        fcm = torch.cat([filt[:, :f], filt[:, f:].index_select(1, perm)], 1)
        a2, b2 = torch.ops.polyget.et_messages(q, k, vcm, vec, ei[0], ei[1], c, cu, fcm, heads,
                                               vec_is_zero)
        got = list(torch.ops.polyget.et_messages_backward(ga, gb, q, k, vcm, vec, ei[0], ei[1], c,
                                                          cu, fcm, heads, vec_is_zero))
        inv = torch.argsort(perm)
        got[2] = got[2].index_select(1, inv)
        got[6] = torch.cat([got[6][:, :f], got[6][:, f:].index_select(1, inv)], 1)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(a2, a.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(b2, b.detach(), rtol=0, atol=1e-10)
    for name, r, o in zip(["q", "k", "v", "vec", "c", "cu", "filt"], ref, got):
        r = torch.zeros_like(o) if r is None else r
        torch.testing.assert_close(o, r, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_fused_lean_energy_forces_equal_eager(chunks):
    """LeanEnergyForces with the fused operators (what CPU packages of ET models compile)
    gives the eager model's energies and edge gradients to 1e-10 (float64), padding rows zero."""
    from polyget.compile import LeanEnergyForces, pad_edges

    model = tiny_model(num_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    ne = g.edge_vec.shape[0]
    ei, ev = pad_edges(g.edge_index, g.edge_vec, chunks, 2 * model.cutoff)
    w = torch.linspace(0.5, 1.5, len(g.species), dtype=torch.float64)
    ae, fij = LeanEnergyForces(model, chunks, fused=True)(g.species, ei, ev.clone(), w)
    x = g.edge_vec.clone().requires_grad_(True)
    ref = model(g.species, g.edge_index, x)
    (ref_f,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(ae, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(fij[:ne], ref_f, rtol=0, atol=1e-10)
    assert torch.count_nonzero(fij[ne:]) == 0


def test_fused_lean_graph_traces_with_the_operators():
    """make_fx keeps the operators as single nodes (two per part and layer) and the traced
    graph runs another structure with the eager numbers."""
    from collections import Counter

    from polyget.compile import LeanEnergyForces, _trace, pad_edges

    model = tiny_model(num_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    ei, ev = pad_edges(g.edge_index, g.edge_vec, 4, 2 * model.cutoff)
    w = torch.ones(len(g.species), dtype=torch.float64)
    gm = _trace(LeanEnergyForces(model, 4, fused=True), (g.species, ei, ev, w))
    count = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    assert count["polyget.et_messages.default"] == 2 * 4
    assert count["polyget.et_messages_backward.default"] == 2 * 4
    g2 = atoms_to_graph(polymer_like(seed=3), model.elements, model.cutoff)
    ne = g2.edge_vec.shape[0]
    ei2, ev2 = pad_edges(g2.edge_index, g2.edge_vec, 4, 2 * model.cutoff)
    ae, fij = gm(g2.species, ei2, ev2.clone(), w)
    x = g2.edge_vec.clone().requires_grad_(True)
    ref = model(g2.species, g2.edge_index, x)
    (ref_f,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ae, ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(fij[:ne], ref_f, rtol=0, atol=1e-10)


def test_bad_input_errors():
    q, k, v, vec, ei, c, cu, filt = _inputs(5, 20, 8)
    op = torch.ops.polyget.et_messages
    with pytest.raises(RuntimeError, match="not heads"):
        op(q, k, v, vec, ei[0], ei[1], c, cu, filt, 3, False)
    with pytest.raises(RuntimeError, match="filt must be"):
        op(q, k, v, vec, ei[0], ei[1], c, cu, filt[:, :8], 2, False)
    with pytest.raises(RuntimeError, match="dtype"):
        op(q, k, v, vec.float(), ei[0], ei[1], c, cu, filt, 2, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(q.half(), k.half(), v.half(), vec.half(), ei[0], ei[1], c.half(), cu.half(),
           filt.half(), 2, False)
    with pytest.raises(RuntimeError, match="int64"):
        op(q, k, v, vec, ei[0].int(), ei[1], c, cu, filt, 2, False)


def test_fused_choice():
    """Which packages use the operators: CPU, ET with SiLU attention, edges in parts; asking
    for them elsewhere is an error that says why."""
    from polyget.compile import _fused_choice, fused_unsupported

    et = tiny_model()
    assert fused_unsupported(et) == ""
    assert _fused_choice(et, 8, "cpu", None) is True
    assert _fused_choice(et, 1, "cpu", None) is False
    assert _fused_choice(et, 8, "cuda", None) is False
    assert _fused_choice(et, 8, "cpu", False) is False
    with pytest.raises(ValueError, match="CPU only"):
        _fused_choice(et, 8, "cuda", True)
    with pytest.raises(ValueError, match="in parts"):
        _fused_choice(et, 1, "cpu", True)
    tanh = tiny_model(attn_activation="tanh")
    assert "SiLU" in fused_unsupported(tanh)
    assert _fused_choice(tanh, 8, "cpu", None) is False
    so3 = tiny_model(architecture="so3krates")
    assert "no ET layers" in fused_unsupported(so3)
