"""Screenshots of the data-safety page (for README): serve the given configuration on a free loopback port,
open the page in Debian's headless Chromium and save the overview and one file's history as PNG files.

    python scripts/screenshot_page.py --config var/demo/splash-flows.yaml --out docs
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (bash scripts/ensure-packages.sh chromium)", file=sys.stderr)
        return 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "splash_flows", "--config", str(args.config), "serve",
                             "--port", str(port), "--no-alerts"])
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(url + "/")
            page.wait_for_selector("body[data-loaded='1']")
            page.screenshot(path=str(args.out / "safety-page.png"))
            page.locator("tr[data-group] td.num a").first.click()
            page.wait_for_selector("#file-list tr[data-file]")
            page.locator("#file-list tr[data-file] a").first.click()
            page.wait_for_selector("#events tr[data-kind]")
            page.locator("#detail").screenshot(path=str(args.out / "safety-page-file.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"wrote {args.out / 'safety-page.png'} and {args.out / 'safety-page-file.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
