"""ASE calculator for polyget models (checkpoints or exported TorchScript files).

>>> from polyget.ase import PolyGETCalculator
>>> atoms.calc = PolyGETCalculator("potentials/polyget-mini.ckpt", device="cpu", dtype="float64")
>>> atoms.get_forces()
"""

from typing import List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .io import load_any, parse_dtype
from .nn.graph import Graph, StructureError, atoms_to_graph, evaluate


class PolyGETCalculator(Calculator):
    """Energy, forces, per-atom energies and (periodic cells) stress from a polyget model.

    Parameters
    ----------
    model : path to a ``.ckpt`` checkpoint or an exported ``.jit.pt`` file
    device : ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...)
    dtype : ``"float64"`` (default; use for tests and NVE) or ``"float32"`` (faster)
    backend : ``"torch"`` (Python) or ``"native"`` (the C++ core ``polyget._core``; needs a
        ``.jit.pt`` file; runs its AOTInductor package when export wrote one)
    compile : ``torch.compile`` the model (``backend="torch"`` with a checkpoint): faster
        steps after a one-time compilation of tens of seconds (dynamic shapes: changing atom
        and edge counts do not recompile). Off by default.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float64", backend: str = "torch",
                 compile: bool = False, **kwargs):
        super().__init__(**kwargs)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} asked for, but torch.cuda.is_available() is False; use device='cpu'")
        if backend not in ("torch", "native"):
            raise ValueError(f"backend must be 'torch' or 'native', got {backend!r}")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.backend = backend
        self.model_path = str(model)
        self.model, self.elements, self.cutoff, self.metadata = load_any(model, device=device, dtype=self.dtype)
        self.native = None
        if compile and backend == "torch":
            if isinstance(self.model, torch.jit.ScriptModule):
                raise ValueError("compile=True needs a checkpoint (an eager model), not an exported "
                                 "TorchScript file; or use backend='native'")
            from .compile import compile_model

            self.model = compile_model(self.model)
        if backend == "native":
            from .native import NativeModel

            self.native = NativeModel(str(model), device=device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise StructureError("stress needs a periodic cell in all three directions (atoms.pbc all True)")
        graph = atoms_to_graph(atoms, self.elements, self.cutoff)
        if self.native is not None:
            energy, atom_e, fij = self.native.compute(graph.species, graph.edge_index, graph.edge_vec, len(atoms))
            fij = torch.as_tensor(np.asarray(fij), dtype=torch.float64)
            atom_e = np.asarray(atom_e, dtype=np.float64)
            ei = graph.edge_index
            f = torch.zeros(len(atoms), 3, dtype=torch.float64).index_add(0, ei[0], fij).index_add(0, ei[1], -fij)
            virial = (graph.edge_vec.unsqueeze(2) * fij.unsqueeze(1)).sum(0)
            energy = float(energy)
            forces = f.numpy()
        else:
            g = graph.to(self.device, self.dtype)
            out = evaluate(self.model, g, forces=True, stress=want_stress)
            energy = float(out["energy"].detach().sum())
            atom_e = out["atom_energies"].detach().cpu().double().numpy()
            forces = out["forces"].detach().cpu().double().numpy()
            virial = out["virial"][0].detach().cpu().double() if want_stress else None
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise FloatingPointError("the model returned NaN/inf energies or forces; the structure is probably "
                                     "far outside the training data (check for broken bonds or wrong units)")
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = atom_e
        self.results["forces"] = forces
        if want_stress:
            # sigma = (1/V) dE/d(strain) = (1/V) sum_e r_e (x) dE/dr_e; symmetrise (numerical noise)
            w = np.asarray(virial, dtype=np.float64)
            sigma = 0.5 * (w + w.T) / atoms.get_volume()
            self.results["stress"] = sigma.flat[[0, 4, 8, 5, 2, 1]]
