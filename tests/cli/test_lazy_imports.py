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

import pytest

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


def _status_modules(tmp_path: Path, ledger_url: str) -> set[str]:
    tiers = {t: {"root": str(tmp_path / t)} for t in ("data733", "lamarr", "cfs")}
    cfg = tmp_path / "splash-flows.yaml"
    cfg.write_text(json.dumps({"ledger": {"url": ledger_url}, "tiers": tiers,
                               "move": {"source": "data733", "targets": ["lamarr", "cfs"]}}))
    code = ("import sys\nfrom splash_flows.cli.main import app\n"
            f"try:\n    app(['--config', {str(cfg)!r}, 'status'], prog_name='splash-flows')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code")
    return _imported_after(code)


#: what ``status`` reads with: the configuration (pydantic, yaml) and the ledger's light read path
STATUS_NEEDS = ("pydantic", "yaml", "splash_flows.config", "splash_flows.ledger")
#: the ledger's modules built on SQLAlchemy: ``status`` on a ledger at head imports none of them
LEDGER_ORM = ("splash_flows.ledger.store", "splash_flows.ledger.models", "splash_flows.ledger.overview",
              "splash_flows.ledger.counters")


def test_status_imports_only_what_it_reads_with(tmp_path: Path) -> None:
    # status reads the ledger through sqlite3 (ledger.dbapi) with the configuration (pydantic, yaml): no
    # SQLAlchemy, Alembic, numpy, Pillow, pyFAI, Prefect or HTTP client when the schema is at head
    from splash_flows.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger.open(url).close()  # created and migrated here, not by status
    modules = _status_modules(tmp_path, url)
    assert _heavy(modules, allowed=STATUS_NEEDS) == []
    assert sorted(m for m in modules if m in LEDGER_ORM) == []
    assert "rich.progress" not in modules  # progress bars belong to the commands that show them


def test_status_on_postgresql_imports_no_sqlalchemy(tmp_path: Path, ledger_url: str) -> None:
    if not ledger_url.startswith("postgresql"):
        pytest.skip("the SQLite case is the test above")
    from splash_flows.ledger import Ledger

    Ledger.open(ledger_url).close()
    modules = _status_modules(tmp_path, ledger_url)
    assert "psycopg" in modules
    assert _heavy(modules, allowed=STATUS_NEEDS) == []


def test_status_on_a_new_ledger_creates_it_as_before(tmp_path: Path) -> None:
    # no file yet: status opens it through Ledger.open (SQLAlchemy, Alembic), which creates and migrates it
    modules = _status_modules(tmp_path, f"sqlite:///{tmp_path / 'new' / 'ledger.db'}")
    assert "sqlalchemy" in modules and (tmp_path / "new" / "ledger.db").is_file()
