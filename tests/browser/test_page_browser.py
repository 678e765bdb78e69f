"""The data-safety page in a real headless Chromium (Debian's, driven by Playwright through executable_path).

The page is served by ``splash-flows serve`` as a subprocess over a site whose scans were moved and catalogued;
the browser drills into one file's history and must see the states ``status --json`` prints, opens the file's
scan and its preview, and sees a new failure appear without a reload.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splash_flows.config import load_config_file
from splash_flows.ledger import Ledger
from tests.support.served import cli, moved_site, serving

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("SPLASH_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed but SPLASH_TEST_REQUIRE_BROWSER=1 "
                        "(scripts/ensure-packages.sh chromium)")
        pytest.skip("chromium is not installed here (scripts/ensure-packages.sh chromium installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


def test_drill_into_a_file_shows_the_states_of_status_json(browser: Any, config_file: Path, tmp_path: Path) -> None:
    paths = moved_site(config_file, scans=3)
    status = {r["path"]: r for r in json.loads(cli(config_file, "status", "--json").stdout)}
    assert set(status) == set(paths)
    with serving(config_file) as (url, proc):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("body[data-loaded='1']")
        assert "listening on 127.0.0.1:" in page.inner_text("#where")
        assert page.inner_text("[data-card='files'] .n") == str(len(paths))
        assert "off: no alerts.urls" in page.inner_text("#alerts-note")
        # the group row of the demo proposal: every file verified on both targets
        row = page.locator("tr[data-group^='ALS-00000/']")
        assert row.locator("td[data-col='on:lamarr']").inner_text() == str(len(paths))
        row.locator("td.num a").first.click()  # the file count -> the list of that proposal's files that day
        page.wait_for_selector("#file-list tr[data-file]")
        listed = page.locator("#file-list tr[data-file]").evaluate_all("rows => rows.map(r => r.dataset.file)")
        assert sorted(listed) == sorted(paths)
        target = sorted(p for p in paths if p.endswith(".edf"))[0]
        page.locator(f"#file-list tr[data-file='{target}'] a").click()
        page.wait_for_selector("#copies tr[data-tier]")
        assert page.inner_text("#detail-path") == target
        seen = dict(page.locator("#copies tr[data-tier]").evaluate_all(
            "rows => rows.map(r => [r.dataset.tier, r.querySelector('[data-state]').dataset.state])"))
        assert seen == {tier: c["state"] for tier, c in status[target]["copies"].items()}
        kinds = page.locator("#events tr[data-kind]").evaluate_all("rows => rows.map(r => r.dataset.kind)")
        assert kinds[0] == "detected" and kinds.count("verified") == 2 and "catalogued" in kinds
        page.screenshot(path=str(tmp_path / "file.png"), full_page=True)
        # its scan, with the preview the catalogue holds
        page.locator("#detail p a").click()
        page.wait_for_selector("#scan-files")
        page.wait_for_function("() => { const i = document.getElementById('thumbnail');"
                               " return i && i.complete && i.naturalWidth > 0; }")
        # a failure recorded now shows up without a reload (the page polls the ledger)
        page.evaluate("window.__same_document = true")
        config = load_config_file(config_file)
        ledger = Ledger.open(config.ledger.url_value())
        try:
            src = ledger.get_source(config.move.source, target)
            assert src is not None
            ledger.record_failed(target, "cfs", "cfs: injected failure", source=src)
        finally:
            ledger.close()
        page.wait_for_function("() => document.querySelector(\"[data-card='failed'] .n\").textContent === '1'",
                               timeout=20_000)
        assert page.evaluate("window.__same_document === true")
        page.close()
    out = proc.stdout.read() if proc.stdout else ""
    assert "bound to 127.0.0.1:" in out and "this machine only" in out
