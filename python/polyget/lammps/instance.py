"""What the ML-IAP data object does not say about the running LAMMPS: ranks, units, atom IDs,
the step, the ghost cutoff, ``special_bonds``, variables. The only ctypes code of polyget.

``pair_style mliap unified`` hands polyget a Cython ``MLIAPUnifiedInterface`` whose first
member (after ``PyObject_HEAD``) points at the C++ ``MLIAPDummyModel``; its ``Pointers`` base
holds the ``LAMMPS *``. From there everything is read through LAMMPS' public C library API
(``lammps_extract_*``), except the ``Comm`` members (mode, ghost cutoff) that the API does not
expose. Every layout assumption is checked against the C API before it is used; when a check
fails :func:`attach` raises :class:`InstanceError` with the reason: polyget refuses to run what
it cannot check (it never assumes ``units metal``).

Outside LAMMPS (the ML-IAP object driven by tests or scripts with ``interface = None``),
:class:`Standalone` answers: one process, units metal, local indices as atom IDs.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence, Tuple

import numpy as np


class InstanceError(RuntimeError):
    """The LAMMPS instance cannot be inspected (the reason says which check failed)."""


class Standalone:
    """Context of an ML-IAP object called outside LAMMPS (no interface object)."""

    inside_lammps = False
    rank = 0
    nprocs = 1
    units = "metal"
    reason = "not running inside LAMMPS (no ML-IAP interface object)"

    def __init__(self):
        self._step = -1

    def step(self) -> int:
        self._step += 1
        return self._step

    def tags(self, n: int) -> np.ndarray:
        return np.arange(1, n + 1, dtype=np.int64)

    def ghost_cutoff(self) -> Optional[float]:
        return None  # unknown

    def skin(self) -> float:
        return 2.0

    def special_bonds_state(self) -> Tuple[int, Sequence[float], Sequence[float]]:
        return 0, (1.0,) * 4, (1.0,) * 4

    def variable(self, name: str) -> Optional[float]:
        return None

    def mpi_comm(self):
        return None


class LammpsInstance:
    """A LAMMPS instance reached from the ML-IAP interface object (see module docstring)."""

    inside_lammps = True
    # Cython object: PyObject_HEAD (16 bytes), then `MLIAPDummyModel *model`
    _IFACE_MODEL_OFFSET = 16
    # class Pointers: vptr, LAMMPS *lmp, then 21 references (stored as pointers)
    _PTRS_LMP_OFFSET = 8
    _PTRS_END = 8 + 8 + 21 * 8
    # class LAMMPS: memory, error, universe, input, atom, update, neighbor, comm, ...
    _LMP_COMM_OFFSET = 7 * 8
    # class Comm (after Pointers): style, layout, mode, me, nprocs, nthreads, ..., cutghostuser
    _COMM_CUTGHOSTUSER_OFFSET = _PTRS_END + 48

    def __init__(self, interface: Any):
        # (the Kokkos interface has the same first member; never checked on a Kokkos build)
        if interface is None or type(interface).__name__ not in (
                "MLIAPUnifiedInterface", "MLIAPUnifiedInterfaceKokkos"):
            raise InstanceError("no ML-IAP interface object (%s)" % type(interface).__name__)
        lib = ctypes.CDLL(None)
        for name in ("lammps_extract_setting", "lammps_extract_global", "lammps_extract_atom",
                     "lammps_get_mpi_comm", "lammps_extract_variable", "lammps_free"):
            if not hasattr(lib, name):
                raise InstanceError("LAMMPS library symbol %s is not visible in this process"
                                    % name)
        lib.lammps_extract_setting.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_setting.restype = ctypes.c_int
        lib.lammps_extract_global.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_global.restype = ctypes.c_void_p
        lib.lammps_extract_atom.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_atom.restype = ctypes.c_void_p
        lib.lammps_get_mpi_comm.argtypes = [ctypes.c_void_p]
        lib.lammps_get_mpi_comm.restype = ctypes.c_int
        lib.lammps_extract_variable.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.lammps_extract_variable.restype = ctypes.c_void_p
        lib.lammps_free.argtypes = [ctypes.c_void_p]
        lib.lammps_free.restype = None

        model = _read_ptr(id(interface) + self._IFACE_MODEL_OFFSET)
        if not model:
            raise InstanceError("the ML-IAP model pointer is NULL")
        lmp = _read_ptr(model + self._PTRS_LMP_OFFSET)
        # the references that follow `lmp` point at consecutive members of the LAMMPS object
        refs = [_read_ptr(model + 16 + 8 * k) for k in range(4)]
        if not lmp or refs != [lmp + 8 * k for k in range(4)]:
            raise InstanceError("unexpected object layout (MLIAPModel -> LAMMPS)")
        comm = _read_ptr(lmp + self._LMP_COMM_OFFSET)
        if not comm or _read_ptr(comm + self._PTRS_LMP_OFFSET) != lmp:
            raise InstanceError("unexpected object layout (LAMMPS -> Comm)")
        self.lib, self.ptr, self._comm = lib, lmp, comm
        me = self.setting("world_rank")
        nprocs = self.setting("world_size")
        ints = (ctypes.c_int * 5).from_address(comm + self._PTRS_END)
        style, layout, mode, c_me, c_nprocs = list(ints)
        if (c_me, c_nprocs) != (me, nprocs) or style not in (0, 1) or layout not in (0, 1, 2) \
                or mode not in (0, 1):
            raise InstanceError("unexpected object layout (Comm members)")
        self.rank, self.nprocs, self.comm_mode = me, nprocs, mode
        self.units = self.global_string("units")
        if not self.units:
            raise InstanceError("cannot read the unit style")

    # --- C API wrappers
    def setting(self, key: str) -> int:
        return int(self.lib.lammps_extract_setting(self.ptr, key.encode()))

    def global_double(self, key: str) -> float:
        p = self.lib.lammps_extract_global(self.ptr, key.encode())
        return float(ctypes.c_double.from_address(p).value) if p else float("nan")

    def global_int64(self, key: str) -> int:
        p = self.lib.lammps_extract_global(self.ptr, key.encode())
        return int(ctypes.c_int64.from_address(p).value) if p else 0

    def global_string(self, key: str) -> str:
        p = self.lib.lammps_extract_global(self.ptr, key.encode())
        return ctypes.string_at(p).decode() if p else ""

    def step(self) -> int:
        return self.global_int64("ntimestep")

    def tags(self, n: int) -> np.ndarray:
        p = self.lib.lammps_extract_atom(self.ptr, b"id")
        if not p or n == 0:
            return np.zeros(0, dtype=np.int64)
        ctype = ctypes.c_int64 if self.setting("tagint") == 8 else ctypes.c_int32
        return np.ctypeslib.as_array((ctype * n).from_address(p)).astype(np.int64)

    def special_bonds_state(self) -> Tuple[int, Sequence[float], Sequence[float]]:
        """(number of bonds, special_lj[0..3], special_coul[0..3])."""
        nbonds = self.global_int64("nbonds") if self.setting("molecule_flag") else 0
        lj = self.lib.lammps_extract_global(self.ptr, b"special_lj")
        coul = self.lib.lammps_extract_global(self.ptr, b"special_coul")
        if not lj or not coul:
            raise InstanceError("cannot read special_lj/special_coul")
        return (nbonds, list((ctypes.c_double * 4).from_address(lj)),
                list((ctypes.c_double * 4).from_address(coul)))

    def skin(self) -> float:
        return self.global_double("neigh_skin")

    def ghost_cutoff(self) -> float:
        """The distance out to which this rank holds ghost atoms (Comm::get_comm_cutoff)."""
        cutghostuser = ctypes.c_double.from_address(
            self._comm + self._COMM_CUTGHOSTUSER_OFFSET).value
        return max(cutghostuser, self.global_double("neigh_cutmax"))

    def variable(self, name: str) -> Optional[float]:
        """Value of an equal-style variable, None if it is not defined."""
        # ask first: lammps_extract_variable prints an ERROR line for an unknown name
        if hasattr(self.lib, "lammps_has_id"):
            self.lib.lammps_has_id.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
            self.lib.lammps_has_id.restype = ctypes.c_int
            if not self.lib.lammps_has_id(self.ptr, b"variable", name.encode()):
                return None
        p = self.lib.lammps_extract_variable(self.ptr, name.encode(), None)
        if not p:
            return None
        value = ctypes.c_double.from_address(p).value
        self.lib.lammps_free(p)
        return float(value)

    def mpi_comm(self):
        try:
            from mpi4py import MPI
        except Exception:
            return None
        try:
            return MPI.Comm.f2py(self.lib.lammps_get_mpi_comm(self.ptr))
        except Exception:
            return MPI.COMM_WORLD


def _read_ptr(addr: int) -> int:
    return ctypes.c_void_p.from_address(addr).value or 0


def attach(interface: Any):
    """The context for ``interface``: :class:`Standalone` when it is None (outside LAMMPS),
    else a checked :class:`LammpsInstance` (raises :class:`InstanceError` when a check fails)."""
    if interface is None:
        return Standalone()
    return LammpsInstance(interface)
