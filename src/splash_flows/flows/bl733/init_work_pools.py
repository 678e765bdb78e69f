"""Set up the Prefect server for the 7.3.3 flows, as the seed documents (``python init_work_pools.py``).

Waits for the server at $PREFECT_API_URL, creates the work pools prefect.yaml uses and deploys every deployment
in it. The same code as ``splash-flows init-work-pools`` (options: ``--help``). Importing this module does
nothing; only running it does.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from splash_flows.cli.main import app

    app(args=["init-work-pools", *(sys.argv[1:] if argv is None else argv)], prog_name="init_work_pools.py")


if __name__ == "__main__":
    main()
