# SENSE: `make demo` runs the main job, `make test` the whole test suite (what CI runs),
# `make test-fast` the tests that are not marked slow (under a minute, for the edit loop). All set
# up what they need first (Debian packages, .venv, the project) and are quick the second time.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SENSE := $(VENV)/bin/sense
DEMO_OUT ?= out/demo
LINT_PATHS := $(wildcard sense_core training plugin tests benchmarks)

.PHONY: setup demo test test-fast lint clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(SENSE) demo --out $(DEMO_OUT)

test: setup
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m pytest -ra --durations=30

test-fast: setup
	$(PYTHON) -m pytest -ra -m "not slow"

lint: setup
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)

clean:
	rm -rf $(VENV) out .pytest_cache
