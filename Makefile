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

clean:
	rm -rf build python/polyget/*.so
