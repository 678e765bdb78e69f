"""The business steps as plain functions over interfaces (no Prefect here): move, catalogue, prune."""
