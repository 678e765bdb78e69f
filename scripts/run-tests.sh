#!/usr/bin/env bash
# `make test`, arranged for a 2-core machine (CI's): lint, type-check and the whole suite in about half the
# wall time of running them one after the other.
#
#   1. mypy starts first, in the background: from a clean clone it costs ~40 s of one core, which the
#      installs below (apt-get, mostly waiting on the disk and the network) and the serial tests leave free;
#      with a warm cache (.mypy_cache, git-ignored) it takes a second.
#   2. the tools the tests need (PostgreSQL, Chromium, python3-apt), then ruff.
#   3. the tests that share the integration session's real Prefect server (marked `serial` by tests/conftest.py)
#      and `up` end to end run alone: they kill workers mid-batch, stop the server and time a shutdown.
#   4. the bounded fault matrix (tests/faults: one `up` stack, ten real faults), alone for the same reasons.
#   5. everything else on SPLASH_TEST_WORKERS (default 2) pytest-xdist processes; each module stays on one
#      process (its module fixtures are built once) and the in-process flow tests share one temporary Prefect
#      server (`--dist loadfile`; the scheduler is in tests/conftest.py).
# Every part runs even when an earlier one failed; the exit code is non-zero when any did.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORKERS=${SPLASH_TEST_WORKERS:-2}
mkdir -p var
mypy_log=var/mypy.log
"$BIN/mypy" >"$mypy_log" 2>&1 &
mypy_pid=$!
trap 'kill "$mypy_pid" 2>/dev/null || true' EXIT

failed=()
bash scripts/ensure-packages.sh test || failed+=(ensure-packages)
"$BIN/ruff" check src tests bench || failed+=(ruff)

export SPLASH_TEST_REQUIRE_POSTGRES=${SPLASH_TEST_REQUIRE_POSTGRES:-1}
export SPLASH_TEST_REQUIRE_BROWSER=${SPLASH_TEST_REQUIRE_BROWSER:-1}
export SPLASH_TEST_REQUIRE_ANSIBLE=${SPLASH_TEST_REQUIRE_ANSIBLE:-1}
# A short base for tmp_path (xdist adds popen-gwN/ to it): some tests bind Unix sockets under tmp_path, whose
# paths may not pass 107 bytes. Own folder per run, so two runs on one machine never wipe each other's.
basetemp=$(mktemp -d /tmp/sf.XXXXXX)
pytest=("$BIN/python" -m pytest -q -p no:cacheprovider)

echo "== serial tests (the shared Prefect server; \`up\` end to end)"
"${pytest[@]}" --basetemp "$basetemp/s" -m serial tests/integration || failed+=("pytest -m serial")

if [ "${SPLASH_FAULTS:-}" != "off" ]; then
  echo "== the bounded fault matrix (one \`up\` stack; SPLASH_FAULTS=off leaves it out)"
  "${pytest[@]}" --basetemp "$basetemp/f" tests/faults || failed+=("pytest tests/faults")
fi

echo "== mypy"
if wait "$mypy_pid"; then cat "$mypy_log"; else cat "$mypy_log"; failed+=(mypy); fi
trap - EXIT

echo "== every other test on $WORKERS processes"
"${pytest[@]}" --basetemp "$basetemp/p" -n "$WORKERS" --dist loadfile -m "not serial" \
  --ignore tests/faults || failed+=("pytest -m 'not serial'")

if [ ${#failed[@]} -gt 0 ]; then
  echo "test folders kept in $basetemp" >&2
  echo "make test FAILED: ${failed[*]}" >&2
  exit 1
fi
rm -rf "$basetemp"
