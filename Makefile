# quictund -- the two commands of the README:
#   make run    install into .venv and run the loopback demo (server + client + echo app)
#   make test   install into .venv and run lint, types and the whole test suite
#   make fuzz   the atheris harnesses of bench/fuzz/ (FUZZ_SECONDS each, times a weight)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test lint typecheck unit e2e fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/quictund demo

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check quictund tests bench

typecheck: $(STAMP)
	$(BIN)/mypy quictund

unit: $(STAMP)
	$(BIN)/pytest -q --ignore=tests/e2e

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

FUZZ_SECONDS ?= 75

fuzz: $(STAMP)
	$(BIN)/pip install --quiet atheris
	$(BIN)/python bench/fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
