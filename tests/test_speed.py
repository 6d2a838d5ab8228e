"""The optimised network keeps the mathematics of the pre-speed one (issue 10).

tests/frozen_et.py is a frozen copy of the network before the speed work; the current model's
state_dict loads into it unchanged (same parameter names) and both must give the same per-atom
energies and edge gradients to 1e-10 in float64, whole-graph and in pieces, eager and
TorchScript.
"""

import numpy as np
import pytest
import torch

import frozen_et
from conftest import polymer_like, tiny_model
from polyget.nn import ModelConfig, PolyGET
from polyget.nn.graph import atoms_to_graph, evaluate
from polyget.nn.halo import run_pieces


def frozen_copy(model: PolyGET) -> torch.nn.Module:
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k in frozen_et.ModelConfig.__dataclass_fields__}
    ref = frozen_et.PolyGET(frozen_et.ModelConfig(**cfg)).to(torch.float64)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


def periodic(seed=0):
    a = polymer_like(seed)
    a.set_cell([7.5, 6.5, 7.0])
    a.set_pbc(True)
    a.wrap()
    return a


@pytest.mark.parametrize("kw", [{}, {"num_layers": 3, "rbf_type": "gauss"},
                                {"activation": "tanh", "attn_activation": "gelu", "num_heads": 2}])
@pytest.mark.parametrize("scripted", [False, True])
def test_equals_frozen_reference(kw, scripted):
    model = tiny_model(**kw)
    ref = frozen_copy(model)
    for atoms in (polymer_like(1), periodic(2)):
        g = atoms_to_graph(atoms, model.elements, model.cutoff)
        want = evaluate(ref, g, stress=True)
        got = evaluate(torch.jit.script(model) if scripted else model, g, stress=True)
        for key in ("atom_energies", "fij", "forces", "virial"):
            err = (got[key] - want[key]).abs().max().item()
            assert err < 1e-10, (key, err)
        # the pieces on the whole graph (what the C++ core runs per layer) agree too
        ae = run_pieces(model, g.species, g.edge_index, g.edge_vec, len(atoms), None)
        assert (ae - want["atom_energies"]).abs().max().item() < 1e-10


def test_paper_size_equals_frozen_reference():
    """The paper-size network (128 features, 6 layers, 8 heads, 32 RBF, 5 A)."""
    torch.manual_seed(3)
    model = PolyGET(ModelConfig()).double().eval()
    with torch.no_grad():  # non-trivial biases everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = frozen_copy(model)
    atoms = polymer_like(4)
    g = atoms_to_graph(atoms, model.elements, model.cutoff)
    want, got = evaluate(ref, g), evaluate(model, g)
    assert (got["atom_energies"] - want["atom_energies"]).abs().max().item() < 1e-10
    assert (got["fij"] - want["fij"]).abs().max().item() < 1e-10


def test_state_dict_keys_unchanged():
    """Checkpoints written before the speed work load (same names and shapes)."""
    model = tiny_model()
    ref = frozen_et.PolyGET(frozen_et.ModelConfig(**{k: v for k, v in model.config.to_dict().items()
                                                    if k in frozen_et.ModelConfig.__dataclass_fields__}))
    a = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b


def test_compiled_force_loss_gradients_equal_eager():
    """The unfolded training step (polyget.compile.CompiledForceLoss, here traced but not
    compiled, to keep the test short) gives the eager loss and parameter gradients."""
    from polyget.compile import compiled_force_loss

    model = tiny_model(num_layers=1, hidden_channels=8, num_heads=2, num_rbf=4).train()
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    target = torch.randn(len(g.species), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = evaluate(model, g, forces=True, create_graph=True)
    loss = 0.5 * ((out["forces"] - target) ** 2).mean()
    loss.backward()
    want = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    step = compiled_force_loss(model, g, compile=False)
    got = step(g, target, 0.5)
    assert abs(got.item() - loss.item()) < 1e-12
    for n, p in model.named_parameters():
        assert (p.grad - want[n]).abs().max().item() < 1e-12, n
    # another graph size through the same traced step
    g2 = atoms_to_graph(polymer_like(2)[:6], model.elements, model.cutoff)
    model.zero_grad(set_to_none=True)
    t2 = torch.zeros(6, 3, dtype=torch.float64)
    l2 = step(g2, t2)
    out = evaluate(model, g2, forces=True, create_graph=True)
    assert abs(l2.item() - (out["forces"] ** 2).mean().item()) < 1e-12


def test_traced_package_graph_scatters_with_a_broadcast_index():
    """The graph that AOTInductor compiles (energy and edge gradients, unfolded by make_fx)
    holds no index_add / index_put: every scatter-add is a scatter_reduce(sum) over an index
    broadcast along the feature axes (ATen's parallel kernel, bench/README.md), and the graph
    gives the eager model's numbers."""
    from collections import Counter

    from polyget.compile import EnergyForces, _trace

    model = tiny_model(num_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    w = torch.linspace(0.5, 1.5, len(g.species), dtype=torch.float64)
    gm = _trace(EnergyForces(model), (g.species, g.edge_index, g.edge_vec, w))
    ops = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    assert not [o for o in ops if "index_add" in o or "index_put" in o], ops
    assert sum(v for o, v in ops.items() if "scatter_reduce" in o) >= 4 * 3, ops
    for n in gm.graph.nodes:
        if n.op == "call_function" and "scatter_reduce" in str(n.target):
            assert n.args[4] == "sum" and n.kwargs.get("include_self", True)
    ae, fij = gm(g.species, g.edge_index, g.edge_vec.clone(), w)
    ev = g.edge_vec.clone().requires_grad_(True)
    ref = model(g.species, g.edge_index, ev)
    (ref_f,) = torch.autograd.grad((ref * w).sum(), ev)
    torch.testing.assert_close(ae, ref.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(fij, ref_f, rtol=0, atol=1e-12)


@pytest.mark.parametrize("inplace", [False, True])
def test_index_add_as_scatter_is_index_add(inplace):
    from polyget.compile import _index_add_as_scatter

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 5, dtype=torch.float64, generator=gen)
    src = torch.randn(40, 3, 5, dtype=torch.float64, generator=gen)
    idx = torch.randint(0, 7, (40,), generator=gen)
    want = x.clone().index_add_(0, idx, src, alpha=0.5)
    y = x.clone()
    got = _index_add_as_scatter(y, 0, idx, src, alpha=0.5, inplace=inplace)
    assert torch.equal(got, want)
    assert torch.equal(y, want if inplace else x)


def _need_ops(fused):
    from polyget import ops

    if fused and not ops.load():
        pytest.skip("libpolyget_ops.so not built (make setup)")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_lean_energy_forces_equal_eager(chunks, fused):
    """The package function with the edges of every layer in parts and the backward pass
    written out (compile.LeanEnergyForces, the default package of ET models), with the messages
    in Inductor-traceable torch ops or in polyget's fused operators (ops.py, what CPU packages
    compile), gives the eager model's energies and edge gradients to 1e-10 (float64), for edge
    counts padded to a multiple of the parts (compile.pad_edges): the padding's gradient rows
    are exactly zero."""
    from polyget.compile import LeanEnergyForces, pad_edges

    _need_ops(fused)

    model = tiny_model(num_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    ne = g.edge_vec.shape[0]
    ei, ev = pad_edges(g.edge_index, g.edge_vec, chunks, 2 * model.cutoff)
    assert ev.shape[0] % chunks == 0 and ev.shape[0] - ne < chunks
    w = torch.linspace(0.5, 1.5, len(g.species), dtype=torch.float64)
    ae, fij = LeanEnergyForces(model, chunks, fused=fused)(g.species, ei, ev.clone(), w)
    x = g.edge_vec.clone().requires_grad_(True)
    ref = model(g.species, g.edge_index, x)
    (ref_f,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(ae, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(fij[:ne], ref_f, rtol=0, atol=1e-10)
    assert torch.count_nonzero(fij[ne:]) == 0


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_lean_mirrored_equals_eager(chunks, holes):
    """Edges in the mirrored layout (compile.mirror_edges; the default of fused packages): an
    edge and its reverse share one filter row, computed once. Energies, forces and virial equal
    the eager model's to 1e-10 (float64), also with edges whose reverse is missing (like edges
    to ghost atoms: ``holes``); the padding rows' gradients are zero. The per-edge gradients
    differ (a pair's filter gradient lands on its first edge), their sums over atoms do not."""
    from polyget.compile import LeanEnergyForces, _forces_virial, mirror_edges

    _need_ops(True)
    model = tiny_model(num_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    ei, ev = g.edge_index, g.edge_vec
    if holes:
        keep = torch.arange(ev.shape[0]) % 7 != 3
        ei, ev = ei[:, keep], ev[keep]
    n = len(g.species)
    mei, mev, slot = mirror_edges(ei, ev, 2 * chunks, 2 * model.cutoff)
    rows = mev.shape[0] // 2
    assert rows % chunks == 0 and torch.equal(mev[slot], ev) and torch.equal(mei[:, slot], ei)
    lead = slot[slot < rows]
    second = slot[slot >= rows] - rows
    assert set(second.tolist()) <= set(lead.tolist())  # every second-half edge has its first
    assert torch.equal(mev[rows + second], -mev[second])
    if not holes:
        assert len(second) == ev.shape[0] // 2  # a molecule's full list: all edges paired
    w = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    ae, fm = LeanEnergyForces(model, chunks, fused=True, mirrored=True)(g.species, mei,
                                                                        mev.clone(), w)
    pad = torch.ones(mev.shape[0], dtype=torch.bool)
    pad[slot] = False
    assert torch.count_nonzero(fm[pad]) == 0
    x = ev.clone().requires_grad_(True)
    ref = model(g.species, ei, x)
    (ref_f,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(ae, ref, rtol=0, atol=1e-10)
    for got, want in zip(_forces_virial(ei, ev, fm[slot], n), _forces_virial(ei, ev, ref_f, n)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_mirror_edges_pairs_only_reverses():
    """mirror_edges joins (i, j, v) with (j, i, -v) only: several periodic images of one atom
    pair, self-images and edges whose reverse has another vector stay unpaired (own rows)."""
    from polyget.compile import mirror_edges

    ei = torch.tensor([[0, 1, 0, 0, 2, 2, 3, 4],
                       [1, 0, 2, 2, 0, 0, 4, 3]])
    ev = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0],                # a pair
                       [0, 1.0, 0], [0, -2.0, 0], [0, -1.0, 0], [0, 2.0, 0],  # two images
                       [0, 0, 1.0], [0, 0, -1.1]], dtype=torch.float64)  # not opposite
    mei, mev, slot = mirror_edges(ei, ev, 2, 10.0)
    rows = mev.shape[0] // 2
    assert rows == 7  # 1 pair + 6 unpaired edges
    assert slot[0] == 0 and slot[1] == rows
    assert bool((slot[2:] < rows).all())
    assert torch.equal(mev[slot], ev)
    assert float(mev[rows + 1:, 0].min()) == 10.0  # padding edges face the unpaired rows


@pytest.mark.parametrize("fused", [False, True])
def test_lean_package_graph_traces_and_equals_eager(fused):
    """make_fx unfolds LeanEnergyForces into plain aten ops with the scatters as
    scatter_reduce (as the whole-graph package), or keeps polyget's fused operators as single
    nodes (two per part and layer), and the traced graph runs other edge counts (multiples of
    the parts) with the eager numbers."""
    from collections import Counter

    from polyget.compile import LeanEnergyForces, _trace, pad_edges

    _need_ops(fused)

    model = tiny_model(num_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    g = atoms_to_graph(polymer_like(), model.elements, model.cutoff)
    ei, ev = pad_edges(g.edge_index, g.edge_vec, 4, 2 * model.cutoff)
    w = torch.ones(len(g.species), dtype=torch.float64)
    gm = _trace(LeanEnergyForces(model, 4, fused=fused), (g.species, ei, ev, w))
    ops = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    assert not [o for o in ops if "index_add" in o or "index_put" in o], ops
    if fused:
        assert ops["polyget.et_messages.default"] == 2 * 4
        assert ops["polyget.et_messages_backward.default"] == 2 * 4
    g2 = atoms_to_graph(polymer_like(seed=3), model.elements, model.cutoff)
    ne = g2.edge_vec.shape[0]
    ei2, ev2 = pad_edges(g2.edge_index, g2.edge_vec, 4, 2 * model.cutoff)
    ae, fij = gm(g2.species, ei2, ev2.clone(), w)
    x = g2.edge_vec.clone().requires_grad_(True)
    ref = model(g2.species, g2.edge_index, x)
    (ref_f,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ae, ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(fij[:ne], ref_f, rtol=0, atol=1e-10)


def test_lean_chunks_by_architecture():
    """ET models get edges in parts by default; SO3krates (no per-layer messages) the
    whole-graph package; asking it for parts is an error that says why."""
    from polyget.compile import AOTI_CHUNKS, lean_chunks

    assert lean_chunks(tiny_model()) == AOTI_CHUNKS
    assert lean_chunks(tiny_model(), 1) == 1
    so3 = tiny_model(architecture="so3krates")
    assert lean_chunks(so3) == 1
    with pytest.raises(ValueError, match="need an ET model"):
        lean_chunks(so3, 4)
    with pytest.raises(ValueError, match=">= 1"):
        lean_chunks(tiny_model(), 0)
