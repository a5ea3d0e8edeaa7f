"""Each rule of reference-plan.md and its edges, table-driven through the pure core."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from incentive_engine.core.evaluation import commission_parts
from incentive_engine.core.plan import parse_plan
from incentive_engine.core.projections import Contract

from .ledgers import HIRE, REFERENCE_PLAN, Sim, signed

PLAN = parse_plan(REFERENCE_PLAN.read_text(), "reference.yaml")


def contract(acv: str, currency: str = "CNY") -> Contract:
    from datetime import date

    return Contract("C", "A", "R1", currency, date(2026, 1, 1), Decimal(acv), 12, None, 1)


@pytest.mark.parametrize(
    ("acv", "currency", "total", "upfront", "bases"),
    [
        ("1200000.00", "CNY", "120000.00", "60000.00", ["15000.00"] * 4),
        # the cent split: D = 16,666.66 -> 4,166.67, 4,166.67, 4,166.66, 4,166.66
        ("333333.33", "CNY", "33333.33", "16666.67", ["4166.67", "4166.67", "4166.66", "4166.66"]),
        # half-up ties in a zero-decimal currency: 10.5 -> 11 and 5.5 -> 6 (banker's rounding would give 10, 5)
        ("105", "JPY", "11", "6", ["2", "1", "1", "1"]),
        # zero-amount results: a commission that rounds to nothing
        ("0.04", "CNY", "0.00", "0.00", ["0.00"] * 4),
    ],
)
def test_commission_split_is_cent_exact(acv, currency, total, upfront, bases):
    c, u, b = commission_parts(contract(acv, currency), PLAN)
    assert (str(c), str(u), [str(x) for x in b]) == (total, upfront, bases)
    assert u + sum(b) == c


def run(facts: str, period: str, obligation: str) -> dict:
    sim = Sim()
    sim.ingest(HIRE + facts)
    return sim.evaluation(period, obligation)


def test_upfront_is_half_the_commission_on_the_signing_month():
    e = run(signed(), "2026-01", "C1/upfront")
    assert (e["status"], e["earned"], e["due"]) == ("earned", "60000.00", "2026-01-15")


def test_leap_day_signing_vests_on_feb_28_and_feb_29():
    sim = Sim()
    sim.ingest(HIRE + signed(day="2024-02-29", term=60))
    assert sim.evaluation("2025-02", "C1/tranche/1")["due"] == "2025-02-28"
    assert sim.evaluation("2028-02", "C1/tranche/4")["due"] == "2028-02-29"
    assert sim.evaluation("2028-02", "C1/tranche/4")["earned"] == "15000.00"


def test_leap_day_twelve_month_term_ends_the_day_before_the_anniversary():
    # 2024-02-29 + 12 months - 1 day = 2025-02-27 < vesting 2025-02-28: literally a lapse, held for the grace
    e = run(signed(day="2024-02-29"), "2025-02", "C1/tranche/1")
    assert (e["status"], e["reason"]) == ("held", "awaiting_renewal")
    renewed = (
        signed(day="2024-02-29") + '\n{"type":"contract.renewed","effective":"2025-02-28","contract_id":"C1",'
        '"acv":"1200000.00","term_months":12}'
    )
    assert run(renewed, "2025-02", "C1/tranche/1")["earned"] == "15000.00"


def test_nrr_cap_and_downsell():
    up = (
        signed(term=24)
        + '\n{"type":"contract.expanded","effective":"2026-06-01","contract_id":"C1","acv_delta":"1200000.00"}'
    )
    e = run(up, "2027-01", "C1/tranche/1")
    assert (e["earned"], e["factors"]["nrr"]) == ("22500.00", "1.5")  # NRR 2.0 capped at 1.5
    down = (
        signed(term=24)
        + '\n{"type":"contract.expanded","effective":"2026-06-01","contract_id":"C1","acv_delta":"-900000.00"}'
    )
    e = run(down, "2027-01", "C1/tranche/1")
    assert (e["earned"], e["factors"]["nrr"]) == ("3750.00", "0.25")


def test_service_cost_threshold_is_strictly_above():
    at = signed(term=24) + '\n{"type":"service.cost","effective":"2026-12-01","contract_id":"C1","amount":"240000.00"}'
    assert run(at, "2027-01", "C1/tranche/1")["factors"]["service"] == "1.0"  # exactly 20%: not above
    above = at.replace("240000.00", "240000.01")
    e = run(above, "2027-01", "C1/tranche/1")
    assert (e["factors"]["service"], e["earned"]) == ("0.8", "12000.00")
    # a cost outside the (V - 1 year, V] window does not count
    old = at.replace("2026-12-01", "2026-01-15").replace("240000.00", "900000.00")
    assert run(old, "2027-01", "C1/tranche/1")["factors"]["service"] == "1.0"


def test_scorecard_factor_cap_and_gate():
    card = '\n{"type":"scorecard.published","effective":"2027-01-01","rep_id":"R1","year":2026,"composite":"%s"}'
    assert run(signed(term=24) + card % "87.5", "2027-01", "C1/tranche/1")["earned"] == "13125.00"
    assert run(signed(term=24) + card % "150", "2027-01", "C1/tranche/1")["earned"] == "18000.00"
    e = run(signed(term=24) + card % "49.99", "2027-01", "C1/tranche/1")
    assert (e["status"], e["reason"], e["earned"]) == ("forfeited", "scorecard_gate", "0.00")
    assert run(signed(term=24) + card % "50", "2027-01", "C1/tranche/1")["earned"] == "7500.00"


def test_veto_between_two_tranches_keeps_the_earlier_one():
    facts = (
        signed(term=48) + '\n{"type":"compliance.violation","effective":"2027-06-01","rep_id":"R1",'
        '"severity":"veto","description":"gift"}'
    )
    assert run(facts, "2028-01", "C1/tranche/1")["status"] == "earned"
    e = run(facts, "2028-01", "C1/tranche/2")
    assert (e["status"], e["reason"]) == ("forfeited", "compliance_veto")
    assert run(facts, "2028-01", "C1/upfront")["earned"] == "60000.00"  # a rep-level veto does not touch the up-front


def test_contract_veto_forfeits_everything_and_claws_back():
    sim = Sim()
    sim.ingest(HIRE + signed(term=24))
    assert sim.close("2026-01")["lines"][0]["amount"] == "60000.00"
    sim.ingest(
        '{"type":"compliance.violation","effective":"2026-03-01","rep_id":"R1","contract_id":"C1",'
        '"severity":"veto","description":"bribe"}'
    )
    lines = sim.close("2026-03")["lines"]
    assert [(x["obligation"], x["kind"], x["amount"], x["reason"]) for x in lines] == [
        ("C1/upfront", "clawback", "-60000.00", "compliance_veto")
    ]


def test_warning_changes_nothing():
    facts = (
        signed(term=24) + '\n{"type":"compliance.violation","effective":"2026-06-01","rep_id":"R1",'
        '"contract_id":"C1","severity":"warning","description":"late paperwork"}'
    )
    assert run(facts, "2027-01", "C1/tranche/1")["earned"] == "15000.00"


@pytest.mark.parametrize(
    ("leaver", "status", "reason"), [("good", "earned", "earned"), ("bad", "forfeited", "bad_leaver")]
)
def test_good_and_bad_leaver(leaver, status, reason):
    facts = (
        signed(term=24) + '\n{"type":"contract.reassigned","effective":"2026-05-31","contract_id":"C1","rep_id":"R2"}'
        f'\n{{"type":"rep.terminated","effective":"2026-06-01","rep_id":"R1","leaver":"{leaver}"}}'
    )
    e = run(facts, "2027-01", "C1/tranche/1")
    assert (e["rep_id"], e["status"], e["reason"]) == ("R1", status, reason)


def test_reassigned_contract_pays_the_renewal_to_the_owner_and_tranches_to_the_seller():
    sim = Sim()
    sim.ingest(
        HIRE
        + signed()
        + """
        {"type":"contract.reassigned","effective":"2026-06-01","contract_id":"C1","rep_id":"R2"}
        {"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"1500000.00","term_months":12}
    """
    )
    lines = {x["obligation"]: x for x in sim.close("2027-01")["lines"]}
    assert lines["C1/renewal/2027-01-15"]["rep_id"] == "R2"
    assert lines["C1/renewal/2027-01-15"]["amount"] == "45000.00"
    assert lines["C1/tranche/1"]["rep_id"] == "R1"


def test_renewal_of_a_terminated_owner_is_not_paid():
    sim = Sim()
    sim.ingest(
        HIRE
        + signed()
        + """
        {"type":"rep.terminated","effective":"2026-12-01","rep_id":"R1","leaver":"good"}
        {"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"1500000.00","term_months":12}
    """
    )
    e = sim.evaluation("2027-01", "C1/renewal/2027-01-15")
    assert (e["status"], e["reason"]) == ("forfeited", "no_owner")


def test_renewal_recorded_after_the_grace_is_paid_by_a_later_cycle():
    sim = Sim()
    sim.ingest(HIRE + signed(day="2026-08-20", acv="100000.00"))
    for p in ("2026-08", "2027-08", "2027-11"):
        sim.close(p)
    assert sim.evaluation("2027-12", "C1/tranche/1")["reason"] == "lapsed"
    sim.ingest(
        '{"type":"contract.renewed","effective":"2027-08-20","contract_id":"C1","acv":"110000.00","term_months":12}'
    )
    lines = sim.close("2027-12")["lines"]
    assert [(x["obligation"], x["kind"], x["amount"]) for x in lines] == [
        ("C1/renewal/2027-08-20", "payment", "3300.00"),
        ("C1/tranche/1", "payment", "1375.00"),
    ]


def test_early_churn_claws_back_and_the_balance_is_recovered_later():
    sim = Sim()
    sim.ingest(HIRE + signed(acv="500000.00"))
    sim.close("2026-01")
    sim.ingest('{"type":"contract.churned","effective":"2026-07-13","contract_id":"C1"}')  # day 179
    out = sim.close("2026-07")
    assert out["totals"] == [
        {
            "rep_id": "R1",
            "currency": "CNY",
            "lines_total": "-25000.00",
            "carried_in": "0.00",
            "payable": "0.00",
            "carried_out": "-25000.00",
        }
    ]
    sim.ingest(signed("C2", "2026-08-01", "800000.00"))
    t = sim.close("2026-08")["totals"][0]
    assert (t["lines_total"], t["carried_in"], t["payable"], t["carried_out"]) == (
        "40000.00",
        "-25000.00",
        "15000.00",
        "0.00",
    )


def test_churn_on_day_180_is_not_early():
    e = run(
        signed(acv="500000.00") + '\n{"type":"contract.churned","effective":"2026-07-14","contract_id":"C1"}',
        "2026-07",
        "C1/upfront",
    )
    assert e["status"] == "earned"


def test_late_veto_after_payment_becomes_a_clawback():
    sim = Sim()
    sim.ingest(HIRE + signed(term=24))
    sim.close("2027-01")
    sim.ingest(
        '{"type":"compliance.violation","effective":"2026-11-01","rep_id":"R1","severity":"veto",'
        '"description":"found a year later"}'
    )
    lines = sim.close("2027-02")["lines"]
    assert [(x["obligation"], x["kind"], x["amount"]) for x in lines] == [("C1/tranche/1", "clawback", "-15000.00")]


def test_zero_amount_results_produce_no_lines():
    sim = Sim()
    sim.ingest(HIRE + signed(acv="0.04", term=24))
    out = sim.close("2027-01")
    assert out["lines"] == [] and out["evaluations"] == [] and out["totals"] == []


def test_closing_twice_the_same_state_pays_nothing_more():
    sim = Sim()
    sim.ingest(HIRE + signed())
    first = sim.close("2026-01")
    again = sim.preview("2026-02")
    assert first["lines"] and not again.lines


def test_plan_with_rules_switched_off():
    from .ledgers import reference_book

    book = reference_book(
        **{
            "nrr:\n    enabled: true": "nrr:\n    enabled: false",
            "tranche: [contract_veto, rep_veto, bad_leaver, churned, lapsed]": "tranche: [churned]",
        }
    )
    sim = Sim(book)
    sim.ingest(
        HIRE + signed() + '\n{"type":"contract.expanded","effective":"2026-06-01","contract_id":"C1",'
        '"acv_delta":"1200000.00"}'
    )
    e = sim.evaluation("2027-01", "C1/tranche/1")  # lapsed is off and NRR is off: base x 1 x 1 x 1
    assert (e["status"], e["earned"], e["factors"]["nrr"]) == ("earned", "15000.00", "1.0")


def test_worked_example_through_the_core():
    """The whole worked example, with the 2026 scorecard as published by `scorecard publish`."""
    from .ledgers import WORKED

    sim = Sim()
    sim.ingest((WORKED / "01-facts.jsonl").read_text())
    sim.ingest('{"type":"scorecard.published","effective":"2027-01-01","rep_id":"R1","year":2026,"composite":"136.07"}')
    from incentive_engine.core.dates import periods_between

    got = {p: sim.close(p) for p in periods_between("2026-01", "2027-11")}
    sim.ingest((WORKED / "02-late-renewal.jsonl").read_text())
    got |= {p: sim.close(p) for p in periods_between("2027-12", "2030-12")}
    lines = {x["period"]: x for x in json.loads((WORKED / "expected-lines.json").read_text())}
    evals = {x["period"]: x for x in json.loads((WORKED / "expected-evaluations.json").read_text())}
    for period, out in got.items():
        assert out["lines"] == lines.get(period, {"lines": []})["lines"], period
        assert out["totals"] == lines.get(period, {"totals": []})["totals"], period
        assert out["evaluations"] == evals.get(period, {"evaluations": []})["evaluations"], period


def test_a_second_renewal_on_the_same_date_corrects_the_first():
    sim = Sim()
    sim.ingest(
        HIRE
        + signed()
        + """
        {"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"1500000.00","term_months":12}
    """
    )
    assert [x["amount"] for x in sim.close("2027-01")["lines"] if "renewal" in x["obligation"]] == ["45000.00"]
    sim.ingest(
        '{"type":"contract.renewed","effective":"2027-01-15","contract_id":"C1","acv":"1000000.00","term_months":12}'
    )
    lines = [(x["kind"], x["amount"]) for x in sim.close("2027-02")["lines"] if "renewal" in x["obligation"]]
    assert lines == [("clawback", "-15000.00")]
    assert sim.close("2027-03")["lines"] == []
