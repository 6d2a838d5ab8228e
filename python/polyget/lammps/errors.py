"""Clear messages for mistakes made in LAMMPS decks with `pair_style mliap unified`.

LAMMPS reports a Python exception raised inside ML-IAP with `PyErr_Print()` (which calls
``sys.excepthook``) followed by a generic "mliappy unified ... failure". The ``lmp`` wrapper
installed by scripts/build_lammps.sh puts ``lmp_site/`` on ``PYTHONPATH``; its
``sitecustomize`` calls :func:`install_excepthook`, which prints one ``ERROR (polyget): ...``
line that says what is wrong and what to do (set ``POLYGET_DEBUG=1`` for the traceback too).
Kept free of torch imports: it runs at interpreter start-up.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

_INSTALLED = False


def explain(exc_type, exc, tb) -> Optional[str]:
    """The message for an exception raised in polyget's ML-IAP path, or None if not ours."""
    if exc_type is None:
        return None
    if exc_type.__name__ == "PolyGETLammpsError":
        return str(exc)
    try:
        names = {f.name for f in traceback.extract_tb(tb)}
    except Exception:
        names = set()
    # Cython names the frame "mliap_unified_couple.mliap_unified_connect"
    if not any(n.endswith("mliap_unified_connect") for n in names):
        return None
    text = "%s: %s" % (exc_type.__name__, exc)
    if issubclass(exc_type, FileNotFoundError) or (
            issubclass(exc_type, OSError) and getattr(exc, "errno", None) == 2):
        name = getattr(exc, "filename", None) or str(exc)
        return ("polyget: the file given to `pair_style mliap unified` does not exist: %s "
                "(paths are relative to the directory LAMMPS runs in, %s). Write it with "
                "`python python/export.py CKPT -o NAME.pt`." % (name, os.getcwd()))
    if issubclass(exc_type, IsADirectoryError):
        return ("polyget: the path given to `pair_style mliap unified` is a directory: %s"
                % (getattr(exc, "filename", None) or exc))
    if "RecursiveScriptModule" in text or "ScriptModule" in text:
        return ("polyget: the file given to `pair_style mliap unified` is a TorchScript model "
                "(NAME.jit.pt, for `pair_style polyget`). Give the ML-IAP file NAME.pt that "
                "python/export.py writes next to it.")
    return ("polyget: the file given to `pair_style mliap unified` is not an ML-IAP unified "
            "model (%s). For polyget, give NAME.pt written by `python python/export.py CKPT "
            "-o NAME.pt`." % text[:300])


def _rank_of(exc) -> int:
    rank = getattr(exc, "rank", None)
    if rank is not None:
        return int(rank)
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def install_excepthook() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        msg = None
        try:
            msg = explain(exc_type, exc, tb)
        except Exception:
            msg = None
        if msg is None or os.environ.get("POLYGET_DEBUG"):
            previous(exc_type, exc, tb)
        if msg is not None and _rank_of(exc) == 0:
            if msg.startswith("polyget: "):
                msg = msg[len("polyget: "):]
            sys.stderr.write("ERROR (polyget): %s\n" % msg)
            sys.stderr.flush()

    sys.excepthook = hook
    _INSTALLED = True
