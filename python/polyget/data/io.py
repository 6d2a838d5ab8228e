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


def compact_frame_text(atoms: Atoms, decimals: int = 5) -> str:
    """extxyz text of a labelled frame with positions and forces rounded to `decimals` places
    (1e-5 A and eV/A by default: far below any model's error, ~40 % smaller once compressed).
    The comment line (energy, info) is ASE's own, so any extxyz reader reads the result."""
    import numpy as np

    head = frame_text(atoms, ("momenta",)).split("\n", 2)
    props = "Properties=species:S:1:pos:R:3:forces:R:3"
    if props not in head[1]:
        raise ValueError(f"compact extxyz needs exactly positions and forces, got {head[1]!r}")
    sym = atoms.get_chemical_symbols()
    data = np.hstack([atoms.get_positions(), atoms.get_forces()])
    fmt = " ".join([f"%.{decimals}f"] * 6)
    lines = [f"{s} " + (fmt % tuple(r)) for s, r in zip(sym, data)]
    return head[0] + "\n" + head[1] + "\n" + "\n".join(lines) + "\n"


def write_frames(path: str | os.PathLike, frames: list[Atoms],
                 drop_arrays: tuple[str, ...] = ("momenta",), decimals: int | None = None) -> None:
    """Write frames to .extxyz, .extxyz.gz (gzip with a fixed mtime: reproducible bytes) or
    .extxyz.xz (xz, smallest; for shipped data). `decimals` rounds positions and forces
    (`compact_frame_text`)."""
    path = Path(path)
    if decimals is None:
        text = "".join(frame_text(a, drop_arrays) for a in frames)
    else:
        text = "".join(compact_frame_text(a, decimals) for a in frames)
    if path.suffix == ".xz":
        import lzma
        with lzma.open(path, "wb", preset=9 | lzma.PRESET_EXTREME) as fh:
            fh.write(text.encode())
    elif path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                   filename="") as gz:
            gz.write(text.encode())
    else:
        path.write_text(text)


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """Read every frame of an extxyz (optionally .gz or .xz) file.

    Compressed extxyz is decompressed into memory first: ase.io.read on the compressed stream
    reads it line by line and is 10-25x slower (2.9 s gz / 7.1 s xz vs 0.26 s for 582 frames)."""
    p = str(path)
    if p.endswith((".extxyz.gz", ".xyz.gz", ".extxyz.xz", ".xyz.xz")):
        opener = gzip.open if p.endswith(".gz") else __import__("lzma").open
        with opener(p, "rt") as fh:
            text = fh.read()
        return ase.io.read(io.StringIO(text), ":", format="extxyz")
    return ase.io.read(p, ":")
