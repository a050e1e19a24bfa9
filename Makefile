# Two commands on a fresh machine with only python3 and make:
#   make demo   -> creates .venv, installs manualbp, runs `manualbp check` on the built-in models
#   make test   -> creates .venv, installs the test extras (and flax, equinox), runs the test suite
# (demo installs only manualbp's own dependencies; test adds the extras on top)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench gpu-check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,examples,flax,equinox]"
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/manualbp check --model all

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n auto --dist worksteal

bench: $(VENV)/.installed
	$(BIN)/manualbp bench

# the device check (docs/gpu.md): on a machine with an accelerator, in under 8 minutes; results in $OUT (default
# gpu-check/). Uses .venv's python when there is one (`make .venv/.installed` first), else the machine's own with its jax.
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/device_check.py --out $${OUT:-gpu-check}

lint: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check manualbp reference tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
