"""The thin Prefect layer. Prefect is imported only under this package (and by the CLI that starts servers)."""
