"""Run by the embedded Python of polyget's `lmp` wrapper (see polyget.lammps.errors).

Installs polyget's message for ML-IAP mistakes, then runs the next `sitecustomize` on sys.path
(the one this file shadows), if any.
"""
import os
import sys

try:
    from polyget.lammps.errors import install_excepthook

    install_excepthook()
except Exception:  # never break LAMMPS start-up
    pass

try:
    import importlib.util

    _here = os.path.dirname(os.path.abspath(__file__))
    for _p in sys.path:
        if os.path.abspath(_p or ".") == _here:
            continue
        _cand = os.path.join(_p or ".", "sitecustomize.py")
        if os.path.isfile(_cand):
            _spec = importlib.util.spec_from_file_location("_chained_sitecustomize", _cand)
            _mod = importlib.util.module_from_spec(_spec)
            _spec.loader.exec_module(_mod)
            break
except Exception:
    pass
