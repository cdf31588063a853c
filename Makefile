# One entry point for people and CI. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every dependency, with the dev and bench extras, pinned with hashes: `make lock` writes it
# from pyproject.toml, `make install` installs exactly it.
LOCK := requirements.lock
# The service's own part of it, which the image installs.
RUNTIME_LOCK := requirements-runtime.lock
# Written after a successful install; older than the lock or pyproject.toml means "install again".
STAMP := $(VENV)/.installed

COMMAND_WORKERS ?= 1
PROJECTOR_WORKERS ?= 1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install lock services run test test-fast test-integration lint format clean bench ceilings chaos

help:
	@echo "make install   create $(VENV) and install $(LOCK), then the project itself"
	@echo "make lock      pin every dependency of pyproject.toml, with hashes, in $(LOCK)"
	@echo "               (and the image's part of it in $(RUNTIME_LOCK))"
	@echo "make services  start PostgreSQL, Redis and RabbitMQ here unless they answer"
	@echo "make run       the whole system in the foreground (COMMAND_WORKERS=$(COMMAND_WORKERS)"
	@echo "               PROJECTOR_WORKERS=$(PROJECTOR_WORKERS) PORT=$(PORT))"
	@echo "make test      the test suite: the fast part, then (if it passed) the integration part"
	@echo "make test-fast the tests that need no service (unit, HTTP in process), in seconds"
	@echo "make test-integration  the tests against RabbitMQ, PostgreSQL, Redis and processes"
	@echo "make lint      ruff check, ruff format --check, mypy"
	@echo "make format    ruff fixes and formatting"
	@echo "make bench     the benchmark: ratios against floors measured in the same run (QUICK=1)"
	@echo "make ceilings  the relay, a command worker and a projector, each alone over a backlog,"
	@echo "               per CPU-second (bench/ceilings.json; QUICK=1 for a smoke run)"
	@echo "make chaos     the fault drills: kills, broker/database/Redis restarts and freezes;"
	@echo "               then the tests that measure latency under load (-m load)"
	@echo "make clean     remove caches and build output ($(VENV) stays; rm -rf it to start over)"

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps -e .
	touch $@

# pip-tools runs in a venv of its own, so that it pins nothing of itself into the lock.
LOCK_VENV := $(VENV)-lock
lock:
	[ -x $(LOCK_VENV)/bin/pip-compile ] || { $(PYTHON) -m venv $(LOCK_VENV) \
		&& $(LOCK_VENV)/bin/python -m pip install --disable-pip-version-check pip-tools; }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --upgrade \
		--generate-hashes --allow-unsafe --strip-extras --extra dev --extra bench \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml
	$(MAKE) install
	$(BIN)/python scripts/runtime_lock.py

services:
	bash scripts/ensure-services.sh

run: install services
	$(BIN)/python scripts/run.py --port $(PORT) \
		--command-workers $(COMMAND_WORKERS) --projector-workers $(PROJECTOR_WORKERS)

# pytest exits 5 when it collected nothing: a run that tested nothing must not pass.
# Tests marked `load` measure latency under load for tens of seconds: `make chaos` runs them.
# The fast part runs first, so a broken unit stops the run in seconds, not minutes.
FAST := -m 'not integration and not load'
# Integration tests run side by side in TEST_WORKERS processes (pytest-xdist): each test has a
# vhost, database and Redis prefix of its own, and most of its time is spent waiting on
# processes and services. 3 fills two cores best (8 min serially, 5 with 3, 5.5 with 4);
# TEST_WORKERS=0 runs them one at a time.
TEST_WORKERS ?= 3
INTEGRATION := -m 'integration and not load' -n $(TEST_WORKERS)
pytest = @echo "$(BIN)/pytest $(1) $(PYTEST_ARGS)"; \
	rc=0; $(BIN)/pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

test: test-fast test-integration

test-fast: install
	$(call pytest,$(FAST))

test-integration: install services
	$(call pytest,$(INTEGRATION))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# QUICK=1: a smoke run of under a minute, written to bench/out/ (not the tracked figures).
bench: install services
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# Each serial part alone over a backlog (docs/scaling.md); QUICK=1: small, to bench/out/.
ceilings: install services
	$(BIN)/python -m bench --ceilings $(if $(QUICK),--quick) $(BENCH_ARGS)

# The fault drills and their table (tests/chaos/last-run.md); CHAOS_ARGS='--quick' for a small
# load, '--scenario NAME ...' for some. Restarts and freezes of RabbitMQ, PostgreSQL and Redis
# first wait until no other test or benchmark run is going.
chaos: install services
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)
	$(BIN)/pytest -m load -p no:cacheprovider
