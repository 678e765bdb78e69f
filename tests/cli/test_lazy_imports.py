"""The CLI starts without its heavy libraries: ``--help`` must answer at once (issue 12.5).

Not a timed test: it checks, in a fresh interpreter, which modules importing the CLI brings in. A command
module that imports the ledger, the services or Prefect at its top fails here; see ``cli/main.py`` for the
pattern (heavy imports inside the command function). ``bench/cli_latency.py`` measures the time itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "pydantic", "numpy", "PIL", "fabio", "pyFAI", "prefect", "httpx", "globus_sdk",
         "watchdog", "yaml", "splash_flows.config", "splash_flows.ledger", "splash_flows.services",
         "splash_flows.context")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    heavy = [h for h in HEAVY if h not in allowed]
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    assert _heavy(_imported_after("import splash_flows.cli.main")) == []


def test_help_renders_without_heavy_libraries() -> None:
    code = ("import sys\nfrom splash_flows.cli.main import app\n"
            "try:\n    app(['--help'], prog_name='splash-flows')\nexcept SystemExit:\n    pass")
    assert _heavy(_imported_after(code)) == []


def test_every_command_help_is_light() -> None:
    # Typer itself converts a command's parameters with pydantic once it parses them (not for the top --help)
    for argv in (["catalog", "--help"], ["globus", "--help"], ["status", "--help"], ["demo", "--help"],
                 ["init-work-pools", "--help"], ["prune", "--help"]):
        code = ("import sys\nfrom splash_flows.cli.main import app\n"
                f"try:\n    app({argv!r}, prog_name='splash-flows')\nexcept SystemExit:\n    pass")
        assert _heavy(_imported_after(code), allowed=("pydantic",)) == [], argv
