"""The obligation projection: derived data for incremental payout cycles.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

One index changes: ``ix_ledger_event_type`` becomes ``ix_ledger_event_type_effective`` (type, effective),
so that "contracts signed between two dates" (whose tranches vest in a month) is a range scan; it still
serves every lookup by type alone.

Two tables the engine rebuilds from the events whenever they do not match the ledger
(``incentive_engine.shell.obligations``): ``obligation_state``, one row per obligation evaluated by a
closed cycle (paid to date, lines, status, the evaluation when it is listed), and ``projection_meta``,
the position and chain hash of the ``cycle.closed`` event the rows reflect. Unlike ``ledger_event`` they
are updated in place (they are a cache, not history), so they carry no append-only triggers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_ledger_event_type", table_name="ledger_event")
    op.create_index("ix_ledger_event_type_effective", "ledger_event", ["type", "effective"])
    op.create_table(
        "projection_meta",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("cycle_position", sa.BigInteger(), nullable=False),
        sa.Column("cycle_hash", sa.Text(), nullable=False),
        sa.Column("book", sa.Text(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "obligation_state",
        sa.Column("obligation_id", sa.Text(), primary_key=True),
        sa.Column("contract_id", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("seller", sa.Text(), nullable=False),
        sa.Column("payee", sa.Text(), nullable=False),
        sa.Column("due", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("paid", sa.Text(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("evaluation", sa.Text(), nullable=True),
    )
    op.create_index("ix_obligation_state_contract", "obligation_state", ["contract_id"])
    op.create_index("ix_obligation_state_seller", "obligation_state", ["seller", "kind", "due"])
    op.create_index("ix_obligation_state_payee", "obligation_state", ["payee"])
    op.create_index("ix_obligation_state_status", "obligation_state", ["status"])


def downgrade() -> None:
    op.drop_index("ix_obligation_state_status", table_name="obligation_state")
    op.drop_index("ix_obligation_state_payee", table_name="obligation_state")
    op.drop_index("ix_obligation_state_seller", table_name="obligation_state")
    op.drop_index("ix_obligation_state_contract", table_name="obligation_state")
    op.drop_table("obligation_state")
    op.drop_table("projection_meta")
    op.drop_index("ix_ledger_event_type_effective", table_name="ledger_event")
    op.create_index("ix_ledger_event_type", "ledger_event", ["type"])
