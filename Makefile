# glowplug: the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install lint test unit binaries cluster-up cluster-down operator activator bench demo clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install glowplug with its dev tools

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check operator e2e
	$(VENV)/bin/ruff format --check operator e2e
	$(VENV)/bin/mypy

binaries: ## build or reuse the test-bed binaries (cached outside the repo)
	bash e2e/cluster/build-binaries.sh

unit: install ## unit tests only (no cluster)
	$(PY) -m pytest -q operator/tests

test: install lint binaries ## everything CI runs: lint, unit, integration and end-to-end tests
	$(PY) -m pytest -q -rs

cluster-up: install binaries ## start the local control plane and node agent; prints export KUBECONFIG=...
	$(PY) -m e2e.cluster up

cluster-down: install ## stop what cluster-up started
	$(PY) -m e2e.cluster down

operator: install ## run the operator against the cluster in $$KUBECONFIG
	$(VENV)/bin/glowplug operator

activator: install ## run the activator against the cluster in $$KUBECONFIG
	$(VENV)/bin/glowplug activator

clean: ## remove the virtualenv and caches in the repo
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
