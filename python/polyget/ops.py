"""polyget's fused CPU operators (cpp/ops, library ``libpolyget_ops.so``).

``torch.ops.polyget.et_messages`` and ``et_messages_backward`` compute the ET attention messages
of a set of edges (``EquivariantAttention.messages``) and their gradients with one pass over the
edges each, everything per edge kept in cache; the compiled packages of ET models call them
(``compile.LeanEnergyForces(..., fused=True)``, bench/README.md "Fused messages"). The library
is built with the C++ core (``make setup``) and installed next to ``polyget._core``, which links
it; :func:`load` makes the operators available in this process (and registers their shape
functions for ``torch.export``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

LIBRARY = "libpolyget_ops.so"
# cpp/ops/et_messages.h, POLYGET_OPS_ABI_VERSION: written into the packages that call the
# operators (metadata polyget.fused_ops) and checked by the C++ core when it loads them
ABI_VERSION = 3
# POLYGET_OPS_ABI_OLDEST: packages of operator versions ABI_OLDEST..ABI_VERSION run here
# (3 added the mirrored filter rows; version-2 packages call the operators as before)
ABI_OLDEST = 2


def runs_version(version) -> bool:
    """Whether a package compiled against operator version ``version`` runs with these."""
    try:
        return ABI_OLDEST <= int(version) <= ABI_VERSION
    except (TypeError, ValueError):
        return False

_fakes_registered = False
_load_error: Optional[str] = None


def library_path() -> Path:
    """Where the library is looked for: $POLYGET_OPS_LIBRARY, else next to this file."""
    env = os.environ.get("POLYGET_OPS_LIBRARY")
    return Path(env) if env else Path(__file__).with_name(LIBRARY)


def _registered() -> bool:
    try:
        torch.ops.polyget.et_messages
        torch.ops.polyget.et_messages_backward
        return True
    except (AttributeError, RuntimeError):
        return False


def _register_fakes() -> None:
    global _fakes_registered
    if _fakes_registered:
        return

    @torch.library.register_fake("polyget::et_messages")
    def _fwd(q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero):
        return q.new_empty(q.shape), vec.new_empty(vec.shape)

    @torch.library.register_fake("polyget::et_messages_backward")
    def _bwd(gxa, gva, q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero):
        return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
                vec.new_empty(vec.shape), c.new_empty(c.shape), cu.new_empty(cu.shape),
                filt.new_empty((c.shape[0], filt.shape[1])))  # one row per edge

    _fakes_registered = True


def load(required: bool = False) -> bool:
    """Make the operators available; True when they are. ``required``: raise a RuntimeError
    that says how to get them instead of returning False."""
    global _load_error
    if not _registered():
        try:
            # polyget._core links the library (loading it registers the operators)
            import polyget._core  # noqa: F401
        except ImportError:
            pass
    if not _registered():
        path = library_path()
        if path.exists():
            try:
                torch.ops.load_library(str(path))
            except (OSError, RuntimeError) as exc:
                _load_error = "%s: %s" % (path, exc)
        else:
            _load_error = "%s not found" % path
    if _registered():
        _register_fakes()
        return True
    if required:
        raise RuntimeError(
            "polyget's fused operators (%s) are not available: %s. They are built with the C++ "
            "core: run `make setup-native` (or scripts/build_native.sh), or point "
            "POLYGET_OPS_LIBRARY at libpolyget_ops.so; or re-export the model with "
            "`python/export.py --no-fused-ops`, whose package does not need them."
            % (LIBRARY, _load_error or "unknown reason"))
    return False


def isa() -> str:
    """The kernels the loaded library runs on this CPU ("avx2" or "generic"), "" if not loaded."""
    if not load():
        return ""
    import ctypes

    try:
        lib = ctypes.CDLL(str(library_path()))
        lib.polyget_ops_isa.restype = ctypes.c_char_p
        return lib.polyget_ops_isa().decode()
    except (OSError, AttributeError):
        return ""
