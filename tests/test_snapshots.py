"""Derived data kept for speed gives the same results as a replay from the events.

- the incremental close (``shell.obligations``: only what changed since the last close is evaluated)
  issues exactly what ``compute_cycle`` over the full replayed state issues, month after month, on random
  ledgers with late and future-dated facts, terminations, vetoes, scorecards and adjustments;
- the obligation projection is ignored and rebuilt from the events when it does not match the ledger
  (another cycle, a different hash at its position, other plans, rows removed);
- the in-process projection that ingest keeps up to date equals a fresh replay.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core.cycles import compute_cycle, cycle_json, evaluation_json
from incentive_engine.core.dates import periods_between
from incentive_engine.core.evaluation import evaluate_all, fact_scopes
from incentive_engine.core.events import (
    COST_STREAM,
    ENGINE_TYPES,
    EVENT_CLASSES,
    FACT_ADAPTER,
    FACT_TYPES,
    LEGACY_COST_STREAM,
    stream_of,
)
from incentive_engine.core.projections import project, state_digest
from incentive_engine.core.validation import check_batch, contracts_read_in_full, entities_read
from incentive_engine.errors import CycleError
from incentive_engine.shell import obligations, render, service, store
from incentive_engine.shell.store import Ledger

from .ledgers import WORKED, reference_book

START = date(2026, 1, 1)
REPS = ("R1", "R2", "R3", "R4")


def _day(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


@st.composite
def facts(draw) -> list[tuple[int, dict]]:
    """(month recorded, fact) pairs: contracts and everything that can happen to them, recorded on time,
    late (effective months or a year before) or ahead (effective after the month it is recorded in)."""
    out: list[tuple[int, dict]] = [
        (0, {"type": "rep.hired", "effective": "2025-06-01", "rep_id": r, "name": r, "role": "rep"}) for r in REPS
    ]

    def recorded(effective: int) -> int:
        day = START + timedelta(days=effective)
        month = (day.year - START.year) * 12 + day.month - 1
        return max(0, month + draw(st.sampled_from([0, 0, 0, 1, 2, 5, 13, 20, -1])))

    for i in range(draw(st.integers(2, 6))):
        cid = f"C{i}"
        signed = draw(st.integers(0, 700))
        out.append(
            (
                recorded(signed),
                {"type": "contract.signed", "effective": _day(signed), "contract_id": cid, "account_id": "A" + cid,
                 "rep_id": draw(st.sampled_from(REPS)), "acv": str(draw(st.integers(1000, 2_000_000))),
                 "currency": draw(st.sampled_from(["CNY", "JPY"])), "term_months": draw(st.sampled_from([12, 24]))},
            )
        )  # fmt: skip
        end = signed + draw(st.sampled_from([400, 800, 1600]))  # a churn (if any) comes last
        for year in range(1, 5):  # renewals on the anniversaries (some never come: a lapse)
            if signed + 365 * year < end and draw(st.integers(0, 3)) > 0:
                out.append(
                    (
                        recorded(signed + 365 * year),
                        {"type": "contract.renewed", "effective": _day(signed + 365 * year), "contract_id": cid,
                         "acv": str(draw(st.integers(1000, 3_000_000))), "term_months": 12},
                    )
                )  # fmt: skip
        for _ in range(draw(st.integers(0, 6))):
            when = draw(st.integers(signed + 1, end - 1))
            kind = draw(st.sampled_from(["expand", "cost", "cost", "reassign", "veto"]))
            fact = {"effective": _day(when), "contract_id": cid}
            if kind == "expand":
                fact |= {"type": "contract.expanded", "acv_delta": str(draw(st.integers(1, 500_000)))}
            elif kind == "cost":
                fact |= {"type": "service.cost", "amount": str(draw(st.integers(0, 900_000)))}
            elif kind == "reassign":
                fact |= {"type": "contract.reassigned", "rep_id": draw(st.sampled_from(REPS))}
            else:
                fact |= {"type": "compliance.violation", "rep_id": draw(st.sampled_from(REPS)), "severity": "veto",
                         "description": "finding"}  # fmt: skip
            out.append((recorded(when), fact))
        if draw(st.booleans()):
            out.append((recorded(end), {"type": "contract.churned", "effective": _day(end), "contract_id": cid}))
    for _ in range(draw(st.integers(0, 3))):
        when = draw(st.integers(0, 1500))
        rep = draw(st.sampled_from(REPS))
        kind = draw(st.sampled_from(["terminated", "veto", "adjustment"]))
        if kind == "terminated":
            fact = {"type": "rep.terminated", "rep_id": rep, "leaver": draw(st.sampled_from(["good", "bad"]))}
        elif kind == "veto":
            fact = {"type": "compliance.violation", "rep_id": rep, "severity": "veto", "description": "finding"}
        else:
            fact = {"type": "adjustment.recorded", "event_id": f"adj-{when}-{rep}", "rep_id": rep,
                    "amount": str(draw(st.integers(-5000, 5000)) or 1), "currency": "CNY", "reason": "fix",
                    "approved_by": "cfo"}  # fmt: skip
        out.append((recorded(when), {"effective": _day(when), **fact}))
    for year in (2026, 2027, 2028):
        for rep in REPS:
            for _ in range(draw(st.integers(0, 2))):  # sometimes republished (a correction)
                effective = draw(st.sampled_from([f"{year + 1}-01-01", f"{year + 1}-04-15", f"{year + 1}-09-30"]))
                out.append(
                    (
                        recorded((date.fromisoformat(effective) - START).days),
                        {"type": "scorecard.published", "effective": effective, "rep_id": rep, "year": year,
                         "composite": str(draw(st.integers(0, 150)))},
                    )
                )  # fmt: skip
    return out


PERIODS = periods_between("2026-01", "2031-06")


def _ingest(ledger: Ledger, batch: list[dict], legacy: bool = False) -> None:
    """Append the facts of the batch that are valid against the ledger so far (random facts may not be);
    ``legacy``: with service costs in their contract's stream, as ledgers written before they had their
    own (``COST_STREAM``) keep them."""
    with patch.object(store, "stream_of", _legacy_stream_of if legacy else stream_of):
        for fact in batch:
            event = FACT_ADAPTER.validate_python(fact)
            with ledger.writer() as w:
                if not check_batch(service.current_state(ledger, w), [event]):
                    w.append([event])


def _legacy_stream_of(event) -> str:
    return LEGACY_COST_STREAM + event.contract_id if event.type == "service.cost" else stream_of(event)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts(), st.integers(1, 4), st.sampled_from([0, 0, 7, 30, 99]))
def test_incremental_close_equals_the_full_close(tmp_path_factory, recorded_facts, step, legacy_months):
    """Every ``step`` months: ingest what was recorded by then, preview, close; the incremental preview and
    close must issue what compute_cycle over a full replay issues (lines, totals and every listed
    evaluation). For the
    first ``legacy_months``, service costs go to their contract's stream (a ledger written before they had
    their own, then continued)."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('inc') / 'l.db'}")
    ledger.init()
    book = reference_book()
    service.forget_projections()
    periods = PERIODS[step - 1 :: step]
    for i, period in enumerate(periods):
        month = PERIODS.index(period)
        last = PERIODS.index(periods[i - 1]) if i else -1
        _ingest(ledger, [f for m, f in recorded_facts if last < m <= month], legacy=month < legacy_months)
        state = project(ledger.read())
        assert cycle_json(service.preview(ledger, book, period)) == cycle_json(
            compute_cycle(book, state, period, "preview")
        ), period
        full = cycle_json(compute_cycle(book, state, period, "closed"))
        assert cycle_json(service.close(ledger, book, period)) == full, period
        # shown (and closed again) from the derived listing the close wrote
        assert cycle_json(service.show_cycle(ledger, period)) == full, period
        assert cycle_json(service.close(ledger, book, period)) == {**full, "status": "already_closed"}, period
    ledger.dispose()


# facts a file may hold that the reference rules refuse against the ledger (unknown or already known
# entities, facts before a signing or a hire, after a churn or a termination, a manager hired nowhere), or
# accept only by looking up an entity the fact names in another field (a manager)
WRONG = [
    {"type": "contract.renewed", "effective": "2027-06-01", "contract_id": "C9", "acv": "100", "term_months": 12},
    {"type": "service.cost", "effective": "2026-01-01", "contract_id": "C0", "amount": "1"},
    {"type": "service.cost", "effective": "2031-01-01", "contract_id": "C1", "amount": "1.005"},
    {"type": "contract.signed", "effective": "2026-03-01", "contract_id": "C0", "account_id": "A", "rep_id": "R1",
     "acv": "100", "currency": "CNY", "term_months": 12},
    {"type": "contract.signed", "effective": "2026-03-01", "contract_id": "C8", "account_id": "A", "rep_id": "R7",
     "acv": "100", "currency": "CNY", "term_months": 12},
    {"type": "contract.expanded", "effective": "2030-01-01", "contract_id": "C1", "acv_delta": "-5000000"},
    {"type": "contract.reassigned", "effective": "2030-06-01", "contract_id": "C2", "rep_id": "R2"},
    {"type": "rep.hired", "effective": "2026-01-01", "rep_id": "R3", "name": "again", "role": "rep"},
    {"type": "rep.hired", "effective": "2026-01-01", "rep_id": "R5", "name": "new", "role": "rep", "manager_id": "R6"},
    {"type": "rep.hired", "effective": "2026-02-01", "rep_id": "R6", "name": "new", "role": "rep", "manager_id": "M1"},
    {"type": "rep.terminated", "effective": "2025-01-01", "rep_id": "R4", "leaver": "good"},
    {"type": "rep.terminated", "effective": "2029-01-01", "rep_id": "R9", "leaver": "good"},
    {"type": "kpi.measured", "effective": "2027-01-01", "rep_id": "R8", "year": 2026, "kpi": "csat", "value": "4"},
    {"type": "compliance.violation", "effective": "2027-01-01", "rep_id": "R1", "contract_id": "C7",
     "severity": "veto", "description": "x"},
    {"type": "adjustment.recorded", "effective": "2027-01-01", "event_id": "adj-x", "rep_id": "R2", "amount": "1",
     "currency": "JPY", "reason": "r", "approved_by": "cfo", "contract_id": "C1"},
]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts(), st.integers(0, 40), st.lists(st.sampled_from(WRONG), max_size=6), st.randoms(use_true_random=False))
def test_a_file_checked_against_its_entities_alone_gets_the_whole_ledgers_answer(
    tmp_path_factory, recorded_facts, month, wrong, rng
):
    """An ingest in a process without the ledger's projection checks the file against the contracts and
    reps it names, read from their streams (``store.entities_state``): the reference rules must find
    exactly what they find against a replay of the whole ledger, on files of valid, late, repeated and
    invalid facts mixed."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('ent') / 'l.db'}")
    ledger.init()
    service.forget_projections()
    manager = {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "M1", "name": "M", "role": "manager"}
    _ingest(ledger, [manager] + [f for m, f in recorded_facts if m <= month], legacy=month % 2 == 1)
    later = [f for m, f in recorded_facts if m > month] + [f for m, f in recorded_facts if m <= month][:3] + wrong
    rng.shuffle(later)
    batch = [FACT_ADAPTER.validate_python(f) for f in later]
    with ledger.writer() as w:
        partial = store.entities_state(w.conn, *entities_read(batch), in_full=contracts_read_in_full(batch))
        assert partial.position == w.head()[0]
        assert check_batch(partial, batch) == check_batch(project(w.read()), batch)
    ledger.dispose()


def test_only_an_expanded_contract_is_read_in_full(tmp_path):
    """``entities_state`` reads a contract's whole history only where the file expands it: an expansion's
    check needs the renewals and expansions before it (here the ACV is 15,000 only through them: against
    the signing alone, -9,000 would take it below zero), a service cost only the signing and the churn."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.init()
    signed = {"type": "contract.signed", "account_id": "A", "rep_id": "R1", "currency": "EUR", "term_months": 12}
    _ingest(ledger, [
        {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "R1", "name": "R", "role": "rep"},
        {**signed, "effective": "2026-01-01", "contract_id": "C1", "acv": "100"},
        {"type": "contract.renewed", "effective": "2027-01-01", "contract_id": "C1", "acv": "10000", "term_months": 12},
        {"type": "contract.expanded", "effective": "2027-06-01", "contract_id": "C1", "acv_delta": "5000"},
        {**signed, "effective": "2026-01-01", "contract_id": "C2", "acv": "100"},
        {"type": "contract.churned", "effective": "2026-06-01", "contract_id": "C2", "reason": "x"},
    ])  # fmt: skip
    batch = [
        FACT_ADAPTER.validate_python(f)
        for f in [
            {"type": "contract.expanded", "effective": "2027-07-01", "contract_id": "C1", "acv_delta": "-9000"},
            {"type": "service.cost", "effective": "2026-07-01", "contract_id": "C2", "amount": "1"},
            {"type": "service.cost", "effective": "2026-05-01", "contract_id": "C2", "amount": "1"},
        ]
    ]
    with ledger.writer() as w:
        whole = check_batch(project(w.read()), batch)
        partial = store.entities_state(w.conn, *entities_read(batch), in_full=contracts_read_in_full(batch))
        assert [(r.index, r.field) for r in whole] == [(1, "contract_id")]  # the cost after the churn
        assert check_batch(partial, batch) == whole
        assert len(partial.contracts["C1"].renewals) == 1 and not partial.contracts["C2"].renewals
    ledger.dispose()


@pytest.fixture
def worked(db_kind, fresh_db_urls):
    """The worked example's facts in a fresh ledger (SQLite and PostgreSQL)."""
    ledger = Ledger(fresh_db_urls(db_kind))
    ledger.init()
    service.forget_projections()
    (result,) = service.ingest_files(ledger, [WORKED / "01-facts.jsonl"])
    assert not result.problems
    yield ledger
    ledger.dispose()


def _close_all(ledger: Ledger, periods: list[str], book=None) -> dict[str, dict]:
    book = book or reference_book()
    return {p: cycle_json(service.close(ledger, book, p)) for p in periods}


def _replayed(ledger: Ledger, periods: list[str], book=None) -> dict[str, dict]:
    """What each closed period must have issued: compute_cycle over a replay of the prefix it saw."""
    book = book or reference_book()
    cycles = project(ledger.read()).cycles
    return {
        p: cycle_json(compute_cycle(book, project(ledger.read(upto=cycles[p].ledger_position)), p, "closed"))
        for p in periods
    }


def test_the_incremental_path_is_taken(worked, monkeypatch):
    """After the first close, a close must not evaluate the whole state (else this module tests little)."""
    _close_all(worked, ["2026-01"])

    def no_full(*args, **kwargs):
        raise AssertionError("the full path was taken")

    monkeypatch.setattr(obligations, "full", no_full)
    got = _close_all(worked, periods_between("2026-02", "2027-06"))
    assert got == _replayed(worked, list(got))


def test_a_preview_takes_the_incremental_path_and_records_nothing(worked, monkeypatch):
    """After a close, a preview evaluates what changed, as the close does, without replaying the ledger
    (in a read-only snapshot), and writes nothing: not the cycle, not the projection."""
    _close_all(worked, periods_between("2026-01", "2026-12"))
    expected = cycle_json(compute_cycle(reference_book(), project(worked.read()), "2027-01", "preview"))
    head = worked.head()
    with worked.engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT * FROM obligation_state ORDER BY obligation_id").all()

    def no_replay(*args, **kwargs):
        raise AssertionError("the preview replayed the ledger")

    service.forget_projections()
    monkeypatch.setattr(service, "load_state", no_replay)
    monkeypatch.setattr(service, "current_state", no_replay)
    preview = service.preview(worked, reference_book(), "2027-01")
    assert preview.evaluations and len(preview.evaluations) > len(preview.lines)
    assert cycle_json(preview) == expected
    assert worked.head() == head
    with worked.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM obligation_state ORDER BY obligation_id").all() == before


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE projection_meta SET cycle_hash = 'x'",
        "UPDATE projection_meta SET cycle_position = cycle_position - 1",
        "UPDATE projection_meta SET book = '[]'",
        "UPDATE projection_meta SET format = 0",
        "DELETE FROM projection_meta",
        "DELETE FROM obligation_state WHERE obligation_id IN (SELECT MIN(obligation_id) FROM obligation_state)",
        "DELETE FROM obligation_state",
    ],
)
def test_a_projection_that_does_not_match_the_ledger_is_rebuilt_from_the_events(worked, tamper, monkeypatch):
    periods = periods_between("2026-01", "2028-06")
    _close_all(worked, periods[:10])
    with worked.engine.begin() as conn:
        conn.exec_driver_sql(tamper)
    rebuilt = []
    real_full = obligations.full
    monkeypatch.setattr(obligations, "full", lambda *a: rebuilt.append(a[2]) or real_full(*a))
    got = _close_all(worked, periods[10:])
    assert rebuilt == [periods[10]]  # rebuilt once, then incremental again
    assert got == _replayed(worked, periods[10:])


def test_a_damaged_projection_cannot_hide_from_audit_reproduce(worked):
    """The projection is a cache: reproduce never reads it, so a paid amount altered in it (which the
    meta row cannot notice) shows up as a difference."""
    from incentive_engine.shell import audit

    _close_all(worked, periods_between("2026-01", "2026-12"))
    with worked.engine.begin() as conn:
        # a paid up-front "unpaid" again (and marked held, so that the next close looks at it)
        conn.exec_driver_sql(
            "UPDATE obligation_state SET paid = '0.00', lines = 0, status = 'held' WHERE obligation_id = 'C1/upfront'"
        )
    _close_all(worked, ["2027-01"])
    state = service.load_state(worked)
    assert not audit.reproduce(worked, state, "2027-01").identical


def test_other_plans_take_the_full_path_and_agree(worked):
    _close_all(worked, periods_between("2026-01", "2026-06"))
    other = reference_book(**{"renewal_rate: 0.03": "renewal_rate: 0.04", "cap: 1.5": "cap: 1.4"})
    got = _close_all(worked, periods_between("2026-07", "2027-03"), other)
    assert got == _replayed(worked, list(got), other)


def test_every_event_type_declares_what_it_can_change():
    samples = {
        t: cls.model_construct(
            type=t, effective=date(2027, 1, 1), contract_id="C", rep_id="R", year=2026, severity="veto", leaver="bad"
        )
        for t, cls in EVENT_CLASSES.items()
    }
    assert set(samples) == set(FACT_TYPES) | set(ENGINE_TYPES)
    for event in samples.values():
        fact_scopes(event)  # raises for an undeclared type


def test_stored_evaluations_round_trip_exactly():
    from .ledgers import Sim

    sim = Sim()
    sim.ingest((WORKED / "01-facts.jsonl").read_text())
    evaluations = evaluate_all(sim.book, sim.state, date(2031, 12, 31))
    assert evaluations
    for ev in evaluations:
        assert obligations.evaluation_from_json(obligations.evaluation_to_json(ev)) == ev
    # and the CLI's JSON renders a stored one from its text exactly as from the evaluation
    statuses = set()
    for ev in evaluations:
        for paid in ("0.00", "0", "-12.5", "20625.00"):
            expected = evaluation_json(ev, Decimal(paid))
            assert obligations.stored_evaluation_json(obligations.evaluation_to_json(ev), paid) == expected
            assert list(obligations.stored_evaluation_json(obligations.evaluation_to_json(ev), paid)) == list(expected)
        statuses.add((ev.status, bool(ev.factors)))
    assert {("forfeited", False), ("earned", True)} <= statuses  # both shapes of "factors" were compared


def test_the_in_process_projection_equals_a_fresh_replay(worked, tmp_path):
    _close_all(worked, periods_between("2026-01", "2026-09"))
    service.current_state(worked)  # a process that holds the projection: the ingest below advances it
    late = tmp_path / "late.jsonl"
    late.write_text((WORKED / "02-late-renewal.jsonl").read_text())
    (result,) = service.ingest_files(worked, [Path(late)])
    assert not result.problems
    _close_all(worked, ["2026-10"])
    assert state_digest(service.current_state(worked)) == state_digest(project(worked.read()))


BASE = """
{"type":"rep.hired","effective":"2025-01-01","rep_id":"R1","name":"A","role":"rep"}
{"type":"rep.hired","effective":"2025-01-01","rep_id":"R2","name":"B","role":"rep"}
{"type":"rep.hired","effective":"2025-01-01","rep_id":"R3","name":"C","role":"rep"}
{"type":"contract.signed","effective":"2026-01-15","contract_id":"C1","account_id":"A1","rep_id":"R1","acv":"1200000.00","currency":"CNY","term_months":12}
{"type":"contract.signed","effective":"2026-02-10","contract_id":"C2","account_id":"A2","rep_id":"R3","acv":"800000.00","currency":"CNY","term_months":24}
{"type":"contract.reassigned","effective":"2026-06-01","contract_id":"C1","rep_id":"R2"}
{"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"1300000.00","term_months":12}
{"type":"scorecard.published","effective":"2027-01-01","rep_id":"R1","year":2026,"composite":"110"}
"""

# one fact recorded in 2027-07, effective months before: each reaches obligations a cycle already settled
LATE = {
    "owner terminated before the renewal": '{"type":"rep.terminated","effective":"2027-01-10","rep_id":"R2","leaver":"good"}',
    "seller a bad leaver before vesting": '{"type":"rep.terminated","effective":"2027-01-10","rep_id":"R1","leaver":"bad"}',
    "upsell before vesting": '{"type":"contract.expanded","effective":"2026-12-01","contract_id":"C1","acv_delta":"500000.00"}',
    "costs in the vesting year": '{"type":"service.cost","effective":"2026-10-01","contract_id":"C1","amount":"400000.00"}',
    "reassigned before the renewal": '{"type":"contract.reassigned","effective":"2027-01-01","contract_id":"C1","rep_id":"R3"}',
    "rep veto before vesting": '{"type":"compliance.violation","effective":"2026-09-01","rep_id":"R1","severity":"veto","description":"x"}',
    "contract veto": '{"type":"compliance.violation","effective":"2026-03-01","rep_id":"R3","contract_id":"C2","severity":"veto","description":"x"}',
    "warning only": '{"type":"compliance.violation","effective":"2026-03-01","rep_id":"R3","contract_id":"C2","severity":"warning","description":"x"}',
    "scorecard republished": '{"type":"scorecard.published","effective":"2027-03-01","rep_id":"R1","year":2026,"composite":"40"}',
    "scorecard of the other seller": '{"type":"scorecard.published","effective":"2027-03-01","rep_id":"R3","year":2026,"composite":"140"}',
    "second renewal on the same date": '{"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"900000.00","term_months":24}',
    "early churn": '{"type":"contract.churned","effective":"2026-05-01","contract_id":"C2"}',
    "a manual adjustment": '{"type":"adjustment.recorded","effective":"2026-12-31","event_id":"a1","rep_id":"R3","amount":"-100.00","currency":"CNY","reason":"r","approved_by":"cfo"}',
}


@pytest.mark.parametrize("late", list(LATE.values()), ids=list(LATE))
def test_a_late_fact_reaches_what_it_changes(tmp_path, late):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.init()
    service.forget_projections()
    _ingest(ledger, [json.loads(x) for x in BASE.strip().splitlines()])
    _close_all(ledger, periods_between("2026-01", "2027-06"))
    before = ledger.head()[0]
    _ingest(ledger, [json.loads(late)])
    assert ledger.head()[0] == before + 1  # the late fact is valid
    got = _close_all(ledger, periods_between("2027-07", "2028-03"))
    assert got == _replayed(ledger, list(got))
    ledger.dispose()


def test_the_fast_fold_gives_the_state_of_the_validated_replay(ledger):
    """Ledger.fold (typed field values straight into the handlers) = project(read()) (validated events)."""
    from incentive_engine.core.projections import Projector

    from .test_store import varied_events

    with ledger.writer() as w:
        w.append(varied_events())
    projector = Projector()
    ledger.fold(projector)
    assert state_digest(projector.state) == state_digest(project(ledger.read()))
    assert projector.state.position == ledger.head()[0]


def test_the_fast_fold_reads_the_engines_own_events_in_place(worked):
    """The fold reads five columns and looks up the stream, version and recording time of the engine's
    own events (registered plans, closed cycles) by position, on a connection whose read is still open
    (a server-side cursor on PostgreSQL): same state as the validated replay, from the start and from a
    position in the middle."""
    from incentive_engine.core.projections import Projector

    _close_all(worked, periods_between("2026-01", "2026-06"))
    middle = worked.head()[0]
    _close_all(worked, periods_between("2026-07", "2026-09"))
    full = Projector()
    worked.fold(full)
    assert state_digest(full.state) == state_digest(project(worked.read()))
    assert {c.recorded_at for c in full.state.cycles.values()} == {
        c.recorded_at for c in project(worked.read()).cycles.values()
    }
    split = Projector()
    worked.fold(split, upto=middle)
    worked.fold(split, after=middle)
    assert state_digest(split.state) == state_digest(full.state)
    assert len(full.state.cycles) == 9 and full.state.plans


def test_service_costs_read_as_columns_give_the_state_of_the_whole_rows(worked):
    """The close reads service costs as four columns (``fold_service_costs``); folded with the other rows,
    they must give each contract exactly the state the fold of whole rows gives (SQLite and PostgreSQL)."""
    from incentive_engine.core.projections import Projector
    from incentive_engine.shell.store import fold_service_costs, fold_sorted, rows_where, stream_rows

    with worked.writer() as w:
        w.append([FACT_ADAPTER.validate_python(e) for e in _more_costs()])
    with worked.engine.connect() as conn:
        streams = sorted({r[1] for r in rows_where(conn, "type = 'contract.signed'", ())})
        cost_streams = [COST_STREAM + s.removeprefix("contract:") for s in streams]
        whole, columns = Projector(), Projector()
        fold_sorted(stream_rows(conn, streams + cost_streams), whole)
        fold_sorted(stream_rows(conn, streams, "type <> 'service.cost'"), columns)
        fold_service_costs(conn, [s.removeprefix("contract:") for s in streams], "2026-04-01", columns)
    costs = {cid: c.service_costs for cid, c in whole.state.contracts.items()}
    assert sum(len(v) for v in costs.values()) >= 4
    from_april = {cid: [f for f in v if f.effective.isoformat() >= "2026-04-01"] for cid, v in costs.items()}
    assert {cid: c.service_costs for cid, c in columns.state.contracts.items()} == from_april
    assert from_april != costs  # the cutoff left some out
    assert all(
        str(a.value) == str(b.value)
        for cid, v in from_april.items()
        for a, b in zip(v, columns.state.contracts[cid].service_costs, strict=True)
    )


def _more_costs() -> list[dict]:
    """More service costs: zero, large, a trailing zero (kept as written), two on one day."""
    return [
        {"type": "service.cost", "effective": "2026-03-15", "contract_id": "C1", "amount": "0"},
        {"type": "service.cost", "effective": "2026-05-02", "contract_id": "C1", "amount": "123456789012.34"},
        {"type": "service.cost", "effective": "2026-05-02", "contract_id": "C2", "amount": "0.10"},
    ]


def test_showing_a_closed_cycle_by_the_trusted_fold_equals_the_validated_reproduction(worked):
    """`cycle show` and a repeated close recompute evaluations by the trusted fold; `audit reproduce`
    re-validates every row. Over the worked ledger they give the same evaluations for every month."""
    periods = periods_between("2026-01", "2027-12")
    _close_all(worked, periods)
    state = service.load_state(worked)
    for p in periods:
        shown = service.stored_cycle(worked, state, p)
        validated = service.reproduce_cycle(worked, state, p)
        assert shown.evaluations == validated.evaluations, p
        assert cycle_json(service.close(worked, reference_book(), p))["status"] == "already_closed"
    assert any(len(service.stored_cycle(worked, state, p).evaluations) for p in periods)


def _no_replay(*args, **kwargs):
    raise AssertionError("the ledger was replayed")


def test_the_last_closed_cycle_is_shown_from_the_listing_its_close_stored(worked, monkeypatch):
    """`cycle show` of the last closed cycle, and a close run again on it, read the evaluations that close
    listed (``cycle_listing``) and the projection's stored forfeitures: no replay, no evaluation, and
    what a recomputation from the ledger prefix gives. An earlier cycle is recomputed."""
    periods = periods_between("2026-01", "2028-06")
    expected = {}
    for p in periods:
        expected[p] = _close_all(worked, [p])[p]
        with monkeypatch.context() as m:
            m.setattr(service, "load_state", _no_replay)
            m.setattr(service, "current_state", _no_replay)
            m.setattr(obligations, "evaluate_all", _no_replay)
            shown = service.show_cycle(worked, p)
            assert isinstance(shown.evaluations, obligations.Listing)
            assert cycle_json(shown) == expected[p], p
            assert render.cycle_json_text(shown) == json.dumps(expected[p], indent=2, ensure_ascii=False), p
            again = service.close(worked, reference_book(), p)
            assert cycle_json(again) == {**expected[p], "status": "already_closed"}, p
    assert expected == _replayed(worked, periods)
    assert sum(len(c["evaluations"]) for c in expected.values()) > sum(len(c["lines"]) for c in expected.values())
    recomputed = []
    real = service.stored_cycle
    monkeypatch.setattr(service, "stored_cycle", lambda *a, **k: recomputed.append(a[2]) or real(*a, **k))
    assert cycle_json(service.show_cycle(worked, periods[-2])) == expected[periods[-2]]
    assert recomputed == [periods[-2]]
    with pytest.raises(CycleError, match="2031-01 is not closed"):
        service.show_cycle(worked, "2031-01")


def test_a_show_whose_snapshot_began_before_a_close_gets_its_cycle_or_recomputes_it(worked):
    """A show reads the listing in a snapshot; a close that commits meanwhile replaces the rows. SQLite's
    snapshot still sees the old rows, which are that cycle's; PostgreSQL's TRUNCATE is not MVCC-safe, so
    the old snapshot finds the table empty, and the row count check must refuse it (the caller then
    recomputes the cycle)."""
    closed: dict[str, dict] = {}
    for p in periods_between("2026-01", "2028-12"):  # up to a month that paid earned lines
        closed |= _close_all(worked, [p])
        if any(e["status"] == "earned" for e in closed[p]["evaluations"]):
            break
    assert any(e["status"] == "earned" for e in closed[p]["evaluations"])
    following = periods_between(p, "2029-12")[1]
    with worked.snapshot() as conn:
        cycle = service.closed_cycle(conn, p)  # the snapshot begins with this read
        assert cycle is not None
        _close_all(worked, [following])  # another connection: commits while the snapshot is open
        shown = obligations.stored_listing(conn, cycle, "closed")
        if worked.dialect == "postgresql":
            assert shown is None
        else:
            assert shown is not None and cycle_json(shown) == closed[p]
    assert cycle_json(service.show_cycle(worked, p)) == closed[p]  # recomputed


@pytest.mark.parametrize(
    "tamper",
    [
        "DELETE FROM cycle_listing WHERE seq = 0",
        "DELETE FROM cycle_listing",
        "UPDATE projection_meta SET cycle_hash = 'x' WHERE name = 'cycle_listing'",
        "UPDATE projection_meta SET format = 0 WHERE name = 'cycle_listing'",
        "DELETE FROM projection_meta WHERE name = 'cycle_listing'",
        "UPDATE projection_meta SET cycle_position = 1 WHERE name = 'obligations'",
        "DELETE FROM obligation_state WHERE obligation_id IN (SELECT MIN(obligation_id) FROM obligation_state)",
    ],
)
def test_a_listing_that_does_not_match_its_cycle_is_recomputed(worked, tamper, monkeypatch):
    """Rows or meta rows that do not belong to the cycle (removed, altered, or never written: a ledger
    upgraded to migration 0006) are not shown: the cycle is recomputed from the ledger prefix."""
    periods = periods_between("2026-01", "2027-03")
    closed = _close_all(worked, periods)
    with worked.engine.begin() as conn:
        conn.exec_driver_sql(tamper)
    recomputed = []
    real = service.stored_cycle
    monkeypatch.setattr(service, "stored_cycle", lambda *a, **k: recomputed.append(a[2]) or real(*a, **k))
    assert cycle_json(service.show_cycle(worked, periods[-1])) == closed[periods[-1]]
    assert recomputed == [periods[-1]]


def test_listing_merges_stored_forfeitures_in_order_and_decodes_them_only_when_read(monkeypatch):

    from .ledgers import Sim

    sim = Sim()
    sim.ingest((WORKED / "01-facts.jsonl").read_text())
    pairs = [(ev, Decimal("0.00")) for ev in evaluate_all(sim.book, sim.state, date(2031, 12, 31))]
    assert len(pairs) > 6
    kept, stored = pairs[::3], pairs[1::3] + pairs[2::3]  # every third evaluated, the rest as stored text
    rows = [
        (e.obligation.rep_id, e.obligation.contract_id or "", e.obligation.obligation_id,
         obligations.evaluation_to_json(e), str(p))
        for e, p in reversed(stored)
    ]  # fmt: skip
    decoded = []
    real = obligations.evaluation_from_json
    monkeypatch.setattr(obligations, "evaluation_from_json", lambda t: decoded.append(t) or real(t))
    listing = obligations.Listing(len(pairs), lambda: obligations.merged(tuple(kept), rows))
    assert len(listing) == len(pairs) and decoded == []  # nothing decoded by the merge
    assert listing == tuple(pairs) and list(listing) == pairs  # the evaluation order, each pair intact
    assert listing[1] == pairs[1] and listing[-2:] == tuple(pairs[-2:])
    assert listing != tuple(pairs[:-1]) and listing != tuple(reversed(pairs))
    assert obligations.Listing(len(kept), lambda: obligations.merged(tuple(kept), [])) == tuple(kept)


def test_a_close_counts_the_unchanged_forfeitures_and_reads_them_only_when_its_listing_is_read(worked, monkeypatch):
    """The forfeitures ever made are listed by every later cycle; the close itself must not read them (its
    cost would grow with the ledger's age), yet the listing, read afterwards, holds each of them."""
    periods = periods_between("2026-01", "2028-06")
    _close_all(worked, periods[:-1])
    reads = []
    real = obligations.stored_forfeitures
    monkeypatch.setattr(obligations, "stored_forfeitures", lambda *a: reads.append(a[1]) or real(*a))
    result = service.close(worked, reference_book(), periods[-1])
    assert reads == [] and isinstance(result.evaluations, obligations.Listing)
    forfeited = sum(1 for ev, _ in result.evaluations if ev.status == "forfeited")
    assert len(reads) == 1 and forfeited > 1
    expected = _replayed(worked, periods[-1:])[periods[-1]]
    assert cycle_json(result) == expected
    # the CLI's JSON text: the evaluated ones and the stored rows, each as json.dumps writes them
    assert render.cycle_json_text(result) == json.dumps(expected, indent=2, ensure_ascii=False)


def test_a_listing_read_after_a_later_close_is_recomputed_from_the_ledger(worked, monkeypatch):
    """A close's listing is read from the projection, which the next close moves on: read after it, the
    listing is recomputed from the ledger prefix the cycle saw, and still lists what it must."""
    periods = periods_between("2026-01", "2028-08")
    _close_all(worked, periods[:-2])
    early = service.close(worked, reference_book(), periods[-2])
    assert isinstance(early.evaluations, obligations.Listing)
    _close_all(worked, periods[-1:])
    recomputed = []
    real = service.stored_cycle
    monkeypatch.setattr(service, "stored_cycle", lambda *a, **k: recomputed.append(a[2]) or real(*a, **k))
    assert cycle_json(early) == _replayed(worked, periods[-2:-1])[periods[-2]]
    assert recomputed == [periods[-2]]


_COST_TEXT = st.text(alphabet=st.sampled_from('ab"\\\n\u2028\u00e9\U0001f600,:{}'), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["C1", "C2"]) | _COST_TEXT,
            st.decimals(min_value=0, max_value=10**9, places=2) | st.sampled_from(["0", "1e3", "7.000"]) | _COST_TEXT,
            st.integers(1, 28),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_service_cost_row_folds_as_its_decoded_payload(costs):
    """The fold reads a service cost's payload without the JSON decoder when it can; whatever the text
    of its two values (quotes, backslashes, separators, non-ASCII), the state must be the decoded one's."""
    from incentive_engine.core.canonical import canonical_json
    from incentive_engine.core.projections import Contract, Fact, Projector
    from incentive_engine.shell.store import fold_rows

    rows, expected = [], {}
    for position, (cid, amount, day) in enumerate(costs, 1):
        effective = f"2026-03-{day:02d}"
        payload = canonical_json({"amount": str(amount), "contract_id": cid})
        rows.append((position, None, None, "service.cost", effective, None, None, payload))
        decoded = json.loads(payload)
        value = Decimal(decoded["amount"]) if _is_decimal(decoded["amount"]) else None
        expected.setdefault(decoded["contract_id"], []).append((date.fromisoformat(effective), position, value))
    if any(v is None for facts in expected.values() for *_, v in facts):
        return  # not a number: the fold would raise, as validation would have refused it
    projector = Projector()
    projector.state.contracts = {
        cid: Contract(cid, "A", "R", "CNY", date(2026, 1, 1), Decimal(1), 12, None, 0) for cid in expected
    }
    fold_rows(rows, projector)
    got = {cid: [(f[0], f[1], str(f[2])) for f in c.service_costs] for cid, c in projector.state.contracts.items()}
    assert got == {cid: [(d, p, str(v)) for d, p, v in sorted(facts)] for cid, facts in expected.items()}
    assert all(type(f) is Fact for c in projector.state.contracts.values() for f in c.service_costs)


def _is_decimal(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except ArithmeticError:
        return False


_JSON_TEXT = st.lists(
    st.sampled_from(["a", '"', "\\", "\n", "\u2028", "\U0001f600", "]", "}", "[", "{", ",", ":",
                     '],"period":', '},"totals":[', '"lines":[', "period", "totals"]),
    max_size=5,
).map("".join)  # fmt: skip
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_TEXT, inner, max_size=3),
    max_leaves=6,
)
_ISSUED = st.lists(st.dictionaries(st.sampled_from(["period", "totals", "lines", "rep_id", "x"]) | _JSON_TEXT,
                                   _JSON_VALUE, max_size=4), max_size=4)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lines=_ISSUED, totals=_ISSUED, plans=st.dictionaries(_JSON_TEXT, _JSON_TEXT, max_size=3), period=_JSON_TEXT)
def test_a_closed_cycle_row_folds_as_its_decoded_payload(lines, totals, plans, period):
    """The fold keeps a cycle's lines and totals as the text they are in its payload (found from the end
    of the text, not decoded); whatever the text holds (the separators it looks for, quotes, escapes,
    non-ASCII), the cycle must equal the one of the decoded payload, and read back the same lines."""
    from incentive_engine.core.canonical import canonical_json
    from incentive_engine.core.projections import Projector
    from incentive_engine.shell.store import _closed_cycle, fold_rows

    payload = canonical_json(
        {"as_of": "2026-03-31", "ledger_position": 7, "lines": lines, "period": period, "plans": plans,
         "totals": totals}
    )  # fmt: skip
    row = (9, f"cycle:{period}", 1, "cycle.closed", "2026-03-31", None, "2026-04-01T00:00:00Z", payload)
    fast, decoded = Projector(), Projector()
    fold_rows([row], fast)
    decoded.apply(_recorded(row))
    (got,) = fast.state.cycles.values()
    assert got == decoded.state.cycles[period]
    assert got.lines == tuple(lines) and got.totals == tuple(totals) and got.plans == plans
    assert fast.state.position == 9
    lazy = _closed_cycle(9, row[6], row[1], payload)
    assert lazy is not None and isinstance(lazy.lines_held, str)  # the engine's layout: kept as text
    assert _closed_cycle(9, row[6], row[1], payload[:-1] + " }") is None  # anything else: decoded whole


def test_a_cycle_row_laid_out_otherwise_is_decoded_whole():
    from incentive_engine.shell.store import _closed_cycle

    odd = json.dumps({"period": "2026-03", "as_of": "2026-03-31", "ledger_position": 7, "lines": [], "plans": {},
                      "totals": []})  # fmt: skip
    assert _closed_cycle(9, "t", "cycle:2026-03", odd) is None
    good = '{"as_of":"2026-03-31","ledger_position":7,"lines":[],"period":"2026-03","plans":{},"totals":[]}'
    assert _closed_cycle(9, "t", "cycle:2026-03", good) is not None
    assert _closed_cycle(9, "t", "cycle:2026-04", good) is None  # not its stream


def _recorded(row):
    from incentive_engine.core.projections import Recorded
    from incentive_engine.shell.store import _rebuild_trusted

    position, stream_id, version, type_, effective, event_id, recorded_at, payload = row
    return Recorded(position, recorded_at, stream_id, version, _rebuild_trusted(type_, effective, event_id, payload))


def test_obligations_of_a_seller_are_found_whether_or_not_the_seller_is_their_payee(ledger):
    """ "Obligations of contracts R sold" is two lookups (migration 0005): by payee where the seller is the
    payee, by the partial seller index where it is not (a reassigned contract's renewals). Both kinds must
    be found, by the planner's indexes, and nothing else."""
    from sqlalchemy import text

    from incentive_engine.shell.tables import OBLIGATION_TABLE

    rows = [  # obligation, contract, kind, seller, payee, due
        ("C1/upfront", "C1", "upfront", "R1", "R1", "2027-01-10"),
        ("C1/tranche/1", "C1", "tranche", "R1", "R1", "2028-01-10"),
        ("C1/renewal/2028-01-10", "C1", "renewal", "R1", "R2", "2028-01-10"),  # owner on the date: R2
        ("C2/renewal/2028-02-01", "C2", "renewal", "R2", "R1", "2028-02-01"),  # R1 is payee, not seller
        ("C3/tranche/1", "C3", "tranche", "R3", "R3", "2028-01-10"),
        ("ADJ/x", "C1", "manual", "R1", "R1", "2028-03-01"),  # manual: never looked up
    ]
    with ledger.writer() as w:
        for oid, cid, kind, seller, payee, due in rows:
            w.conn.execute(
                text(
                    f"INSERT INTO {OBLIGATION_TABLE} (obligation_id, contract_id, kind, seller, payee, due, status, "
                    "paid, lines, evaluation) VALUES (:o, :c, :k, :s, :p, :d, 'earned', '0', 0, NULL)"
                ),
                {"o": oid, "c": cid, "k": kind, "s": seller, "p": payee, "d": due},
            )
    with ledger.engine.connect() as conn:
        found = lambda *lookups: sorted(r[0] for r in obligations._lookup(conn, list(lookups)))  # noqa: E731
        assert found(("seller", "R1", "2027-01-01")) == ["C1/renewal/2028-01-10", "C1/tranche/1", "C1/upfront"]
        assert found(("seller", "R1", "2028-01-11")) == []
        assert found(("payee", "R1", "2027-01-01")) == ["C1/tranche/1", "C1/upfront", "C2/renewal/2028-02-01"]
        assert found(("seller_tranche", "R1", "2028")) == ["C1/tranche/1"]
        assert found(("seller", "R2", "2027-01-01"), ("seller", "R3", "2027-01-01")) == [
            "C2/renewal/2028-02-01", "C3/tranche/1",
        ]  # fmt: skip
        if ledger.dialect == "sqlite":
            plan = conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN SELECT obligation_id FROM {OBLIGATION_TABLE} "
                "WHERE seller IN ('R1') AND seller <> payee AND due >= '2027-01-01'"
            ).all()
            assert "ix_obligation_state_reseller" in str(plan)


def test_a_leavers_hire_is_found_even_where_it_is_not_the_first_event_of_its_stream(ledger):
    """The close reads the hires of the reps with a termination as the first event of each one's stream;
    a ledger where a rep's stream begins otherwise (written without the reference rules) is read by type."""
    facts = [
        {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "R1", "name": "A", "role": "rep"},
        {"type": "kpi.measured", "effective": "2025-01-01", "rep_id": "R2", "year": 2025, "kpi": "csat", "value": "4"},
        {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "R2", "name": "B", "role": "rep"},
    ]
    with ledger.writer() as w:
        w.append([FACT_ADAPTER.validate_python(f) for f in facts])  # no reference rules: R2's KPI comes first
    with ledger.engine.connect() as conn:
        assert [(r[1], r[3]) for r in store.hires(conn, {"rep:R1"})] == [("rep:R1", "rep.hired")]
        found = sorted((r[1], r[3]) for r in store.hires(conn, {"rep:R1", "rep:R2"}))
        assert found == [("rep:R1", "rep.hired"), ("rep:R2", "rep.hired")]
        assert store.hires(conn, set()) == []
        with patch.object(store, "rows_where", wraps=store.rows_where) as reads:  # R9: no events at all
            assert [r[1] for r in store.hires(conn, {"rep:R1", "rep:R9"})] == ["rep:R1"]
        assert all("rep.hired" not in call.args[1] for call in reads.call_args_list)  # no read of every hire


def test_a_late_reassignment_moves_the_rows_a_later_termination_is_looked_up_by(tmp_path):
    """Found by the property test: a renewal paid to R2, then a late reassignment to R4 (the renewal's
    payee from then on, its amounts unchanged), then R4's late termination as a bad leaver, which
    forfeits R4's renewals. The close looks obligations up by payee and seller in the projection, so the
    reassignment must rewrite those columns even though nothing was paid differently."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.init()
    service.forget_projections()
    book = reference_book()
    months = {
        "2028-03": [
            {"type": "rep.hired", "effective": "2025-06-01", "rep_id": r, "name": r, "role": "rep"} for r in ("R2", "R4")
        ] + [
            {"type": "contract.signed", "effective": "2026-03-10", "contract_id": "C1", "account_id": "A",
             "rep_id": "R2", "acv": "276175", "currency": "CNY", "term_months": 12},
            {"type": "contract.renewed", "effective": "2027-03-10", "contract_id": "C1", "acv": "86165",
             "term_months": 12},
            {"type": "contract.renewed", "effective": "2028-03-09", "contract_id": "C1", "acv": "302019",
             "term_months": 12},
        ],
        "2028-06": [{"type": "contract.reassigned", "effective": "2027-04-30", "contract_id": "C1", "rep_id": "R4"}],
        "2028-09": [{"type": "rep.terminated", "effective": "2026-12-01", "rep_id": "R4", "leaver": "bad"}],
    }  # fmt: skip
    got = {}
    for period, batch in months.items():
        _ingest(ledger, batch)
        got[period] = cycle_json(service.close(ledger, book, period))
    assert got == _replayed(ledger, list(got))
    assert any(x["kind"] == "clawback" and x["rep_id"] == "R4" for x in got["2028-09"]["lines"])
    ledger.dispose()
