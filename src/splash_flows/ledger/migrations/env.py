"""Alembic environment: migrations run against the connection the ledger hands over (see ``store.migrate``)."""

from __future__ import annotations

from alembic import context

from splash_flows.ledger.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("splash-flows migrations run through `splash-flows ledger upgrade`, not plain alembic")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
