"""Python access to the polyget C++ core (``polyget._core``, pybind11 + libtorch).

The core runs an exported ``NAME.jit.pt`` (see docs/interfaces.md, section 3) on an edge list,
exactly as the LAMMPS ``pair_style polyget`` does::

    from polyget.native import NativeModel
    model = NativeModel("potentials/polyget.jit.pt", device="cpu")
    energy, atom_energies, fij = model.compute(species, edge_index, edge_vec, nlocal)
    # forces: F[i] += fij[k], F[j] -= fij[k] for edge k = (i, j); virial = -sum edge_vec (x) fij

Build the module with ``make setup`` (or ``bash scripts/build_native.sh``).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

try:
    import torch  # noqa: F401  (loads libtorch before the extension needs it)
    from polyget import _core
except ImportError as exc:  # pragma: no cover - exercised only when the module is not built
    _core = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

__all__ = ["NativeModel", "ModelError", "available", "cuda_available"]

if _core is not None:
    ModelError = _core.ModelError
else:

    class ModelError(ValueError):
        """A model file or an input that the C++ core refuses (same as polyget._core.ModelError)."""


def available() -> bool:
    """True when the compiled module ``polyget._core`` can be imported."""
    return _core is not None


def cuda_available() -> bool:
    """True when ``polyget._core`` was built with CUDA libtorch and a GPU is visible."""
    return _core is not None and _core.cuda_available()


def _require_core():
    if _core is None:
        raise ImportError(
            "polyget._core (the C++ core) is not built or cannot be loaded "
            f"({_IMPORT_ERROR}). Build it with `make setup` or `bash scripts/build_native.sh` "
            "(needs cmake, a C++17 compiler, torch and pybind11 in this Python), "
            "or use the pure-Python backend (backend='python')."
        )
    return _core


def _to_numpy(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class NativeModel:
    """A polyget TorchScript export (``NAME.jit.pt``) run by the C++ core.

    Parameters
    ----------
    path:
        the ``NAME.jit.pt`` file written by ``python/export.py``.
    device:
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    """

    def __init__(self, path, device: str = "cpu"):
        core = _require_core()
        self.path = str(path)
        self._model = core.Model(self.path, str(device))
        from .contract import keep_freed_memory

        keep_freed_memory()  # as pair_style polyget does (cpp/README.md, "Memory")
        self.elements = list(self._model.elements)
        self.cutoff = float(self._model.cutoff)
        self.num_layers = int(self._model.num_layers)
        # edges an atom's energy reaches (halo = receptive_hops * cutoff for domain decomposition)
        self.receptive_hops = int(self._model.receptive_hops)
        self.dtype = str(self._model.dtype)
        self.device = str(self._model.device)
        self.load_seconds = float(self._model.load_seconds)

    @property
    def uses_aoti(self) -> bool:
        """compute() runs the AOTInductor package (at the current ``torch.get_num_threads()``)."""
        return bool(self._model.uses_aoti)

    @property
    def aoti_status(self) -> str:
        """Which form compute() runs (AOTInductor package or TorchScript) and why."""
        return str(self._model.aoti_status)

    @property
    def aoti_thread_counts(self) -> list:
        """Thread counts of the AOTInductor packages that match this file (0: any)."""
        return list(self._model.aoti_thread_counts)

    @property
    def metadata(self) -> dict:
        """The contract metadata as the C++ core reads it (same keys as
        :func:`polyget.contract.read_metadata`, without the Python-only provenance)."""
        return dict(self._model.metadata)

    def compute(
        self, species, edge_index, edge_vec, nlocal: int | None = None
    ) -> Tuple[float, Any, Any]:
        """Energy, per-atom energies and fij = dE/d(edge_vec).

        species: [N] int64 element indices (into ``self.elements``); edge_index: [2, E] int64,
        full list (row 0 centre i, row 1 neighbour j); edge_vec: [E, 3] float, r_j - r_i in
        Angstrom; nlocal: atoms whose energies are summed (default: all N).

        Returns ``(energy: float, atom_energies [N], fij [E, 3])`` in float64, as torch tensors
        when ``edge_vec`` is a torch tensor, otherwise as numpy arrays.
        """
        as_torch = isinstance(edge_vec, torch.Tensor)
        sp = _to_numpy(species, np.int64).reshape(-1)
        ei = _to_numpy(edge_index, np.int64)
        ev = _to_numpy(edge_vec, np.float64)
        if ei.size == 0:
            ei = ei.reshape(2, 0)
            ev = ev.reshape(0, 3)
        n = -1 if nlocal is None else int(nlocal)
        energy, atom_energies, fij = self._model.compute(sp, ei, ev, n)
        if as_torch:
            return float(energy), torch.from_numpy(atom_energies), torch.from_numpy(fij)
        return float(energy), atom_energies, fij

    def __repr__(self) -> str:
        return (
            f"NativeModel({self.path!r}, device={self.device!r}, elements={self.elements}, "
            f"cutoff={self.cutoff}, num_layers={self.num_layers}, dtype={self.dtype})"
        )
