#!/usr/bin/env bash
# Make sure `xxhsum` (Debian package `xxhash`) exists for the benchmarks' baseline, installing it when absent and
# we are allowed to (root + apt-get). The benchmarks fall back to sha256sum (and say so) when it cannot be had.
set -euo pipefail
if command -v xxhsum >/dev/null 2>&1; then
  echo "xxhsum: $(command -v xxhsum)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "xxhsum: not found, installing the 'xxhash' package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq xxhash >/dev/null
  echo "xxhsum: $(command -v xxhsum)"
else
  echo "xxhsum: not found and cannot install it here (need root and apt-get); the baseline uses sha256sum" >&2
fi
