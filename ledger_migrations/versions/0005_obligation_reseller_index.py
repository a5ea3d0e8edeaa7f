"""The obligation projection's seller index holds only the rows whose seller is not their payee.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``ix_obligation_state_seller`` (seller, kind, due) over every row becomes ``ix_obligation_state_reseller``,
the same columns over the rows whose seller differs from their payee (renewals of reassigned contracts).
An up-front payment's and a tranche's payee is the contract's seller, so "obligations of contracts R
sold" is found through the payee index for those rows and through this one for the others. Why: a
close inserts tens of thousands of rows with random sellers, so the full index dirtied nearly every one
of its pages; at M (774,383 rows, 26,262 written by one close) it was 31 of the 72 MB the close wrote to
the WAL, which then also crossed the checkpoint threshold (commit 1.05 s, against 0.30 s without it).
Derived data only: nothing of the ledger changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_RESOLD = sa.text("seller <> payee")


def upgrade() -> None:
    op.create_index(
        "ix_obligation_state_reseller",
        "obligation_state",
        ["seller", "kind", "due"],
        sqlite_where=_RESOLD,
        postgresql_where=_RESOLD,
    )
    op.drop_index("ix_obligation_state_seller", table_name="obligation_state")


def downgrade() -> None:
    op.create_index("ix_obligation_state_seller", "obligation_state", ["seller", "kind", "due"])
    op.drop_index("ix_obligation_state_reseller", table_name="obligation_state")
