"""Every entry point refuses escapes (issue 13 item 4), through ONE table: each escape CASE is tried at each
ENTRY point, and each must be refused with one clear line naming why, with nothing read or written outside
the root.

To cover a new entry point (restore targets, page URLs ...), append an ``Entry`` to ``ENTRIES``: a function that
offers the case's value to the entry point and returns the one line it refused it with (or raises
``AssertionError`` when it did not refuse). To cover a new kind of escape, append a ``Case``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
import yaml
from typer.testing import CliRunner

from splash_flows.catalogue.base import Catalogue, CatalogueEntry, DataFileDoc
from splash_flows.cli.main import app
from splash_flows.config import Config, default_config_data, load_config_file
from splash_flows.context import Context, build_context
from splash_flows.errors import SplashFlowsError
from splash_flows.ledger import EventKind
from splash_flows.services.catalogue import download_dataset
from splash_flows.services.dispatch import validate_batch
from splash_flows.services.reconcile import plan_reconcile
from tests.catalogue_samples import sample_doc


@dataclass
class Site:
    """A configured site whose source root holds a symlink out of the root and a file with a non-UTF-8 name,
    and an ``outside`` folder nothing may touch."""

    config: Config
    config_file: Path
    ctx: Context
    source: Path
    outside: Path
    download_to: Path

    def outside_listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.outside)) for p in self.outside.rglob("*"))


@dataclass(frozen=True)
class Case:
    name: str
    value: str
    why: str  # a word the refusal must contain


NON_UTF8 = os.fsdecode(b"frame_\xff\xfe_0001_2m.edf")  # what os.listdir gives for such a name
CASES = [
    Case("dotdot", "../outside/secret.edf", "'..'"),
    Case("absolute", "/etc/passwd", "absolute"),
    Case("symlink", "link/secret.edf", "outside"),
    Case("nul", "frame\x00_0001_2m.edf", "NUL"),
    Case("non-utf8", NON_UTF8, "UTF-8"),
]


@dataclass(frozen=True)
class Entry:
    name: str
    refuse: Callable[[Site, Case], str]


def _dispatcher_parameters(site: Site, case: Case) -> str:
    """The dispatcher flow's ``paths`` parameter, checked by validate_batch before anything is moved."""
    report = validate_batch(site.ctx, [case.value])
    assert report.valid == [], f"the dispatcher accepted {case.value!r}"
    (err,) = report.refused.values()
    events = [e for e in site.ctx.ledger.events() if e.kind == EventKind.REFUSED]
    assert len(events) == 1, "the refusal is recorded in the ledger"
    return str(err)


def _reconcile(site: Site, case: Case) -> str:
    """``plan_reconcile(prefix=...)``, what `reconcile --prefix` runs."""
    try:
        plan = plan_reconcile(site.ctx, prefix=case.value, min_age=0)
    except SplashFlowsError as err:
        return str(err)
    raise AssertionError(f"reconcile walked {case.value!r}: {plan}")


def _cli_reconcile_prefix(site: Site, case: Case) -> str:
    """The command line: `splash-flows --config F reconcile --dry-run --prefix VALUE`."""
    result = CliRunner().invoke(app, ["--config", str(site.config_file), "reconcile", "--dry-run",
                                      "--prefix", case.value])
    assert result.exit_code != 0, f"exit 0 for {case.value!r}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


class _OneDataset:
    """A catalogue that holds one dataset, as SciCat could hand it over (JSON strings may even carry lone
    surrogates): only ``get`` is needed by the download."""

    def __init__(self, entry: CatalogueEntry) -> None:
        self.entry = entry

    def get(self, pid: str) -> CatalogueEntry:
        assert pid == self.entry.pid
        return self.entry


def _catalog_download_target(site: Site, case: Case) -> str:
    """`catalog download PID --to DIR` writes each file of the dataset at its path inside DIR: a catalogue entry
    naming a path that leaves DIR (or DIR holding a symlink out) must not write there."""
    (site.download_to / "link").symlink_to(site.outside, target_is_directory=True)
    when = datetime(2024, 5, 1, tzinfo=UTC)
    doc = sample_doc(files=[DataFileDoc(path=case.value, size=5, time=when, chk="00")])
    site.ctx._catalogue = cast(Catalogue, _OneDataset(CatalogueEntry(pid="pid-1", doc=doc)))
    report = download_dataset(site.ctx, "pid-1", site.download_to)
    assert report.files == [], f"downloaded {case.value!r}"
    (err,) = report.failed.values()
    return str(err)


ENTRIES = [
    Entry("dispatcher parameters", _dispatcher_parameters),
    Entry("reconcile", _reconcile),
    Entry("cli reconcile --prefix", _cli_reconcile_prefix),
    Entry("catalog download target", _catalog_download_target),
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    config_file = tmp_path / "splash.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = load_config_file(config_file, {})
    source = Path(config.tiers[config.move.source].root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.edf").write_bytes(b"not yours")
    (source / "link").symlink_to(outside, target_is_directory=True)
    with open(os.path.join(os.fsencode(source), os.fsencode(NON_UTF8)), "wb") as f:
        f.write(b"frame")
    download_to = tmp_path / "download"
    download_to.mkdir()
    ctx = build_context(config)
    try:
        yield Site(config, config_file, ctx, source, outside, download_to)
    finally:
        ctx.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_entry_point_refuses_every_escape_with_one_clear_line(site: Site, entry: Entry, case: Case) -> None:
    before = site.outside_listing()
    line = entry.refuse(site, case)
    assert "\n" not in line.strip(), f"{entry.name}: more than one line: {line!r}"
    assert case.why in line, f"{entry.name} refused {case.value!r} without saying why ({case.why}): {line}"
    line.encode("utf-8")  # printable: a non-UTF-8 name is shown escaped, never as a lone surrogate
    assert "Traceback" not in line
    assert site.outside_listing() == before and (site.outside / "secret.edf").read_bytes() == b"not yours"
