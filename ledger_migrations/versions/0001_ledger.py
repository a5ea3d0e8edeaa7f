"""The ledger: one append-only, hash-chained event table.

Revision ID: 0001
Revises:
Create Date: 2025-11-23

The table is append-only by the database's own rules, not just by convention: triggers refuse every
UPDATE and DELETE (and TRUNCATE on PostgreSQL). Changing history takes dropping a trigger first, which
needs DDL rights and still leaves the hash chain broken for ``incentive audit verify`` to find.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

MESSAGE = "ledger_event is append-only"


def upgrade() -> None:
    op.create_table(
        "ledger_event",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("stream_version", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("effective", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.UniqueConstraint("stream_id", "stream_version", name="uq_ledger_event_stream_version"),
        sa.UniqueConstraint("event_id", name="uq_ledger_event_event_id"),
    )
    op.create_index("ix_ledger_event_type", "ledger_event", ["type"])
    op.create_index("ix_ledger_event_content_hash", "ledger_event", ["content_hash"])
    op.create_index("ix_ledger_event_effective", "ledger_event", ["effective"])

    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for name, action in (("ledger_event_no_update", "UPDATE"), ("ledger_event_no_delete", "DELETE")):
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON ledger_event BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION ledger_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'restrict_violation'; END $$"
        )
        for name, action in (("ledger_event_no_update", "UPDATE"), ("ledger_event_no_delete", "DELETE")):
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON ledger_event "
                "FOR EACH ROW EXECUTE FUNCTION ledger_event_append_only()"
            )
        op.execute(
            "CREATE TRIGGER ledger_event_no_truncate BEFORE TRUNCATE ON ledger_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_event_append_only()"
        )
    else:  # the store supports these two; refuse rather than create an unprotected ledger
        raise RuntimeError(f"the ledger supports SQLite and PostgreSQL, not {dialect}")


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_event_no_truncate ON ledger_event")
        op.execute("DROP TRIGGER IF EXISTS ledger_event_no_update ON ledger_event")
        op.execute("DROP TRIGGER IF EXISTS ledger_event_no_delete ON ledger_event")
        op.execute("DROP FUNCTION IF EXISTS ledger_event_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS ledger_event_no_delete")
    op.drop_index("ix_ledger_event_effective", table_name="ledger_event")
    op.drop_index("ix_ledger_event_content_hash", table_name="ledger_event")
    op.drop_index("ix_ledger_event_type", table_name="ledger_event")
    op.drop_table("ledger_event")
