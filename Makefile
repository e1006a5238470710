# Two commands matter: `make run` and `make test`. Everything else is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench setup clean openapi

setup: $(STAMP)

# Reinstall when the project's dependencies or the lock change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mandate serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

openapi: $(STAMP)
	$(BIN)/python -m gateway.openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) .mandate .pytest_cache .mypy_cache .ruff_cache
