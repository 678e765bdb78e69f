"""Run the real watcher (``run_until_signalled``) with the cross-process fake trigger, as its own process.

    python -m tests.watcher.fake_watcher_main CONFIG TRIGGER_LOG [DOWN_FLAG]

Used by the kill -9 and SIGTERM tests: everything but the Prefect call is the production code path.
"""

from __future__ import annotations

import sys
from pathlib import Path

from splash_flows.cli.common import configure_logging
from splash_flows.config import load_config_file
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher, run_until_signalled
from tests.fakes.trigger import FileRecordingTrigger


def main(argv: list[str]) -> int:
    configure_logging(verbose=False)
    config = load_config_file(Path(argv[0]))
    trigger = FileRecordingTrigger(Path(argv[1]), Path(argv[2]) if len(argv) > 2 else None)
    ledger = Ledger.open(config.ledger.url_value())
    try:
        return run_until_signalled(Watcher(config, ledger, trigger))
    finally:
        ledger.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
