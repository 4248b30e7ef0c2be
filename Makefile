# Every target creates .venv itself, so each works on a fresh clone.
# The interpreter that creates .venv: PYTHON=... overrides; otherwise the first of these that runs
# and is >= 3.10 (a pyenv shim of an inactive version exists but fails when run, so run each).
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3.10 python3
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in $(PYTHON_CANDIDATES); do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && { echo $$p; break; }; \
	done)
endif
VENV ?= .venv
BIN := $(VENV)/bin
# The torch the venv gets (pyproject asks torch >= 2.11; 2.11.0 and 2.14.1 are tested).
TORCH ?= torch==2.14.1 torchvision==0.29.1
SHARED_MNIST := $(abspath ../shared/data/mnist)

.PHONY: venv demo test lint bench clean

$(BIN)/lstm-export: pyproject.toml
	$(if $(PYTHON),,$(error no Python >= 3.10 found (tried $(PYTHON_CANDIDATES)); set PYTHON=/path/to/python3))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/lstm-export

## The whole pipeline on a fresh machine: data, train, export, classify, benchmark.
demo: venv
	$(BIN)/lstm-export demo

## ruff, formatting, mypy and the test suite (finds MNIST in ../shared/data/mnist if present).
test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/ benchmarks/
	@if [ -z "$$LSTM_EXPORT_DATA_DIR" ] && [ -d "$(SHARED_MNIST)" ]; then \
		export LSTM_EXPORT_DATA_DIR="$(SHARED_MNIST)"; fi; \
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/ benchmarks/

bench: venv
	$(BIN)/python benchmarks/reproduce.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
