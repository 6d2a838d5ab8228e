#!/usr/bin/env bash
# Build the polyget native code with CMake against the installed torch:
#   - polyget._core (pybind11)   -> python/polyget/_core*.so
#   - LAMMPS plugin pair_style polyget -> .venv/lib/polyget/plugins/polygetplugin.so
# Called by `make setup` (target setup-native).  Environment:
#   PYTHON             interpreter whose torch/pybind11 to use (default .venv/bin/python)
#   LAMMPS_SOURCE_DIR  LAMMPS source tree for the plugin; default: from
#                      .venv/share/polyget/lammps.env (written by scripts/build_lammps.sh) of
#                      the venv PYTHON belongs to
#   POLYGET_PLUGIN_DIR where polygetplugin.so goes (default: <venv>/lib/polyget/plugins, which
#                      <venv>/bin/lmp puts on LAMMPS_PLUGIN_PATH)
#   POLYGET_LAMMPS_MPI 1 (default) or 0 for a serial LAMMPS
#   POLYGET_NATIVE_BUILD_DIR  (default build/native);  JOBS  parallel compile jobs (default 2)
#   POLYGET_NATIVE_REQUIRE_PLUGIN=1  fail when no LAMMPS source tree is found
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BUILD_DIR=${POLYGET_NATIVE_BUILD_DIR:-$ROOT/build/native}
JOBS=${JOBS:-2}
# the venv that PYTHON belongs to (default: the repository's .venv) holds lammps.env and the plugin
VENV_DIR=$(cd "$(dirname "$PYTHON")/.." && pwd)
[ -f "$VENV_DIR/pyvenv.cfg" ] || VENV_DIR=$ROOT/.venv
LAMMPS_ENV=$VENV_DIR/share/polyget/lammps.env
PLUGIN_DIR=${POLYGET_PLUGIN_DIR:-$VENV_DIR/lib/polyget/plugins}

if ! "$PYTHON" -c "import torch, pybind11" 2>/dev/null; then
  echo "build_native: $PYTHON cannot import torch and pybind11; run 'make setup-python' first" >&2
  exit 1
fi
TORCH_PREFIX=$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)")
PYBIND11_DIR=$("$PYTHON" -m pybind11 --cmakedir)

# LAMMPS source tree: the user's, else the one build_lammps.sh recorded
if [ -z "${LAMMPS_SOURCE_DIR:-}" ] && [ -f "$LAMMPS_ENV" ]; then
  LAMMPS_SOURCE_DIR=$(sed -n 's/^LAMMPS_SOURCE_DIR=//p' "$LAMMPS_ENV" | tail -n1)
fi
LAMMPS_SOURCE_DIR=${LAMMPS_SOURCE_DIR:-}
# LAMMPS_ROOT (the Makefile's "use an existing LAMMPS") counts when it is a source tree
if [ -z "$LAMMPS_SOURCE_DIR" ] && [ -n "${LAMMPS_ROOT:-}" ] && [ -f "$LAMMPS_ROOT/src/pair.h" ]; then
  LAMMPS_SOURCE_DIR=$LAMMPS_ROOT
fi
if [ -n "$LAMMPS_SOURCE_DIR" ] && [ ! -f "$LAMMPS_SOURCE_DIR/src/pair.h" ]; then
  echo "build_native: LAMMPS_SOURCE_DIR=$LAMMPS_SOURCE_DIR has no src/pair.h" >&2
  exit 1
fi
if [ -z "$LAMMPS_SOURCE_DIR" ]; then
  if [ "${POLYGET_NATIVE_REQUIRE_PLUGIN:-0}" = 1 ]; then
    echo "build_native: no LAMMPS source tree: set LAMMPS_SOURCE_DIR or run scripts/build_lammps.sh" >&2
    exit 1
  fi
  echo "build_native: no LAMMPS source tree (LAMMPS_SOURCE_DIR or $LAMMPS_ENV): building only polyget._core"
fi

MPI_ARGS=()
if [ "${POLYGET_LAMMPS_MPI:-1}" = 1 ]; then
  MPICXX=${MPICXX:-$(dirname "$PYTHON")/mpicxx}
  [ -x "$MPICXX" ] || MPICXX=$(command -v mpicxx || true)
  [ -n "$MPICXX" ] && MPI_ARGS+=(-DMPI_CXX_COMPILER="$MPICXX")
  MPI_ARGS+=(-DPOLYGET_LAMMPS_MPI=ON)
else
  MPI_ARGS+=(-DPOLYGET_LAMMPS_MPI=OFF)
fi

mkdir -p "$BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DPython_EXECUTABLE="$PYTHON" \
  -Dpybind11_DIR="$PYBIND11_DIR" \
  -DLAMMPS_SOURCE_DIR="$LAMMPS_SOURCE_DIR" \
  -DPOLYGET_PLUGIN_INSTALL_DIR="$PLUGIN_DIR" \
  "${MPI_ARGS[@]}" >"$BUILD_DIR.configure.log" 2>&1 || {
  cat "$BUILD_DIR.configure.log" >&2
  echo "build_native: cmake configure failed (log above)" >&2
  exit 1
}
grep '^-- polyget' "$BUILD_DIR.configure.log" || true
cmake --build "$BUILD_DIR" -j "$JOBS"
cmake --install "$BUILD_DIR" >/dev/null
echo "build_native: installed $(ls "$ROOT"/python/polyget/_core*.so)"
if [ -n "$LAMMPS_SOURCE_DIR" ]; then
  echo "build_native: installed $PLUGIN_DIR/polygetplugin.so"
fi
