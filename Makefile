# Two commands matter: `make run` and `make test`. Everything else is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench setup clean openapi audit mutation

setup: $(STAMP)

# Reinstall when the project's dependencies or the lock change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	# The extra [opa]: OPA's own evaluator, which the tests compare regorus with. Its package
	# declares Python >= 3.14 but runs on 3.11, so it alone goes past that declaration.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python \
	  -c requirements.lock opa-golib-python-bindings
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

# Known vulnerabilities in the locked dependencies. pip-audit lives in a venv of its own, so the
# lock holds only what Mandate runs. It asks PyPI's per-release JSON API for each pin; --strict
# fails when a pin could not be checked, rather than passing on what it never looked at.
AUDIT_VENV := .venv-audit
audit:
	test -x $(AUDIT_VENV)/bin/pip-audit || \
	  ($(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install --quiet pip-audit==2.10.1)
	$(AUDIT_VENV)/bin/pip-audit --strict --no-deps --disable-pip --progress-spinner off \
	  -r requirements.lock

# Mutation testing of the verifier's core (merkle.py, note.py, a sample of verify.py), each
# module against its own test file; figures and the survivors not counted: docs/MUTATION.md.
# mutmut lives in a venv of its own (with the project, which its test runs import), so the lock
# holds only what Mandate runs. Takes about 45 minutes on two cores; not part of `make test`.
MUTATION_VENV := .venv-mutation
mutation:
	test -x $(MUTATION_VENV)/bin/mutmut || \
	  ($(PYTHON) -m venv $(MUTATION_VENV) && $(MUTATION_VENV)/bin/pip install --quiet \
	    --disable-pip-version-check -c requirements.lock -e '.[dev]' mutmut==3.8.1)
	$(MUTATION_VENV)/bin/python -m tests.ledger.mutation

openapi: $(STAMP)
	$(BIN)/python -m gateway.server.openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) $(AUDIT_VENV) $(MUTATION_VENV) .mutation .mandate .pytest_cache .mypy_cache .ruff_cache
