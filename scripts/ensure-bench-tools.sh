#!/usr/bin/env bash
# Make sure the baselines the benchmarks compare against exist: xxhsum (package xxhash), rclone and rsync.
# Installs the missing ones with apt-get when we are root; otherwise says which are missing (the benchmarks
# then skip those baselines and say so). Called by the `make bench*` targets; no test needs these tools.
set -euo pipefail
missing=()
command -v xxhsum >/dev/null 2>&1 || missing+=(xxhash)
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
if [ ${#missing[@]} -eq 0 ]; then
  echo "bench tools: xxhsum, rclone, rsync present"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "bench tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
else
  echo "bench tools: missing ${missing[*]} and cannot install them here (need root and apt-get)" >&2
fi
