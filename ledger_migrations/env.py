"""Alembic environment for the ledger schema.

There is no alembic.ini: ``incentive_engine.shell.store.alembic_config`` builds the configuration in
code and hands over an open connection (``config.attributes["connection"]``), already inside the
transaction (and, on PostgreSQL, holding the writer's advisory lock) that the whole upgrade runs in.
Run by hand, ``sqlalchemy.url`` is used instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from incentive_engine.shell.tables import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=False)
    # Inside a transaction the caller opened, this is a no-op and the caller commits.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url given to the ledger migrations")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
