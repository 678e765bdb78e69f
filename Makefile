# Splash Flows -- the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck bench faults clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed  ## simulate 7.3.3 scans and move them, verified, to lamarr and cfs
	$(BIN)/splash-flows demo --root var/demo

test: $(VENV)/.installed  ## lint, type-check and run the whole test suite (starts PostgreSQL itself)
	bash scripts/ensure-postgres.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	SPLASH_TEST_REQUIRE_POSTGRES=$${SPLASH_TEST_REQUIRE_POSTGRES:-1} $(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

faults: $(VENV)/.installed  ## the full fault matrix (several seeds per fault, ~270 files each); table in bench/results/faults-full.md
	bash scripts/ensure-postgres.sh
	SPLASH_FAULTS=full SPLASH_TEST_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults

bench: $(VENV)/.installed  ## measure our verified copy against cp + a checksum tool
	$(BIN)/python bench/move_throughput.py

clean:
	rm -rf var/demo var/up .pytest_cache .mypy_cache
