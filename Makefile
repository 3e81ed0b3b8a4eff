# Two commands matter: `make run` (a node on this host with its live dashboard) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup protos run test lint unit integration bench demo clean

setup:
	@bash scripts/setup.sh

protos:
	@$(PY) scripts/gen_protos.py

run: setup
	@bash scripts/run-local.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy meshnode

test: setup lint
	@bash scripts/pytest.sh tests --durations=25

unit: setup
	@bash scripts/pytest.sh tests/unit

integration: setup
	@bash scripts/pytest.sh tests/integration

bench: setup
	$(PY) -m bench

# The demo lab (issue 8): 6 hosts in 2 sites, real traffic, a node on each, meshctl top on web1.
# `meshnode lab fault NAME` / `heal` / `status` / `down` act on it; see README "Demo".
demo: setup
	@$(VENV)/bin/meshnode lab up

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
