"""``python -m splash_flows`` runs the CLI."""

from splash_flows.cli.main import app

app()
