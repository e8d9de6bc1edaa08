# The README's two commands are `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.densa-installed

.PHONY: install quickstart test lint format clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first and pinned, so no multi-GB CUDA build is pulled in by a dependency.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/densa quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check densa tests benchmarks
	$(VENV)/bin/ruff format --check densa tests benchmarks docs
	$(PY) -m pytest -q -m "not gpu and not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check densa tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format densa tests benchmarks docs
	$(VENV)/bin/ruff check --fix densa tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
