#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium (and its WebDriver) exists for the browser test of the
# data-safety page, installing them with apt-get when absent and we are allowed to (root + apt-get).
# Playwright drives this system browser (executable_path); nothing downloads a browser build of its own.
set -euo pipefail
find_chromium() {
  command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true
}
if [ -n "$(find_chromium)" ]; then
  echo "chromium: $(find_chromium)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not found, installing the 'chromium' and 'chromium-driver' packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
  echo "chromium: $(find_chromium)"
else
  echo "chromium: not found and cannot install it here (need root and apt-get); browser tests will be skipped" >&2
fi
