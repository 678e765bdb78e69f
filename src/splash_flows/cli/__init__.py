"""The ``splash-flows`` command line (Typer)."""
