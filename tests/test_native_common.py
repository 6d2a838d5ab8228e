"""Shared fixtures for the native-path tests (no tests here).

- ``ToyMessagePassing``: an analytic TorchScript model with the polyget forward contract
  (species, edge_index, edge_vec) -> per-atom energies: a Morse pair term plus ``num_layers``
  rounds of smooth scalar messages, so that the MPI halo (num_layers * cutoff) really matters.
- ``export_toy``: writes it as a ``NAME.jit.pt`` with the contract metadata records
  (polyget.contract, docs/interfaces.md 3).
- ``reference``: energy, forces, stress and per-atom energies from any such TorchScript module,
  by autograd on positions and strain (the independent Python path the C++ core must match).
- ``ring_polymer``: a polyethylene-like loop (CH2)n without RDKit, optionally in a periodic box.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np
import torch

from polyget import contract
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import primitive_neighbor_list

REPO = Path(__file__).resolve().parents[1]

TOY_ELEMENTS = ["H", "C", "O"]


class ToyMessagePassing(torch.nn.Module):
    """Morse pairs + ``num_layers`` scalar message-passing rounds, smooth at the cutoff."""

    def __init__(self, n_elements: int = 3, cutoff: float = 4.0, num_layers: int = 2,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.elements: List[str] = TOY_ELEMENTS[:n_elements]
        self.cutoff = float(cutoff)
        self.num_layers = int(num_layers)
        # no neighbour embedding: energies reach exactly num_layers edges (read by export.py)
        self.receptive_hops = int(num_layers)
        self.register_buffer("offset", torch.linspace(-1.0, -3.0, n_elements, dtype=dtype))
        self.register_buffer("h0", torch.linspace(0.3, 0.9, n_elements, dtype=dtype))
        self.register_buffer("depth", torch.linspace(0.02, 0.06, n_elements, dtype=dtype))
        self.r0 = 1.6
        self.alpha = 1.2

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vec: torch.Tensor) -> torch.Tensor:
        i = edge_index[0]
        j = edge_index[1]
        r = torch.sqrt((edge_vec * edge_vec).sum(dim=1))
        inside = (r < self.cutoff).to(edge_vec.dtype)
        fc = 0.5 * (torch.cos(math.pi * torch.clamp(r / self.cutoff, max=1.0)) + 1.0) * inside
        d = torch.sqrt(self.depth[species[i]] * self.depth[species[j]])
        x = 1.0 - torch.exp(-self.alpha * (r - self.r0))
        pair = d * (x * x - 1.0) * fc
        zeros = torch.zeros(species.shape[0], dtype=edge_vec.dtype, device=edge_vec.device)
        energy = self.offset[species] + 0.5 * zeros.index_add(0, i, pair)
        h = self.h0[species]
        w = torch.exp(-0.5 * r) * fc
        for _ in range(self.num_layers):
            h = h + 0.5 * zeros.index_add(0, i, w * torch.tanh(h[j]))
        return energy + 0.1 * h * h


def toy_metadata(model: torch.nn.Module, elements=TOY_ELEMENTS, **overrides) -> dict:
    dtype = next(iter(model.buffers())).dtype
    meta = {
        "format": "polyget-torchscript",
        "format_version": contract.TORCHSCRIPT_VERSION,
        "elements": list(elements),
        "cutoff": float(model.cutoff),
        "num_layers": int(model.num_layers),
        "receptive_hops": int(model.receptive_hops),
        "dtype": "float64" if dtype == torch.float64 else "float32",
        "units": {"energy": "eV", "length": "Angstrom"},
        "min_distance": contract.DEFAULT_MIN_DISTANCE,
        "polyget_version": "0.1.0",
        "torch_version": torch.__version__.split("+")[0],
    }
    meta.update(overrides)
    return meta


def toy_records(metadata: dict, drop=()) -> dict:
    """The extra files of an export, written without the contract's checks (for error tests);
    ``drop``: contract keys left out."""
    meta = dict(metadata)
    units = meta.pop("units", contract.UNITS)
    meta.setdefault("energy_unit", units["energy"])
    meta.setdefault("length_unit", units["length"])
    out = {}
    for key, kind in contract.METADATA_KEYS:
        if key in drop or key not in meta:
            continue
        v = meta[key]
        out[contract.RECORD_PREFIX + key] = " ".join(v) if kind == "list" else (
            repr(float(v)) if kind == "float" else str(v))
    return out


def save_jit(module: torch.nn.Module, path, metadata: dict | None, drop=()) -> Path:
    """torch.jit.save with the contract metadata records (None: no metadata at all)."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    extra = {} if metadata is None else toy_records(metadata, drop)
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return Path(path)


def export_toy(path, cutoff=4.0, num_layers=2, dtype=torch.float64, meta=None) -> Path:
    """The toy model as NAME.jit.pt; `meta` overrides metadata entries (for error tests)."""
    model = ToyMessagePassing(len(TOY_ELEMENTS), cutoff, num_layers, dtype)
    return save_jit(model, path, toy_metadata(model, **(meta or {})))


# --------------------------------------------------------------------------------------------
# the reference path: autograd on positions (and strain) in Python
# --------------------------------------------------------------------------------------------

def edges(atoms: Atoms, cutoff: float):
    """Full neighbour list: edge_index [2, E], shifts S (edge_vec = x_j - x_i + S @ cell)."""
    i, j, S = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions,
                                      cutoff, self_interaction=False)
    return np.stack([i, j]).astype(np.int64), S.astype(np.float64)


def species_of(atoms: Atoms, elements=TOY_ELEMENTS) -> np.ndarray:
    return np.array([elements.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)


def reference(module, atoms: Atoms, elements=TOY_ELEMENTS, cutoff=None):
    """Energy, forces [N,3], stress (ASE Voigt, eV/A^3; None if not periodic), atom energies."""
    cutoff = float(module.cutoff if cutoff is None else cutoff)
    ei, S = edges(atoms, cutoff)
    dtype = torch.float64
    pos = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
    deform = torch.eye(3, dtype=dtype) + strain
    p = pos @ deform
    c = cell @ deform
    eit = torch.from_numpy(ei)
    vec = p[eit[1]] - p[eit[0]] + torch.from_numpy(S) @ c
    sp = torch.from_numpy(species_of(atoms, elements))
    ae = module(sp, eit, vec)
    energy = ae.sum()
    gpos, gstrain = torch.autograd.grad(energy, [pos, strain])
    stress = None
    if atoms.pbc.all():
        s = (gstrain / atoms.get_volume()).detach().numpy()
        s = 0.5 * (s + s.T)
        stress = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    return (float(energy.detach()), -gpos.detach().numpy(), stress, ae.detach().numpy())


class ReferenceCalculator(Calculator):
    """ASE calculator on the Python reference path (positions autograd)."""

    implemented_properties = ["energy", "forces", "stress", "energies", "free_energy"]

    def __init__(self, module, elements=TOY_ELEMENTS, **kw):
        super().__init__(**kw)
        self.module = module
        self.elements = list(elements)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e, f, s, ae = reference(self.module, self.atoms, self.elements)
        self.results = {"energy": e, "free_energy": e, "forces": f, "energies": ae}
        if s is not None:
            self.results["stress"] = s


# --------------------------------------------------------------------------------------------
# structures
# --------------------------------------------------------------------------------------------

def ring_polymer(n_units: int = 20, vacuum: float = 8.0, periodic: bool = False,
                 oxygen_every: int = 0, seed: int = 0, rattle: float = 0.05) -> Atoms:
    """A (CH2)n loop (a polyethylene 'loop'); every `oxygen_every`-th CH2 becomes O (an ether)."""
    cc = 1.54
    radius = cc / (2.0 * math.sin(math.pi / n_units))
    symbols, pos = [], []
    for k in range(n_units):
        phi = 2.0 * math.pi * k / n_units
        zig = 0.25 * (-1) ** k
        centre = np.array([(radius + zig) * math.cos(phi), (radius + zig) * math.sin(phi), 0.0])
        if oxygen_every and k % oxygen_every == oxygen_every - 1:
            symbols.append("O")
            pos.append(centre)
            continue
        symbols.append("C")
        pos.append(centre)
        out = np.array([math.cos(phi), math.sin(phi), 0.0]) * (1 if k % 2 == 0 else -1)
        for sz in (+1.0, -1.0):
            symbols.append("H")
            pos.append(centre + 0.55 * out + np.array([0.0, 0.0, 0.9 * sz]))
    atoms = Atoms(symbols, positions=np.array(pos))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    atoms.center(vacuum=vacuum)
    if periodic:
        atoms.pbc = True
    return atoms


def cyclooctane_15_loop(seed: int = 0) -> Atoms:
    """360-atom stand-in for the cyclooctane 15-loop: a (CH2)120 loop."""
    return ring_polymer(120, vacuum=10.0, seed=seed, rattle=0.03)


def periodic_melt(seed: int = 1) -> Atoms:
    """A small dense periodic box: two short loops, one with ether oxygens, rattled."""
    a = ring_polymer(10, vacuum=0.0, oxygen_every=3, seed=seed, rattle=0.08)
    b = ring_polymer(8, vacuum=0.0, seed=seed + 1, rattle=0.08)
    b.positions += np.array([0.0, 0.0, 3.2])
    atoms = a + b
    atoms.center(vacuum=1.6)
    atoms.pbc = True
    return atoms
