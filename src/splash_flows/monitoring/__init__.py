"""Running it unattended: the data-safety page and metrics (``web``, ``metrics``), alerts (``alerts``) and the
credential preflight (``credentials``). Everything reads the ledger; nothing here changes a file or a copy."""
