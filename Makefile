# One entry point for people and CI. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install; older than pyproject.toml means "install again".
STAMP := $(VENV)/.installed
# The same with the benchmark's extras (matplotlib), which `make lint` type-checks too.
BENCH_STAMP := $(VENV)/.bench-installed

COMMAND_WORKERS ?= 1
PROJECTOR_WORKERS ?= 1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install services run test lint format clean bench chaos

help:
	@echo "make install   create $(VENV) and install the project with its dev extras"
	@echo "make services  start PostgreSQL, Redis and RabbitMQ here unless they answer"
	@echo "make run       the whole system in the foreground (COMMAND_WORKERS=$(COMMAND_WORKERS)"
	@echo "               PROJECTOR_WORKERS=$(PROJECTOR_WORKERS) PORT=$(PORT))"
	@echo "make test      the test suite (PYTEST_ARGS='-m \"not integration\"' for the fast part)"
	@echo "make lint      ruff check, ruff format --check, mypy"
	@echo "make format    ruff fixes and formatting"
	@echo "make bench     the benchmark: ratios against floors measured in the same run (QUICK=1)"
	@echo "make chaos     the fault drills: kills, broker/database/Redis restarts and freezes;"
	@echo "               then the tests that measure latency under load (-m load)"
	@echo "make clean     remove caches and build output ($(VENV) stays; rm -rf it to start over)"

install: $(STAMP)

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $@

services:
	bash scripts/ensure-services.sh

run: install services
	$(BIN)/python scripts/run.py --port $(PORT) \
		--command-workers $(COMMAND_WORKERS) --projector-workers $(PROJECTOR_WORKERS)

# pytest exits 5 when it collected nothing: a run that tested nothing must not pass.
# Tests marked `load` measure latency under load for tens of seconds: `make chaos` runs them.
test: install services
	@echo "$(BIN)/pytest -m 'not load' $(PYTEST_ARGS)"
	@rc=0; $(BIN)/pytest -m 'not load' $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lint: install $(BENCH_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev,bench]'
	touch $@

# QUICK=1: a smoke run of under a minute, written to bench/out/ (not the tracked figures).
bench: install services $(BENCH_STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# The fault drills and their table (tests/chaos/last-run.md); CHAOS_ARGS='--quick' for a small
# load, '--scenario NAME ...' for some. Restarts and freezes of RabbitMQ, PostgreSQL and Redis
# first wait until no other test or benchmark run is going.
chaos: install services
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)
	$(BIN)/pytest -m load -p no:cacheprovider
