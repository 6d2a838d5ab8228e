#!/usr/bin/env bash
# Copy dataset v1 from the generation folder into data/ (compact .extxyz.xz + manifests), make
# the paper's splits, the Fig. 2 plot and the sampler report (docs/data.md). OUT as in
# make_dataset_v1.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/poly24-v1}
PG=${PG:-.venv/bin/polyget}
"$PG" data pack "$OUT/poly24-v1-gfn2.extxyz.gz" data/poly24-v1-gfn2.extxyz.xz
"$PG" data pack "$OUT/poly24-v1-gfn2-loops15.extxyz" data/poly24-v1-gfn2-loops15.extxyz.xz
"$PG" data pack "$OUT/poly24-v1-pbe.extxyz" data/poly24-v1-pbe.extxyz.xz
# splits as in the paper: train L <= 5, test L = 6, three held-out families (docs/data.md)
"$PG" data split data/poly24-v1-gfn2.extxyz.xz -o build/poly24-v1-splits \
    --test-loops 6 --heldout-families CK4,LAC7,OTH5
cp build/poly24-v1-splits/splits.json data/poly24-v1-splits.json
"$PG" data stats data/poly24-v1-gfn2.extxyz.xz --plot docs/fig2-poly24-v1.png \
    --json build/poly24-v1-stats.json > build/poly24-v1-stats.txt
"$PG" data report "$OUT" --json docs/poly24-v1-samplers.json --md docs/poly24-v1-samplers.md
du -b data/poly24-v1-* | sort -n
