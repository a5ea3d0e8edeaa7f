"""Hypothesis properties of evaluation and cycles over random valid ledgers (pure core)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core.cycles import cycle_json
from incentive_engine.core.dates import periods_between
from incentive_engine.core.evaluation import commission_parts
from incentive_engine.core.money import CURRENCY_EXPONENTS
from incentive_engine.core.projections import Contract, project
from incentive_engine.core.statements import build_statement, issued_through

from .ledgers import REFERENCE_PLAN, Sim, parse_plan

PLAN = parse_plan(REFERENCE_PLAN.read_text(), "reference.yaml")
START = date(2026, 1, 1)


@given(
    st.integers(min_value=1, max_value=10**12),
    st.sampled_from(sorted(c for c, e in CURRENCY_EXPONENTS.items() if e in (0, 2, 3))),
)
def test_bases_sum_to_the_commission(minor_units, currency):
    exp = CURRENCY_EXPONENTS[currency]
    acv = Decimal(minor_units).scaleb(-exp)
    c = Contract("C", "A", "R", currency, START, acv, 12, None, 1)
    total, upfront, bases = commission_parts(c, PLAN)
    assert upfront + sum(bases) == total
    assert all(b >= 0 for b in bases) and max(bases) - min(bases) <= Decimal(1).scaleb(-exp)


def _day(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


@st.composite
def ledgers(draw) -> list[str]:
    """A valid ledger: 3 reps, a few contracts and random later facts, as JSON lines."""
    lines = [
        json.dumps({"type": "rep.hired", "effective": "2025-01-01", "rep_id": r, "name": r, "role": "rep"})
        for r in ("R1", "R2", "R3")
    ]
    n = draw(st.integers(1, 4))
    for i in range(n):
        cid = f"C{i}"
        signed = draw(st.integers(0, 400))
        term = draw(st.sampled_from([12, 24, 48]))
        cur = draw(st.sampled_from(["CNY", "JPY"]))
        acv = draw(st.integers(1000, 2_000_000))
        seller = draw(st.sampled_from(["R1", "R2", "R3"]))
        lines.append(
            json.dumps(
                {
                    "type": "contract.signed",
                    "effective": _day(signed),
                    "contract_id": cid,
                    "account_id": "A" + cid,
                    "rep_id": seller,
                    "acv": str(acv),
                    "currency": cur,
                    "term_months": term,
                }
            )
        )
        churn = draw(st.one_of(st.none(), st.integers(signed + 1, signed + 1500)))
        horizon = churn if churn is not None else signed + 1600
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["renew", "expand", "cost", "reassign"]))
            when = draw(st.integers(signed + 1, max(signed + 1, horizon - 1)))
            if churn is not None and when >= churn:
                continue
            if kind == "renew":
                lines.append(
                    json.dumps(
                        {
                            "type": "contract.renewed",
                            "effective": _day(when),
                            "contract_id": cid,
                            "acv": str(draw(st.integers(1000, 3_000_000))),
                            "term_months": 12,
                        }
                    )
                )
            elif kind == "expand":
                lines.append(
                    json.dumps(
                        {
                            "type": "contract.expanded",
                            "effective": _day(when),
                            "contract_id": cid,
                            "acv_delta": str(draw(st.integers(1, 500_000))),
                        }
                    )
                )
            elif kind == "cost":
                lines.append(
                    json.dumps(
                        {
                            "type": "service.cost",
                            "effective": _day(when),
                            "contract_id": cid,
                            "amount": str(draw(st.integers(0, 600_000))),
                        }
                    )
                )
            else:
                lines.append(
                    json.dumps(
                        {
                            "type": "contract.reassigned",
                            "effective": _day(when),
                            "contract_id": cid,
                            "rep_id": draw(st.sampled_from(["R1", "R2", "R3"])),
                        }
                    )
                )
        if churn is not None:
            lines.append(json.dumps({"type": "contract.churned", "effective": _day(churn), "contract_id": cid}))
    if draw(st.booleans()):
        lines.append(
            json.dumps(
                {
                    "type": "compliance.violation",
                    "effective": _day(draw(st.integers(0, 1500))),
                    "rep_id": draw(st.sampled_from(["R1", "R2", "R3"])),
                    "severity": "veto",
                    "description": "finding",
                }
            )
        )
    for r in ("R1", "R2"):
        if draw(st.booleans()):
            lines.append(
                json.dumps(
                    {
                        "type": "scorecard.published",
                        "effective": "2027-01-01",
                        "rep_id": r,
                        "year": 2026,
                        "composite": str(draw(st.integers(0, 150))),
                    }
                )
            )
    return lines


PERIODS = periods_between("2026-01", "2031-06")
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sim(lines: list[str]) -> Sim:
    sim = Sim()
    sim.ingest("\n".join(lines))
    return sim


def _net_position(outs: list[dict]) -> dict[tuple[str, str], Decimal]:
    """Per rep and currency: everything paid out, net of the balance still to recover."""
    paid: dict[tuple[str, str], Decimal] = {}
    for out in outs:
        for t in out["totals"]:
            key = (t["rep_id"], t["currency"])
            paid[key] = paid.get(key, Decimal(0)) + Decimal(t["payable"])
    for t in outs[-1]["totals"]:
        key = (t["rep_id"], t["currency"])
        paid[key] = paid.get(key, Decimal(0)) + Decimal(t["carried_out"])
    return {k: v for k, v in paid.items() if v}


@PROPS
@given(ledgers())
def test_nothing_negative_is_ever_payable(lines):
    sim = _sim(lines)
    for p in PERIODS[::5]:
        for t in sim.close(p)["totals"]:
            assert Decimal(t["payable"]) >= 0 and Decimal(t["carried_out"]) <= 0


@PROPS
@given(ledgers())
def test_catch_up_equals_step_by_step(lines):
    step = _sim(lines)
    outs = [step.close(p) for p in PERIODS]
    once = _sim(lines)
    single = [once.close(PERIODS[-1])]
    assert _net_position(outs) == _net_position(single)


@PROPS
@given(ledgers())
def test_replay_then_preview_is_byte_identical(lines):
    sim = _sim(lines)
    sim.close("2027-06")
    first = json.dumps(cycle_json(sim.preview("2029-03")))
    replayed = Sim()
    replayed.projector.state = project(_records(sim))
    assert json.dumps(cycle_json(replayed.preview("2029-03"))) == first


def _records(sim: Sim):
    """The same events again, re-validated from their JSON form (as a replay from storage would)."""
    from incentive_engine.core.events import ANY_ADAPTER, to_payload
    from incentive_engine.core.projections import Recorded

    state = sim.state
    assert state.position == sim.position
    for rec in sim.history:
        e = rec.event
        data = {"type": e.type, "effective": e.effective.isoformat(), **json.loads(json.dumps(to_payload(e)))}
        if e.event_id:
            data["event_id"] = e.event_id
        yield Recorded(
            rec.position, rec.recorded_at, rec.stream_id, rec.stream_version, ANY_ADAPTER.validate_python(data)
        )


@PROPS
@given(ledgers())
def test_closing_again_never_pays_twice(lines):
    sim = _sim(lines)
    for p in PERIODS:
        sim.close(p)
    # everything due is settled: a further cycle with no new facts issues nothing
    assert sim.close("2031-07")["lines"] == []


_ADJUSTMENTS = st.lists(
    st.tuples(
        st.sampled_from(["R1", "R2", "R3"]),
        st.integers(0, 1500),
        st.integers(-5000, 5000).filter(bool),
        st.integers(0, 3),  # the contract it names, of those signed (and only by number: one may name none)
    ),
    max_size=3,
)


@PROPS
@given(ledgers(), st.sampled_from(PERIODS[6::9]), _ADJUSTMENTS)
def test_each_statement_reads_every_contract_its_rep_is_paid_for(lines, through, adjustments):
    """A statement evaluates only the contracts its rep sold or was ever assigned (``Issued.contracts``)
    and the rep's own manual adjustments: every rep's statement equals the one built with every contract
    and adjustment of the ledger read for every rep."""
    signed = [json.loads(x) for x in lines if '"contract.signed"' in x]
    for i, (rep, day, amount, which) in enumerate(adjustments):
        adjustment = {
            "type": "adjustment.recorded",
            "effective": _day(day),
            "event_id": f"ADJ-{i}",
            "rep_id": rep,
            "amount": str(amount),
            "currency": "CNY",
            "reason": "agreed correction",
            "approved_by": "finance",
        }
        if which < len(signed) and signed[which]["effective"] <= adjustment["effective"]:
            adjustment |= {"contract_id": signed[which]["contract_id"], "currency": signed[which]["currency"]}
        lines = [*lines, json.dumps(adjustment)]
    sim = _sim(lines)
    for p in PERIODS[2::3]:
        if p <= through:
            sim.close(p)
    issued = issued_through(sim.state, through)
    everyone = sim.state.reps
    wide = replace(
        issued,
        contracts={r: list(sim.state.contracts.values()) for r in everyone},
        adjustments={r: list(sim.state.adjustments) for r in everyone},
    )
    for rep in sorted(sim.state.reps):
        statement = build_statement(sim.book, sim.state, rep, through, issued)
        assert statement == build_statement(sim.book, sim.state, rep, through, wide)
        assert statement == build_statement(sim.book, sim.state, rep, through)


def test_a_statement_refuses_lines_issued_through_another_period():
    hired = {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "R1", "name": "R1", "role": "rep"}
    sim = _sim([json.dumps(hired)])
    sim.close("2026-06")
    with pytest.raises(ValueError, match="through 2026-06, the statement through 2026-07"):
        build_statement(sim.book, sim.state, "R1", "2026-07", issued_through(sim.state, "2026-06"))
