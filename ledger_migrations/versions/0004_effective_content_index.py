"""One index for the effective-date ranges and the content-hash lookups, in that order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

``ix_ledger_event_content_hash`` (content_hash) and ``ix_ledger_event_effective`` (effective) become
``ix_ledger_event_effective_content`` (effective, content_hash). A content hash covers the effective date,
so "stored events with this content" is a lookup by (effective, content_hash), and the effective-date
ranges of an incremental close use the index's first column. Why: a content hash is random, so each
appended row dirtied a random page of the old index, and at 200k events those pages were about half of
the cost of an ingest (inserting one month's 5,112 events into a copy of a 190k-event ledger: 20.7k
rows/s with the two indexes, 36.0k with this one). Ordered by effective date first, a month's events land
on the index's last pages. The table is not rewritten; only the indexes are.
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_ledger_event_effective_content", "ledger_event", ["effective", "content_hash"])
    op.drop_index("ix_ledger_event_content_hash", table_name="ledger_event")
    op.drop_index("ix_ledger_event_effective", table_name="ledger_event")


def downgrade() -> None:
    op.create_index("ix_ledger_event_effective", "ledger_event", ["effective"])
    op.create_index("ix_ledger_event_content_hash", "ledger_event", ["content_hash"])
    op.drop_index("ix_ledger_event_effective_content", table_name="ledger_event")
