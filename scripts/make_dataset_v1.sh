#!/usr/bin/env bash
# Dataset v1 (docs/data.md): GFN2-xTB frames of the 24 families, L = 1..6, plus the 15-loop MD
# test systems, plus a PBE/def2-SVP check set of monomers and 2-loops. Resumable: re-run it.
# Phase A (L = 1, 2) finishes first so that the PBE labelling of its small frames can run
# beside phases B (L = 3..5) and C (L = 6, 15-loops). Environment: OUT (default build/poly24-v1), BLAS (an OpenBLAS
# libopenblas.so.0 to preload, see docs/data.md), WORKERS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/poly24-v1}
WORKERS=${WORKERS:-2}
PG=${PG:-.venv/bin/polyget}
BL=()
[ -n "${BLAS:-}" ] && BL=(--blas-preload "$BLAS")
export OMP_NUM_THREADS=1
# phase A: monomers and 2-loops
"$PG" data generate --preset v1 --loops 1,2 --md-loops "" --pbe-frames 0 --workers "$WORKERS" \
    --no-progress "${BL[@]}" -o "$OUT"
# PBE check set: 310 frames <= 18 atoms of L <= 2, spread over (family, loop) (background;
# PySCF's bundled OpenBLAS misdetects this CPU without OPENBLAS_CORETYPE)
OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Zen} \
"$PG" data label "$OUT/poly24-v1-gfn2.extxyz.gz" --method pbe --max-atoms 18 --max-loop 2 \
    --n-frames 310 --workers 1 --threads 1 --no-progress -o "$OUT/poly24-v1-pbe.extxyz" \
    > "$OUT/pbe.log" 2>&1 &
PBE_PID=$!
# phase B: the rest of the training loop sizes (L <= 2 resume instantly), so training can
# start before phase C
"$PG" data generate --preset v1 --loops 1-5 --md-loops "" --pbe-frames 0 --workers "$WORKERS" \
    --no-progress "${BL[@]}" -o "$OUT"
# phase C: everything (adds the 6-loops test systems), then the 15-loops
"$PG" data generate --preset v1 --pbe-frames 0 --workers "$WORKERS" --no-progress "${BL[@]}" \
    -o "$OUT"
wait $PBE_PID
echo "make_dataset_v1: done: $OUT"
