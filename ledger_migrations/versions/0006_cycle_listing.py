"""The last closed cycle's listing: derived data for ``cycle show`` and a repeated ``cycle close``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``cycle_listing`` holds the earned evaluations the last closed cycle listed (those it paid a line), with
what was paid before it, written by the close in the transaction of its ``cycle.closed`` event; with the
obligation projection's held and forfeited rows (``obligation_state``) they are that cycle's whole listing.
``projection_meta`` gets a second row (name ``cycle_listing``) naming the cycle the rows belong to. Why:
the listing of a closed cycle was recomputed from the ledger prefix (a full fold and a full evaluation):
``incentive cycle show`` of the last month, or a close run again on it, took 49-54 s and 2.8-2.9 GB at M.
Derived data only: nothing of the ledger changes; a ledger upgraded to it shows its cycles by
recomputing them until its next close writes the rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "cycle_listing",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("obligation_id", sa.Text(), nullable=False),
        sa.Column("contract_id", sa.Text(), nullable=True),
        sa.Column("payee", sa.Text(), nullable=False),
        sa.Column("paid", sa.Text(), nullable=False),
        sa.Column("evaluation", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cycle_listing")
