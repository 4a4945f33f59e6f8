# SENSE: `make demo` runs the main job, `make test` the whole test suite. Both set up what they
# need first (Debian packages, .venv, the project) and are quick the second time.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SENSE := $(VENV)/bin/sense
DEMO_OUT ?= out/demo

.PHONY: setup demo test lint clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(SENSE) demo --out $(DEMO_OUT)

test: setup
	$(PYTHON) -m ruff check sense_core training plugin tests benchmarks
	$(PYTHON) -m pytest -ra

lint: setup
	$(PYTHON) -m ruff check sense_core training plugin tests benchmarks
	$(PYTHON) -m ruff format --check sense_core training plugin tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
