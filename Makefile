# quictund -- the two commands of the README:
#   make run    install into .venv and run the loopback demo (server + client + echo app)
#   make test   install into .venv and run lint, types and the whole test suite (the tests
#               that run real QUIC daemons, tests/e2e, a second time on the qh3 engine, and the
#               engine tests a third time on aioquic's pure-Python packet builder)
# Packaging (Debian 12, as root; each installs the host tools it needs with apt-get):
#   make deb            build dist/quictund_<version>_amd64.deb and run lintian on it
#   make e2e-systemd    build the package (as make deb) and install and drive it under a real
#                       systemd in a systemd-nspawn container (tests/systemd/e2e.sh; DEB=path
#                       uses that package instead of building one)
# and the benchmark (not run in CI; needs root for its own sshd and namespaces):
#   make bench        every scenario against direct TCP, stunnel4, ssh -L and quictund
#                     (~20-30 min); writes docs/performance.md, docs/bench-results.json and
#                     docs/img/bench/*.png.  `make bench QUICK=1` (or bench-quick): a few minutes.
#                     More options: make bench BENCH_ARGS='--only latency --paths direct,quictund'
#                     Runs on loopback and on a 1500-byte-MTU veth pair (BENCH_LINK), tables
#                     apart; quic-tun side by side with QUICTUN_BIN=DIR (bench/quictun-go/build.sh)
#   make fuzz   the atheris harnesses of bench/fuzz/ (FUZZ_SECONDS each, times a weight)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# reinstall (and recompile the .pyx) when any of what the install is made of changes
BUILT_FROM = pyproject.toml setup.py $(wildcard quictund/quic/*.pyx)
STAMP   = $(VENV)/.installed-$(shell cat $(BUILT_FROM) | sha1sum | cut -c1-12)

# The engine tests again on aioquic's own pure-Python packet path (the fallback when the
# compiled one, quictund/quic/_aioquic_*.pyx and _bbr.pyx, is not built)
PURE_TESTS = tests/test_engine.py tests/test_engines.py tests/test_engine_bbr.py \
	tests/test_engine_reorder.py tests/test_engine_receive.py tests/test_session.py \
	tests/test_receive_memory.py \
	tests/test_send_budget.py tests/test_migrate.py tests/test_stateless_reset.py \
	tests/test_quic_lb.py tests/test_udpflow_engines.py tests/e2e/test_daemon.py

BENCH_APT = stunnel4 openssh-server openssh-client redis-server redis-tools iputils-ping libjemalloc2
BENCH_LINK ?= loopback,veth

.PHONY: run test lint typecheck unit e2e e2e-qh3 clean bench bench-quick bench-deps deb e2e-systemd fuzz

$(STAMP): $(BUILT_FROM)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/quictund demo

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q
	QUICTUND_TEST_ENGINE=qh3 $(BIN)/pytest -q tests/e2e
	QUICTUND_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check quictund tests bench

typecheck: $(STAMP)
	$(BIN)/mypy quictund

unit: $(STAMP)
	$(BIN)/pytest -q --ignore=tests/e2e

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

e2e-qh3: $(STAMP)
	QUICTUND_TEST_ENGINE=qh3 $(BIN)/pytest -q tests/e2e

bench-deps: $(STAMP)
	@missing=$$(for p in $(BENCH_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "bench: installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
		$(BIN)/pip install --quiet -e '.[test,bench,qh3]'

bench: bench-deps
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) --link $(BENCH_LINK) $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench QUICK=1

deb:
	packaging/deb/build.sh

e2e-systemd:
	tests/systemd/e2e.sh

FUZZ_SECONDS ?= 75

fuzz: $(STAMP)
	$(BIN)/pip install --quiet atheris
	$(BIN)/python bench/fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
