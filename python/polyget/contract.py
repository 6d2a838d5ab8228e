"""The engine contract: every rule the Python model, the exported files, the ML-IAP class and
the C++ core (``cpp/contract.h``) must agree on, written once.

What lives here (and nowhere else in Python):

* units of the model and the factor to each supported LAMMPS unit style;
* file formats and their versions, the metadata keys of an exported model and how they are
  stored (one flat text record per key, read the same way by Python and C++);
* what kind of file a path is (checkpoint, TorchScript export, ML-IAP pickle, ...), and the
  advice to give for each kind;
* the TorchScript reader and the atomic file writer;
* the halo/ghost rule (how far ghost atoms must reach), the ``special_bonds`` rule and the
  minimum-distance rule, with the exact messages the engines print.

``cpp/contract.h`` mirrors this module; ``tests/test_contract.py`` checks that both read the
same exported file field by field and print the same messages.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "polyget-checkpoint"
CHECKPOINT_VERSION = 1
TORCHSCRIPT_FORMAT = "polyget-torchscript"
TORCHSCRIPT_VERSION = 2  # 2: flat metadata records (1: one metadata.json, read by nothing now)
MLIAP_FORMAT = "polyget-mliap"
MLIAP_VERSION = 2  # 2: metadata read from the embedded TorchScript records only

EXPORT_HINT = "re-export it with this polyget: python python/export.py CKPT -o NAME.pt"

# ---------------------------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------------------------
UNITS = {"energy": "eV", "length": "Angstrom"}
EV_TO_KCAL_PER_MOL = 23.060548  # 1 eV in kcal/mol (CODATA 2018: 23.0605478)
# LAMMPS unit style -> factor from model energies (eV) to LAMMPS energies; lengths are Angstrom
# in both styles, so forces scale by the same factor.
LAMMPS_ENERGY_FACTORS = {"metal": 1.0, "real": EV_TO_KCAL_PER_MOL}


# Units a dataset may be labelled in -> polyget's eV and Angstrom (CODATA 2018)
ENERGY_TO_EV = {"eV": 1.0, "Hartree": 27.211386245988, "Ha": 27.211386245988,
                "kcal/mol": 0.0433641043, "kJ/mol": 0.0103642688, "Ry": 13.605693122994}
LENGTH_TO_ANGSTROM = {"Angstrom": 1.0, "A": 1.0, "Bohr": 0.529177210903, "nm": 10.0}
# Median |force component| of polymer data sampled near equilibrium (MD at 300-1000 K) is about
# 0.5 eV/A (the shipped GFN2 and PBE sets: 0.51, 0.56); outside this window the labels are
# almost certainly in other units (kcal/mol/A: x23, kJ/mol/A: x96, Hartree/Bohr: /51).
FORCE_MEDIAN_WINDOW = (0.03, 5.0)  # eV/Angstrom


def lammps_energy_factor(unit_style: str) -> Optional[float]:
    """eV -> the LAMMPS energy unit of ``unit_style``; None when the style is not supported."""
    return LAMMPS_ENERGY_FACTORS.get(unit_style)


def units_message(unit_style: str) -> str:
    return ("polyget: units %s are not supported: polyget models are in eV and Angstrom; use "
            "'units metal' (native) or 'units real' (converted)" % unit_style)


# ---------------------------------------------------------------------------------------------
# exported TorchScript metadata: one flat text record per key
# ---------------------------------------------------------------------------------------------
# The records are TorchScript "extra files" (``torch.jit.save(..., _extra_files=...)``), stored
# in the archive as ``<archive>/extra/<name>``. Contract keys (in this order), their record
# names and types. ``units`` is stored as two records.
RECORD_PREFIX = "polyget."
METADATA_KEYS: Tuple[Tuple[str, str], ...] = (
    ("format", "str"),
    ("format_version", "int"),
    ("elements", "list"),         # space-separated symbols, model order
    ("cutoff", "float"),          # Angstrom
    ("num_layers", "int"),
    ("receptive_hops", "int"),    # read by engines, never recomputed
    ("dtype", "str"),             # float64 | float32
    ("energy_unit", "str"),       # eV
    ("length_unit", "str"),       # Angstrom
    ("min_distance", "float"),    # Angstrom; engines stop on any closer pair
    ("polyget_version", "str"),
    ("torch_version", "str"),
)
# Optional keys: absent in files without the feature. Per-layer halo exchange: the TorchScript
# file has the methods edge_features/embed/interact/readout (nn/model.py); engines exchange
# node features num_exchanges times per evaluation, exchange_width numbers per atom each time
# (what LAMMPS comm buffers are sized with).
# Compiled form: aoti_package names the AOTInductor package next to NAME.jit.pt (polyget/compile.py),
# fingerprint is the hash of the weights that the package repeats (a stale package is never run).
OPTIONAL_METADATA_KEYS: Tuple[Tuple[str, str], ...] = (
    ("num_exchanges", "int"),
    ("exchange_width", "int"),
    ("aoti_package", "str"),
    ("fingerprint", "str"),
)
EXCHANGE_KEYS = ("num_exchanges", "exchange_width")  # present together or not at all
# Free-form provenance (calibration, source checkpoint, ...): JSON, read by Python only, never
# holding a contract key.
INFO_RECORD = RECORD_PREFIX + "info.json"
LEGACY_RECORD = "metadata.json"  # format 1
DEFAULT_MIN_DISTANCE = 0.5  # Angstrom
DTYPES = ("float64", "float32")


class ModelFileError(RuntimeError):
    """A file that should hold a polyget model does not, or cannot be used as given."""


def _fmt_float(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same double (C++ strtod too)


def metadata_records(meta: Dict[str, Any]) -> Dict[str, str]:
    """Metadata dict (see :func:`parse_records` for its shape) -> TorchScript extra files."""
    units = meta.get("units", UNITS)
    flat = dict(meta)
    flat.setdefault("energy_unit", units["energy"])
    flat.setdefault("length_unit", units["length"])
    flat.setdefault("min_distance", DEFAULT_MIN_DISTANCE)
    out: Dict[str, str] = {}
    for key, kind in METADATA_KEYS:
        if key not in flat:
            raise ModelFileError("metadata has no %r entry (contract keys: %s)"
                                 % (key, ", ".join(k for k, _ in METADATA_KEYS)))
        v = flat[key]
        if kind == "list":
            out[RECORD_PREFIX + key] = " ".join(str(s) for s in v)
        elif kind == "float":
            out[RECORD_PREFIX + key] = _fmt_float(v)
        elif kind == "int":
            out[RECORD_PREFIX + key] = str(int(v))
        else:
            out[RECORD_PREFIX + key] = str(v)
    for key, kind in OPTIONAL_METADATA_KEYS:
        if flat.get(key) is not None:
            out[RECORD_PREFIX + key] = str(int(flat[key])) if kind == "int" else str(flat[key])
    contract = {k for k, _ in METADATA_KEYS + OPTIONAL_METADATA_KEYS} | {"units"}
    info = {k: v for k, v in meta.items() if k not in contract}
    out[INFO_RECORD] = json.dumps(info, sort_keys=True)
    return out


def parse_records(records: Dict[str, str], source: str) -> Dict[str, Any]:
    """Validated metadata from the flat records (``records[name]``, names without ``extra/``).

    Returns ``{"format", "format_version", "elements" (list), "cutoff", "num_layers",
    "receptive_hops", "dtype", "units": {"energy", "length"}, "min_distance",
    "polyget_version", "torch_version"}``, ``num_exchanges`` and ``exchange_width`` when the
    file supports per-layer halo exchange, ``aoti_package`` and ``fingerprint`` when written, plus the provenance entries of ``polyget.info.json``.
    Mirrors ``polyget::parse_records`` in cpp/contract.h (same checks, same messages).
    """
    fmt_rec = records.get(RECORD_PREFIX + "format")
    if fmt_rec is None:
        if LEGACY_RECORD in records:
            raise ModelFileError(
                "%s was exported by an older polyget (TorchScript format 1, metadata.json); this "
                "polyget reads format %d: %s" % (source, TORCHSCRIPT_VERSION, EXPORT_HINT))
        raise ModelFileError("%s is a TorchScript file without polyget metadata, so it is not a "
                             "polyget export; write it with python/export.py" % source)
    meta: Dict[str, Any] = {}
    for key, kind in METADATA_KEYS:
        text = records.get(RECORD_PREFIX + key)
        if text is None:
            raise ModelFileError("%s: metadata has no %s record; %s" % (source, key, EXPORT_HINT))
        text = text.strip()
        if kind == "int":
            try:
                meta[key] = int(text)
            except ValueError:
                raise ModelFileError("%s: metadata %s must be an integer, found %r; %s"
                                     % (source, key, text, EXPORT_HINT)) from None
        elif kind == "float":
            try:
                meta[key] = float(text)
            except ValueError:
                raise ModelFileError("%s: metadata %s must be a number, found %r; %s"
                                     % (source, key, text, EXPORT_HINT)) from None
        elif kind == "list":
            meta[key] = text.split()
        else:
            meta[key] = text
        if key == "format" and meta[key] != TORCHSCRIPT_FORMAT:
            raise ModelFileError("%s: metadata format is %r, expected %r; pair_style polyget and "
                                 "the ASE calculator read the NAME.jit.pt file written by "
                                 "python/export.py" % (source, meta[key], TORCHSCRIPT_FORMAT))
        if key == "format_version" and meta[key] != TORCHSCRIPT_VERSION:
            if meta[key] < TORCHSCRIPT_VERSION:
                what = "re-run python/export.py on the checkpoint with this polyget"
            else:
                what = ("the file is newer than this polyget; update polyget (and rebuild the "
                        "native code with scripts/build_native.sh) or export with the older one")
            raise ModelFileError("%s was exported with format_version %d; this polyget reads "
                                 "format_version %d: %s" % (source, meta[key],
                                                           TORCHSCRIPT_VERSION, what))
    for key, kind in OPTIONAL_METADATA_KEYS:
        if RECORD_PREFIX + key not in records:
            continue
        text = records[RECORD_PREFIX + key].strip()
        if kind != "int":
            meta[key] = text
            continue
        try:
            meta[key] = int(text)
        except ValueError:
            raise ModelFileError("%s: metadata %s must be an integer, found %r; %s"
                                 % (source, key, text, EXPORT_HINT)) from None
    if sum(RECORD_PREFIX + k in records for k in EXCHANGE_KEYS) == 1:
        raise ModelFileError("%s: metadata has only one of num_exchanges and exchange_width "
                             "(per-layer exchange needs both); %s" % (source, EXPORT_HINT))
    _validate(meta, source)
    meta["units"] = {"energy": meta.pop("energy_unit"), "length": meta.pop("length_unit")}
    info_text = records.get(INFO_RECORD)
    if info_text:
        try:
            info = json.loads(info_text)
        except ValueError:
            info = {}
        for k, v in info.items():
            meta.setdefault(k, v)
    return meta


def _validate(m: Dict[str, Any], source: str) -> None:
    def bad(what: str) -> ModelFileError:
        return ModelFileError("%s: metadata %s; %s" % (source, what, EXPORT_HINT))

    if not m["elements"]:
        raise bad("elements is empty")
    if len(set(m["elements"])) != len(m["elements"]):
        raise bad("elements has a repeated symbol (%s)" % " ".join(m["elements"]))
    if not (math.isfinite(m["cutoff"]) and m["cutoff"] > 0):
        raise bad("cutoff must be a positive number of Angstrom, found %r" % m["cutoff"])
    if m["num_layers"] < 1:
        raise bad("num_layers must be an integer >= 1, found %d" % m["num_layers"])
    if m["receptive_hops"] < 1:
        raise bad("receptive_hops must be an integer >= 1, found %d" % m["receptive_hops"])
    if m["dtype"] not in DTYPES:
        raise bad("dtype is %r, expected float64 or float32" % m["dtype"])
    if not (math.isfinite(m["min_distance"]) and m["min_distance"] >= 0):
        raise bad("min_distance must be a number >= 0 (Angstrom), found %r" % m["min_distance"])
    if "num_exchanges" in m and not m["num_layers"] <= m["num_exchanges"] <= m["num_layers"] + 1:
        raise bad("num_exchanges must be num_layers or num_layers + 1, found %d" % m["num_exchanges"])
    if "exchange_width" in m and m["exchange_width"] < 1:
        raise bad("exchange_width must be an integer >= 1, found %d" % m["exchange_width"])
    if m["energy_unit"] != UNITS["energy"] or m["length_unit"] != UNITS["length"]:
        raise ModelFileError(
            "%s: model units are energy=%s, length=%s; polyget engines work in eV and Angstrom "
            "(units metal): re-export the model in eV/Angstrom"
            % (source, m["energy_unit"], m["length_unit"]))


# ---------------------------------------------------------------------------------------------
# what kind of file is this
# ---------------------------------------------------------------------------------------------
# kinds: missing, directory, empty, checkpoint, torchscript, torchscript-foreign, mliap,
# torch-pickle, zip, other
def _zip_names(source: Union[PathLike, bytes]) -> Optional[Tuple[zipfile.ZipFile, List[str]]]:
    try:
        z = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                            else source)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return z, z.namelist()


def _records(z: zipfile.ZipFile, names: Sequence[str]) -> Dict[str, str]:
    """Extra-file records of a TorchScript archive: ``<archive>/extra/<name>`` -> text."""
    out = {}
    for n in names:
        parts = n.split("/", 2)
        if len(parts) == 3 and parts[1] == "extra":
            out[parts[2]] = z.read(n).decode("utf-8", "replace")
    return out


def file_kind(path: Union[PathLike, bytes]) -> str:
    """What ``path`` (or the bytes of a file) holds, without unpickling anything."""
    if not isinstance(path, (bytes, bytearray)):
        p = Path(path)
        if p.is_dir():
            return "directory"
        if not p.is_file():
            return "missing"
        if p.stat().st_size == 0:
            return "empty"
    elif len(path) == 0:
        return "empty"
    zn = _zip_names(path)
    if zn is None:
        return "other"
    z, names = zn
    with z:
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            recs = [n for n in names if n.split("/", 2)[1:2] == ["extra"]]
            if any(n.endswith("/extra/" + RECORD_PREFIX + "format") or
                   n.endswith("/extra/" + LEGACY_RECORD) for n in recs):
                return "torchscript"
            return "torchscript-foreign"
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if pkl:
            data = z.read(pkl[0])
            if b"PolyGETMLIAP" in data:
                return "mliap"
            if CHECKPOINT_FORMAT.encode() in data:
                return "checkpoint"
            return "torch-pickle"
        return "zip"


def kind_advice(path: PathLike, kind: str, wanted: str) -> str:
    """One sentence: what ``path`` is and what to give instead. ``wanted``: what the caller reads
    ("checkpoint", "torchscript" or "model": either of those two)."""
    p = str(path)
    stem = p[:-3] if p.endswith(".pt") and not p.endswith(".jit.pt") else None
    jit = (stem + ".jit.pt") if stem is not None else "NAME.jit.pt"
    sib = " (it is next to it)" if stem is not None and os.path.isfile(jit) else ""
    if kind == "missing":
        return "%s: no such file" % p
    if kind == "directory":
        return "%s is a directory, not a model file" % p
    if kind == "empty":
        return ("%s is empty (0 bytes): an interrupted copy or export? Re-export it with "
                "python/export.py, or give the .ckpt written by `polyget train`" % p)
    if kind == "mliap":
        if wanted == "checkpoint":
            return ("%s is an exported ML-IAP file (NAME.pt, for `pair_style mliap unified`), "
                    "not a training checkpoint: give the .ckpt written by `polyget train`" % p)
        return ("%s is the ML-IAP file for `pair_style mliap unified` (a pickle that only LAMMPS "
                "loads); use %s from the same export%s, or the .ckpt checkpoint"
                % (p, jit, sib))
    if wanted == "mliap" and kind == "torchscript":
        return ("%s is a TorchScript model (NAME.jit.pt, for `pair_style polyget`); `pair_style "
                "mliap unified` needs the ML-IAP file NAME.pt that python/export.py writes next "
                "to it" % p)
    if wanted == "mliap" and kind != "mliap":
        return ("%s is not a polyget ML-IAP file; write one with `python python/export.py CKPT -o "
                "NAME.pt`" % p)
    if kind == "torchscript" and wanted == "checkpoint":
        return ("%s is a TorchScript file (an exported model), not a training checkpoint. Use it "
                "with PolyGETCalculator or LAMMPS `pair_style polyget`; export needs the .ckpt "
                "file" % p)
    if kind == "checkpoint" and wanted == "torchscript":
        return ("%s is a training checkpoint; export it first: python python/export.py %s -o "
                "NAME.pt (then use NAME.jit.pt)" % (p, p))
    if kind == "torchscript-foreign":
        return ("%s is a TorchScript file without polyget metadata, so it is not a polyget "
                "export; write it with python/export.py" % p)
    if wanted == "checkpoint":
        return ("%s is not a polyget checkpoint (%s); give the .ckpt written by `polyget train`"
                % (p, "a PyTorch file of another kind" if kind in ("torch-pickle", "zip")
                   else "not a PyTorch archive"))
    if kind == "torch-pickle":
        return ("%s is a PyTorch file but not a polyget checkpoint or export; give the .ckpt "
                "written by `polyget train` or NAME.jit.pt from python/export.py" % p)
    return ("%s is not a polyget model file (not a PyTorch archive); give the .ckpt written by "
            "`polyget train` or NAME.jit.pt from python/export.py" % p)


# ---------------------------------------------------------------------------------------------
# reading and writing
# ---------------------------------------------------------------------------------------------
def read_metadata(source: Union[PathLike, bytes], name: Optional[str] = None) -> Dict[str, Any]:
    """Metadata of an exported TorchScript file (path or bytes) or ML-IAP file, without
    loading the model. Raises :class:`ModelFileError` for anything else."""
    label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    kind = file_kind(source)
    if kind == "mliap":
        return dict(_mliap_torchscript_metadata(source, label))
    if kind != "torchscript":
        raise ModelFileError(kind_advice(label, kind, "torchscript"))
    z, names = _zip_names(source)  # type: ignore[misc]
    with z:
        return parse_records(_records(z, names), label)


def _mliap_torchscript_metadata(source, label):
    import torch

    obj = torch.load(source if not isinstance(source, (bytes, bytearray)) else io.BytesIO(source),
                     map_location="cpu", weights_only=False)
    return obj.metadata


def load_torchscript(source: Union[PathLike, bytes], device: str = "cpu",
                     name: Optional[str] = None):
    """(module, metadata) of an exported NAME.jit.pt (path or its bytes): the one TorchScript
    reader of polyget. The module is in eval mode on ``device``."""
    import torch

    label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    kind = file_kind(source)
    if kind != "torchscript":
        raise ModelFileError(kind_advice(label, kind, "torchscript"))
    meta = read_metadata(source, label)
    src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    module = torch.jit.load(src, map_location=device)
    return module.eval(), meta


def file_mode() -> int:
    """0644 minus the umask: what ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


def atomic_write(path: PathLike, data: Union[bytes, Any]) -> Path:
    """Write ``data`` (bytes, or any object for ``torch.save``) to a temporary file in the same
    folder, then rename: never a half-written file; mode 0644 minus the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray)):
                f.write(data)
            else:
                import torch

                torch.save(data, f)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# LAMMPS rules
# ---------------------------------------------------------------------------------------------
def halo_cutoff(receptive_hops: int, cutoff: float, skin: float) -> float:
    """How far ghost atoms must reach around a subdomain when the graph is cut (several MPI
    ranks, no folding): receptive_hops x cutoff + skin."""
    return receptive_hops * cutoff + skin


def comm_cutoff_suggestion(receptive_hops: int, cutoff: float, skin: float) -> float:
    """The ``comm_modify cutoff`` value to print: halo_cutoff rounded up to 0.1 A."""
    return math.ceil(halo_cutoff(receptive_hops, cutoff, skin) * 10.0 - 1e-9) / 10.0


_HEAP_KEPT = False


def keep_freed_memory() -> bool:
    """Keep memory freed by the model in this process's heap for the next call, as
    ``pair_style polyget`` does (cpp/README.md, "Memory"): glibc's default serves large
    allocations with a fresh mmap and unmaps them on free, so every step page-faults the
    model's intermediate buffers in again (paper-size model, 360 atoms, 2 threads, the same
    AOTInductor package, one interleaved bench run: `mliap unified` 0.307 s per step against
    the plugin's 0.215 s before this, 0.184 s both after; bench/README.md). Sets M_MMAP_MAX 0
    and a 1 GB trim threshold once per process, on glibc only; ``POLYGET_MALLOC=system`` keeps glibc's defaults. Returns True if set."""
    global _HEAP_KEPT
    if _HEAP_KEPT or os.environ.get("POLYGET_MALLOC") == "system":
        return _HEAP_KEPT
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        _HEAP_KEPT = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except OSError:  # pragma: no cover - no C library to open
        return False
    return _HEAP_KEPT


def gpu_for_rank(node_local_rank: int, ngpu: int) -> int:
    """GPU of an MPI rank: node-local rank modulo the GPUs visible (C++: polyget::gpu_for_rank)."""
    return node_local_rank % ngpu if ngpu > 0 and node_local_rank >= 0 else 0


# special_bonds: LAMMPS removes a 1-2, 1-3 or 1-4 pair from the neighbour list when both its lj
# and coul factors are 0.0 (the default). 1-3 and 1-4 partners are built from the bonds alone
# (unless `special_bonds angle/dihedral yes`), so any bond makes all three factors matter.
SPECIAL_BONDS_FIX = "special_bonds lj/coul 1.0 1.0 1.0"
SPECIAL_BONDS_MESSAGE = (
    "polyget: special_bonds removes bonded pairs (1-2, 1-3 or 1-4 factors of 0, LAMMPS' default "
    "for data files with bonds) from the neighbour list, but the model needs every pair within "
    "its cutoff: add '" + SPECIAL_BONDS_FIX + "' to the input (bonded terms, if any, are then "
    "yours to exclude)")


def special_bonds_drop_pairs(nbonds: int, special_lj: Sequence[float],
                             special_coul: Sequence[float]) -> bool:
    """True when the neighbour list loses pairs: bonds exist and a 1-2/1-3/1-4 factor pair
    (indices 1, 2, 3 of LAMMPS' special_lj/special_coul) is 0.0 for both lj and coul."""
    if nbonds <= 0:
        return False
    return any(special_lj[k] == 0.0 and special_coul[k] == 0.0 for k in (1, 2, 3))


def min_distance_message(step: int, tag_i: int, tag_j: int, r: float, threshold: float,
                         override: str) -> str:
    """The minimum-distance stop, identical in both pair styles (C++: same format)."""
    return ("polyget: atoms %d and %d are %.4f A apart at step %d, closer than the minimum "
            "distance %.4f A (overlapping atoms: check the data file, the timestep and the "
            "thermostat; to change the threshold: %s)"
            % (tag_i, tag_j, r, step, threshold, override))


MLIAP_MIN_DISTANCE_OVERRIDE = "variable polyget_min_distance equal <A>"
PAIR_MIN_DISTANCE_OVERRIDE = "pair_style polyget FILE min_distance <A>"


def check_elements_for_types(ntypes: int, given: Sequence[str], model_elements: Sequence[str]
                             ) -> Optional[str]:
    """``pair_coeff * * E1 .. En``: None if it is right, else the message (count and symbols;
    NULL is refused: every atom type needs an element of the model)."""
    expect = ("expected: pair_coeff * * <element per atom type>, %d element(s) for %d atom "
              "type(s), each one of the model's elements: %s"
              % (ntypes, ntypes, " ".join(model_elements)))
    if len(given) != ntypes:
        return ("polyget: pair_coeff gives %d element(s) (%s) for %d atom type(s); %s"
                % (len(given), " ".join(given), ntypes, expect))
    for t, s in enumerate(given, start=1):
        if s == "NULL":
            return ("polyget: pair_coeff maps atom type %d to NULL, which polyget does not "
                    "support (an atom the model does not see would change its neighbours' "
                    "energies); %s" % (t, expect))
        if s not in model_elements:
            return ("polyget: element %s (atom type %d in pair_coeff) is not in this model; %s"
                    % (s, t, expect))
    return None


__all__ = [n for n in dir() if not n.startswith("_") and n not in
           ("annotations", "io", "json", "math", "os", "tempfile", "zipfile", "Path", "Any",
            "Dict", "List", "Optional", "Sequence", "Tuple", "Union")]
