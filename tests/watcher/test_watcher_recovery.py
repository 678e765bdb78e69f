"""The watcher on odd trees and rewritten files (issue 9 items 1, 2 and 6): real files, FIFOs, non-UTF-8 names,
a watcher restart, with a fake trigger (no Prefect)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.ledger import EventKind
from splash_flows.services.move import move_files
from tests.support.watching import wait_for
from tests.watcher.conftest import Harness

MakeHarness = Callable[..., Harness]


def _copy_states(ctx: Context, rel: str) -> dict[str, str]:
    [row] = ctx.ledger.status(path_prefix=rel)
    return {tier: c.state for tier, c in row.copies.items() if tier != "data733"}


def test_odd_names_lock_files_and_a_fifo_made_while_running(watch_config: Config, make_harness: MakeHarness) -> None:
    h = make_harness(watch_config)
    scan = h.root / "ALS-11111_Smith"
    scan.mkdir()
    for name in ("~lock.edf", "~$report.docx", ".~lock.plan.ods#", ".DS_Store", "frame_0009.edf.tmp", "x.swp"):
        (scan / name).write_bytes(b"another program's file")
    with open(os.path.join(os.fsencode(scan), b"bad_\xff.edf"), "wb") as fh:
        fh.write(b"a name that is not UTF-8")
    os.mkfifo(scan / "pipe")
    (scan / "good.edf").write_bytes(b"data")
    # the FIFO is said at once (its create event), not at the next start or rescan
    wait_for(lambda: any(e.paths == ("ALS-11111_Smith/pipe",) for e in h.events.of("refused")),
             "the FIFO to be refused", timeout=10)
    h.wait_sent("ALS-11111_Smith/good.edf")
    h.barrier()
    sent = [p for p in h.trigger.sent_paths() if not p.startswith("zz_barrier/")]
    assert sent == ["ALS-11111_Smith/good.edf"]  # no lock, temporary or hidden file
    refused = {e.path: e.detail["reason"] for e in h.ledger.events(kind=EventKind.REFUSED)}
    assert refused == {"ALS-11111_Smith/pipe": "a FIFO, not a regular file",
                       "ALS-11111_Smith/bad_\\xff.edf": "file name is not valid UTF-8; rename it"}
    h.watcher.rescan()  # met again by a scan: no second line, no second event
    h.barrier()
    assert len(h.ledger.events(kind=EventKind.REFUSED)) == 2
    assert len(h.events.of("refused")) == 2


def test_a_file_rewritten_in_place_is_resent_at_once_and_shows_stale_until_then(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context) -> None:
    rel = "scan_rw/frame.edf"
    first = make_harness(watch_config)
    (first.root / "scan_rw").mkdir()
    (first.root / rel).write_bytes(os.urandom(1000))
    first.wait_sent(rel)
    move_files(ctx_sqlite, [rel]).raise_for_failures()  # what the triggered run does
    old_sum = ctx_sqlite.ledger.get_source("data733", rel).checksum  # type: ignore[union-attr]
    first.watcher.stop()  # a restart (or a kill -9) between the send and the rewrite

    second = make_harness(watch_config)
    second.barrier()
    assert second.sent_count(rel) == 0  # verified, unchanged: not sent again
    with open(first.root / rel, "r+b") as fh:  # rewritten in place, same name, same size
        fh.write(os.urandom(1000))
    second.wait_sent(rel, timeout=10)  # at once, not after resend_after_s (an hour)
    assert _copy_states(ctx_sqlite, rel) == {"cfs": "stale", "lamarr": "stale"}  # status says so until then
    move_files(ctx_sqlite, [rel]).raise_for_failures()
    assert _copy_states(ctx_sqlite, rel) == {"cfs": "verified", "lamarr": "verified"}
    new_sum = ctx_sqlite.ledger.get_source("data733", rel).checksum  # type: ignore[union-attr]
    assert new_sum != old_sum
    changes = ctx_sqlite.ledger.events(path=rel, kind=EventKind.SOURCE_CHANGED)
    assert [c.detail.get("seen_by") for c in changes] == ["watcher", None]
    assert all(c.detail["old"]["checksum"] == old_sum for c in changes)  # the old checksum stays in the log
    assert Path(watch_config.tiers["cfs"].root, rel).read_bytes() == (first.root / rel).read_bytes()
