#!/usr/bin/env bash
# Make sure a PostgreSQL server binary (initdb, pg_ctl) exists for the tests, installing it with the system
# package manager when absent and we are allowed to (root + apt-get). The tests start their own server in a
# temporary folder on a loopback port; nothing here starts a service.
set -euo pipefail
find_initdb() {
  command -v initdb 2>/dev/null && return 0
  ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}
if [ -n "$(find_initdb)" ]; then
  echo "postgres: $(find_initdb)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "postgres: not found, installing the 'postgresql' package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  echo "postgres: $(find_initdb)"
else
  echo "postgres: not found and cannot install it here (need root and apt-get); PostgreSQL tests will be skipped" >&2
fi
