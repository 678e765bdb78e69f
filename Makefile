# Splash Flows -- the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck faults faults-bounded bench bench-all bench-small bench-scale bench-ledger bench-workers bench-archive bench-cli bench-demo clean install screenshots wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/splash-flows demo --prepare
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed  ## simulate 7.3.3 scans and move them, verified, to lamarr and cfs
	$(BIN)/splash-flows demo --root var/demo

test: $(VENV)/.installed  ## ruff, mypy and the whole suite, the bounded fault matrix included (starts PostgreSQL itself); scripts/run-tests.sh says how
	BIN=$(BIN) bash scripts/run-tests.sh

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

faults-bounded: $(VENV)/.installed  ## the bounded fault matrix: one seed per fault, 13 files each
	bash scripts/ensure-packages.sh postgres
	SPLASH_FAULTS=bounded SPLASH_TEST_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults

faults: $(VENV)/.installed  ## the full fault matrix (several seeds per fault, ~270 files each); table in bench/results/faults-full.md
	bash scripts/ensure-packages.sh postgres
	SPLASH_FAULTS=full SPLASH_TEST_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults

bench: $(VENV)/.installed  ## our verified copy against cp + xxhsum, rclone and rsync (large and small files); our reduction against bare pyFAI
	bash scripts/ensure-packages.sh bench
	$(BIN)/python bench/move_throughput.py
	$(BIN)/python bench/move_throughput.py --files 1000 --size-kb 4 --repeat 3
	$(BIN)/python bench/reduce.py

bench-all: $(VENV)/.installed  ## every benchmark in one run, one table: bench/results/run-STAMP/REPORT.md (about an hour)
	bash scripts/ensure-packages.sh bench
	bash scripts/ensure-packages.sh postgres
	$(BIN)/python bench/report.py

bench-small: $(VENV)/.installed  ## the small-file burst: bare copy and the deployed stack, with every baseline
	bash scripts/ensure-packages.sh bench
	$(BIN)/python bench/move_throughput.py --files 1000 --size-kb 4 --repeat 3
	$(BIN)/python bench/detect_to_safe.py --singles 0

bench-scale: $(VENV)/.installed  ## a million files: the watcher's scans and reconcile --dry-run against find
	$(BIN)/python bench/scale.py --dir /dev/shm/splash-scale --clean

bench-ledger: $(VENV)/.installed  ## 1M files / 10M copies on PostgreSQL: every status, prune, reconcile query
	bash scripts/ensure-packages.sh postgres
	$(BIN)/python bench/ledger_scale.py --markdown var/ledger_scale.md

bench-workers: $(VENV)/.installed  ## two process workers, one killed mid-burst: the full 2,000 files
	bash scripts/ensure-packages.sh postgres
	SPLASH_BURST_FILES=2000 $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/integration/test_multi_worker.py

bench-archive: $(VENV)/.installed  ## bundle + verify 2 GB to the local tape tier vs tar -cf + xxhsum
	bash scripts/ensure-packages.sh xxhash
	$(BIN)/python bench/archive.py

wheel: $(VENV)/.installed  ## dist/splash_flows-<version>-py3-none-any.whl, what the Ansible playbook installs
	$(BIN)/pip wheel -q --no-deps -w dist .

screenshots: $(VENV)/.installed  ## the data-safety page of the demo, in headless Chromium, into docs/
	bash scripts/ensure-packages.sh chromium
	$(BIN)/splash-flows demo --root var/demo --small
	$(BIN)/python scripts/screenshot_page.py --config var/demo/splash-flows.yaml --out docs

bench-cli: $(VENV)/.installed  ## how fast --help and status answer (9 and 100,000 files) vs python -c pass, sqlite3
	$(BIN)/python bench/cli_latency.py

bench-demo: $(VENV)/.installed  ## the installed `make demo`: first run, re-runs, and where the time goes
	$(BIN)/python bench/demo_time.py

clean:  ## also stops the demo's kept Prefect server
	-test -x $(BIN)/splash-flows && $(BIN)/splash-flows demo --root var/demo --stop-server
	rm -rf var/demo var/up .pytest_cache .mypy_cache
