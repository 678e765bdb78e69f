# Splash Flows -- the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck bench bench-small bench-scale bench-ledger bench-workers clean install

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

bench: $(VENV)/.installed  ## measure our verified copy against cp + xxhsum, rclone and rsync (large and small files)
	bash scripts/ensure-bench-tools.sh
	$(BIN)/python bench/move_throughput.py
	$(BIN)/python bench/move_throughput.py --files 1000 --size-kb 4

bench-small: $(VENV)/.installed  ## the small-file burst: bare copy and the deployed stack, with every baseline
	bash scripts/ensure-bench-tools.sh
	$(BIN)/python bench/move_throughput.py --files 1000 --size-kb 4
	$(BIN)/python bench/detect_to_safe.py --singles 0

bench-scale: $(VENV)/.installed  ## a million files: the watcher's scans and reconcile --dry-run against find
	$(BIN)/python bench/scale.py --dir /dev/shm/splash-scale --clean

bench-ledger: $(VENV)/.installed  ## 1M files / 10M copies on PostgreSQL: every status, prune, reconcile query
	bash scripts/ensure-postgres.sh
	$(BIN)/python bench/ledger_scale.py --markdown var/ledger_scale.md

bench-workers: $(VENV)/.installed  ## two process workers, one killed mid-burst: the full 2,000 files
	bash scripts/ensure-postgres.sh
	SPLASH_BURST_FILES=2000 $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/integration/test_multi_worker.py

clean:
	rm -rf var/demo var/up .pytest_cache .mypy_cache
