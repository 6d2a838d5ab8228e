"""Reference labels: GFN2-xTB (tblite), PBE (PySCF), or any ASE calculator by import path.

All methods return energies in eV and forces in eV/Angstrom (ASE units). A calculation that
fails (SCF not converged, an exception, non-finite numbers) raises `LabelError`; callers skip and
log that frame, so a frame is never written with bad labels.

Method strings (`--method`):
  gfn2                      GFN2-xTB via tblite (also: gfn2-xtb, gfn1, gfn1-xtb, ipea1)
  pbe                       PBE/def2-SVP with density fitting via PySCF
  ase:package.module:Class  any ASE calculator class, constructed with the keyword arguments
                            given separately (`--calc-kwargs '{"key": value}'`)
"""

from __future__ import annotations

import importlib
import os

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculationFailed, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree


class LabelError(RuntimeError):
    """The reference calculation for one frame failed; the frame must not be written."""


_TBLITE_METHODS = {"gfn2": "GFN2-xTB", "gfn2-xtb": "GFN2-xTB", "gfn1": "GFN1-xTB",
                   "gfn1-xtb": "GFN1-xTB", "ipea1": "IPEA1-xTB"}


def method_name(method: str) -> str:
    """Canonical label written to frames' info['method']."""
    m = method.strip()
    if m.lower() in _TBLITE_METHODS:
        return _TBLITE_METHODS[m.lower()]
    if m.lower() == "pbe":
        return "PBE"
    return m


def default_settings(method: str) -> dict:
    m = method.strip().lower()
    if m in _TBLITE_METHODS:
        return {"accuracy": 1.0, "max_iterations": 250, "electronic_temperature": 300.0}
    if m == "pbe":
        return {"xc": "PBE", "basis": "def2-SVP", "density_fit": True, "conv_tol": 1e-9,
                "max_cycle": 100, "grid_level": 3, "grid_response": True}
    return {}


def make_calculator(method: str, **kwargs) -> Calculator:
    """A fresh ASE calculator for `method` (see module docstring); kwargs override defaults."""
    m = method.strip()
    low = m.lower()
    if low in _TBLITE_METHODS:
        from tblite.ase import TBLite

        params = default_settings(low)
        params.update(kwargs)
        return TBLite(method=_TBLITE_METHODS[low], verbosity=0, **params)
    if low == "pbe":
        params = default_settings(low)
        params.update(kwargs)
        return PySCFCalculator(**params)
    if low.startswith("ase:"):
        path = m[4:]
        if ":" not in path:
            raise ValueError(f"--method {method!r}: expected ase:package.module:ClassName")
        mod_name, cls_name = path.rsplit(":", 1)
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--method {method!r}: cannot import {cls_name} from {mod_name} "
                             f"({exc})") from exc
        return cls(**kwargs)
    raise ValueError(f"unknown method {method!r}; expected one of gfn2, gfn1, pbe, "
                     "ase:package.module:Class")


def label(atoms: Atoms, calc: Calculator, method: str | None = None) -> Atoms:
    """A copy of `atoms` carrying energy (eV) and forces (eV/A) in a SinglePointCalculator.

    Raises LabelError when the calculation fails or gives non-finite numbers.
    """
    work = atoms.copy()
    work.calc = calc
    try:
        e = float(work.get_potential_energy())
        f = np.array(work.get_forces(), dtype=float)
    except (CalculationFailed, LabelError) as exc:
        raise LabelError(str(exc)) from exc
    except Exception as exc:  # tblite/pyscf raise various types on SCF trouble
        raise LabelError(f"{type(exc).__name__}: {exc}") from exc
    if not np.isfinite(e) or not np.all(np.isfinite(f)) or f.shape != (len(atoms), 3):
        raise LabelError("calculator returned non-finite or mis-shaped energy/forces")
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=e, forces=f)
    if method is not None:
        out.info["method"] = method_name(method)
    return out


class PySCFCalculator(Calculator):
    """PBE (any PySCF functional) energies and forces for a molecule, in eV and eV/A.

    Density fitting by default (the 3-index integrals are built once per geometry before the SCF,
    which is ~2x faster). An SCF that does not converge raises CalculationFailed.
    Set OPENBLAS_CORETYPE=Zen (or preload a system OpenBLAS) on AMD CPUs: PySCF's bundled
    OpenBLAS may misdetect them.
    """

    implemented_properties = ["energy", "forces"]
    default_parameters = {"xc": "PBE", "basis": "def2-SVP", "density_fit": True,
                          "auxbasis": None, "charge": 0, "spin": 0, "conv_tol": 1e-9,
                          "max_cycle": 100, "grid_level": 3, "grid_response": True,
                          "max_memory": 4000, "verbose": 0}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto

        p = self.parameters
        mol = gto.M(atom=[(s, tuple(x)) for s, x in zip(self.atoms.get_chemical_symbols(),
                                                        self.atoms.get_positions())],
                    unit="Angstrom", basis=p["basis"], charge=p["charge"], spin=p["spin"],
                    verbose=p["verbose"], max_memory=p["max_memory"])
        mf = dft.RKS(mol) if p["spin"] == 0 else dft.UKS(mol)
        mf.xc = p["xc"]
        mf.conv_tol = p["conv_tol"]
        mf.max_cycle = p["max_cycle"]
        mf.grids.level = p["grid_level"]
        if p["density_fit"]:
            mf = mf.density_fit(auxbasis=p["auxbasis"])
            mf.with_df.build()
        e = mf.kernel()
        if not mf.converged:
            raise CalculationFailed(f"PySCF {p['xc']} SCF not converged in {p['max_cycle']} "
                                    "cycles")
        self.results["energy"] = float(e) * Hartree
        if "forces" in properties:
            g = mf.nuc_grad_method()
            # grid response: forces are the exact derivative of the (grid-integrated) energy
            g.grid_response = bool(p["grid_response"])
            self.results["forces"] = -np.asarray(g.kernel()) * Hartree / Bohr


def set_threads(n: int = 1) -> None:
    """Limit BLAS/OpenMP threads in this process (call before heavy imports where possible)."""
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(n)
    try:
        from pyscf import lib

        lib.num_threads(n)
    except Exception:
        pass
