"""The replay's native reader of the facts a contract keeps in lists - service costs, expansions, renewals
(``shell/_contract_facts_sqlite.c``, ``store._fold_lists_apart``) - against the Python fold it stands in
for, and the projection's bulk step it feeds.

A fold with those facts read apart must leave the very state (digest) of the fold in position order and of
the validated replay: whole ledgers and ranges of them, facts arriving out of date order, and payloads the
native reader declines (then the Python fold reads those rows). The threshold below which a fold stays in
Python is set to 0 here, so that small ledgers take the native path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core.canonical import GENESIS_HASH, chain_hash, content_hash
from incentive_engine.core.events import (
    ContractExpanded,
    ContractRenewed,
    ContractSigned,
    Event,
    RepHired,
    ServiceCost,
)
from incentive_engine.core.projections import (
    CONTRACT_LISTS,
    Contract,
    Fact,
    Projector,
    Renewal,
    project,
    state_digest,
)
from incentive_engine.shell import service, store
from incentive_engine.shell.store import RECORD_TEXT, Ledger

from .ledgers import WORKED

needs_native = pytest.mark.skipif(
    store._contract_facts_sqlite is None and not os.environ.get("CI"), reason="the native reader is not built here"
)


@needs_native
def test_the_native_reader_is_built() -> None:
    # in CI it must be: without it a replay silently reads every row in Python (about 40% slower at M)
    assert store._contract_facts_sqlite is not None, (
        "incentive_engine/shell/_contract_facts_sqlite.c did not build (see setup.py)"
    )


def _folds(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, after: int = 0, upto: int | None = None, *, native: bool = True
) -> list[str]:
    """Digests of the range folded with the lists read natively, with them read in Python after the other
    rows (the reader disabled inside the split fold), and in position order (no split). ``native``: whether
    the first way must have taken the reader's lists (else it must have declined them)."""
    out = []
    for variant in ("native", "split in Python", "in order"):
        monkeypatch.setenv("INCENTIVE_NATIVE", "0" if variant == "in order" else "1")
        monkeypatch.setattr(store, "NATIVE_FOLD_ROWS", 0)
        taken: list[bool] = []
        real = store._contract_facts_sqlite.facts
        monkeypatch.setattr(
            store._contract_facts_sqlite, "facts", lambda *a, _t=taken, _f=real: _t.append(True) or _f(*a)
        )
        if variant == "split in Python":  # the split fold without the reader: its Python fallback
            monkeypatch.setattr(store._contract_facts_sqlite, "scan", lambda *_: None)
        projector = Projector()
        if after:
            ledger.fold(projector, upto=after)
        ledger.fold(projector, after=after, upto=upto)
        out.append(state_digest(projector.state))
        assert bool(taken) == (native and variant == "native"), (variant, taken)
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


# --- ledgers of contracts and their lists, out of date order ---------------------------------------------

START = date(2026, 1, 1)


def _events(contracts: int, facts: list[tuple[int, int, int, int]]) -> list[Event]:
    """A rep, ``contracts`` contracts signed on START, and facts (kind, contract, day offset, cents) in the
    order given, kind 0 a service cost, 1 an expansion, 2 a renewal: their dates go back and forth."""
    events: list[Event] = [RepHired(type="rep.hired", effective=START, rep_id="R1", name="R", role="rep")]
    events += [
        ContractSigned(
            type="contract.signed", effective=START, contract_id=f"C{i}", account_id="A", rep_id="R1",
            acv=Decimal("1000.00"), currency="EUR", term_months=12,
        )
        for i in range(contracts)
    ]  # fmt: skip
    for kind, c, day, cents in facts:
        common = {"effective": START + timedelta(days=day), "contract_id": f"C{c % contracts}"}
        amount = Decimal(max(cents, 1 if kind else 0)).scaleb(-2)  # expansions and renewals: not 0
        if kind == 0:
            events.append(ServiceCost(type="service.cost", amount=amount, **common))
        elif kind == 1:
            events.append(ContractExpanded(type="contract.expanded", acv_delta=amount * (-1) ** cents, **common))
        else:
            events.append(ContractRenewed(type="contract.renewed", acv=amount, term_months=1 + cents % 120, **common))
    return events


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    contracts=st.integers(1, 4),
    facts=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 9), st.integers(0, 60), st.integers(0, 10**7)), max_size=40
    ),
    cut=st.floats(0, 1),
)
def test_facts_out_of_date_order_fold_to_one_state_every_way(
    blank_sqlite_ledger: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    contracts: int,
    facts: list[Any],
    cut: float,
) -> None:
    path = tmp_path / f"ledger-{len(os.listdir(tmp_path))}.db"
    shutil.copy(blank_sqlite_ledger, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(contracts, facts))
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
    ("type_", "payload", "listed"),
    [
        ("service.cost", '{"amount":1.5,"contract_id":"C0"}', "service_costs"),  # a number, not the text
        ("service.cost", '{"amount":"2.50","contract_id":"C\\u0030"}', "service_costs"),  # an escape
        ("service.cost", '{"amount":"3.00", "contract_id":"C0"}', "service_costs"),  # a space
        ("contract.expanded", '{"acv_delta":-7,"contract_id":"C0"}', "expansions"),
        ("contract.renewed", '{"acv":"9.00","contract_id":"C0","term_months":12.0}', "renewals"),
        ("contract.renewed", '{"acv":"9.00","term_months":12,"contract_id":"C0"}', "renewals"),  # key order
    ],
)
def test_a_payload_the_reader_declines_is_folded_in_python(
    blank_sqlite_ledger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, type_: str, payload: str, listed: str
) -> None:
    path = tmp_path / "odd.db"
    shutil.copy(blank_sqlite_ledger, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:  # 2026-01-04 then 2026-01-02, of each kind
        w.append(_events(1, [(kind, 0, day, 100 * day) for kind in (0, 1, 2) for day in (3, 1)]))
    stream = "service-cost:C0" if type_ == "service.cost" else "contract:C0"
    _append_raw(path, [(stream, type_, "2026-01-02", payload)])
    _append_raw(path, [("service-cost:C0", "service.cost", "2026-01-05", '{"amount":"4.00","contract_id":"C0"}')])
    head = ledger.head()[0]
    assert store._contract_facts_sqlite.scan(str(path), 0, head) is None  # declined: the whole range to Python
    assert store._contract_facts_sqlite.scan(str(path), head - 1, head) is not None  # the last row is canonical
    digests = _folds(ledger, monkeypatch, native=False)
    assert len(set(digests)) == 1, digests
    monkeypatch.setattr(store, "NATIVE_FOLD_ROWS", 0)
    projector = Projector()
    ledger.fold(projector)
    held = getattr(projector.state.contracts["C0"], listed)
    assert [(x.effective, x.position) for x in held] == sorted((x.effective, x.position) for x in held)
    assert len(held) == (4 if listed == "service_costs" else 3)
    assert projector.state.position == head
    ledger.dispose()


@needs_native
def test_the_reader_declines_a_range_its_snapshot_does_not_hold(blank_sqlite_ledger: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.db"
    shutil.copy(blank_sqlite_ledger, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(2, [(0, 0, 1, 100), (0, 1, 2, 200)]))
    head = ledger.head()[0]
    scan = store._contract_facts_sqlite.scan(str(path), 0, head)
    groups, last = store._contract_facts_sqlite.facts(scan, Fact, Renewal, Decimal)
    assert last == head and [(t, cid, len(items), ordered) for t, cid, items, ordered in groups] == [
        ("service.cost", "C0", 1, True),
        ("service.cost", "C1", 1, True),
    ]
    # rows up to head + 1 are not all visible to it (another connection's uncommitted append, say)
    assert store._contract_facts_sqlite.scan(str(path), 0, head + 1) is None
    ledger.dispose()


@needs_native
def test_a_writers_fold_reads_its_own_uncommitted_costs(
    blank_sqlite_ledger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a writer (a close that folds the whole ledger, a scorecard publication), the reader on its
    own connection does not see what the writer appended and not yet committed: it must decline, and the
    fold must still hold those costs."""
    path = tmp_path / "writer.db"
    shutil.copy(blank_sqlite_ledger, path)
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.writer() as w:
        w.append(_events(3, [(0, 0, 5, 100), (0, 1, 2, 200), (0, 2, 9, 300), (0, 0, 1, 400)]))
    monkeypatch.setattr(store, "NATIVE_FOLD_ROWS", 0)
    with ledger.writer() as w:
        clean = Projector()
        w.fold(clean)  # nothing appended yet: the reader reads every cost
        assert state_digest(clean.state) == state_digest(project(ledger.read()))
        w.append(_events(3, [(0, 2, 0, 500), (0, 1, 7, 600)])[4:])  # two more costs, uncommitted
        head = w.head()[0]
        assert store._contract_facts_sqlite.scan(str(path), 0, head) is None
        mine = Projector()
        w.fold(mine)
        assert mine.state.position == head
        assert state_digest(mine.state) == state_digest(project(w.read()))
        assert [f.value for f in mine.state.contracts["C2"].service_costs] == [Decimal("5.00"), Decimal("3.00")]
    ledger.dispose()


# --- the projection's bulk step ----------------------------------------------------------------------------


def _contract() -> Contract:
    return Contract("C", "A", "R", "EUR", START, Decimal(1), 12, None, 1)


FACTS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10**6)), max_size=12, unique_by=lambda t: t[1])


def _step(projector: Projector, type_: str, day: int, position: int) -> None:
    """One fact's step, as a fold in position order takes it (the handler of its type)."""
    values = SimpleNamespace(
        effective=START + timedelta(days=day), contract_id="C", amount=Decimal(position),
        acv_delta=Decimal(position), acv=Decimal(position), term_months=12,
    )  # fmt: skip
    projector.apply_values(position, type_, values)


def _built(type_: str, day: int, position: int) -> Any:
    """The same fact as the native reader builds it."""
    effective = START + timedelta(days=day)
    if type_ == "contract.renewed":
        return Renewal(effective, Decimal(position), 12, position)
    return Fact(effective, position, Decimal(position))


@pytest.mark.parametrize("type_", ["service.cost", "contract.expanded", "contract.renewed"])
@given(before=FACTS, batch=FACTS)
def test_lists_in_bulk_end_as_one_by_one_leaves_them(type_: str, before: list[Any], batch: list[Any]) -> None:
    """``Projector.contract_lists`` of a batch (in position order, as the reader gives it) = the batch's
    steps one by one, on a contract whose list already holds facts from before the batch."""
    listed = CONTRACT_LISTS[type_]
    one_by_one = Projector()
    one_by_one.state.contracts["C"] = _contract()
    for d, p in sorted(before, key=lambda t: t[1]):  # a fold steps in position order
        _step(one_by_one, type_, d, p)
    bulk = Projector()
    bulk.state.contracts["C"] = _contract()
    setattr(bulk.state.contracts["C"], listed, list(getattr(one_by_one.state.contracts["C"], listed)))
    bulk.state.position = one_by_one.state.position
    items = [_built(type_, d, 2 * 10**6 + i) for i, (d, _) in enumerate(batch)]
    for i, (d, _) in enumerate(batch):
        _step(one_by_one, type_, d, 2 * 10**6 + i)
    ordered = all(a.effective <= b.effective for a, b in itertools.pairwise(items))
    bulk.contract_lists([(type_, "C", items, ordered)], items[-1].position if items else 0)
    assert getattr(bulk.state.contracts["C"], listed) == getattr(one_by_one.state.contracts["C"], listed)
    assert bulk.state.position == one_by_one.state.position
