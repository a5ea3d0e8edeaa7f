"""The ledger's one table, as a SQLModel definition.

This is the *description* of the schema (for readers, type checkers and Alembic's autogenerate
comparison); the schema itself is created only by the Alembic migrations in ``ledger_migrations/``, and
a test checks the two agree. The store reads and writes with plain SQLAlchemy Core statements for
speed, never through ORM objects.

Every column is text or an integer so the rows hash the same on SQLite and PostgreSQL: dates and
timestamps are ISO strings, the payload is canonical JSON (``core.canonical``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

TABLE = "ledger_event"
# the rows of the obligation projection's partial seller index (migration 0005); a query must carry this
# exact term for the planner to use that index
RESOLD = "seller <> payee"

# PostgreSQL gets BIGINT; SQLite keeps "INTEGER PRIMARY KEY" so the position is the rowid (no extra index).
POSITION_TYPE = BigInteger().with_variant(Integer(), "sqlite")

# The raw column order used by ``Ledger.read_rows`` and the insert statement.
COLUMNS: tuple[str, ...] = (
    "position",
    "stream_id",
    "stream_version",
    "type",
    "effective",
    "event_id",
    "recorded_at",
    "payload",
    "content_hash",
    "hash",
)

# Names of the database triggers that make the table append-only (created by migration 0001).
TRIGGERS: tuple[str, ...] = ("ledger_event_no_update", "ledger_event_no_delete")
# SQLite only (migration 0003): INSERT OR REPLACE deletes without firing DELETE triggers; these refuse it
SQLITE_REPLACE_TRIGGERS: tuple[str, ...] = (
    "ledger_event_no_replace_position",
    "ledger_event_no_replace_stream_version",
    "ledger_event_no_replace_event_id",
)
PG_TRUNCATE_TRIGGER = "ledger_event_no_truncate"
PG_TRIGGER_FUNCTION = "ledger_event_append_only"


class LedgerEvent(SQLModel, table=True):
    """One stored event: its place in the global log and in its stream, its content, and the chain hash.

    ``position`` is global, 1-based and contiguous, assigned by the single writer as head + 1;
    ``(stream_id, stream_version)`` is unique, which is what makes optimistic concurrency safe even if
    two writers raced; ``hash`` chains every row to the one before it (``core.canonical.chain_hash``).
    """

    __tablename__ = TABLE  # type: ignore[assignment]
    __table_args__ = (
        UniqueConstraint("stream_id", "stream_version", name="uq_ledger_event_stream_version"),
        UniqueConstraint("event_id", name="uq_ledger_event_event_id"),
        Index("ix_ledger_event_type_effective", "type", "effective"),  # migration 0002 (was: type alone)
        # migration 0004 (was: content_hash and effective apart): content lookups and date ranges
        Index("ix_ledger_event_effective_content", "effective", "content_hash"),
    )

    position: int = Field(sa_column=Column("position", POSITION_TYPE, primary_key=True, autoincrement=False))
    stream_id: str = Field(sa_column=Column("stream_id", Text, nullable=False))
    stream_version: int = Field(sa_column=Column("stream_version", Integer, nullable=False))
    type: str = Field(sa_column=Column("type", Text, nullable=False))
    effective: str = Field(sa_column=Column("effective", Text, nullable=False))
    event_id: str | None = Field(default=None, sa_column=Column("event_id", Text, nullable=True))
    recorded_at: str = Field(sa_column=Column("recorded_at", Text, nullable=False))
    payload: str = Field(sa_column=Column("payload", Text, nullable=False))
    content_hash: str = Field(sa_column=Column("content_hash", Text, nullable=False))
    hash: str = Field(sa_column=Column("hash", Text, nullable=False))


ledger_event = LedgerEvent.__table__  # the Core Table, for statements


# --- derived data (migration 0002): the obligation projection of incremental cycles ----------------------

META_TABLE = "projection_meta"
OBLIGATION_TABLE = "obligation_state"
LISTING_TABLE = "cycle_listing"


class ProjectionMeta(SQLModel, table=True):
    """Which ``cycle.closed`` event (position and chain hash) and which plan book the derived rows
    reflect; rows that do not match the ledger are rebuilt from the events (``shell.obligations``)."""

    __tablename__ = META_TABLE  # type: ignore[assignment]

    name: str = Field(sa_column=Column("name", Text, primary_key=True))
    format: int = Field(sa_column=Column("format", Integer, nullable=False))
    period: str = Field(sa_column=Column("period", Text, nullable=False))
    cycle_position: int = Field(sa_column=Column("cycle_position", BigInteger, nullable=False))
    cycle_hash: str = Field(sa_column=Column("cycle_hash", Text, nullable=False))
    book: str = Field(sa_column=Column("book", Text, nullable=False))
    rows: int = Field(sa_column=Column("rows", BigInteger, nullable=False))  # rows of obligation_state


class ObligationState(SQLModel, table=True):
    """One obligation as the last closed cycle left it: paid to date (decimal text), its number of lines,
    its status and, unless earned, its evaluation as listed (JSON)."""

    __tablename__ = OBLIGATION_TABLE  # type: ignore[assignment]
    __table_args__ = (
        Index("ix_obligation_state_contract", "contract_id"),
        # migration 0005 (was: over every row): only rows whose seller is not their payee; the others
        # are found by payee (an up-front payment's and a tranche's payee is the contract's seller)
        Index(
            "ix_obligation_state_reseller",
            "seller",
            "kind",
            "due",
            sqlite_where=text(RESOLD),
            postgresql_where=text(RESOLD),
        ),
        Index("ix_obligation_state_payee", "payee"),
        Index("ix_obligation_state_status", "status"),
    )

    obligation_id: str = Field(sa_column=Column("obligation_id", Text, primary_key=True))
    contract_id: str | None = Field(default=None, sa_column=Column("contract_id", Text, nullable=True))
    kind: str = Field(sa_column=Column("kind", Text, nullable=False))
    seller: str = Field(sa_column=Column("seller", Text, nullable=False))
    payee: str = Field(sa_column=Column("payee", Text, nullable=False))
    due: str = Field(sa_column=Column("due", Text, nullable=False))
    status: str = Field(sa_column=Column("status", Text, nullable=False))
    paid: str = Field(sa_column=Column("paid", Text, nullable=False))
    lines: int = Field(sa_column=Column("lines", Integer, nullable=False))
    evaluation: str | None = Field(default=None, sa_column=Column("evaluation", Text, nullable=True))


class CycleListing(SQLModel, table=True):
    """The earned evaluations the last closed cycle listed (migration 0006): paid before that cycle
    (decimal text) and the evaluation as listed (JSON). With the obligation projection's held and
    forfeited rows they are its whole listing; ``projection_meta`` names the cycle (row ``cycle_listing``)."""

    __tablename__ = LISTING_TABLE  # type: ignore[assignment]

    # the row's place in the listing: the rowid on SQLite, so that rows go in without a second index
    seq: int = Field(sa_column=Column("seq", Integer, primary_key=True, autoincrement=False))
    obligation_id: str = Field(sa_column=Column("obligation_id", Text, nullable=False))
    contract_id: str | None = Field(default=None, sa_column=Column("contract_id", Text, nullable=True))
    payee: str = Field(sa_column=Column("payee", Text, nullable=False))
    paid: str = Field(sa_column=Column("paid", Text, nullable=False))
    evaluation: str = Field(sa_column=Column("evaluation", Text, nullable=False))


# --- derived data (migration 0007): the contract heads the reference rules of an ingest read ------------

CONTRACT_HEAD_TABLE = "contract_head"


class ContractHead(SQLModel, table=True):
    """A signed contract as its signing and its churn make it (``core.projections``): the signing's fields
    (decimals as their text) and the earliest churn after it. Kept by triggers on ``ledger_event`` in the
    statement that inserts those events (migration 0007), so never behind the ledger; never a source of
    truth (``audit`` does not read it)."""

    __tablename__ = CONTRACT_HEAD_TABLE  # type: ignore[assignment]

    contract_id: str = Field(sa_column=Column("contract_id", Text, primary_key=True))
    signed_position: int = Field(sa_column=Column("signed_position", BigInteger, nullable=False))
    signed: str = Field(sa_column=Column("signed", Text, nullable=False))
    account_id: str = Field(sa_column=Column("account_id", Text, nullable=False))
    rep_id: str = Field(sa_column=Column("rep_id", Text, nullable=False))
    currency: str = Field(sa_column=Column("currency", Text, nullable=False))
    acv: str = Field(sa_column=Column("acv", Text, nullable=False))
    term_months: int = Field(sa_column=Column("term_months", Integer, nullable=False))
    gross_margin: str | None = Field(default=None, sa_column=Column("gross_margin", Text, nullable=True))
    churn_position: int | None = Field(default=None, sa_column=Column("churn_position", BigInteger, nullable=True))
    churned: str | None = Field(default=None, sa_column=Column("churned", Text, nullable=True))
    churn_reason: str | None = Field(default=None, sa_column=Column("churn_reason", Text, nullable=True))
