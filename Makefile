# polyget: top-level tasks.  `make setup` installs everything into .venv/; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Always pin torch explicitly: a bare `torch` requirement lets pip pull GBs of CUDA wheels.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-python setup-lammps setup-native test demo bench data-mini data-full data-v1 clean

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
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

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

clean:
	rm -rf build python/polyget/*.so
