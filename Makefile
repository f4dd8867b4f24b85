# Two commands for a fresh machine: `make repro` and `make test` (see README.md).
# Every target is idempotent: the environment is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
VENV  := .venv
BIN   := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# apt-get needs root; use sudo only where we are not root already.
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: env postgres repro test test-quick lint clean-env bench-extract gate

env: $(STAMP)

# torch and torchvision are installed first and pinned together: a loose torch requirement
# resolved by another package pulls a multi-GB build that does not pair with torchvision here.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres); the tests start their own cluster.
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then \
		echo "postgresql: present"; \
	else \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; \
	fi

repro: env
	dvc repro

# Two pytest-xdist workers share the 2 cores, each pinned to its own (tests/conftest.py: the
# training core caps its threads there); the planted source and each planted training run are
# built once for both. `worksteal`: an idle worker takes queued tests from the busy one (the
# harness's runs take minutes; plain `load` scheduling left one worker idle for the last ten).
test: env postgres
	pytest -n 2 --dist worksteal

# Rerun the CI subset of the grid and compare its metrics with the committed ones (params: gate).
gate: env
	WANDB_MODE=disabled ehrcxr gate --repro --against HEAD

# A quick loop for development: without the minutes-long checks marked slow (CI runs them).
test-quick: env postgres
	pytest -n 2 --dist worksteal -m "not slow"

lint: env
	ruff check src tests
	ruff format --check src tests

clean-env:
	rm -rf $(VENV)

# Extraction + featurization of a MIMIC-size synthetic source in PostgreSQL (README figures).
bench-extract: env postgres
	ehrcxr bench-extract --n-patients 50000 --seed 0
