"""SQLite: refuse INSERT OR REPLACE (and REPLACE INTO) over an existing event.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

SQLite resolves a REPLACE conflict by deleting the row in the way without firing DELETE triggers (unless
the connection turned ``recursive_triggers`` on, which a writer chooses), so ``ledger_event_no_delete``
alone let ``INSERT OR REPLACE`` rewrite history. BEFORE INSERT triggers run before the conflict is
resolved: they abort any insert whose position, stream version or event_id is already taken, one trigger
per key so that the message names it. A plain INSERT with such a key would have failed on the unique
constraint anyway; now it fails here first. PostgreSQL needs nothing: ``INSERT ... ON CONFLICT DO
UPDATE`` fires the UPDATE trigger, which refuses.
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

PREFIX = "ledger_event is append-only"
# trigger name -> (the row already there, what the message names); each is one index lookup per insert
TRIGGERS = {
    "ledger_event_no_replace_position": ("position = NEW.position", "position"),
    "ledger_event_no_replace_stream_version": (
        "stream_id = NEW.stream_id AND stream_version = NEW.stream_version",
        "stream version",
    ),
    "ledger_event_no_replace_event_id": ("NEW.event_id IS NOT NULL AND event_id = NEW.event_id", "event_id"),
}


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for name, (taken, key) in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON ledger_event "
            f"WHEN EXISTS (SELECT 1 FROM ledger_event WHERE {taken}) "
            f"BEGIN SELECT RAISE(ABORT, '{PREFIX}: an event with this {key} exists'); END"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
