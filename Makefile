# Every target creates .venv and installs what it needs, so each works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Two workers on CI's two cores; each test keeps its own Redis keys, Feast project, database and directories.
PYTEST_WORKERS ?= 2

.PHONY: help venv demo test test-fast lint system-deps services serve bench feast-ui notebooks clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the project with its dev tools

system-deps: ## Install promtool, wrk, redis-server, chromium and chromedriver from Debian when missing (needs root)
	@bash scripts/system_deps.sh

services: ## Make sure Redis and PostgreSQL answer on 127.0.0.1 (starts a throwaway redis-server if needed)
	@bash scripts/ensure_services.sh

demo: $(STAMP) ## Run the whole pipeline on the embedded default profile, ending with the API serving
	$(BIN)/churn demo

test: $(STAMP) system-deps services ## Install everything and run every test
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests that need no server and are not slow
	$(BIN)/pytest -m "not redis and not postgres and not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP) ## Run ruff (lint and format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP) system-deps services ## Run every benchmark at quick sizes (BENCH_ARGS=--full: the README's sizes)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

notebooks: $(STAMP) ## JupyterLab on http://127.0.0.1:8889 over notebooks/ (after `make demo`; installs it once)
	$(BIN)/pip install --quiet 'jupyterlab==4.6.6'
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --port 8889 notebooks/

feast-ui: $(STAMP) ## Feast's web UI over the registry on http://127.0.0.1:8888 (after `make demo`)
	cd feature_repo && ../$(BIN)/feast ui --host 127.0.0.1 --port 8888

clean: ## Remove generated data, models and the venv
	rm -rf data mlruns mlartifacts $(VENV) *.egg-info
