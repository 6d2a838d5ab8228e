"""polyget's fused message operators (cpp/ops, python/polyget/ops.py): their values and
gradients equal the eager ET layer's to 1e-10 in float64, for both thread counts and for
layer 0 (zero input vectors); bad input gets a clear error. (The packages' function with them,
LeanEnergyForces(fused=True), is checked against the eager model in tests/test_speed.py.)"""

import pytest
import torch

from conftest import tiny_model
from polyget import ops
from polyget.compile import _component_major
from polyget.nn.attention import EquivariantAttention

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


@pytest.mark.parametrize("threads,split", [(1, "atoms"), (2, "atoms"), (3, "atoms"),
                                           (2, "edges")])
@pytest.mark.parametrize("vec_is_zero", [False, True])
@pytest.mark.parametrize("f,heads", [(32, 4), (24, 4), (16, 1)])
def test_et_messages_equal_eager_layer(threads, split, vec_is_zero, f, heads, monkeypatch):
    """Forward sums and every input gradient of polyget::et_messages[_backward] against
    EquivariantAttention.messages and autograd (float64, 1e-10), heads of 8, 6 and 16 channels
    (vectorised loops with and without remainders), edges in any order (so most neighbours j
    belong to another thread's atoms), threads splitting atoms or edges (POLYGET_OPS_SPLIT);
    the operators take v and the dv filters in component-major column order."""
    monkeypatch.setenv("POLYGET_OPS_SPLIT", split)
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


def test_et_messages_float32_close_to_float64():
    """float32 (what packages run in LAMMPS): the operators' values and gradients within
    float32 rounding of the float64 ones."""
    f, heads = 32, 4
    q, k, v, vec, ei, c, cu, filt = _inputs(40, 900, f)
    args64 = (q, k, v, vec, ei[0], ei[1], c, cu, filt)
    args32 = tuple(t.float() if t.is_floating_point() else t for t in args64)
    out64 = torch.ops.polyget.et_messages(*args64, heads, False)
    out32 = torch.ops.polyget.et_messages(*args32, heads, False)
    ga = torch.randn_like(out64[0])
    gb = torch.randn_like(out64[1])
    g64 = torch.ops.polyget.et_messages_backward(ga, gb, *args64, heads, False)
    g32 = torch.ops.polyget.et_messages_backward(ga.float(), gb.float(), *args32, heads, False)
    for a, b in list(zip(out64, out32)) + list(zip(g64, g32)):
        scale = max(1.0, float(a.abs().max()))
        assert float((a - b.double()).abs().max()) < 2e-5 * scale


@pytest.mark.parametrize("threads", [1, 2])
def test_et_messages_mirrored_filter_rows(threads):
    """Mirrored edges (filt of E/2 rows, edge E/2 + r reading row r): the same sums and
    gradients as with the rows written out for every edge; gfilt stays one row per edge."""
    f, heads, e = 32, 4, 640
    q, k, v, vec, ei, c, cu, filt = _inputs(31, e, f)
    half = filt[: e // 2]
    full = torch.cat([half, half], 0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for vz in (False, True):
            a = torch.ops.polyget.et_messages(q, k, v, vec, ei[0], ei[1], c, cu, half, heads, vz)
            b = torch.ops.polyget.et_messages(q, k, v, vec, ei[0], ei[1], c, cu, full, heads, vz)
            ga, gb = torch.randn_like(a[0]), torch.randn_like(a[1])
            g1 = torch.ops.polyget.et_messages_backward(ga, gb, q, k, v, vec, ei[0], ei[1], c,
                                                        cu, half, heads, vz)
            g2 = torch.ops.polyget.et_messages_backward(ga, gb, q, k, v, vec, ei[0], ei[1], c,
                                                        cu, full, heads, vz)
            for x, y in list(zip(a, b)) + list(zip(g1, g2)):
                assert torch.equal(x, y)
            assert g1[6].shape == (e, 4 * f)
    finally:
        torch.set_num_threads(old)
    with pytest.raises(RuntimeError, match="mirrored"):
        torch.ops.polyget.et_messages(q, k, v, vec, ei[0], ei[1], c, cu, filt[:100], heads, False)
