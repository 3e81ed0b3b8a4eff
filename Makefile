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
	$(VENV)/bin/mypy meshnode cli probes

test: setup lint
	@bash scripts/pytest.sh tests

unit: setup
	@bash scripts/pytest.sh tests/unit

integration: setup
	@bash scripts/pytest.sh tests/integration

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
