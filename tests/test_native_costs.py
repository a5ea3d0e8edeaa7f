"""The replay's native reader of service costs (``shell/_costs_sqlite.c``, ``store._fold_costs_apart``)
against the Python fold it stands in for, and the projection's bulk step it feeds.

A fold with the costs read apart must leave the very state (digest) of the fold in position order and of
the validated replay: whole ledgers and ranges of them, costs arriving out of date order, and payloads the
native reader declines (then the Python fold reads the cost rows). The threshold below which a fold stays
in Python is set to 0 here, so that small ledgers take the native path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core.canonical import GENESIS_HASH, chain_hash, content_hash
from incentive_engine.core.events import ContractSigned, Event, RepHired, ServiceCost
from incentive_engine.core.projections import Contract, Fact, Projector, project, state_digest
from incentive_engine.shell import service, store
from incentive_engine.shell.store import RECORD_TEXT, Ledger

from .ledgers import WORKED

needs_native = pytest.mark.skipif(
    store._costs_sqlite is None and not os.environ.get("CI"), reason="the native cost reader is not built here"
)


@needs_native
def test_the_native_cost_reader_is_built() -> None:
    # in CI it must be: without it a replay silently reads every cost row in Python (about 30% slower at M)
    assert store._costs_sqlite is not None, "incentive_engine/shell/_costs_sqlite.c did not build (see setup.py)"


def _folds(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, after: int = 0, upto: int | None = None) -> list[str]:
    """Digests of the range folded with the costs read natively, with them read in Python after the other
    rows (the reader disabled inside the split fold), and in position order (no split)."""
    out = []
    for native, threshold in (("1", 0), ("0", 0), ("0", 10**12)):
        monkeypatch.setenv("INCENTIVE_NATIVE", native)
        monkeypatch.setattr(store, "NATIVE_FOLD_ROWS", threshold)
        if native == "0" and threshold == 0:  # the split fold without the reader: its Python fallback
            monkeypatch.setenv("INCENTIVE_NATIVE", "1")
            monkeypatch.setattr(store._costs_sqlite, "scan", lambda *_: None)
        projector = Projector()
        if after:
            ledger.fold(projector, upto=after)
        ledger.fold(projector, after=after, upto=upto)
        out.append(state_digest(projector.state))
        monkeypatch.undo()
    return out


@needs_native
def test_the_worked_ledger_folds_to_one_state_every_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'worked.db'}")
    ledger.init()
    service.forget_projections()
    (result,) = service.ingest_files(ledger, [WORKED / "01-facts.jsonl"])
    assert not result.problems
    head = ledger.head()[0]
    validated = state_digest(project(ledger.read()))
    for after, upto in ((0, None), (head // 3, None), (head // 3, 2 * head // 3), (0, head // 2)):
        digests = _folds(ledger, monkeypatch, after, upto)
        assert len(set(digests)) == 1, (after, upto, digests)
        if upto is None:
            assert digests[0] == validated
    ledger.dispose()


# --- ledgers of contracts and their costs, out of date order ---------------------------------------------

START = date(2026, 1, 1)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("costs") / "template.db"
    with Ledger(f"sqlite:///{path}") as led:
        led.init()
    return path


def _events(contracts: int, costs: list[tuple[int, int, int]]) -> list[Event]:
    """A rep, ``contracts`` contracts signed on START, and costs (contract, day offset, cents) in the
    order given: their dates go back and forth."""
    events: list[Event] = [RepHired(type="rep.hired", effective=START, rep_id="R1", name="R", role="rep")]
    events += [
        ContractSigned(
            type="contract.signed", effective=START, contract_id=f"C{i}", account_id="A", rep_id="R1",
            acv=Decimal("1000.00"), currency="EUR", term_months=12,
        )
        for i in range(contracts)
    ]  # fmt: skip
    events += [
        ServiceCost(
            type="service.cost",
            effective=START + timedelta(days=day),
            contract_id=f"C{c % contracts}",
            amount=Decimal(cents).scaleb(-2),
        )
        for c, day, cents in costs
    ]
    return events


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    contracts=st.integers(1, 4),
    costs=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 60), st.integers(0, 10**7)), max_size=40),
    cut=st.floats(0, 1),
)
def test_costs_out_of_date_order_fold_to_one_state_every_way(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contracts: int, costs: list[Any], cut: float
) -> None:
    path = tmp_path / f"ledger-{len(os.listdir(tmp_path))}.db"
    shutil.copy(template, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(contracts, costs))
    head = ledger.head()[0]
    digests = _folds(ledger, monkeypatch) + _folds(ledger, monkeypatch, after=int(head * cut))
    assert len(set(digests)) == 1, digests
    assert digests[0] == state_digest(project(ledger.read()))
    ledger.dispose()


# --- rows the native reader declines ---------------------------------------------------------------------


def _append_raw(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """Rows (stream, type, effective, payload text) straight into the table after its last, hashed and
    chained as the writer would (the events' models would not let these payloads through)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        position, prev = con.execute(
            "SELECT position, hash FROM ledger_event ORDER BY position DESC LIMIT 1"
        ).fetchone()
        for stream, type_, effective, payload in rows:
            position += 1
            version = con.execute("SELECT count(*) FROM ledger_event WHERE stream_id = ?", (stream,)).fetchone()[0] + 1
            at = "2026-12-31T00:00:00.000000Z"
            prev = chain_hash(
                prev or GENESIS_HASH, RECORD_TEXT(position, stream, version, type_, effective, None, at, payload)
            )
            con.execute(
                "INSERT INTO ledger_event VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (position, stream, version, type_, effective, None, at, payload,
                 content_hash(type_, effective, payload), prev),
            )  # fmt: skip
    finally:
        con.close()


@needs_native
@pytest.mark.parametrize(
    ("payload", "amount"),
    [
        ('{"amount":1.5,"contract_id":"C0"}', Decimal("1.5")),  # a number, not the canonical text
        ('{"amount":"2.50","contract_id":"C\\u0030"}', Decimal("2.50")),  # an escape in the contract id
        ('{"amount":"3.00", "contract_id":"C0"}', Decimal("3.00")),  # not canonical: a space
    ],
)
def test_a_payload_the_reader_declines_is_folded_in_python(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: str, amount: Decimal
) -> None:
    path = tmp_path / "odd.db"
    shutil.copy(template, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(1, [(0, 3, 100), (0, 1, 200)]))  # 2026-01-04: 1.00, then 2026-01-02: 2.00
    _append_raw(path, [("service-cost:C0", "service.cost", "2026-01-02", payload)])
    _append_raw(path, [("service-cost:C0", "service.cost", "2026-01-05", '{"amount":"4.00","contract_id":"C0"}')])
    head = ledger.head()[0]
    assert store._costs_sqlite.scan(str(path), 0, head) is None  # declined: the whole range goes to Python
    assert store._costs_sqlite.scan(str(path), head - 1, head) is not None  # the last row alone is canonical
    digests = _folds(ledger, monkeypatch)
    assert len(set(digests)) == 1, digests
    monkeypatch.setattr(store, "NATIVE_FOLD_ROWS", 0)
    projector = Projector()
    ledger.fold(projector)
    costs = projector.state.contracts["C0"].service_costs
    assert [f.value for f in costs] == [Decimal("2.00"), amount, Decimal("1.00"), Decimal("4.00")]
    assert projector.state.position == head
    ledger.dispose()


@needs_native
def test_the_reader_declines_a_range_its_snapshot_does_not_hold(template: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.db"
    shutil.copy(template, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(2, [(0, 1, 100), (1, 2, 200)]))
    head = ledger.head()[0]
    scan = store._costs_sqlite.scan(str(path), 0, head)
    groups, last = store._costs_sqlite.facts(scan, Fact, Decimal)
    assert last == head and [(cid, len(facts), ordered) for cid, facts, ordered in groups] == [
        ("C0", 1, True),
        ("C1", 1, True),
    ]
    # rows up to head + 1 are not all visible to it (another connection's uncommitted append, say)
    assert store._costs_sqlite.scan(str(path), 0, head + 1) is None
    ledger.dispose()


# --- the projection's bulk step ----------------------------------------------------------------------------


def _contract(costs: list[Fact]) -> Contract:
    return Contract("C", "A", "R", "EUR", START, Decimal(1), 12, None, 1, service_costs=list(costs))


FACTS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10**6)), max_size=12, unique_by=lambda t: t[1])


@given(before=FACTS, batch=FACTS)
def test_costs_in_bulk_leave_the_list_one_by_one_leaves(before: list[Any], batch: list[Any]) -> None:
    """``Projector.service_costs`` of a batch (in position order, as the reader gives it) = the batch's
    ``service_cost`` steps one by one, on a contract that already holds costs from before the batch."""
    one_by_one = Projector()
    one_by_one.state.contracts["C"] = _contract([])
    for d, p in sorted(before, key=lambda t: t[1]):  # a fold steps in position order
        one_by_one.service_cost(p, START + timedelta(days=d), "C", Decimal(p))
    bulk = Projector()
    bulk.state.contracts["C"] = _contract(one_by_one.state.contracts["C"].service_costs)
    bulk.state.position = one_by_one.state.position
    facts = [Fact(START + timedelta(days=d), 2 * 10**6 + i, Decimal(i)) for i, (d, _) in enumerate(batch)]
    for f in facts:
        one_by_one.service_cost(f.position, f.effective, "C", f.value)
    ordered = all(a.effective <= b.effective for a, b in itertools.pairwise(facts))
    bulk.service_costs([("C", facts, ordered)], facts[-1].position if facts else 0)
    assert bulk.state.contracts["C"].service_costs == one_by_one.state.contracts["C"].service_costs
    assert bulk.state.position == one_by_one.state.position
