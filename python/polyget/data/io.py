"""extxyz files that survive crashes: append one frame at a time, read back what is complete.

Frames are written the standard ASE way (energy and forces from a SinglePointCalculator become
the `energy` info key and the `forces` columns). A frame is appended with a single write + fsync;
if a process dies in the middle of a write, `read_complete` drops (and truncates away) the
incomplete tail, so a resumed run never sees a half-written frame.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import ase.io
from ase import Atoms


def frame_text(atoms: Atoms, drop_arrays: tuple[str, ...] = ()) -> str:
    at = atoms
    if drop_arrays and any(k in atoms.arrays for k in drop_arrays):
        at = atoms.copy()
        at.calc = atoms.calc
        for k in drop_arrays:
            if k in at.arrays:
                del at.arrays[k]
    buf = io.StringIO()
    ase.io.write(buf, at, format="extxyz")
    return buf.getvalue()


def append_frame(path: str | os.PathLike, atoms: Atoms) -> None:
    """Append one frame to an extxyz file, durably (flush + fsync)."""
    text = frame_text(atoms)
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _complete_prefix(text: str) -> tuple[int, int]:
    """(number of complete frames, character length of that complete prefix)."""
    pos, n = 0, 0
    size = len(text)
    while pos < size:
        end = text.find("\n", pos)
        if end < 0:
            break
        head = text[pos:end].strip()
        if not head:
            pos = end + 1
            continue
        try:
            nat = int(head)
        except ValueError:
            break
        p = end + 1
        ok = True
        for _ in range(nat + 1):
            e = text.find("\n", p)
            if e < 0:
                ok = False
                break
            p = e + 1
        if not ok:
            break
        pos, n = p, n + 1
    return n, pos


def read_complete(path: str | os.PathLike, truncate: bool = True) -> list[Atoms]:
    """All complete frames of an extxyz file (empty list if missing); a partial tail is
    dropped and, with truncate, cut from the file."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    n, end = _complete_prefix(text)
    if end < len(text.rstrip("\n")) and truncate:
        with open(path, "r+") as fh:
            fh.truncate(len(text[:end].encode()))
    if n == 0:
        return []
    return ase.io.read(io.StringIO(text[:end]), ":", format="extxyz")


def write_frames(path: str | os.PathLike, frames: list[Atoms],
                 drop_arrays: tuple[str, ...] = ("momenta",)) -> None:
    """Write frames to .extxyz or .extxyz.gz (gzip with a fixed mtime: reproducible bytes)."""
    path = Path(path)
    text = "".join(frame_text(a, drop_arrays) for a in frames)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                   filename="") as gz:
            gz.write(text.encode())
    else:
        path.write_text(text)


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """Read every frame of an extxyz (optionally .gz) file."""
    return ase.io.read(str(path), ":")
