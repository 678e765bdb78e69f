"""The CLI starts without its heavy libraries: ``--help`` must answer at once (issue 12.5).

Not a timed test: it checks, in a fresh interpreter, which modules importing the CLI brings in. A command
module that imports the ledger, the services or Prefect at its top fails here; see ``cli/main.py`` for the
pattern (heavy imports inside the command function). ``bench/cli_latency.py`` measures the time itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_status_imports_only_what_it_reads_with(tmp_path: Path) -> None:
    # status reads the ledger (SQLAlchemy) with the configuration (pydantic, yaml): no numpy, Pillow, pyFAI,
    # Prefect or HTTP client, and no Alembic when the schema is at head (checked by one SELECT)
    from splash_flows.ledger import Ledger

    tiers = {t: {"root": str(tmp_path / t)} for t in ("data733", "lamarr", "cfs")}
    cfg = tmp_path / "splash-flows.yaml"
    cfg.write_text(json.dumps({"ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"}, "tiers": tiers,
                               "move": {"source": "data733", "targets": ["lamarr", "cfs"]}}))
    Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}").close()  # created and migrated here, not by status
    code = ("import sys\nfrom splash_flows.cli.main import app\n"
            f"try:\n    app(['--config', {str(cfg)!r}, 'status'], prog_name='splash-flows')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code")
    needed = ("sqlalchemy", "pydantic", "yaml", "splash_flows.config", "splash_flows.ledger")
    modules = _imported_after(code)
    assert _heavy(modules, allowed=needed) == []
    assert "rich.progress" not in modules  # progress bars belong to the commands that show them
