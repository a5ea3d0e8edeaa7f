"""Scorecards: plan section validation, every derived KPI, the curve, composite, gate, roles, properties."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incentive_engine.core.events import FACT_ADAPTER, stream_of
from incentive_engine.core.projections import LedgerState, Projector, Recorded
from incentive_engine.core.scorecards import (
    DERIVED_KPIS,
    REFERENCE_SCORECARDS_YAML,
    KpiSpec,
    RepScorecard,
    ScorecardsSpec,
    _book,
    _make_scope,
    composite_of,
    compute_scorecards,
    concentration,
    kpi_values,
    load_scorecards_yaml,
    parse_scorecards,
    role_weights,
    score,
    scorecard_json,
)

WORKED = Path(__file__).resolve().parent / "data" / "worked"
SPEC = load_scorecards_yaml(REFERENCE_SCORECARDS_YAML)


# --- building ledgers ------------------------------------------------------------------------------


def ledger(*events: dict[str, Any]) -> LedgerState:
    records = []
    for i, data in enumerate(events, 1):
        e = FACT_ADAPTER.validate_python(data)
        records.append(Recorded(i, "2026-01-01T00:00:00Z", stream_of(e), i, e))
    return Projector().apply_all(records)


def hire(rep: str, role: str = "rep", manager: str | None = None, on: str = "2024-01-01") -> dict[str, Any]:
    out = {"type": "rep.hired", "effective": on, "rep_id": rep, "name": rep, "role": role}
    if manager:
        out["manager_id"] = manager
    return out


def sign(
    cid: str,
    rep: str,
    on: str,
    acv: str,
    term: int = 12,
    account: str | None = None,
    ccy: str = "CNY",
    gm: str | None = None,
) -> dict[str, Any]:
    out = {
        "type": "contract.signed",
        "effective": on,
        "contract_id": cid,
        "account_id": account or f"A-{cid}",
        "rep_id": rep,
        "acv": acv,
        "currency": ccy,
        "term_months": term,
    }
    if gm is not None:
        out["gross_margin"] = gm
    return out


def renew(cid: str, on: str, acv: str, term: int = 12) -> dict[str, Any]:
    return {"type": "contract.renewed", "effective": on, "contract_id": cid, "acv": acv, "term_months": term}


def expand(cid: str, on: str, delta: str) -> dict[str, Any]:
    return {"type": "contract.expanded", "effective": on, "contract_id": cid, "acv_delta": delta}


def churn(cid: str, on: str) -> dict[str, Any]:
    return {"type": "contract.churned", "effective": on, "contract_id": cid}


def reassign(cid: str, on: str, rep: str) -> dict[str, Any]:
    return {"type": "contract.reassigned", "effective": on, "contract_id": cid, "rep_id": rep}


def target(rep: str, year: int, amount: str, ccy: str = "CNY", on: str | None = None) -> dict[str, Any]:
    return {
        "type": "target.set",
        "effective": on or f"{year}-01-01",
        "rep_id": rep,
        "year": year,
        "amount": amount,
        "currency": ccy,
    }


def kpi(rep: str, year: int, name: str, value: str, on: str | None = None) -> dict[str, Any]:
    return {
        "type": "kpi.measured",
        "effective": on or f"{year}-12-31",
        "rep_id": rep,
        "year": year,
        "kpi": name,
        "value": value,
    }


def violation(rep: str, on: str, severity: str = "veto") -> dict[str, Any]:
    return {"type": "compliance.violation", "effective": on, "rep_id": rep, "severity": severity, "description": "test"}


def value_of(state: LedgerState, name: str, rep: str = "R1", year: int = 2026, role: str = "rep") -> D | None:
    spec = KpiSpec(
        name=name, perspective="financial", source="derived", direction="higher", threshold=0, target=1, stretch=2
    )
    return kpi_values(state, rep, year, [spec], role)[0]


def card(cards: list[RepScorecard], rep: str) -> RepScorecard:
    return next(c for c in cards if c.rep_id == rep)


def worked_state(with_late_renewal: bool = False) -> LedgerState:
    lines = (WORKED / "01-facts.jsonl").read_text().splitlines()
    if with_late_renewal:
        lines += (WORKED / "02-late-renewal.jsonl").read_text().splitlines()
    return ledger(*(json.loads(line) for line in lines if line.strip()))


# --- the worked example ----------------------------------------------------------------------------


def test_worked_example_r1_2026_composite_136_07() -> None:
    cards = compute_scorecards(SPEC, worked_state(), 2026)
    assert [c.rep_id for c in cards] == ["R1", "R2", "R3"]
    r1 = card(cards, "R1")
    # (0.40 x 150 + 0.20 x 120 + 0.10 x 112.5) / 0.70 = 95.25 / 0.70 = 136.0714... -> 136.07
    assert r1.composite == D("136.07")
    by_name = {k.name: k for k in r1.kpis}
    assert by_name["revenue_attainment"].value == D("1.2") and by_name["revenue_attainment"].score == 150
    assert by_name["csat"].score == 120 and by_name["nps"].score == D("112.5")
    assert by_name["renewal_rate"].value is None and by_name["renewal_rate"].weight == 0
    assert by_name["upsell_rate"].value is None  # nothing owned and active on 2026-01-01
    assert by_name["revenue_attainment"].weight == D("0.571429")
    assert not r1.vetoed
    assert any("concentration" in w for w in r1.warnings)  # one customer holds all of R1's ACV
    # R2, R3: no target, no measurement, nothing due -> no scorecard (but listed)
    assert card(cards, "R2").composite is None and card(cards, "R3").composite is None


def test_worked_example_2027_renewals_upsell_and_veto() -> None:
    cards = compute_scorecards(SPEC, worked_state(), 2027)
    r1 = {k.name: k for k in card(cards, "R1").kpis}
    assert r1["renewal_rate"].value == 1  # C1's first term ends 2027-01-14, renewed 2027-01-15
    assert r1["upsell_rate"].value == 0  # ACV(2027-01-01) = 1,440,000, no expansion in 2027
    r2 = card(cards, "R2")
    assert r2.vetoed and r2.composite == D("0.00")
    # R3: C4's term ends 2027-08-19; the renewal is only known once the late file is ingested.
    assert {k.name: k for k in card(cards, "R3").kpis}["renewal_rate"].value == 0
    late = compute_scorecards(SPEC, worked_state(with_late_renewal=True), 2027)
    assert {k.name: k for k in card(late, "R3").kpis}["renewal_rate"].value == 1


# --- plan section ----------------------------------------------------------------------------------


def test_reference_yaml_parses_with_all_roles() -> None:
    assert set(SPEC.roles) == {"rep", "manager", "director"}
    rep = SPEC.roles["rep"]
    assert [k.name for k in rep.kpis] == ["revenue_attainment", "renewal_rate", "csat", "nps", "upsell_rate"]
    assert [k.weight for k in rep.kpis] == [D("0.40"), D("0.20"), D("0.20"), D("0.10"), D("0.10")]
    assert SPEC.concentration_warning == D("0.30") and SPEC.veto_gate is True
    director = role_weights(SPEC.roles["director"], [])
    assert abs(sum(director) - 1) < D("1e-9")


def _section(**rep: Any) -> dict[str, Any]:
    base = {
        "weights": {"method": "fixed"},
        "kpis": [
            {
                "name": "csat",
                "perspective": "customer",
                "source": "measured",
                "direction": "higher",
                "weight": 1,
                "threshold": 3.5,
                "target": 4.0,
                "stretch": 4.5,
            }
        ],
    }
    base.update(rep)
    return {"roles": {"rep": base}}


def _kpi(**kw: Any) -> dict[str, Any]:
    out = {
        "name": "csat",
        "perspective": "customer",
        "source": "measured",
        "direction": "higher",
        "weight": 1,
        "threshold": 3.5,
        "target": 4.0,
        "stretch": 4.5,
    }
    out.update(kw)
    return out


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({**_section(), "extra": 1}, "Extra inputs"),
        (_section(kpis=[_kpi(colour="red")]), "Extra inputs"),
        (_section(kpis=[_kpi(perspective="people")]), "perspective"),
        (_section(kpis=[_kpi(direction="up")]), "direction"),
        (_section(kpis=[_kpi(target=3.5)]), "threshold < target < stretch"),
        (_section(kpis=[_kpi(direction="lower")]), "threshold > target > stretch"),
        (_section(kpis=[_kpi(weight=-1)]), "greater than or equal"),
        (_section(kpis=[_kpi(weight=0)]), "sum to more than 0"),
        (_section(kpis=[_kpi(weight=None)]), "need a weight"),
        (_section(kpis=[_kpi(name="magic", source="derived")]), "unknown derived KPI"),
        (_section(kpis=[_kpi(), _kpi()]), "duplicate"),
        (_section(kpis=[_kpi(threshold=True)]), "boolean"),
        (_section(weights={"method": "entropy"}), "only used by the fixed method"),
        (_section(weights={"method": "ahp", "matrix": [[1, 2], ["1/2", 1]]}, kpis=[_kpi(weight=None)]), "1 KPIs"),
        (_section(weights={"method": "combined", "methods": [{"method": "fixed", "share": 0}]}), "shares"),
        (_section(weights={"method": "combined", "methods": [{"method": "combined", "share": 1}]}), "method"),
        ({"roles": {"ceo": _section()["roles"]["rep"]}}, "ceo"),
        ({**_section(), "veto_gate": "yes"}, "veto_gate"),
        ({**_section(), "concentration_warning": 1.5}, "concentration_warning"),
    ],
)
def test_plan_section_rejected(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scorecards(section)


def _ahp_section(matrix: list[list[Any]]) -> dict[str, Any]:
    kpis = [_kpi(name=n, weight=None) for n in ("a", "b", "c")]
    return {"roles": {"rep": {"weights": {"method": "ahp", "matrix": matrix}, "kpis": kpis}}}


def test_plan_with_inconsistent_ahp_matrix_rejected_naming_cr() -> None:
    with pytest.raises(ValueError, match=r"AHP consistency ratio \d\.\d{3} >= 0\.10"):
        parse_scorecards(_ahp_section([[1, 7, "1/7"], ["1/7", 1, 7], [7, "1/7", 1]]))
    spec = parse_scorecards(_ahp_section([[1, 3, 5], ["1/3", 1, 3], ["1/5", "1/3", 1]]))
    assert [w.quantize(D("0.001")) for w in role_weights(spec.roles["rep"], [])] == [D("0.637"), D("0.258"), D("0.105")]


def test_numbers_accepted_as_int_float_string() -> None:
    spec = parse_scorecards(_section(kpis=[_kpi(threshold="3.5", target=4, stretch=4.5, weight=0.1)]))
    k = spec.roles["rep"].kpis[0]
    assert (k.threshold, k.target, k.stretch, k.weight) == (D("3.5"), D(4), D("4.5"), D("0.1"))
    assert isinstance(k.weight, D)


def test_load_yaml_requires_top_key() -> None:
    with pytest.raises(ValueError, match="scorecards"):
        load_scorecards_yaml("roles: {}")


def test_combined_weights() -> None:
    kpis = [_kpi(name="a", weight=3), _kpi(name="b", weight=1)]
    spec = parse_scorecards(
        {
            "roles": {
                "rep": {
                    "weights": {
                        "method": "combined",
                        "methods": [{"method": "fixed", "share": 0.5}, {"method": "entropy", "share": 0.5}],
                    },
                    "kpis": kpis,
                }
            }
        }
    )
    # entropy over a constant a and an informative b -> (0, 1); fixed -> (0.75, 0.25); mean -> (0.375, 0.625)
    values = [[D(4), D(3)], [D(4), D(5)]]
    assert role_weights(spec.roles["rep"], values) == (D("0.375"), D("0.625"))


# --- the curve -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.79", 0),
        ("0.8", 50),
        ("0.9", 75),
        ("1.0", 100),
        ("1.1", 125),
        ("1.2", 150),
        ("1.21", 150),
        ("9", 150),
        ("-1", 0),
    ],
)
def test_score_higher_is_better(value: str, expected: int) -> None:
    assert score(D(value), D("0.8"), D("1.0"), D("1.2"), "higher") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.16", 0), ("0.15", 50), ("0.125", 75), ("0.10", 100), ("0.075", 125), ("0.05", 150), ("0", 150)],
)
def test_score_lower_is_better(value: str, expected: int) -> None:
    assert score(D(value), D("0.15"), D("0.10"), D("0.05"), "lower") == expected


def test_score_examples_and_errors() -> None:
    assert score(D("4.2"), D("3.5"), D("4.0"), D("4.5"), "higher") == 120
    assert score(35, 0, 30, 50, "higher") == D("112.5")
    assert score(D("0.9"), D("0.8"), D("1.1"), D("1.2"), "higher") == D("66.66666666666666666666666666666666666667")
    with pytest.raises(ValueError):
        score(1, 1, 1, 2, "higher")
    with pytest.raises(ValueError):
        score(1, 1, 2, 3, "lower")
    with pytest.raises(ValueError):
        score(1, 1, 2, 3, "sideways")


@settings(max_examples=100, deadline=None)
@given(st.decimals(-1000, 1000, places=3), st.decimals(-1000, 1000, places=3), st.sampled_from(["higher", "lower"]))
def test_score_bounded_and_monotone(a: D, b: D, direction: str) -> None:
    curve = (D(0), D(10), D(20)) if direction == "higher" else (D(20), D(10), D(0))
    sa, sb = score(a, *curve, direction), score(b, *curve, direction)
    assert 0 <= sa <= 150 and 0 <= sb <= 150
    better = a >= b if direction == "higher" else a <= b
    if better:
        assert sa >= sb


# --- composite -------------------------------------------------------------------------------------


def test_composite_renormalises_and_rounds_half_up() -> None:
    assert composite_of([(D("0.4"), D(150)), (D("0.2"), D(120)), (D("0.1"), D("112.5"))]) == D("136.07")
    assert composite_of([(D(1), D("100.005"))]) == D("100.01")  # a true tie rounds up
    assert composite_of([(D(1), D("100.0049999"))]) == D("100.00")
    # 1/3 x 100 + 2/3 x 50.0075 = 66.67166... ; exact rationals, no intermediate cut-off
    assert composite_of([(D(1), D(100)), (D(2), D("50.0075"))]) == D("66.67")
    assert composite_of([]) is None
    assert composite_of([(D(0), D(100))]) is None


def test_missing_kpis_are_left_out_and_weights_renormalised() -> None:
    s = ledger(hire("R1"), kpi("R1", 2026, "csat", "4.0"))
    c = compute_scorecards(SPEC, s, 2026)[0]
    assert c.composite == D("100.00")
    assert {k.name: k.weight for k in c.kpis} == {
        "revenue_attainment": 0,
        "renewal_rate": 0,
        "csat": 1,
        "nps": 0,
        "upsell_rate": 0,
    }


def test_zero_weight_kpis_alone_give_no_composite() -> None:
    spec = parse_scorecards(
        {
            "roles": {
                "rep": {
                    "kpis": [
                        _kpi(name="csat", weight=1),
                        _kpi(name="nps", weight=0, threshold=0, target=30, stretch=50),
                    ]
                }
            }
        }
    )
    c = compute_scorecards(spec, ledger(hire("R1"), kpi("R1", 2026, "nps", "40")), 2026)[0]
    assert c.composite is None
    assert c.kpis[1].score == 125


# --- the compliance gate ---------------------------------------------------------------------------


def _good_rep(*extra: dict[str, Any]) -> LedgerState:
    return ledger(
        hire("R1"),
        target("R1", 2026, "100.00"),
        sign("C1", "R1", "2026-02-01", "100.00"),
        kpi("R1", 2026, "csat", "4.5"),
        *extra,
    )


def test_veto_in_year_zeroes_composite_but_keeps_kpis() -> None:
    assert compute_scorecards(SPEC, _good_rep(), 2026)[0].composite == D("116.67")
    c = compute_scorecards(SPEC, _good_rep(violation("R1", "2026-11-30")), 2026)[0]
    assert c.vetoed and c.composite == D("0.00")
    assert {k.name: k.score for k in c.kpis}["revenue_attainment"] == 100
    assert any("compliance veto" in w for w in c.warnings)
    assert c.components()["vetoed"] is True


@pytest.mark.parametrize(
    "event",
    [
        violation("R1", "2025-12-31"),
        violation("R1", "2027-01-01"),
        violation("R1", "2026-06-01", "warning"),
        violation("R2", "2026-06-01"),
    ],
)
def test_veto_outside_year_or_warning_or_other_rep_does_not_gate(event: dict[str, Any]) -> None:
    s = _good_rep(hire("R2"), event)
    c = card(compute_scorecards(SPEC, s, 2026), "R1")
    assert not c.vetoed and c.composite == D("116.67")


def test_gate_can_be_switched_off() -> None:
    spec = ScorecardsSpec.model_validate({**SPEC.model_dump(), "veto_gate": False})
    c = compute_scorecards(spec, _good_rep(violation("R1", "2026-06-01")), 2026)[0]
    assert not c.vetoed and c.composite == D("116.67")


# --- derived KPIs ----------------------------------------------------------------------------------


def test_revenue_attainment() -> None:
    s = ledger(
        hire("R1"),
        hire("R2"),
        target("R1", 2026, "1000.00"),
        target("R1", 2026, "800.00", on="2026-02-01"),
        sign("C1", "R1", "2026-01-01", "300.00"),
        sign("C2", "R1", "2026-12-31", "100.00"),
        sign("C3", "R1", "2025-12-31", "500.00"),
        sign("C4", "R1", "2026-05-01", "900.00", ccy="USD"),
        sign("C5", "R2", "2026-05-01", "900.00"),
    )
    assert value_of(s, "revenue_attainment") == D("0.5")  # (300 + 100) / latest target 800, CNY only
    assert value_of(s, "revenue_attainment", year=2025) is None  # no target
    assert value_of(s, "revenue_attainment", rep="R2") is None


def test_renewal_rate() -> None:
    s = ledger(
        hire("R1"),
        hire("R2"),
        sign("C1", "R1", "2025-03-01", "100.00"),  # E 2026-02-28, renewed at E + 90 -> renewed
        renew("C1", "2026-05-29", "100.00"),  # its own term ends 2027-05-28: not in 2026
        sign("C2", "R1", "2025-04-01", "100.00"),  # E 2026-03-31, renewed at E + 91 -> not renewed
        renew("C2", "2026-06-30", "100.00"),
        sign("C3", "R1", "2025-01-01", "100.00", term=6),  # E 2025-06-30: not in 2026
        sign("C4", "R1", "2025-06-01", "100.00"),  # churned before 2026 -> out
        churn("C4", "2025-12-31"),
        sign("C5", "R1", "2025-07-01", "100.00"),  # churned in 2026 before E -> due, not renewed
        churn("C5", "2026-03-01"),
        sign("C6", "R2", "2025-08-01", "100.00"),  # reassigned to R1 before E 2026-07-31 -> R1's, renewed early
        reassign("C6", "2026-01-10", "R1"),
        renew("C6", "2026-07-01", "120.00"),
        sign("C7", "R1", "2025-09-01", "100.00"),  # reassigned away before E -> not R1's
        reassign("C7", "2026-02-01", "R2"),
        sign("C8", "R1", "2026-01-01", "100.00", term=3),  # E 2026-03-31 renewed; its renewal ends 2026-06-30 too
        renew("C8", "2026-04-01", "100.00", term=3),
    )
    # due: C1 (yes), C2 (no), C5 (no), C6 (yes), C8 term 1 (yes), C8 term 2 (no) -> 3 / 6
    assert value_of(s, "renewal_rate") == D("0.5")
    assert value_of(s, "renewal_rate", rep="R2") == 0  # C7: E 2026-08-31, owned by R2 then, never renewed
    assert value_of(s, "renewal_rate", year=2030) is None


def test_upsell_rate() -> None:
    s = ledger(
        hire("R1"),
        hire("R2"),
        sign("C1", "R1", "2025-06-01", "1000.00"),  # active 2026-01-01: ACV 1000 + 200 = 1200
        expand("C1", "2025-09-01", "200.00"),
        expand("C1", "2026-03-01", "120.00"),  # upsell in 2026
        expand("C1", "2026-04-01", "-50.00"),  # downsell: not counted
        sign("C2", "R1", "2024-01-01", "500.00"),  # term ended 2024-12-31, lapsed: not active
        sign("C3", "R1", "2025-02-01", "300.00"),  # churned by 2026-01-01
        churn("C3", "2026-01-01"),
        sign("C4", "R1", "2026-01-02", "700.00"),  # signed after Jan 1: not in the base, its upsell counts
        expand("C4", "2026-05-01", "60.00"),
        sign("C5", "R2", "2025-06-01", "800.00"),  # R2's on Jan 1; moved to R1 before its upsell
        reassign("C5", "2026-02-01", "R1"),
        expand("C5", "2026-06-01", "100.00"),
    )
    assert value_of(s, "upsell_rate") == D("0.233333")  # 280 / 1200
    assert value_of(s, "upsell_rate", rep="R2") == 0  # 0 / 800
    assert value_of(s, "upsell_rate", year=2023) is None  # nothing active on 2023-01-01


def test_churn_rate() -> None:
    s = ledger(
        hire("R1"),
        sign("C1", "R1", "2025-06-01", "100.00"),
        sign("C2", "R1", "2025-07-01", "100.00"),
        sign("C3", "R1", "2025-08-01", "100.00"),
        sign("C4", "R1", "2025-09-01", "100.00"),
        churn("C1", "2026-03-01"),
    )
    assert value_of(s, "churn_rate") == D("0.25")
    assert value_of(s, "churn_rate", year=2024) is None


def test_gross_margin_average_acv_and_growth() -> None:
    s = ledger(
        hire("R1"),
        target("R1", 2026, "1000.00"),
        sign("C1", "R1", "2026-02-01", "100.00", gm="0.5"),
        sign("C2", "R1", "2026-03-01", "300.00"),
        sign("C3", "R1", "2026-04-01", "200.00", gm="0.25"),
        sign("C4", "R1", "2025-04-01", "400.00", gm="1"),
        sign("C5", "R1", "2026-04-01", "999.00", ccy="USD", gm="1"),
    )
    assert value_of(s, "gross_margin_contribution") == 100  # 100 x 0.5 + 200 x 0.25 (CNY, the target's currency)
    assert value_of(s, "average_acv") == 200  # (100 + 300 + 200) / 3
    assert value_of(s, "revenue_growth") == D("0.5")  # 600 / 400 - 1
    assert value_of(s, "revenue_growth", year=2025) is None  # nothing signed in 2024
    assert value_of(s, "average_acv", year=2027) is None


def test_money_kpis_need_one_currency() -> None:
    s = ledger(
        hire("R1"), sign("C1", "R1", "2026-02-01", "100.00"), sign("C2", "R1", "2026-02-01", "100.00", ccy="USD")
    )
    assert value_of(s, "average_acv") is None  # two currencies, no target to pick one
    assert value_of(s, "churn_rate", year=2027) == 0  # counts do not need a currency


def test_clv() -> None:
    s = ledger(
        hire("R1"),
        # A1: 1000 x (12 + 24)/12 years x 0.5 - 200 service = 1300
        sign("C1", "R1", "2025-01-01", "1000.00", account="A1", gm="0.5"),
        renew("C1", "2026-01-01", "1000.00", term=24),
        {"type": "service.cost", "effective": "2026-06-01", "contract_id": "C1", "amount": "200.00"},
        # A2: churned 2026-07-01 -> ACV on 2026-06-30 = 600 x 1 year x 0.5 = 300
        sign("C2", "R1", "2026-01-01", "500.00", account="A2", gm="0.5"),
        expand("C2", "2026-02-01", "100.00"),
        churn("C2", "2026-07-01"),
        # no gross margin -> left out
        sign("C3", "R1", "2026-01-01", "9999.00", account="A3"),
    )
    assert value_of(s, "clv") == 800  # mean over accounts (1300 + 300) / 2
    assert value_of(s, "clv", year=2024) is None


def test_customer_concentration() -> None:
    s = ledger(
        hire("R1"),
        sign("C1", "R1", "2026-01-01", "300.00", account="A1"),
        sign("C2", "R1", "2026-02-01", "300.00", account="A1"),
        sign("C3", "R1", "2026-03-01", "400.00", account="A2"),
        sign("C4", "R1", "2026-03-01", "5000.00", account="A3"),
        churn("C4", "2026-12-31"),
    )
    assert value_of(s, "customer_concentration") == D("0.6")  # A1 600 / 1000; C4 churned by Dec 31
    c = compute_scorecards(SPEC, s, 2026)[0]
    assert any("account A1 holds 60% " in w for w in c.warnings)
    quiet = ScorecardsSpec.model_validate({**SPEC.model_dump(), "concentration_warning": D("0.6")})
    assert not any("concentration" in w for w in compute_scorecards(quiet, s, 2026)[0].warnings)


def test_measured_kpi_latest_recorded_wins() -> None:
    s = ledger(
        hire("R1"), kpi("R1", 2026, "csat", "3.0", on="2026-12-31"), kpi("R1", 2026, "csat", "4.5", on="2026-06-30")
    )
    c = compute_scorecards(SPEC, s, 2026)[0]
    assert {k.name: k.value for k in c.kpis}["csat"] == D("4.5")  # recorded later, although dated earlier
    assert c.composite == D("150.00")


# --- roles -----------------------------------------------------------------------------------------


def _org() -> LedgerState:
    return ledger(
        hire("D1", "director"),
        hire("M1", "manager", "D1"),
        hire("M2", "manager", "D1"),
        hire("R1", "rep", "M1"),
        hire("R2", "rep", "M1"),
        hire("R3", "rep", "M2"),
        hire("R9", "rep", "M1", on="2027-01-01"),  # hired after 2026: not on the 2026 team
        target("R1", 2026, "100.00"),
        target("R2", 2026, "300.00"),
        target("R3", 2026, "100.00"),
        sign("C1", "R1", "2026-02-01", "150.00"),
        sign("C2", "R2", "2026-02-01", "250.00"),
        sign("C3", "R3", "2026-02-01", "50.00"),
        kpi("R1", 2026, "csat", "4.0"),
        kpi("R2", 2026, "csat", "5.0"),
        kpi("R3", 2026, "csat", "3.0"),
        kpi("M2", 2026, "csat", "4.4"),
    )


def test_manager_and_director_aggregate_the_team() -> None:
    s = _org()
    assert value_of(s, "revenue_attainment", rep="M1", role="manager") == 1  # (150 + 250) / (100 + 300)
    assert value_of(s, "revenue_attainment", rep="D1", role="director") == D("0.9")  # 450 / 500
    managers = compute_scorecards(SPEC, s, 2026, "manager")
    assert [c.rep_id for c in managers] == ["M1", "M2"]
    m1 = {k.name: k.value for k in card(managers, "M1").kpis}
    assert m1["csat"] == D("4.5")  # mean of the team's own measurements
    m2 = {k.name: k.value for k in card(managers, "M2").kpis}
    assert m2["csat"] == D("4.4")  # the manager's own measurement wins
    directors = compute_scorecards(SPEC, s, 2026, "director")
    assert [c.rep_id for c in directors] == ["D1"]
    assert {k.name: k.value for k in directors[0].kpis}["revenue_attainment"] == D("0.9")


def test_manager_own_target_takes_precedence() -> None:
    s = ledger(
        hire("M1", "manager"),
        hire("R1", "rep", "M1"),
        target("M1", 2026, "1000.00"),
        target("R1", 2026, "100.00"),
        sign("C1", "R1", "2026-02-01", "250.00"),
    )
    assert value_of(s, "revenue_attainment", rep="M1", role="manager") == D("0.25")


def test_compute_lists_role_reps_hired_by_year_end_sorted() -> None:
    s = ledger(hire("R2"), hire("R10"), hire("R1", on="2027-01-01"), hire("M1", "manager"))
    assert [c.rep_id for c in compute_scorecards(SPEC, s, 2026)] == ["R10", "R2"]
    assert all(c.composite is None for c in compute_scorecards(SPEC, s, 2026))
    with pytest.raises(ValueError, match="no scorecard for role"):
        compute_scorecards(parse_scorecards(_section()), s, 2026, "manager")


def test_entropy_weights_in_scorecards_constant_kpi_gets_zero() -> None:
    spec = parse_scorecards(
        {
            "roles": {
                "rep": {
                    "weights": {"method": "entropy"},
                    "kpis": [
                        _kpi(name="csat", weight=None),
                        _kpi(name="nps", weight=None, threshold=0, target=30, stretch=50),
                    ],
                }
            }
        }
    )
    s = ledger(
        hire("R1"),
        hire("R2"),
        kpi("R1", 2026, "csat", "4.0"),
        kpi("R2", 2026, "csat", "4.0"),
        kpi("R1", 2026, "nps", "10"),
        kpi("R2", 2026, "nps", "40"),
    )
    cards = compute_scorecards(spec, s, 2026)
    for c in cards:
        assert {k.name: k.weight for k in c.kpis} == {"csat": 0, "nps": 1}
    assert [c.composite for c in cards] == [D("66.67"), D("125.00")]


def test_json_output_is_json_ready() -> None:
    cards = compute_scorecards(SPEC, worked_state(), 2026)
    rows = scorecard_json(cards)
    text = json.dumps(rows)
    assert rows[0]["composite"] == "136.07" and rows[1]["composite"] is None
    assert rows[0]["kpis"][0] == {
        "name": "revenue_attainment",
        "perspective": "financial",
        "value": "1.2",
        "score": "150",
        "weight": "0.571429",
    }
    components = cards[0].components()
    assert json.loads(json.dumps(components)) == components
    assert "136.07" in text
    # components fit in a scorecard.published event
    event = FACT_ADAPTER.validate_python(
        {
            "type": "scorecard.published",
            "effective": "2027-01-01",
            "rep_id": "R1",
            "year": 2026,
            "composite": str(cards[0].composite),
            "components": components,
        }
    )
    assert event.composite == D("136.07")


# --- properties ------------------------------------------------------------------------------------

ENTROPY_SPEC = parse_scorecards(
    {
        "roles": {
            "rep": {
                "weights": {
                    "method": "combined",
                    "methods": [{"method": "fixed", "share": 1}, {"method": "entropy", "share": 1}],
                },
                "kpis": [k.model_dump() for k in SPEC.roles["rep"].kpis],
            }
        },
    }
)


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Hires, and independent chains of events (order inside a chain matters, across chains it must not)."""
    reps = [f"R{i}" for i in range(draw(st.integers(1, 4)))]
    hires = [hire(r, on="2024-01-01") for r in reps]
    chains: list[list[dict[str, Any]]] = []
    day = st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 6, 30))
    for r in reps:
        if draw(st.booleans()):
            chains.append([target(r, 2026, f"{draw(st.integers(1, 50)) * 10000}.00")])
        for name, lo, hi in (("csat", 1, 5), ("nps", -100, 100)):
            if draw(st.booleans()):
                chains.append([kpi(r, 2026, name, str(draw(st.integers(lo, hi))))])
        if draw(st.integers(0, 4)) == 0:
            chains.append([violation(r, draw(day).isoformat())])
    for i in range(draw(st.integers(0, 6))):
        cid = f"C{i}"
        signed = draw(st.dates(min_value=date(2024, 6, 1), max_value=date(2026, 12, 31)))
        term = draw(st.sampled_from([6, 12, 24]))
        acv = draw(st.integers(10, 500)) * 1000
        chain = [
            sign(
                cid,
                draw(st.sampled_from(reps)),
                signed.isoformat(),
                f"{acv}.00",
                term=term,
                account=f"A{draw(st.integers(0, 3))}",
            )
        ]
        last = signed
        if draw(st.booleans()):
            last = signed + timedelta(days=draw(st.integers(1, 300)))
            delta = draw(st.integers(-acv // 2000, acv // 1000)) * 1000 or 1000
            chain.append(expand(cid, last.isoformat(), f"{delta}.00"))
        if draw(st.booleans()):
            last = max(last, signed + timedelta(days=30 * term + draw(st.integers(-60, 120))))
            chain.append(renew(cid, last.isoformat(), f"{draw(st.integers(10, 500)) * 1000}.00"))
        if len(reps) > 1 and draw(st.booleans()):
            last = last + timedelta(days=draw(st.integers(1, 200)))
            chain.append(reassign(cid, last.isoformat(), draw(st.sampled_from(reps))))
        if draw(st.booleans()):
            chain.append(churn(cid, (last + timedelta(days=draw(st.integers(1, 400)))).isoformat()))
        chains.append(chain)
    return hires, chains


def _results(state: LedgerState) -> list[Any]:
    return [
        scorecard_json(compute_scorecards(spec, state, year)) for spec in (SPEC, ENTROPY_SPEC) for year in (2026, 2027)
    ]


@settings(max_examples=30, deadline=None)
@given(ledgers(), st.data())
def test_composites_bounded_and_independent_of_event_and_rep_order(
    built: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]], data: st.DataObject
) -> None:
    hires, chains = built
    canonical = ledger(*hires, *(e for chain in chains for e in chain))
    expected = _results(canonical)
    for rows in expected:
        for row in rows:
            if row["composite"] is not None:
                assert D(0) <= D(row["composite"]) <= D(150)
    # Another order: hires permuted, chains interleaved at random (each chain keeps its own order).
    tokens = data.draw(st.permutations([i for i, chain in enumerate(chains) for _ in chain]))
    queues = [list(chain) for chain in chains]
    shuffled = [queues[i].pop(0) for i in tokens]
    other = ledger(*data.draw(st.permutations(hires)), *shuffled)
    assert _results(other) == expected


def test_director_team_target_never_double_counts() -> None:
    s = ledger(
        hire("D1", "director"),
        hire("M1", "manager", "D1"),
        hire("M2", "manager", "D1"),
        hire("R1", "rep", "M1"),
        hire("R2", "rep", "M2"),
        target("M1", 2026, "400.00"),  # M1's team target replaces R1's
        target("R1", 2026, "100.00"),
        target("R2", 2026, "100.00"),  # M2 has none: R2's counts
        sign("C1", "R1", "2026-02-01", "250.00"),
        sign("C2", "R2", "2026-02-01", "250.00"),
    )
    assert value_of(s, "revenue_attainment", rep="D1", role="director") == 1  # 500 / (400 + 100)
    assert value_of(s, "revenue_attainment", rep="M1", role="manager") == D("0.625")
    # a team target in two currencies gives no value
    s2 = ledger(
        hire("M1", "manager"),
        hire("R1", "rep", "M1"),
        hire("R2", "rep", "M1"),
        target("R1", 2026, "100.00"),
        target("R2", 2026, "100.00", ccy="USD"),
    )
    assert value_of(s2, "revenue_attainment", rep="M1", role="manager") is None


@settings(max_examples=40, deadline=None)
@given(ledgers(), st.integers(1, 3))
def test_each_scope_reads_every_contract_its_kpis_can_count(
    built: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]], managers: int
) -> None:
    """A scope reads only the contracts its members sold or were ever assigned (``_book``): its KPIs,
    concentration included, equal the same KPIs over every contract of the ledger, for every holder of
    every role (a manager's team, a director's whole organisation) and year."""
    hires, chains = built
    staff = [hire("D0", "director"), *(hire(f"M{m}", "manager", "D0") for m in range(managers))]
    for i, h in enumerate(hires):
        h["manager_id"] = f"M{i % managers}"
    state = ledger(*staff, *hires, *(e for chain in chains for e in chain))
    everything = tuple(sorted(state.contracts.values(), key=lambda c: c.contract_id))
    for year in (2025, 2026, 2027):
        book = _book(state, year)
        for person in state.reps.values():
            scope = _make_scope(state, person.rep_id, person.role, year, book)
            wide = replace(scope, contracts=everything)
            assert {c.contract_id for c in scope.contracts} <= {c.contract_id for c in everything}
            for name, kpi in DERIVED_KPIS.items():
                assert kpi(scope) == kpi(wide), (person.rep_id, year, name)
            assert concentration(scope) == concentration(wide)
