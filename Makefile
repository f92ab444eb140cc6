# The two commands: `make run` starts the lab, `make test` runs the tests.
# Both set up what they need on a fresh Debian machine first (apt packages,
# the virtualenv at .venv, the project installed into it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# g++ and make compile the Verilator models of the simulated boards; openFPGALoader
# programs real boards (and the twins, over XVC); bubblewrap sandboxes builds; tmux is
# the real terminal the command line's tests drive, chromium the browser the dashboard's
# tests drive; redis-sentinel watches the primary and replica of the failover test and bench;
# iproute2 makes the network namespaces of the two-host test, and systemd's
# systemd-analyze checks the units of docs/examples/systemd
APT_PACKAGES := redis-server redis-sentinel g++ make perl openfpgaloader bubblewrap tmux \
  chromium chromium-driver iproute2 systemd
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k flow"`.
PYTEST_ARGS ?=

.PHONY: run test lint typing bench system clean

run: $(VENV)/.installed system
	$(BIN)/fpgalab serve

# The default tiers; then the end-to-end suite again on the hardware backend (twins),
# with the slow tier of the ECP5 flow (real bitstreams, real openFPGALoader).
test: $(VENV)/.installed system
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)
	$(BIN)/pytest -n 2 --backend hardware --run-slow \
	  tests/e2e tests/hil/build/test_ecp5.py tests/sim/twins/test_xvc.py $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/nox -s lint

typing: $(VENV)/.installed
	$(BIN)/nox -s typing

bench: $(VENV)/.installed system
	$(BIN)/nox -s bench

# Debian packages, installed only when missing.
system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache
