#!/usr/bin/env bash
# Provision LAMMPS with ML-IAP + PYTHON for polyget (called by `make setup-lammps`).
#
# What it does:
#   1. fetches the LAMMPS "4 Jul 2026" source from Debian sid's source package (a private apt
#      sources file; the SHA256 of the orig tarball is checked against the signed Sources index),
#   2. builds it with CMake (PYTHON, ML-IAP, ML-SNAP, MLIAP_ENABLE_PYTHON, PLUGIN, MOLECULE,
#      EXTRA-FIX, OPENMP, MPI from the venv's `mpich` wheel, shared library + lmp),
#   3. caches build, install prefix and unpacked source OUTSIDE the repository in
#      ${POLYGET_CACHE:-$HOME/.cache/polyget}/lammps/<version>-<options hash>/, so that a second
#      run (or a fresh clone on the same machine) only re-links the venv in seconds,
#   4. installs into the venv: `.venv/bin/lmp` (wrapper: PYTHONPATH, LD_LIBRARY_PATH,
#      LAMMPS_PLUGIN_PATH), the `lammps` Python module, and `.venv/share/polyget/lammps.env`.
#
# Environment:
#   LAMMPS_ROOT=/path     use an existing LAMMPS install (bin/lmp, lib*/liblammps.so) instead
#   POLYGET_CACHE=/path   cache directory (default ~/.cache/polyget)
#   VENV=/path            virtual environment (default <repo>/.venv)
#   LAMMPS_JOBS=N         parallel compile jobs (default: nproc)
#   LAMMPS_FORCE_REBUILD=1  ignore a cached build with the same key
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
CACHE="${POLYGET_CACHE:-$HOME/.cache/polyget}"
LAMMPS_UPSTREAM="${LAMMPS_UPSTREAM:-20260704}"          # LAMMPS "4 Jul 2026"
LAMMPS_DEB_UPSTREAM="${LAMMPS_UPSTREAM}+dfsg"            # Debian's upstream version
DEBIAN_SUITE="${DEBIAN_SUITE:-sid}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
JOBS="${LAMMPS_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "[build_lammps] $*" >&2; }
die() { echo "[build_lammps] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no Python at $PY: run 'make setup-python' first"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)"
PLUGIN_DIR="$VENV/lib/polyget/plugins"

# ---------------------------------------------------------------------------------------------
# venv installation (shared by the cached build and LAMMPS_ROOT)
# ---------------------------------------------------------------------------------------------
install_into_venv() {
    # $1 = prefix holding bin/lmp and lib/liblammps.so*; $2 = source dir (may be empty);
    # $3 = build dir (may be empty); $4 = version string
    local prefix="$1" srcdir="$2" builddir="$3" version="$4"
    local lmp_bin=""
    for f in "$prefix/bin/lmp" "$prefix/lmp" "$prefix/build/lmp" "$prefix/bin/lmp_mpi"; do
        if [ -x "$f" ]; then lmp_bin="$f"; break; fi
    done
    [ -n "$lmp_bin" ] || die "no LAMMPS executable (bin/lmp, lmp or build/lmp) under $prefix"
    local libdir=""
    for d in "$prefix/lib" "$prefix/lib64" "$prefix/lib/x86_64-linux-gnu" "$prefix" "$prefix/build"; do
        if ls "$d"/liblammps.so* >/dev/null 2>&1; then libdir="$d"; break; fi
    done
    mkdir -p "$VENV/bin" "$VENV/share/polyget" "$PLUGIN_DIR"

    # Python module: copy the package and put the shared library next to it (core.py looks
    # there first).  Only when the prefix does not already provide an importable module.
    local pysrc=""
    if [ -n "$srcdir" ] && [ -d "$srcdir/python/lammps" ]; then
        pysrc="$srcdir/python/lammps"
    else
        pysrc="$(ls -d "$prefix"/lib*/python3*/site-packages/lammps "$prefix"/python/lammps 2>/dev/null | head -n1 || true)"
    fi
    if [ -n "$pysrc" ]; then
        rm -rf "$SITE/lammps"
        cp -r "$pysrc" "$SITE/lammps"
        if [ -n "$libdir" ]; then
            local so
            so="$(ls "$libdir"/liblammps.so* | head -n1)"
            cp -L "$so" "$SITE/lammps/liblammps.so"
        fi
    else
        log "warning: no LAMMPS Python package found under $prefix; 'import lammps' may fail"
    fi

    # lmp wrapper: the embedded interpreter is the base Python, so it needs the venv's
    # site-packages and polyget's source dir on PYTHONPATH; MPI/torch libs on LD_LIBRARY_PATH.
    cat > "$VENV/bin/lmp" <<EOF
#!/bin/sh
# polyget wrapper around LAMMPS ($version); written by scripts/build_lammps.sh
export PYTHONPATH="$REPO/python/polyget/lammps/lmp_site:$SITE:$REPO/python\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$VENV/lib${libdir:+:$libdir}${TORCH_LIB:+:$TORCH_LIB}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LAMMPS_PLUGIN_PATH="$PLUGIN_DIR\${LAMMPS_PLUGIN_PATH:+:\$LAMMPS_PLUGIN_PATH}"
exec "$lmp_bin" "\$@"
EOF
    chmod +x "$VENV/bin/lmp"

    cat > "$VENV/share/polyget/lammps.env" <<EOF
LAMMPS_VERSION=$version
LAMMPS_PREFIX=$prefix
LAMMPS_SOURCE_DIR=$srcdir
LAMMPS_BUILD_DIR=$builddir
LAMMPS_LIB_DIR=$libdir
LAMMPS_PLUGIN_DIR=$PLUGIN_DIR
EOF

    # smoke test: lmp runs and has what polyget needs; the Python module imports
    local help
    help="$("$VENV/bin/lmp" -h 2>&1 || true)"
    echo "$help" | grep -q "ML-IAP" || log "warning: this LAMMPS lacks the ML-IAP package"
    echo "$help" | grep -q "PYTHON" || log "warning: this LAMMPS lacks the PYTHON package"
    PYTHONPATH="$REPO/python" "$PY" -c 'import lammps; l = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"]); print("[build_lammps] python module OK:", l.version()); l.close()' \
        || log "warning: 'import lammps' failed in the venv"
    log "installed: $VENV/bin/lmp ($version), env in $VENV/share/polyget/lammps.env"
}

# ---------------------------------------------------------------------------------------------
# existing LAMMPS
# ---------------------------------------------------------------------------------------------
if [ -n "${LAMMPS_ROOT:-}" ]; then
    log "using existing LAMMPS at LAMMPS_ROOT=$LAMMPS_ROOT"
    src_dir="${LAMMPS_SOURCE_DIR:-}"
    if [ -z "$src_dir" ] && [ -f "$LAMMPS_ROOT/src/pair.h" ]; then src_dir="$LAMMPS_ROOT"; fi
    bld_dir="${LAMMPS_BUILD_DIR:-}"
    if [ -z "$bld_dir" ] && [ -d "$LAMMPS_ROOT/build" ]; then bld_dir="$LAMMPS_ROOT/build"; fi
    install_into_venv "$LAMMPS_ROOT" "$src_dir" "$bld_dir" "external"
    ver="$("$VENV/bin/lmp" -h 2>/dev/null | sed -n 's/^Large-scale Atomic\/Molecular Massively Parallel Simulator - \(.*\)$/\1/p' | head -n1 || true)"
    if [ -n "$ver" ]; then
        sed -i "s|^LAMMPS_VERSION=.*|LAMMPS_VERSION=$ver|" "$VENV/share/polyget/lammps.env"
        # ML-IAP reads .pt files with weights_only=False only from 22 Jul 2025 on
        "$PY" - "$ver" <<'PYEOF' || log "warning: LAMMPS $ver is older than 22 Jul 2025: pair_style mliap unified cannot load polyget's .pt files with torch >= 2.6 (use a newer LAMMPS)"
import sys, datetime
v = " ".join(sys.argv[1].split()[:3])
try:
    d = datetime.datetime.strptime(v, "%d %b %Y")
except ValueError:
    sys.exit(0)
sys.exit(0 if d >= datetime.datetime(2025, 7, 22) else 1)
PYEOF
    fi
    [ -n "$src_dir" ] || log "note: no LAMMPS source tree (LAMMPS_SOURCE_DIR): the C++ pair-style plugin cannot be built against this LAMMPS"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# cache key: LAMMPS version + build options + toolchain (not the venv path)
# ---------------------------------------------------------------------------------------------
CMAKE_OPTS=(
    -D CMAKE_BUILD_TYPE=Release
    -D BUILD_SHARED_LIBS=on
    -D BUILD_MPI=on
    -D BUILD_OMP=on
    -D BUILD_TOOLS=off
    -D PKG_PYTHON=on
    -D PKG_ML-IAP=on
    -D PKG_ML-SNAP=on
    -D MLIAP_ENABLE_PYTHON=on
    -D PKG_PLUGIN=on
    -D PKG_MOLECULE=on
    -D PKG_EXTRA-FIX=on
    -D PKG_OPENMP=on
    -D WITH_JPEG=off -D WITH_PNG=off -D WITH_FFMPEG=off -D WITH_CURL=off
)
MPICH_VER="$("$VENV/bin/mpichversion" 2>/dev/null | head -n1 | tr -s ' ' || echo none)"
CXX_VER="$(c++ --version | head -n1)"
KEY_SRC="lammps=$LAMMPS_DEB_UPSTREAM;opts=${CMAKE_OPTS[*]};python=$PYVER;mpich=$MPICH_VER;cxx=$CXX_VER;script=2"
HASH="$(printf '%s' "$KEY_SRC" | sha256sum | cut -c1-12)"
KEY="${LAMMPS_UPSTREAM}-${HASH}"
ROOT="$CACHE/lammps/$KEY"
PREFIX="$ROOT/prefix"
BUILD="$ROOT/build"
SRC="$ROOT/src"
STAMP="$ROOT/.complete"
mkdir -p "$CACHE/lammps"

exec 9>"$CACHE/lammps/.lock-$KEY"
flock 9   # one build per key at a time (parallel `make setup` in two clones)

if [ -f "$STAMP" ] && [ -z "${LAMMPS_FORCE_REBUILD:-}" ]; then
    log "reusing cached build $ROOT"
    install_into_venv "$PREFIX" "$SRC" "$BUILD" "$(cat "$STAMP")"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# fetch the orig tarball from Debian and verify it against the signed Sources index
# ---------------------------------------------------------------------------------------------
DL="$CACHE/lammps/downloads"
TARBALL="$DL/lammps_${LAMMPS_DEB_UPSTREAM}.orig.tar.gz"
APTDIR="$DL/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
cat > "$APTDIR/polyget-$DEBIAN_SUITE.sources" <<EOF
Types: deb-src
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT_OPTS=(-o "Dir::Etc::sourcelist=$APTDIR/polyget-$DEBIAN_SUITE.sources"
          -o Dir::Etc::sourceparts=/dev/null
          -o "Dir::State::Lists=$APTDIR/lists"
          -o "Dir::Cache=$APTDIR/cache"
          -o APT::Sandbox::User=root
          -o Acquire::Languages=none
          -o Debug::NoLocking=1)

log "updating the private apt index for Debian $DEBIAN_SUITE (signed InRelease)"
apt-get -q "${APT_OPTS[@]}" update >&2 || die "apt-get update failed (network to $DEBIAN_MIRROR?)"

# The Sources file in our lists dir was verified by apt against the signed InRelease.
# apt may store lists compressed (lz4, gz, xz): `apt-helper cat-file` reads any of them.
SOURCES_FILES=("$APTDIR"/lists/*_source_Sources*)
[ -e "${SOURCES_FILES[0]}" ] || die "no Sources index downloaded into $APTDIR/lists"
EXPECTED="$(for f in "${SOURCES_FILES[@]}"; do /usr/lib/apt/apt-helper cat-file "$f"; done \
  | "$PY" -c '
import sys
want = "lammps_%s.orig.tar.gz" % sys.argv[1]
found = set()
for stanza in sys.stdin.read().split("\n\n"):
    if not stanza.startswith("Package: lammps\n"):
        continue
    in_sha = False
    for line in stanza.splitlines():
        if line.startswith("Checksums-Sha256:"):
            in_sha = True
        elif in_sha and line.startswith(" "):
            sha, size, name = line.split()
            if name == want:
                found.add(sha)
        else:
            in_sha = False
if len(found) != 1:
    sys.exit("no unique SHA256 for %s in the Sources index (found %r)" % (want, sorted(found)))
print(found.pop())
' "$LAMMPS_DEB_UPSTREAM")" || die "could not find lammps ${LAMMPS_DEB_UPSTREAM} in Debian $DEBIAN_SUITE's Sources index"
log "expected SHA256 (from the signed index): $EXPECTED"

have_good_tarball() { [ -f "$TARBALL" ] && [ "$(sha256sum "$TARBALL" | cut -d' ' -f1)" = "$EXPECTED" ]; }

if ! have_good_tarball; then
    log "downloading the lammps source package (apt-get source --download-only)"
    # The mirror may answer 404 for the .dsc, making apt exit non-zero although the orig
    # tarball arrives intact: success is "tarball present and its SHA256 matches the index".
    (cd "$DL" && apt-get -q "${APT_OPTS[@]}" source --download-only "lammps" >&2) \
        || log "apt-get source exited non-zero (known: 404 on the .dsc); checking the tarball"
fi
have_good_tarball || die "lammps orig tarball missing or SHA256 mismatch: $TARBALL (expected $EXPECTED)"
log "tarball verified: $TARBALL"

# ---------------------------------------------------------------------------------------------
# unpack (kept in the cache: the C++ plugin compiles against these headers) and build
# ---------------------------------------------------------------------------------------------
# Build in place: an interrupted build resumes where it stopped; the stamp marks completion.
if [ ! -f "$SRC/cmake/CMakeLists.txt" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar -xzf "$TARBALL" -C "$SRC"
    # Debian's +dfsg tarball has no top-level directory; upstream tarballs have one.
    if [ ! -f "$SRC/cmake/CMakeLists.txt" ]; then
        top="$(ls -d "$SRC"/*/cmake 2>/dev/null | head -n1 || true)"
        if [ -n "$top" ]; then
            top="$(dirname "$top")"
            (shopt -s dotglob; mv "$top"/* "$SRC"/) && rmdir "$top"
        fi
    fi
fi
[ -f "$SRC/cmake/CMakeLists.txt" ] || die "unexpected tarball layout"

MPICC="$VENV/bin/mpicc"; MPICXX="$VENV/bin/mpicxx"
[ -x "$MPICXX" ] || die "no $MPICXX: install the mpich wheel into the venv (pip install mpich)"

log "configuring (build dir $BUILD)"
T0=$(date +%s)
cmake -S "$SRC/cmake" -B "$BUILD" \
    "${CMAKE_OPTS[@]}" \
    -D CMAKE_INSTALL_PREFIX="$PREFIX" \
    -D CMAKE_C_COMPILER="$MPICC" -D CMAKE_CXX_COMPILER="$MPICXX" \
    -D MPI_C_COMPILER="$MPICC" -D MPI_CXX_COMPILER="$MPICXX" \
    -D Python_EXECUTABLE="$PY" \
    -D CMAKE_INSTALL_RPATH='$ORIGIN;$ORIGIN/../lib;$ORIGIN/../../..' \
    -D CMAKE_INSTALL_RPATH_USE_LINK_PATH=on >&2
log "compiling with $JOBS jobs"
# (retried once: an interrupted or oddly failing parallel make resumes where it stopped)
nice cmake --build "$BUILD" -j "$JOBS" >&2 || nice cmake --build "$BUILD" -j 1 >&2
cmake --install "$BUILD" >&2
T1=$(date +%s)
log "build took $((T1 - T0)) s"
VERSION_STR="$("$PREFIX/bin/lmp" -h 2>/dev/null | sed -n 's/^Large-scale Atomic\/Molecular Massively Parallel Simulator - \(.*\)$/\1/p' | head -n1 || true)"
VERSION_STR="${VERSION_STR:-$LAMMPS_DEB_UPSTREAM}"
echo "$((T1 - T0))" >> "$ROOT/build_seconds"   # one line per (re)build, seconds
echo "$VERSION_STR" > "$STAMP"
install_into_venv "$PREFIX" "$SRC" "$BUILD" "$VERSION_STR"
