"""The ledger store, run unchanged against SQLite and PostgreSQL (``db_kind``)."""

from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from incentive_engine.core.canonical import GENESIS_HASH, canonical_json, chain_hash, content_hash, record_text
from incentive_engine.core.events import (
    AdjustmentRecorded,
    ComplianceViolation,
    ContractChurned,
    ContractExpanded,
    ContractReassigned,
    ContractRenewed,
    ContractSigned,
    CycleClosed,
    Event,
    KpiMeasured,
    PlanRegistered,
    RepHired,
    RepTerminated,
    ScorecardPublished,
    ServiceCost,
    TargetSet,
    payload_json,
    stream_of,
    to_payload,
)
from incentive_engine.core.projections import project
from incentive_engine.errors import ConcurrencyConflict, EngineError, LedgerNotInitialised
from incentive_engine.shell import service, store
from incentive_engine.shell.store import Ledger, Writer
from incentive_engine.shell.tables import COLUMNS, SQLModel

from .cli import ok
from .ledgers import WORKED, reference_book

D = date.fromisoformat
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def varied_events() -> list[Event]:
    """Every event type at least once, with optional fields both set and unset, unicode and quotes."""
    return [
        RepHired(type="rep.hired", effective=D("2026-01-01"), rep_id="M1", name="Mia Manager", role="manager"),
        RepHired(
            type="rep.hired", effective=D("2026-01-02"), event_id="hr-7", rep_id="R1", name='Zoë "Z" Ångström',
            role="rep", region="EMEA", manager_id="M1",
        ),
        TargetSet(type="target.set", effective=D("2026-01-03"), rep_id="R1", year=2026, amount=Decimal("500000.00"),
                  currency="EUR"),
        ContractSigned(
            type="contract.signed", effective=D("2026-02-01"), event_id="crm:42", contract_id="C1", account_id="A1",
            rep_id="R1", acv=Decimal("1200000.00"), currency="EUR", term_months=36, gross_margin=Decimal("0.62"),
        ),
        ContractSigned(
            type="contract.signed", effective=D("2026-02-05"), contract_id="C2", account_id="A2", rep_id="R1",
            acv=Decimal("90000"), currency="JPY", term_months=12,
        ),
        ServiceCost(type="service.cost", effective=D("2026-03-01"), contract_id="C1", amount=Decimal("1520.50")),
        ContractExpanded(type="contract.expanded", effective=D("2026-04-01"), contract_id="C1",
                         acv_delta=Decimal("-1000.00")),
        KpiMeasured(type="kpi.measured", effective=D("2026-06-30"), rep_id="R1", year=2026, kpi="csat",
                    value=Decimal("4.5")),
        ComplianceViolation(type="compliance.violation", effective=D("2026-07-01"), rep_id="R1", severity="warning",
                            contract_id="C1", description="late paperwork\nsecond line\t中文"),
        ScorecardPublished(type="scorecard.published", effective=D("2026-12-31"), rep_id="R1", year=2026,
                           composite=Decimal("104.5"),
                           components={"csat": "4.5", "nested": {"a": [1, 2.5, None, True]}}),
        ContractReassigned(type="contract.reassigned", effective=D("2027-01-10"), contract_id="C2", rep_id="M1"),
        ContractRenewed(type="contract.renewed", effective=D("2027-02-01"), contract_id="C2", acv=Decimal("95000"),
                        term_months=12),
        ContractChurned(type="contract.churned", effective=D("2027-03-01"), contract_id="C1"),
        AdjustmentRecorded(type="adjustment.recorded", effective=D("2027-03-02"), event_id="adj-1", rep_id="R1",
                           amount=Decimal("-250.00"), currency="EUR", reason="double count", approved_by="CFO"),
        PlanRegistered(type="plan.registered", effective=D("2026-01-01"), plan_id="reference", version="1",
                       content_hash="ab" * 32, filename="reference.yaml", text="name: reference\n# ünïcode\n"),
        CycleClosed(type="cycle.closed", effective=D("2027-01-31"), period="2027-01", as_of=D("2027-01-31"),
                    ledger_position=12, plans={"reference": "ab" * 32},
                    lines=({"rep_id": "R1", "amount": "20625.00"},), totals=()),
        RepTerminated(type="rep.terminated", effective=D("2027-04-01"), rep_id="R1", leaver="good"),
    ]  # fmt: skip


def hire(rep_id: str, **kw: Any) -> RepHired:
    return RepHired(type="rep.hired", effective=D("2026-01-01"), rep_id=rep_id, name=f"Rep {rep_id}", role="rep", **kw)


def append(ledger: Ledger, events: list[Event], **kw: Any) -> list[Any]:
    with ledger.writer() as w:
        return w.append(events, **kw)


def expected_versions_of(events: list[Event], start: dict[str, int] | None = None) -> list[int]:
    seen = dict(start or {})
    out = []
    for ev in events:
        sid = stream_of(ev)
        seen[sid] = seen.get(sid, 0) + 1
        out.append(seen[sid])
    return out


def drop_triggers(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        if ledger.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER ledger_event_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_event_no_delete")
        else:
            for name in ("ledger_event_no_update", "ledger_event_no_delete", "ledger_event_no_truncate"):
                conn.exec_driver_sql(f"DROP TRIGGER {name} ON ledger_event")


def tamper(ledger: Ledger, *statements: tuple[str, dict[str, Any]]) -> None:
    drop_triggers(ledger)
    with ledger.engine.begin() as conn:
        for sql, params in statements:
            conn.execute(text(sql), params)


def count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM ledger_event")).scalar_one())


# --- schema -------------------------------------------------------------------------------------


def test_uninitialised_database_is_refused_with_a_hint(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    try:
        for use in (led.head, lambda: list(led.read()), led.verify, lambda: led.writer().__enter__()):
            with pytest.raises(LedgerNotInitialised, match="incentive init"):
                use()
    finally:
        led.dispose()


def test_init_twice_is_a_no_op(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    led.init()
    append(led, [hire("R1")])
    before = list(led.read_rows())
    led.init()
    with Ledger(ledger_url) as other:
        other.init()  # and from a second handle
    assert list(led.read_rows()) == before
    assert led.head() == (1, before[0][-1])
    with led.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [store.head_revision()]
    led.check_schema()
    led.dispose()


def test_empty_ledger(ledger: Ledger) -> None:
    assert ledger.head() == (0, GENESIS_HASH)
    assert list(ledger.read()) == []
    report = ledger.verify()
    assert (report.ok, report.events, report.first_bad_position) == (True, 0, None)
    with ledger.writer() as w:
        assert w.append([]) == []
        assert w.head() == (0, GENESIS_HASH)


def test_migration_matches_the_table_model(ledger: Ledger) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with ledger.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    ours = [d for d in diffs if "ledger_event" in repr(d)]
    assert ours == []


def test_migrations_are_found_without_an_ini_file() -> None:
    cfg = store.alembic_config()
    assert (store.migrations_dir() / "versions" / "0001_ledger.py").is_file()
    assert cfg.get_main_option("script_location") == str(store.migrations_dir())
    assert (
        store.head_revision() == store.SCHEMA_REVISION == "0007"
    )  # the constant a command checks is the scripts' head


def test_a_command_on_a_current_ledger_does_not_load_alembic(tmp_path: Path) -> None:
    """The schema check of every command is one query; Alembic (a fifth of a second of imports) is loaded
    only to migrate or to explain a mismatch."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).init()
    code = (
        "import sys\n"
        "from incentive_engine.shell.store import Ledger\n"
        f"Ledger({url!r}).check_schema()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('alembic')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_ledger_at_0003_upgrades_to_the_effective_content_index(ledger: Ledger) -> None:
    """Migration 0004 on a ledger with events: `init` swaps the indexes, the chain and the deduplication
    by content are intact."""
    from alembic import command
    from sqlalchemy import inspect

    twice = ServiceCost(type="service.cost", effective=D("2026-03-01"), contract_id="C1", amount=Decimal("5"))
    append(ledger, [hire("R1"), twice, twice])
    with ledger.engine.begin() as conn:
        command.downgrade(store.alembic_config(connection=conn), "0003")

    def indexes() -> set[str]:
        ledger.dispose()
        return {i["name"] for i in inspect(ledger.engine).get_indexes("ledger_event")}

    assert {"ix_ledger_event_content_hash", "ix_ledger_event_effective"} <= indexes()
    with pytest.raises(LedgerNotInitialised, match="run `incentive init`"):
        ledger.check_schema()
    ledger.init()
    found = indexes()
    assert "ix_ledger_event_effective_content" in found
    assert not found & {"ix_ledger_event_content_hash", "ix_ledger_event_effective"}
    assert ledger.verify().ok
    h = content_hash("service.cost", "2026-03-01", canonical_json(to_payload(twice)))
    assert ledger.content_hash_counts([("2026-03-01", h)]) == {h: 2}


def _signing(cid: str, day: str, acv: str, **kw: Any) -> ContractSigned:
    return ContractSigned(
        type="contract.signed", effective=D(day), contract_id=cid, account_id=f"A-{cid}", rep_id="R1", acv=Decimal(acv),
        currency="EUR", term_months=12, **kw,
    )  # fmt: skip


def _churn(cid: str, day: str, reason: str | None = None) -> ContractChurned:
    return ContractChurned(type="contract.churned", effective=D(day), contract_id=cid, reason=reason)


def _heads_against_the_fold(ledger: Ledger) -> None:
    folded = project(ledger.read()).contracts
    with ledger.snapshot() as conn:
        heads = {c.contract_id: c for c in store.contract_heads(conn, [*folded, "NEVER-SIGNED"])}
    assert set(heads) == set(folded)
    for cid, c in folded.items():
        signing_and_churn = (
            c.contract_id, c.account_id, c.seller, c.currency, c.signed, c.acv0, c.term_months, c.gross_margin,
            c.signed_position, c.churn,
        )  # fmt: skip
        h = heads[cid]
        assert (
            h.contract_id, h.account_id, h.seller, h.currency, h.signed, h.acv0, h.term_months, h.gross_margin,
            h.signed_position, h.churn,
        ) == signing_and_churn  # fmt: skip
        assert not (h.renewals or h.expansions or h.reassignments or h.service_costs)


def test_the_contract_heads_are_the_signing_and_churn_the_fold_makes(ledger: Ledger) -> None:
    """``contract_head`` (migration 0007), kept by triggers as rows go in, then rebuilt by the upgrade from a
    ledger at 0006, holds what the projection makes of each contract's signing and churn: the earliest
    churn counts, a second signing (which the rules refuse, appended here past them) starts afresh."""
    from alembic import command

    append(ledger, [hire("R1"), _signing("C1", "2026-01-10", "1000.50", gross_margin=Decimal("0.40"))])
    append(ledger, [
        _signing("C2", "2026-02-01", "70"),
        _churn("C1", "2027-06-01", "late"),
        ContractRenewed(type="contract.renewed", effective=D("2027-01-10"), contract_id="C1", acv=Decimal("9"),
                        term_months=12),
        _churn("C1", "2027-03-01"),  # earlier: this one counts
        _churn("C1", "2027-04-01", "later than the one that counts"),
        _signing("C3", "2026-03-01", "5"),
        _churn("C3", "2026-09-01", "gone"),
        _signing("C3", "2026-10-01", "6"),  # again: the churn before it no longer counts
    ])  # fmt: skip
    _heads_against_the_fold(ledger)
    with ledger.snapshot() as conn:
        (c1,) = store.contract_heads(conn, ["C1"])
    assert (c1.churn.effective, c1.churn.value, c1.acv0, c1.gross_margin) == (
        D("2027-03-01"),
        None,
        Decimal("1000.50"),
        Decimal("0.40"),
    )
    with ledger.engine.begin() as conn:
        command.downgrade(store.alembic_config(connection=conn), "0006")
    ledger.dispose()
    ledger.init()  # the upgrade fills the table from the events already there
    _heads_against_the_fold(ledger)
    append(ledger, [_churn("C3", "2026-12-01", "after the upgrade")])  # and the triggers are back
    _heads_against_the_fold(ledger)
    with ledger.snapshot() as conn:
        (c3,) = store.contract_heads(conn, ["C3"])
    assert (c3.churn.effective, c3.churn.value, c3.acv0) == (D("2026-12-01"), "after the upgrade", Decimal("6"))
    with ledger.engine.begin() as conn:  # a ledger_event restored without its heads: rebuilt from the events
        conn.execute(text("DELETE FROM contract_head WHERE contract_id <> 'C2'"))
        conn.execute(text("UPDATE contract_head SET acv = '1'"))
        assert store.rebuild_contract_heads(conn) == 3
    _heads_against_the_fold(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM contract_head WHERE contract_id = 'C1'"))
    assert "3 contracts" in ok("db", "rebuild-heads", db=ledger.url)  # the same, from the command line
    _heads_against_the_fold(ledger)


def test_a_large_append_leaves_the_planner_statistics_on_postgresql(ledger: Ledger) -> None:
    """PostgreSQL plans the ledger's lookups from statistics; a server with autovacuum off never gathers
    them, so the writer analyzes the table after an append of a tenth of it (SQLite needs none)."""
    append(ledger, [hire(f"R{i}") for i in range(1200)])
    with ledger.engine.connect() as conn:
        if ledger.dialect == "postgresql":
            sql = "SELECT COUNT(*) FROM pg_stats WHERE tablename = 'ledger_event' AND attname = 'stream_id'"
            assert conn.execute(text(sql)).scalar_one() == 1
        else:
            assert conn.execute(text("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")).scalar() == 0
    append(ledger, [hire("R-one-more")])  # small appends leave the statistics to autovacuum
    assert ledger.verify().ok


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip(ledger: Ledger) -> None:
    events = varied_events()
    first, second = events[:7], events[7:]
    recorded = append(ledger, first) + append(ledger, second)
    back = list(ledger.read())
    assert back == recorded
    assert [r.event for r in back] == events
    assert [type(r.event) for r in back] == [type(e) for e in events]
    assert [r.position for r in back] == list(range(1, len(events) + 1))
    assert [r.stream_id for r in back] == [stream_of(e) for e in events]
    assert [r.stream_version for r in back] == expected_versions_of(events)
    assert [r.event for r in ledger.read(validate=False)] == events  # the fast path agrees
    assert [r.position for r in ledger.read(after=3, upto=6)] == [4, 5, 6]
    assert ledger.stream_versions(["contract:C1", "service-cost:C1", "rep:R1", "rep:nobody"]) == {
        "contract:C1": 3, "service-cost:C1": 1, "rep:R1": 7, "rep:nobody": 0,
    }  # fmt: skip

    rows = list(ledger.read_rows())
    assert len(rows) == len(events) and all(len(row) == len(COLUMNS) for row in rows)
    for row, ev in zip(rows, events, strict=True):
        payload = canonical_json(to_payload(ev))
        assert row[3:6] == (ev.type, ev.effective.isoformat(), ev.event_id)
        assert row[7] == payload
        assert row[8] == content_hash(ev.type, ev.effective.isoformat(), payload)
        assert re.fullmatch(r"[0-9a-f]{64}", row[9])
    assert ledger.head() == (len(events), rows[-1][9])
    assert list(ledger.read_rows(after=2, upto=3)) == rows[2:3]


def test_several_events_of_one_stream_in_one_append_get_consecutive_versions(ledger: Ledger) -> None:
    append(ledger, [hire("R1")])
    evs = [
        ContractSigned(type="contract.signed", effective=D("2026-02-01"), contract_id="C1", account_id="A",
                       rep_id="R1", acv=Decimal("10.00"), currency="EUR", term_months=12),
        hire("R2"),
        ServiceCost(type="service.cost", effective=D("2026-03-01"), contract_id="C1", amount=Decimal("1")),
        ServiceCost(type="service.cost", effective=D("2026-03-02"), contract_id="C1", amount=Decimal("2")),
        RepTerminated(type="rep.terminated", effective=D("2026-05-01"), rep_id="R1", leaver="bad"),
    ]  # fmt: skip
    out = append(ledger, evs)
    assert [(r.position, r.stream_id, r.stream_version) for r in out] == [
        (2, "contract:C1", 1), (3, "rep:R2", 1), (4, "service-cost:C1", 1), (5, "service-cost:C1", 2),
        (6, "rep:R1", 2),
    ]  # fmt: skip
    assert list(ledger.read(after=1)) == out


_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,15}\Z")
_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
_days = st.dates(min_value=date(1990, 1, 1), max_value=date(2150, 12, 31))
_money = st.sampled_from([("EUR", 2), ("JPY", 0), ("KWD", 3)]).flatmap(
    lambda cp: st.tuples(
        st.just(cp[0]), st.decimals(min_value=Decimal(1).scaleb(-cp[1]), max_value=Decimal(10**12), places=cp[1])
    )
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _event_ids(draw: st.DrawFn) -> str | None:
    """Optional; unique (the ledger refuses a second use), with arbitrary printable text in front."""
    if not draw(st.booleans()):
        return None
    prefix = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20))
    return f"{prefix}#{uuid.uuid4().hex}"


@st.composite
def any_event(draw: st.DrawFn) -> Event:
    common = {"effective": draw(_days), "event_id": draw(_event_ids())}
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return RepHired(type="rep.hired", rep_id=draw(_ids), name=draw(_texts), role=draw(st.sampled_from(
            ["rep", "manager", "director"])), region=draw(st.none() | _texts), manager_id=draw(st.none() | _ids),
            **common)  # fmt: skip
    if kind == 1:
        currency, acv = draw(_money)
        return ContractSigned(
            type="contract.signed", contract_id=draw(_ids), account_id=draw(_ids), rep_id=draw(_ids), acv=acv,
            currency=currency, term_months=draw(st.integers(1, 120)),
            gross_margin=draw(st.none() | st.decimals(0, 1, places=4)), **common,
        )  # fmt: skip
    if kind == 2:
        amount = draw(st.decimals(min_value=0, max_value=10**9, places=draw(st.integers(0, 6))))
        return ServiceCost(type="service.cost", contract_id=draw(_ids), amount=amount, **common)
    if kind == 3:
        delta = draw(st.decimals(min_value=-(10**9), max_value=10**9, places=2).filter(lambda d: d != 0))
        return ContractExpanded(type="contract.expanded", contract_id=draw(_ids), acv_delta=delta, **common)
    if kind == 4:
        return ComplianceViolation(
            type="compliance.violation", rep_id=draw(_ids), severity=draw(st.sampled_from(["veto", "warning"])),
            contract_id=draw(st.none() | _ids), description=draw(_texts), **common,
        )  # fmt: skip
    if kind == 5:
        return ScorecardPublished(
            type="scorecard.published", rep_id=draw(_ids), year=draw(st.integers(1900, 2200)),
            composite=draw(st.decimals(0, 150, places=2)),
            components=draw(st.none() | st.dictionaries(_texts, _json, max_size=4)), **common,
        )  # fmt: skip
    return KpiMeasured(
        type="kpi.measured", rep_id=draw(_ids), year=draw(st.integers(1900, 2200)), kpi="nps",
        value=draw(st.decimals(-100, 100, places=1)), **common,
    )  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(any_event(), min_size=1, max_size=12))
def test_any_valid_events_round_trip_unchanged(ledger: Ledger, events: list[Event]) -> None:
    start, _ = ledger.head()
    before = ledger.stream_versions({stream_of(e) for e in events})
    recorded = append(ledger, events)
    back = list(ledger.read(after=start))
    assert [r.event for r in back] == events
    assert [r.event for r in ledger.read(after=start, validate=False)] == events
    assert back == recorded
    assert [r.position for r in back] == list(range(start + 1, start + len(events) + 1))
    assert [r.stream_version for r in back] == expected_versions_of(events, before)


@settings(max_examples=300, deadline=None)
@given(event=any_event())
def test_payload_json_is_the_canonical_payload(event: Event) -> None:
    assert payload_json(event) == canonical_json(to_payload(event))


@pytest.mark.parametrize("written", ["1e3", "1E+3", "0.0000001", "0.00000000", "12345.6789", "-0", "7"])
def test_payload_json_writes_decimals_as_the_canonical_payload_does(written: str) -> None:
    """Decimals as read from a file keep the exponent written ("1e3" is Decimal('1E+3')): both write it out."""
    event = ServiceCost.model_validate(
        {"type": "service.cost", "effective": "2026-03-01", "contract_id": "C1", "amount": written}
    )
    assert payload_json(event) == canonical_json(to_payload(event))


def test_payload_json_of_every_event_a_worked_ledger_holds(tmp_path: Path) -> None:
    """Every type the engine writes as well (plans, closed cycles with their nested lines, scorecards)."""
    with Ledger(f"sqlite:///{tmp_path / 'worked.db'}") as ledger:
        ledger.init()
        results = service.ingest_files(ledger, sorted(WORKED.glob("*.jsonl")))
        assert all(not r.problems for r in results)
        book = reference_book()
        service.close(ledger, book, "2026-03")
        recorded = list(ledger.read())
    assert len({r.event.type for r in recorded}) >= 8
    for r in recorded:
        assert payload_json(r.event) == canonical_json(to_payload(r.event)), r.event.type


def test_every_event_type_has_the_fast_read_path() -> None:
    from incentive_engine.core.events import EVENT_CLASSES

    assert [t for t in EVENT_CLASSES if store._fast_plan(t) is None] == []


_record_fields = st.tuples(
    st.integers(1, 2**62), st.text(), st.integers(1, 2**31), st.text(), st.text(), st.none() | st.text(),
    st.text(), st.dictionaries(st.text(), st.text()).map(canonical_json),
)  # fmt: skip


@given(args=_record_fields)
def test_fast_record_text_is_byte_identical_to_the_canonical_one(args: tuple[Any, ...]) -> None:
    assert store.RECORD_TEXT is store._record_text_fast  # the fast encoder was not rejected at import
    assert store._record_text_fast(*args) == record_text(*args)


@pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native chain is not built here"
)
@given(prev=st.text("0123456789abcdef", min_size=64, max_size=64), rows=st.lists(_record_fields, max_size=6))
def test_native_chain_hashes_are_the_canonical_ones(prev: str, rows: list[tuple[Any, ...]]) -> None:
    """What an append writes (``store.chain_hashes``, in C) is what ``core.canonical`` computes, for any
    text: quotes, backslashes, control characters, U+2028, astral characters; extra row items ignored."""
    expected, p = [], prev
    for row in rows:
        p = chain_hash(p, record_text(*row))
        expected.append(p)
    assert store._chain_sqlite.chain(prev, [(*row, "content hash") for row in rows]) == expected
    assert store.chain_hashes(prev, rows) == expected


def test_chain_hashes_refuse_what_cannot_be_utf8_in_c_and_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    row = (1, "rep:\ud800", 1, "rep.hired", "2026-01-01", None, "2026-01-01T00:00:00.000000Z", "{}")
    with pytest.raises(UnicodeEncodeError):
        store.chain_hashes(GENESIS_HASH, [row])
    monkeypatch.setenv("INCENTIVE_NATIVE", "0")
    with pytest.raises(UnicodeEncodeError):
        store.chain_hashes(GENESIS_HASH, [row])
    good = (1, "rep:R1", 1, "rep.hired", "2026-01-01", None, "2026-01-01T00:00:00.000000Z", "{}")
    assert store.chain_hashes(GENESIS_HASH, [good]) == [chain_hash(GENESIS_HASH, record_text(*good))]


@pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native chain is not built here"
)
@pytest.mark.parametrize("prev", ["x", "", "é" * 70])
def test_native_chain_takes_any_previous_hash_as_python_does(prev: str) -> None:
    """A head written by someone bypassing the store may hold any text: both chains hash it as it is."""
    row = (1, "rep:R1", 1, "rep.hired", "2026-01-01", None, "2026-01-01T00:00:00.000000Z", "{}")
    assert store._chain_sqlite.chain(prev, [row, row]) == [
        first := chain_hash(prev, record_text(*row)),
        chain_hash(first, record_text(*row)),
    ]


@pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native chain is not built here"
)
@given(triples=st.lists(st.tuples(st.text(), st.text(), st.text()), max_size=6))
def test_native_content_hashes_are_the_canonical_ones(triples: list[tuple[str, str, str]]) -> None:
    """Deduplication's content hashes (``store.content_hashes``, in C) are ``core.canonical``'s, for any text."""
    types, effectives, payloads = ([t[i] for t in triples] for i in range(3))
    expected = [content_hash(*t) for t in triples]
    assert store._chain_sqlite.content_hashes(types, effectives, payloads) == expected
    assert store.content_hashes(types, effectives, payloads) == expected


def test_content_hashes_refuse_what_cannot_be_utf8_or_is_not_text(monkeypatch: pytest.MonkeyPatch) -> None:
    for native in ("1", "0"):
        monkeypatch.setenv("INCENTIVE_NATIVE", native)
        with pytest.raises(UnicodeEncodeError):
            store.content_hashes(
                ["service.cost"], ["2026-01-01"], ['{"contract_id":"\ud800"}'.encode().decode("unicode_escape")]
            )
        with pytest.raises((TypeError, ValueError)):
            store.content_hashes(["service.cost"], ["2026-01-01", "2026-01-02"], ["{}"])
        assert store.content_hashes(["a"], ["b"], ["c"]) == [content_hash("a", "b", "c")]


_chained_items = st.lists(
    st.tuples(
        st.sampled_from(["rep:R1", "contract:C1", 'contract:"\\\u2028']) | st.text(),  # stream
        st.text(), st.dates(), st.none() | st.text(), st.text(), st.text(),  # type, effective, event_id, payload, content hash
    ),
    max_size=8,
)  # fmt: skip


def _both_chained_rows(*args: Any) -> tuple[Any, Any]:
    """``store._chained_rows`` of the same arguments in C and in Python (each on its own copy of the versions)."""
    events, streams, payloads, hashes, versions, after, at = args
    native = store._chained_rows(events, streams, payloads, hashes, dict(versions), after, at), dict(versions)
    os.environ["INCENTIVE_NATIVE"] = "0"
    try:
        python = store._chained_rows(events, streams, payloads, hashes, dict(versions), after, at), dict(versions)
    finally:
        del os.environ["INCENTIVE_NATIVE"]
    return native, python


@pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native chain is not built here"
)
@given(
    items=_chained_items,
    start=st.integers(0, 2**50),
    first_versions=st.integers(0, 2**40),
    prev=st.text(),
    recorded_at=st.text(),
)
def test_native_chained_rows_are_the_python_ones(
    items: list[tuple[Any, ...]], start: int, first_versions: int, prev: str, recorded_at: str
) -> None:
    """An append's rows, versions, chain and ``Recorded`` (``store._chained_rows``) are the same built in C
    (``_chain_sqlite.chained_rows``) as in Python, for any text; the versions dict is moved on alike."""
    from types import SimpleNamespace

    from incentive_engine.core.projections import Recorded

    events = [SimpleNamespace(type=t, effective=d, event_id=i) for _, t, d, i, _, _ in items]
    streams = [it[0] for it in items]
    versions = {s: first_versions + n for n, s in enumerate(sorted(set(streams)))}
    args = (events, streams, [it[4] for it in items], [it[5] for it in items], versions, (start, prev), recorded_at)
    native, python = _both_chained_rows(*args)
    assert native == python
    native_versions = dict(versions)
    rows, recorded, head = store._chained_rows(*args[:4], native_versions, *args[5:])
    assert all(type(r) is Recorded for r in recorded)
    if items:
        assert head == (start + len(items), rows[-1][-1], recorded_at)
        assert [r[0] for r in rows] == list(range(start + 1, start + len(items) + 1))
        assert native_versions == {**versions, **{s: versions[s] + streams.count(s) for s in streams}}
        with pytest.raises(AttributeError):  # built through the slots, still frozen
            recorded[0].position = 0  # type: ignore[misc]


@pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native chain is not built here"
)
def test_native_chained_rows_refuse_what_python_refuses() -> None:
    from types import SimpleNamespace

    ev = SimpleNamespace(type="rep.hired", effective=date(2026, 1, 1), event_id=None)
    at = "2026-01-01T00:00:00.000000Z"
    cases = [
        (KeyError, ([ev], ["rep:R1"], ["{}"], ["h"], {}, (0, GENESIS_HASH), at)),  # no version for the stream
        (UnicodeEncodeError, ([ev], ["rep:R1"], ["\ud800"], ["h"], {"rep:R1": 0}, (0, GENESIS_HASH), at)),
        (UnicodeEncodeError, ([ev], ["rep:\ud800"], ["{}"], ["h"], {"rep:\ud800": 0}, (0, GENESIS_HASH), at)),
        (AttributeError, ([object()], ["rep:R1"], ["{}"], ["h"], {"rep:R1": 0}, (0, GENESIS_HASH), at)),
    ]
    for error, args in cases:
        for native in ("1", "0"):
            os.environ["INCENTIVE_NATIVE"] = native
            try:
                with pytest.raises(error):
                    store._chained_rows(*args)
            finally:
                del os.environ["INCENTIVE_NATIVE"]
    with pytest.raises((TypeError, ValueError)):  # lengths differ
        store._chain_sqlite.chained_rows(
            [ev], [], [], [], {}, 0, GENESIS_HASH, at, store.Recorded, store._RECORDED_SLOTS
        )
    with pytest.raises(TypeError):  # a payload that is not text
        store._chain_sqlite.chained_rows(
            [ev], ["rep:R1"], [b"{}"], ["h"], {"rep:R1": 0}, 0, GENESIS_HASH, at, store.Recorded, store._RECORDED_SLOTS
        )


# --- idempotency lookups ------------------------------------------------------------------------


def test_reading_at_positions_equals_picking_them_from_the_whole_read(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_at`` (``explain``'s facts) = the same positions picked out of ``read()``: validated events,
    in position order, absent positions left out, across several IN lists."""
    with ledger.writer() as w:
        w.append(varied_events())
    every = {rec.position: rec for rec in ledger.read()}
    monkeypatch.setattr(store, "IN_CHUNK", 2)
    for picks in ([], [3], [5, 1, 5, 9], list(range(-1, len(every) + 3)), [len(every), 2, 7, 4, 11]):
        expected = [every[p] for p in sorted(set(picks)) if p in every]
        assert ledger.read_at(picks) == expected, picks


def test_event_id_and_content_hash_lookups(ledger: Ledger) -> None:
    evs = [hire(f"R{i}", event_id=f"hire-{i}") for i in range(1200)]  # more than one IN (...) chunk
    twice = ServiceCost(type="service.cost", effective=D("2026-03-01"), contract_id="C1", amount=Decimal("5"))
    append(ledger, [*evs, twice, twice])
    rows = {row[5]: row[8] for row in ledger.read_rows() if row[5] is not None}
    asked = [f"hire-{i}" for i in range(0, 1200, 1)] + ["nope"]
    assert ledger.event_id_hashes(asked) == rows
    h = content_hash("service.cost", "2026-03-01", canonical_json(to_payload(twice)))
    first = rows["hire-0"]
    asked_contents = [("2026-03-01", h), (hire("R0").effective.isoformat(), first), ("2026-03-01", "0" * 64)]
    assert ledger.content_hash_counts(asked_contents) == {h: 2, first: 1}
    assert ledger.content_hash_counts([("2026-03-02", h)]) == {}  # a content hash covers its date
    with ledger.writer() as w:
        assert w.event_id_hashes(["hire-3"]) == {"hire-3": rows["hire-3"]}
        assert w.content_hash_counts([("2026-03-01", h)]) == {h: 2}


# --- the hash chain -----------------------------------------------------------------------------


def test_verify_passes_on_an_untouched_ledger(ledger: Ledger) -> None:
    append(ledger, varied_events())
    append(ledger, [hire(f"X{i}") for i in range(30)])
    report = ledger.verify()
    assert report.ok, report.message
    assert (report.events, report.first_bad_position) == (len(varied_events()) + 30, None)


@pytest.mark.parametrize(
    ("statements", "bad", "why"),
    [
        pytest.param(
            [("UPDATE ledger_event SET payload = :p WHERE position = 7", {"p": '{"amount":"9999.99","contract_id":"C1"}'})],
            7, "hash mismatch", id="payload-altered",
        ),
        pytest.param(
            [("UPDATE ledger_event SET effective = '2020-01-01' WHERE position = 11", {})], 11, "hash mismatch",
            id="date-altered",
        ),
        pytest.param(
            [("UPDATE ledger_event SET content_hash = :h WHERE position = 4", {"h": "f" * 64})], 4, "content hash",
            id="content-hash-altered",
        ),
        pytest.param([("DELETE FROM ledger_event WHERE position = 7", {})], 7, "missing", id="row-removed"),
        pytest.param([("DELETE FROM ledger_event WHERE position = 1", {})], 1, "missing", id="first-row-removed"),
        pytest.param(
            [
                ("UPDATE ledger_event SET position = -position WHERE position IN (5, 9)", {}),
                ("UPDATE ledger_event SET position = 14 + position WHERE position IN (-5, -9)", {}),
            ],
            5, "hash mismatch", id="rows-reordered",
        ),
    ],
)  # fmt: skip
def test_verify_finds_the_first_tampered_position(
    ledger: Ledger, statements: list[tuple[str, dict[str, Any]]], bad: int, why: str
) -> None:
    append(ledger, [hire(f"R{i}") for i in range(6)])
    append(ledger, [ServiceCost(type="service.cost", effective=D("2026-03-01"), contract_id="C1",
                                amount=Decimal(i)) for i in range(10)])  # fmt: skip
    assert ledger.verify().ok
    tamper(ledger, *statements)
    report = ledger.verify()
    assert not report.ok
    assert report.first_bad_position == bad
    assert report.events == bad - 1
    assert f"position {bad}: " in report.message and why in report.message


def test_swapping_two_rows_contents_is_reported_at_the_first_one(ledger: Ledger) -> None:
    events = varied_events()
    append(ledger, events)
    rows = {row[0]: row for row in ledger.read_rows()}
    a, b = 5, 9
    swap = "UPDATE ledger_event SET type = :t, payload = :p, content_hash = :c WHERE position = :pos"
    tamper(
        ledger,
        (swap, {"t": rows[b][3], "p": rows[b][7], "c": rows[b][8], "pos": a}),
        (swap, {"t": rows[a][3], "p": rows[a][7], "c": rows[a][8], "pos": b}),
    )
    report = ledger.verify()
    assert (report.ok, report.first_bad_position) == (False, a)
    assert f"position {a}: hash mismatch (row altered, removed or reordered)" in report.message


def test_verify_reports_missing_append_only_triggers(ledger: Ledger) -> None:
    append(ledger, [hire("R1")])
    drop_triggers(ledger)
    report = ledger.verify()
    assert not report.ok and report.first_bad_position is None
    assert "ledger_event_no_update" in report.message and "ledger_event_no_delete" in report.message


def test_the_database_refuses_update_and_delete(ledger: Ledger) -> None:
    append(ledger, [hire("R1"), hire("R2")])
    statements = ["UPDATE ledger_event SET payload = '{}' WHERE position = 1", "DELETE FROM ledger_event"]
    if ledger.dialect == "postgresql":
        statements.append("TRUNCATE ledger_event")
    for sql in statements:
        with pytest.raises(DBAPIError, match="ledger_event is append-only"), ledger.engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert count(ledger) == 2
    assert ledger.verify().ok


# --- writers ------------------------------------------------------------------------------------


def test_a_stale_writer_gets_a_conflict_and_writes_nothing(ledger: Ledger) -> None:
    append(ledger, [hire("R1")])
    seen = ledger.stream_versions(["rep:R1"])  # a writer decides on version 1 ...
    assert seen == {"rep:R1": 1}
    append(ledger, [RepTerminated(type="rep.terminated", effective=D("2026-06-01"), rep_id="R1", leaver="good")])
    head = ledger.head()
    late = [hire("R9"), KpiMeasured(type="kpi.measured", effective=D("2026-06-30"), rep_id="R1", year=2026,
                                    kpi="csat", value=Decimal(4))]  # fmt: skip
    with pytest.raises(ConcurrencyConflict, match=r"stream rep:R1: expected version 1, found 2"):
        append(ledger, late, expected_versions=seen)  # ... but another got there first
    assert ledger.head() == head and count(ledger) == 2
    # a fresh decision goes through; a new stream is expected at version 0
    out = append(ledger, late, expected_versions={"rep:R1": 2, "rep:R9": 0})
    assert [(r.stream_id, r.stream_version) for r in out] == [("rep:R9", 1), ("rep:R1", 3)]


def test_a_refused_append_leaves_nothing_behind_even_if_the_error_is_caught(ledger: Ledger) -> None:
    append(ledger, [hire("R1", event_id="dup")])
    head = ledger.head()
    with ledger.writer() as w:
        with pytest.raises(ConcurrencyConflict, match="event_id"):
            w.append([hire("R2"), hire("R3"), hire("R4", event_id="dup")])  # fails on the third row
        assert w.head() == head
        w.append([hire("R5")])  # the writer is still usable and commits only this
    assert [r.event.rep_id for r in ledger.read()] == ["R1", "R5"]  # type: ignore[attr-defined]
    assert ledger.verify().ok


def test_an_event_id_given_twice_in_one_append_is_refused_before_anything_is_inserted(ledger: Ledger) -> None:
    with ledger.writer() as w:
        with pytest.raises(ConcurrencyConflict, match="event_id already recorded or given twice: twin"):
            w.append([hire("R1", event_id="twin"), hire("R2"), hire("R3", event_id="twin")])
        assert w.head() == (0, GENESIS_HASH)
        w.append([hire("R4", event_id="twin")])  # still usable
    assert [r.event.rep_id for r in ledger.read()] == ["R4"]  # type: ignore[attr-defined]


def test_a_prepared_append_is_written_only_where_it_was_prepared(ledger: Ledger) -> None:
    """``Writer.prepare`` numbers and chains rows after the head it saw: once anything else is appended,
    its ``insert`` is refused (its positions and chain would collide), and the writer stays usable."""
    with ledger.writer() as w:
        stale = w.prepare([hire("R1")])
        fresh = w.prepare([hire("R2")])
        w.append([hire("R3")])
        with pytest.raises(EngineError, match="built on position 0, but this writer's head is at 1"):
            w.insert(stale)
        assert [r.position for r in w.insert(w.prepare([hire("R4")]))] == [2]
        with pytest.raises(EngineError, match="built on position 0"):
            w.insert(fresh)
    assert [r.event.rep_id for r in ledger.read()] == ["R3", "R4"]  # type: ignore[attr-defined]
    assert ledger.verify().ok


def test_an_id_looked_up_as_absent_is_taken_once_this_writer_appends_it(ledger: Ledger) -> None:
    """The writer remembers the ids it found absent (so an ingest's append does not look them up again);
    appending one must forget it, or a second append of the same id would reach the unique key."""
    with ledger.writer() as w:
        assert w.event_id_hashes(["x"]) == {}
        w.append([hire("R1", event_id="x")])
        with pytest.raises(ConcurrencyConflict, match="event_id already recorded or given twice: x"):
            w.append([hire("R2", event_id="x")])
        assert set(w.event_id_hashes(["x"])) == {"x"}
    assert count(ledger) == 1


def test_an_insert_failing_after_some_rows_went_in_rolls_the_whole_writer_back(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite inserts an append in several statements without a savepoint (``Writer._insert_rows``): a
    statement failing after the first leaves the writer unable to commit, even if the caller catches the
    error. PostgreSQL's single COPY inside a savepoint leaves nothing behind and the writer usable."""
    append(ledger, [hire("R0")])
    head = ledger.head()
    monkeypatch.setattr(store, "_ROWS_PER_INSERT", 2)
    with ledger.engine.begin() as conn:  # a check of someone else's that the store cannot foresee
        if ledger.engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER test_refuse_r3 BEFORE INSERT ON ledger_event WHEN NEW.stream_id = 'rep:R3' "
                "BEGIN SELECT RAISE(ABORT, 'R3 is refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION test_refuse_r3() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.stream_id = 'rep:R3' THEN RAISE EXCEPTION 'R3 is refused'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER test_refuse_r3 BEFORE INSERT ON ledger_event FOR EACH ROW "
                "EXECUTE FUNCTION test_refuse_r3()"
            )
    if ledger.engine.dialect.name == "sqlite":
        refused = r"after 2 of its 3 rows were inserted .*R3 is refused.*rolled back"
        with pytest.raises(EngineError, match=refused), ledger.writer() as w:
            w.append([hire("R5")])  # an earlier append of the same writer goes too
            with pytest.raises(EngineError, match="after 2 of its 3 rows"):
                w.append([hire("R1"), hire("R2"), hire("R3")])  # the second statement fails
            with pytest.raises(EngineError, match="rolled back"):
                w.head()  # nothing more through this writer
        assert ledger.head() == head and count(ledger) == 1
    else:
        with ledger.writer() as w:
            with pytest.raises(Exception, match="R3 is refused") as refused:
                w.append([hire("R1"), hire("R2"), hire("R3")])
            assert type(refused.value).__module__.startswith("psycopg")  # the COPY's own error
            w.append([hire("R5")])
        assert [r.event.rep_id for r in ledger.read()] == ["R0", "R5"]  # type: ignore[attr-defined]
    assert ledger.verify().ok


def test_sqlite_hands_each_writer_the_connection_that_wrote_last(tmp_path: Any) -> None:
    """SQLite discards a connection's page cache when another connection changed the file since it last
    read: the pool must give the next writer the connection the last writer used (LIFO), not the one that
    only read inside its block (FIFO did), or every append starts with a cold cache."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.init()
    writers = []
    for rep in ("R1", "R2", "R3"):
        with ledger.writer() as w:
            writers.append(w.conn.connection.dbapi_connection)
            assert ledger.head()[0] == len(writers) - 1  # a read on a second connection, inside the block
            w.append([hire(rep)])
    assert writers[0] is writers[1] is writers[2]
    ledger.engine.dispose()


def kpi(rep_id: str) -> KpiMeasured:
    return KpiMeasured(type="kpi.measured", effective=D("2026-06-30"), rep_id=rep_id, year=2026, kpi="csat",
                       value=Decimal(4))  # fmt: skip


def _versions_looked_up(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked_up: list[str] = []
    real = store._stream_versions

    def spy(conn: Any, stream_ids: Any) -> dict[str, int]:
        ids = list(stream_ids)
        looked_up.extend(ids)
        return real(conn, ids)

    monkeypatch.setattr(store, "_stream_versions", spy)
    return looked_up


def test_a_writer_starts_from_the_versions_the_last_one_committed_and_catches_up_on_rows_since(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream versions a writer of this process knew at its commit are lent to the next one
    (``_lend_versions``), not looked up again; rows another process appended since are read for theirs."""
    append(ledger, [hire("R1"), hire("R2"), hire("R3")])
    other = Ledger(ledger_url)  # another process, in effect: this ledger's writers never saw its append
    try:
        append(other, [RepTerminated(type="rep.terminated", effective=D("2026-06-01"), rep_id="R1", leaver="good")])
    finally:
        other.dispose()
    looked_up = _versions_looked_up(monkeypatch)
    out = append(ledger, [kpi("R1"), kpi("R2"), kpi("R4")])
    assert [(r.stream_id, r.stream_version) for r in out] == [("rep:R1", 3), ("rep:R2", 2), ("rep:R4", 1)]
    assert looked_up == ["rep:R4"]  # the only stream no writer of this process had known
    assert ledger.verify().ok

    monkeypatch.setattr(store, "VERSIONS_CATCH_UP_ROWS", 0)  # too far behind: everything is looked up again
    other = Ledger(ledger_url)
    try:
        append(other, [kpi("R3")])
    finally:
        other.dispose()
    looked_up.clear()
    out = append(ledger, [kpi("R3"), kpi("R2")])
    assert [(r.stream_id, r.stream_version) for r in out] == [("rep:R3", 3), ("rep:R2", 3)]
    assert sorted(looked_up) == ["rep:R2", "rep:R3"]
    assert ledger.verify().ok


def test_known_versions_are_lent_only_where_the_row_they_were_known_at_is_unchanged(ledger: Ledger) -> None:
    """Versions known at a position whose row now carries another hash (a ledger restored and written
    differently since) describe another history: they are not lent."""
    first = append(ledger, [hire("R1"), hire("R2")])
    hash_at_1 = next(iter(ledger.read_rows(upto=1)))[9]
    for known_hash, expected in (("f" * 64, 1), (hash_at_1, 7)):
        with ledger.writer() as w:
            store._lend_versions(w, (1, known_hash, {"rep:R1": 7}))
            assert w.stream_versions(["rep:R1", "rep:R2"]) == {"rep:R1": expected, "rep:R2": 1}
    assert first[1].stream_version == 1  # rep:R2 at 1: caught up from the row after position 1 either way


def test_the_versions_of_a_rolled_back_writer_are_not_lent(ledger: Ledger) -> None:
    append(ledger, [hire("R1")])
    with pytest.raises(RuntimeError), ledger.writer() as w:
        assert [r.stream_version for r in w.append([kpi("R1"), kpi("R1")])] == [2, 3]
        raise RuntimeError("rolled back")
    out = append(ledger, [kpi("R1")])
    assert [r.stream_version for r in out] == [2]  # not 4: the rolled-back versions were not kept
    assert ledger.verify().ok


def test_work_beside_the_commit_is_undone_when_the_commit_fails(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refuse(self: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.Connection, "commit", refuse)
    with pytest.raises(OSError, match="disk full"), ledger.writer() as w:
        w.append([hire("R1")])
        w.while_committing(lambda: calls.append("work"), lambda: calls.append("undo"))
    assert calls == ["work", "undo"]
    monkeypatch.undo()
    assert count(ledger) == 0
    with pytest.raises(ZeroDivisionError), ledger.writer() as w:  # the work fails; the commit goes through
        w.append([hire("R2")])
        w.while_committing(lambda: [][0] if calls.append("work again") else 1 / 0, lambda: calls.append("undone"))
        assert calls == ["work", "undo"]  # the work runs only as the block ends
    assert calls == ["work", "undo", "work again", "undone"]
    assert count(ledger) == 1 and ledger.verify().ok


def test_sqlite_built_with_a_lower_variable_limit_gets_smaller_insert_statements(tmp_path: Path) -> None:
    """An append's statements bind up to 30,000 values (``_ROWS_PER_INSERT``); a SQLite compiled with a
    lower limit of bound variables gets fewer rows a statement, not "too many SQL variables"."""
    from sqlalchemy import event as sa_event

    ledger = Ledger(f"sqlite:///{tmp_path / 'limited.db'}")
    ledger.init()
    ledger.dispose()

    @sa_event.listens_for(ledger.engine, "connect")
    def _limit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 35)  # three rows' values

    try:
        out = append(ledger, [hire(f"R{i}") for i in range(10)])
        assert [r.position for r in out] == list(range(1, 11))
        assert count(ledger) == 10 and ledger.verify().ok
    finally:
        ledger.dispose()


def test_a_taken_stream_version_becomes_a_conflict(ledger: Ledger) -> None:
    with pytest.raises(ConcurrencyConflict, match="stream version or position"), ledger.writer() as w:
        assert w.stream_versions(["rep:R1"]) == {"rep:R1": 0}  # cached by the writer
        w.conn.exec_driver_sql(  # someone bypassing the store takes version 1 of the stream
            "INSERT INTO ledger_event VALUES (100, 'rep:R1', 1, 'rep.hired', '2026-01-01', NULL, 'x', '{}', 'x', 'x')"
        )
        w.append([hire("R1")])
    assert count(ledger) == 0


def test_writer_rolls_back_on_exception_and_is_unusable_outside_its_block(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.writer() as w:
        w.append([hire("R1")])
        assert [r.position for r in w.read()] == [1]  # the writer sees its own appends
        raise RuntimeError("boom")
    assert ledger.head() == (0, GENESIS_HASH)
    kept: list[Writer] = []
    with ledger.writer() as w:
        kept.append(w)
    with pytest.raises(Exception, match="outside"):
        kept[0].append([hire("R1")])


def test_recorded_at_never_decreases(ledger_url: str) -> None:
    clock = iter(["2031-05-05T10:00:00.000000Z", "2030-01-01T00:00:00.000000Z", "2031-05-05T10:00:00.000001Z"])
    led = Ledger(ledger_url, clock=lambda: next(clock))
    led.init()
    try:
        a = append(led, [hire("R1"), hire("R2")])
        b = append(led, [hire("R3")])  # the clock went back: keep the last time
        c = append(led, [hire("R4")])
        assert [r.recorded_at for r in a + b + c] == [
            "2031-05-05T10:00:00.000000Z", "2031-05-05T10:00:00.000000Z", "2031-05-05T10:00:00.000000Z",
            "2031-05-05T10:00:00.000001Z",
        ]  # fmt: skip
        assert [r.position for r in led.read(recorded_upto="2031-05-05T10:00:00.000000Z")] == [1, 2, 3]
        assert [r.position for r in led.read(recorded_upto="2031-05-05")] == [1, 2, 3, 4]
        assert list(led.read(recorded_upto="2031-05-04")) == []
        assert led.verify().ok
    finally:
        led.dispose()


def test_recorded_at_is_utc_iso_and_monotonic_with_the_real_clock(ledger: Ledger) -> None:
    for i in range(5):
        append(ledger, [hire(f"R{i}a"), hire(f"R{i}b")])
    stamps = [row[6] for row in ledger.read_rows()]
    assert all(TIMESTAMP.match(s) for s in stamps)
    assert stamps == sorted(stamps)


def _append_in_child(url: str, tag: str, n: int, batch: int, go: Any) -> None:
    led = Ledger(url)
    go.wait(30)
    for start in range(0, n, batch):
        with led.writer() as w:
            w.append([hire(f"{tag}{i}") for i in range(start, start + batch)])
    led.dispose()


def _procs(url: str, count: int, n: int, batch: int) -> Iterator[multiprocessing.Process]:
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_append_in_child, args=(url, f"P{k}x", n, batch, go)) for k in range(count)]
    for p in procs:
        p.start()
    go.set()
    yield from procs


def test_two_processes_appending_at_once_keep_the_chain_valid(ledger: Ledger, ledger_url: str) -> None:
    ledger.dispose()  # no inherited connections in the children
    procs = list(_procs(ledger_url, 2, 200, 10))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    report = ledger.verify()
    assert report.ok, report.message
    assert report.events == 400
    rows = list(ledger.read_rows())
    assert [r[0] for r in rows] == list(range(1, 401))
    for tag in ("P0x", "P1x"):  # each process's events in its own order
        assert [r.event.rep_id for r in ledger.read() if r.event.rep_id.startswith(tag)] == [  # type: ignore[attr-defined]
            f"{tag}{i}" for i in range(200)
        ]
    stamps = [r[6] for r in rows]
    assert stamps == sorted(stamps)


def test_writers_do_not_nest(ledger: Ledger) -> None:
    with ledger.writer(), pytest.raises(EngineError, match="do not nest"), ledger.writer():
        pass
    with ledger.writer() as w:  # and the flag is cleared afterwards
        w.append([hire("R1")])
    assert ledger.head()[0] == 1


def test_a_schema_from_a_newer_program_is_named_as_such(ledger: Ledger, ledger_url: str) -> None:
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with Ledger(ledger_url) as other, pytest.raises(LedgerNotInitialised, match="newer incentive-engine"):
        other.head()


def test_verify_survives_a_value_of_the_wrong_type(ledger_url: str) -> None:
    if not ledger_url.startswith("sqlite"):
        pytest.skip("only SQLite lets a TEXT column hold a blob")
    with Ledger(ledger_url) as led:
        led.init()
        append(led, [hire(f"R{i}") for i in range(5)])
        tamper(led, ("UPDATE ledger_event SET event_id = X'00ff' WHERE position = 3", {}))
        report = led.verify()
        assert (report.ok, report.first_bad_position) == (False, 3)
