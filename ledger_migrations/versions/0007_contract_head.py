"""The contract heads: derived data for the reference rules of an ingest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``contract_head`` holds one row per signed contract: its signing's fields and its churn (the earliest by
effective date after that signing), what ``core.projections`` makes of those two events. Triggers on
``ledger_event`` keep it in the statement that inserts a ``contract.signed`` or ``contract.churned`` row
(whoever inserts it), so it can never lag the ledger inside or across transactions; the upgrade fills it
from the events already there. Why: the rules of an ingest read every contract a file names (a month's
file at M: 43,000-45,000), and for all but the ones it expands they need only the signing (date,
currency) and the churn; read from the contracts' streams and folded in Python they were 1.6 s of a
6 s ingest of two M months, on the path the insert no longer hides. Derived data only: ``audit verify``
and ``audit reproduce`` never read it, and a test compares it with the fold of the events.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    "contract_id, signed_position, signed, account_id, rep_id, currency, acv, term_months, gross_margin, "
    "churn_position, churned, churn_reason"
)

# A second signing of a contract (the rules refuse it; the projection would start the contract afresh)
# replaces its row, churn included; a churn counts if it is the contract's first or earlier than it.
SQLITE_TRIGGERS = {
    "ledger_event_contract_signed": (
        "AFTER INSERT ON ledger_event WHEN NEW.type = 'contract.signed' BEGIN "
        f"INSERT OR REPLACE INTO contract_head ({COLUMNS}) VALUES ("
        "json_extract(NEW.payload, '$.contract_id'), NEW.position, NEW.effective, "
        "json_extract(NEW.payload, '$.account_id'), json_extract(NEW.payload, '$.rep_id'), "
        "json_extract(NEW.payload, '$.currency'), json_extract(NEW.payload, '$.acv'), "
        "json_extract(NEW.payload, '$.term_months'), json_extract(NEW.payload, '$.gross_margin'), "
        "NULL, NULL, NULL); END"
    ),
    "ledger_event_contract_churned": (
        "AFTER INSERT ON ledger_event WHEN NEW.type = 'contract.churned' BEGIN "
        "UPDATE contract_head SET churn_position = NEW.position, churned = NEW.effective, "
        "churn_reason = json_extract(NEW.payload, '$.reason') "
        "WHERE contract_id = json_extract(NEW.payload, '$.contract_id') "
        "AND (churned IS NULL OR NEW.effective < churned); END"
    ),
}

PG_FUNCTION = f"""
CREATE FUNCTION ledger_event_contract_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := NEW.payload::jsonb;
BEGIN
    IF NEW.type = 'contract.signed' THEN
        INSERT INTO contract_head ({COLUMNS}) VALUES (
            p->>'contract_id', NEW.position, NEW.effective, p->>'account_id', p->>'rep_id', p->>'currency',
            p->>'acv', (p->>'term_months')::integer, p->>'gross_margin', NULL, NULL, NULL)
        ON CONFLICT (contract_id) DO UPDATE SET
            signed_position = EXCLUDED.signed_position, signed = EXCLUDED.signed,
            account_id = EXCLUDED.account_id, rep_id = EXCLUDED.rep_id, currency = EXCLUDED.currency,
            acv = EXCLUDED.acv, term_months = EXCLUDED.term_months, gross_margin = EXCLUDED.gross_margin,
            churn_position = NULL, churned = NULL, churn_reason = NULL;
    ELSE
        UPDATE contract_head SET churn_position = NEW.position, churned = NEW.effective, churn_reason = p->>'reason'
        WHERE contract_id = p->>'contract_id' AND (churned IS NULL OR NEW.effective < churned);
    END IF;
    RETURN NULL;
END $$
"""

PG_TRIGGER = (
    "CREATE TRIGGER ledger_event_contract_head AFTER INSERT ON ledger_event FOR EACH ROW "
    "WHEN (NEW.type IN ('contract.signed', 'contract.churned')) EXECUTE FUNCTION ledger_event_contract_head()"
)


def upgrade() -> None:
    op.create_table(
        "contract_head",
        sa.Column("contract_id", sa.Text(), primary_key=True),
        sa.Column("signed_position", sa.BigInteger(), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("rep_id", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("acv", sa.Text(), nullable=False),
        sa.Column("term_months", sa.Integer(), nullable=False),
        sa.Column("gross_margin", sa.Text(), nullable=True),
        sa.Column("churn_position", sa.BigInteger(), nullable=True),
        sa.Column("churned", sa.Text(), nullable=True),
        sa.Column("churn_reason", sa.Text(), nullable=True),
    )
    _fill()
    if op.get_context().dialect.name == "sqlite":
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)


def _fill() -> None:
    """The heads of the contracts already in the ledger, by the triggers' rules, in ledger order."""
    bind = op.get_bind()
    heads: dict[str, dict[str, object]] = {}
    rows = bind.execute(
        sa.text(
            "SELECT position, type, effective, payload FROM ledger_event "
            "WHERE type IN ('contract.signed', 'contract.churned') ORDER BY position"
        )
    )
    for position, type_, effective, payload in rows:
        p = json.loads(payload)
        if type_ == "contract.signed":
            heads[p["contract_id"]] = {
                "contract_id": p["contract_id"], "signed_position": position, "signed": effective,
                "account_id": p["account_id"], "rep_id": p["rep_id"], "currency": p["currency"], "acv": p["acv"],
                "term_months": p["term_months"], "gross_margin": p.get("gross_margin"),
                "churn_position": None, "churned": None, "churn_reason": None,
            }  # fmt: skip
        elif (head := heads.get(p.get("contract_id"))) is not None and (
            head["churned"] is None or effective < head["churned"]  # type: ignore[operator]
        ):
            head.update(churn_position=position, churned=effective, churn_reason=p.get("reason"))
    if heads:
        names = [c.strip() for c in COLUMNS.split(",")]
        insert = sa.text(f"INSERT INTO contract_head ({COLUMNS}) VALUES ({', '.join(':' + n for n in names)})")
        bind.execute(insert, list(heads.values()))


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_event_contract_head ON ledger_event")
        op.execute("DROP FUNCTION IF EXISTS ledger_event_contract_head()")
    op.drop_table("contract_head")
