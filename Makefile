# quictund -- the two commands of the README:
#   make run    install into .venv and run the loopback demo (server + client + echo app)
#   make test   install into .venv and run lint, types and the whole test suite
# Packaging (Debian 12, as root; each installs the host tools it needs with apt-get):
#   make deb            build dist/quictund_<version>_amd64.deb and run lintian on it
#   make e2e-systemd    build the package (as make deb) and install and drive it under a real
#                       systemd in a systemd-nspawn container (tests/systemd/e2e.sh; DEB=path
#                       uses that package instead of building one)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test lint typecheck unit e2e clean deb e2e-systemd

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

deb:
	packaging/deb/build.sh

e2e-systemd:
	tests/systemd/e2e.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
