# Runstore — the two set-up commands of the README are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: help install infra browser run up down status test test-unit lint typecheck bench soak k8s clean

help:
	@echo "make run     install everything, run Kafka + FerretDB + all services in the foreground"
	@echo "make up      the same stack in the background (returns when the API answers)"
	@echo "make down    stop the background stack and free every port"
	@echo "make test    install, start the test servers, run lint, types and every test suite"
	@echo "make bench   run every benchmark in bench/ (own servers, ~1 h) and write docs/benchmarks.md"
	@echo "make soak    30 minutes at 300 commands/s with readers; RSS and read latencies (bench/soak.py)"
	@echo "make k8s     render deploy/k8s with kustomize and validate it offline (also in make test)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

infra: install
	$(PY) deploy/local/infra.py install all

# Debian's chromium + chromedriver for the web UI's browser test (tests/ui); apt only.
browser:
	deploy/local/install-browser.sh

run: infra
	$(PY) deploy/local/stack.py run

up: infra
	$(PY) deploy/local/stack.py up

down:
	@if [ -x $(PY) ]; then $(PY) deploy/local/stack.py down; \
	else $(PYTHON) deploy/local/stack.py down; fi

status:
	$(PY) deploy/local/stack.py status

lint: install
	$(VENV)/bin/ruff check services schemas runstore examples tests bench deploy/local/stack.py deploy/k8s/validate.py
	$(VENV)/bin/ruff format --check services schemas runstore

typecheck: install
	$(VENV)/bin/mypy services schemas runstore

test-unit: install
	$(VENV)/bin/pytest tests/unit -q

# Servers for the tests are started by the fixtures themselves (tests/support/servers.py)
# on free ports, so a running `make up` stack is never touched.
test: infra browser lint typecheck
	$(VENV)/bin/pytest -q -ra --durations=15

bench: infra
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

soak: infra
	$(PY) bench/soak.py $(SOAK_ARGS)

# kustomize is built once into .local/cache (Go module proxy); the schemas come from the
# kubernetes-validate test dependency. tests/integration/test_k8s_manifests.py runs the same.
k8s: install
	$(PY) deploy/k8s/validate.py

clean: down
	rm -rf .local/data .local/logs .local/run
