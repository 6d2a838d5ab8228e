# polyget: top-level tasks.  `make setup` installs everything into .venv/; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Always pin torch explicitly: a bare `torch` requirement lets pip pull GBs of CUDA wheels.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-python setup-lammps setup-native test demo bench clean

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
# `pair_style mliap unified potentials/polyget-mini.pt 0`; prints thermo output and steps/s.
DEMO_MODEL ?= potentials/polyget-mini.pt
DEMO_STEPS ?= 200
demo: setup-lammps
	@test -f $(DEMO_MODEL) || { echo "demo: $(DEMO_MODEL) is missing (python python/export.py CKPT -o $(DEMO_MODEL))"; exit 1; }
	$(VENV)/bin/lmp -in inputs/demo.in -var model $(DEMO_MODEL) -var steps $(DEMO_STEPS) -log none
	@echo "demo: steps/s is the 'timesteps/s' figure on the Performance line above"

clean:
	rm -rf build python/polyget/*.so
