#!/usr/bin/env bash
# Make sure the Debian packages the tests or the benchmarks need are installed, installing the missing ones
# with ONE apt-get update + install when we are root and have apt-get; otherwise say which are missing (the
# tests that need them skip and say so, unless a SPLASH_TEST_REQUIRE_* variable makes them fail).
#
#   scripts/ensure-packages.sh NEED...
#
# NEED is one of:
#   postgres     initdb/pg_ctl for the tests' throw-away PostgreSQL server (package postgresql)
#   chromium     Debian's Chromium for the page's browser test, driven by Playwright (chromium, chromium-driver)
#   python3-apt  the system Python's apt bindings, for the playbook's `--check` run (python3-apt)
#   xxhash rclone rsync   the benchmarks' baselines (xxhsum, rclone, rsync)
#   test         = postgres chromium python3-apt;   bench = xxhash rclone rsync
# Nothing here starts a service.
set -euo pipefail

have() {
  case "$1" in
    postgres) command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ;;
    chromium) command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ;;
    python3-apt) /usr/bin/python3 -c "import apt" >/dev/null 2>&1 ;;
    xxhash) command -v xxhsum >/dev/null 2>&1 ;;
    rclone | rsync) command -v "$1" >/dev/null 2>&1 ;;
    *) echo "ensure-packages: unknown need '$1'" >&2; exit 2 ;;
  esac
}

packages() {
  case "$1" in
    postgres) echo postgresql ;;
    chromium) echo chromium chromium-driver fonts-dejavu-core ;;
    python3-apt) echo python3 python3-apt ;;
    *) echo "$1" ;;
  esac
}

needs=()
for arg in "$@"; do
  case "$arg" in
    test) needs+=(postgres chromium python3-apt) ;;
    bench) needs+=(xxhash rclone rsync) ;;
    *) needs+=("$arg") ;;
  esac
done

missing=()
install=()
for need in "${needs[@]}"; do
  if ! have "$need"; then
    missing+=("$need")
    read -r -a pkgs <<<"$(packages "$need")"
    install+=("${pkgs[@]}")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "packages: ${needs[*]} present"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "packages: installing ${install[*]} (for ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${install[@]}" >/dev/null
  for need in "${missing[@]}"; do
    have "$need" || { echo "packages: $need still missing after installing $(packages "$need")" >&2; exit 1; }
  done
else
  echo "packages: missing ${missing[*]} and cannot install them here (need root and apt-get); what needs them" \
       "is skipped and says so" >&2
fi
