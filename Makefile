# libnet developer commands.  `make test` works from a fresh clone (as root
# for the integration tests): system packages, .venv, then the tests.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all deps demo test unit integration lint bench bench-quick clean

all: test

$(STAMP): setup.cfg pyproject.toml scripts/install-system-deps
	bash scripts/install-system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps: $(STAMP)

# pytest exits 5 when it collected no test: that is a failure here
define run_pytest
	$(PY) -m pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

demo: deps
	$(PY) -m libnet.demo

test: deps
	$(call run_pytest,tests)

unit: deps
	$(call run_pytest,tests/unit)

integration: deps
	$(call run_pytest,tests/integration)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: deps
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.run_all

# every benchmark's --quick run against benchmarks/baseline.json: a table, DROPs
# flagged; reports only (exit 0).  Run it before resolving a hot-path change.
bench-quick: deps
	$(PY) -m benchmarks.quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
