# polyget: top-level tasks.  `make setup` installs everything into .venv/; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Always pin torch explicitly: a bare `torch` requirement lets pip pull GBs of CUDA wheels.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-python setup-lammps setup-native test demo bench data-mini data-full data-v1 clean \
        splits md-15loops ablations active-learning arch-budget

setup: setup-python setup-lammps setup-native

setup-python: $(VENV)/.polyget-python

$(VENV)/.polyget-python: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[all]'
	touch $@

# LAMMPS with ML-IAP + PYTHON (cached; LAMMPS_ROOT=... uses an existing install).
setup-lammps: setup-python
	@if [ -f scripts/build_lammps.sh ]; then bash scripts/build_lammps.sh; fi

# C++ core: pybind11 module polyget._core and the LAMMPS pair-style plugin.
setup-native: setup-lammps
	@if [ -f scripts/build_native.sh ]; then bash scripts/build_native.sh; fi

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS) tests

# Short LAMMPS NVT (Nose-Hoover, 300 K, 0.5 fs) of the cyclooctane 15-loop (360 atoms) with
# `pair_style mliap unified potentials/polyget-cho.pt 0`; prints thermo output and a summary line.
DEMO_MODEL ?= potentials/polyget-cho.pt
DEMO_STEPS ?= 200
demo: setup-lammps
	@test -f $(DEMO_MODEL) || { echo "demo: $(DEMO_MODEL) is missing (python python/export.py CKPT -o $(DEMO_MODEL))"; exit 1; }
	$(VENV)/bin/lmp -in inputs/demo.in -var model $(DEMO_MODEL) -var steps $(DEMO_STEPS) -log none
	@echo "demo: the 'demo summary' line above gives steps/s and whether the run stayed stable"

# Benchmarks (bench/README.md): results in bench/results/*.json and *.md.
# `make bench`: polyget's paths side by side with TorchMD-Net 3.1 (installed into build/tmdnet),
# one interleaved run; BENCH_ARGS narrows it (e.g. BENCH_ARGS="--sizes 360 --threads 2").
BENCH_ARGS ?= --sizes 360,3456,36000 --train
bench: setup
	bash bench/setup_tmdnet.sh
	$(PY) bench/run_bench.py $(BENCH_ARGS)

# Reference data (docs/data.md). data-mini regenerates the shipped GFN2-xTB set (~1 h on 2 cores);
# data-full makes the Poly24-style set (~9 h on 2 cores with OpenBLAS, see docs/data.md).
data-mini: setup-python
	OMP_NUM_THREADS=1 $(VENV)/bin/polyget data generate --preset mini --workers 2 -o build/poly-mini
	cp build/poly-mini/poly-mini-gfn2.* data/

# Dataset v1 (docs/data.md): ~1 CPU-hour of GFN2 + ~1.5 of PBE; resumable (re-run to continue).
# BLAS=/path/libopenblas.so.0 preloads a faster BLAS for tblite (docs/data.md says how to get one).
data-v1: setup-python
	bash scripts/make_dataset_v1.sh
	bash scripts/ship_dataset_v1.sh

data-full: setup-python
	OMP_NUM_THREADS=1 $(VENV)/bin/polyget data generate --preset full --workers 2 -o build/poly24

# Experiments of docs/results.md (long CPU jobs; resumable: run the same target again to go on).
# They need the dataset-v1 splits in build/ (`make splits`).
splits: setup-python
	test -f build/poly24-v1-splits/train.extxyz.gz || $(VENV)/bin/polyget data split \
	    data/poly24-v1-gfn2.extxyz.xz -o build/poly24-v1-splits --test-loops 6 \
	    --heldout-families CK4,LAC7,OTH5

# 15-loop NVT of CK6/OTH4/LAC2/LAC5 with polyget-cho (pair_style polyget), MD_HOURS of wall time
# per call, towards MD_PS ps per loop; then NVE drift and the analysis (GFN2 on own frames).
MD_HOURS ?= 2
MD_PS ?= 100
# MD_JOBS: loops run side by side (one core each)
MD_JOBS ?= 1
md-15loops: setup
	$(PY) experiments/md_long.py run --hours $(MD_HOURS) --ps $(MD_PS) --jobs $(MD_JOBS)
	$(PY) experiments/md_long.py nve --ps 0.5
	$(PY) experiments/md_long.py analyse

# force-only vs joint, single- vs multi-family (same steps for every arm)
ablations: setup splits
	$(PY) experiments/ablations.py --steps 1500

# accuracy per CPU budget of the candidate sizes (32x2, 64x3, 96x4, 128x6): 15 min of 1 thread each
arch-budget: setup splits
	$(PY) experiments/arch_budget.py --hours 0.25

# one active-learning round: 600 K MD of every family's 6-loop, GFN2 labels, continued training,
# a control without the new frames, the MD again with the new model
active-learning: setup splits
	$(PY) experiments/active_learning.py md --tag r0 --steps 1200
	$(PY) experiments/active_learning.py label --tag r0 --steps 1200
	$(PY) experiments/active_learning.py train --steps 1500
	$(PY) experiments/active_learning.py train --steps 1500 --control
	$(PY) python/export.py runs/polyget-cho-r1/best.ckpt -o runs/polyget-cho-r1/polyget-cho-r1.pt --dtype float32 --no-aoti
	$(PY) experiments/active_learning.py md --tag r1 --steps 1200 --model runs/polyget-cho-r1/polyget-cho-r1.jit.pt
	$(PY) experiments/active_learning.py report --steps 1200

clean:
	rm -rf build python/polyget/*.so
