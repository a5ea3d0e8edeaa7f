"""The demo generator: deterministic, schema-valid, valid to ingest batch by batch, and rich in features.

``check_ledger`` re-implements, plainly and on its own, the rules the ingest enforces, walking the batches
in order; ``features`` counts what the ledger exercises.
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from incentive_engine.core.events import FACT_ADAPTER
from incentive_engine.demo import DemoBatch, DemoLedger, generate, write_batches

MONEY = re.compile(r"^-?\d+\.\d{2}$")
MONEY_FIELDS = {
    "target.set": "amount",
    "contract.signed": "acv",
    "contract.renewed": "acv",
    "contract.expanded": "acv_delta",
    "service.cost": "amount",
    "adjustment.recorded": "amount",
}
CONTRACT_EVENTS = ("contract.renewed", "contract.expanded", "contract.churned", "contract.reassigned", "service.cost")
REP_EVENTS = ("target.set", "kpi.measured", "compliance.violation", "adjustment.recorded", "scorecard.published")


def d(text: str) -> date:
    return date.fromisoformat(text)


def period_end(period: str) -> date:
    y, m = int(period[:4]), int(period[5:])
    return date(y, m, calendar.monthrange(y, m)[1])


def previous_period_end(period: str) -> date:
    y, m = int(period[:4]), int(period[5:])
    return date(y, m, 1) - timedelta(days=1)


def acv_on(c: dict[str, Any], day: date) -> Decimal:
    """ACV set by the latest signing/renewal <= day, plus the expansions after that date and <= day."""
    base_date, acv = c["signed"], c["acv0"]
    for when, value in sorted(c["renewals"], key=lambda r: r[0]):
        if when <= day:
            base_date, acv = when, value
    for when, delta in c["expansions"]:
        if base_date < when <= day:
            acv += delta
    return acv


def employed(rep: dict[str, Any] | None, day: date) -> bool:
    return rep is not None and rep["hired"] <= day and (rep["terminated"] is None or rep["terminated"] > day)


def check_ledger(ledger: DemoLedger, first_year: int, years: int) -> list[str]:
    """Every violation of the ingest rules, reading the batches in order as the ingest would."""
    problems: list[str] = []
    expected = [f"{y}-{m:02d}" for y in range(first_year, first_year + years) for m in range(1, 13)]
    if [b.period for b in ledger.batches] != expected:
        problems.append("batches are not one per month over the years")
    reps: dict[str, dict[str, Any]] = {}
    contracts: dict[str, dict[str, Any]] = {}
    by_event_id: dict[str, str] = {}
    without_id: set[str] = set()

    for batch in ledger.batches:
        end = period_end(batch.period)
        for n, e in enumerate(batch.events):
            where = f"{batch.period}#{n} {e.get('type')}"
            try:
                FACT_ADAPTER.validate_python(e)
            except Exception as exc:  # pragma: no cover - reported as a problem
                problems.append(f"{where}: invalid: {exc}")
                continue
            t = e["type"]
            eff = d(e["effective"])
            if eff > end:
                problems.append(f"{where}: effective {eff} after the end of its batch {end}")
            content = json.dumps(e, sort_keys=True)
            if e.get("event_id"):
                if e["event_id"] in by_event_id:
                    problems.append(f"{where}: event_id {e['event_id']} used twice")
                by_event_id[e["event_id"]] = content
            else:
                if content in without_id:
                    problems.append(f"{where}: identical content twice without event_id")
                without_id.add(content)
            if t in MONEY_FIELDS and not MONEY.match(e[MONEY_FIELDS[t]]):
                problems.append(f"{where}: money {e[MONEY_FIELDS[t]]!r} is not a string with 2 decimals")
            if "currency" in e and e["currency"] not in ("CNY", "USD"):
                problems.append(f"{where}: currency {e['currency']}")

            if t == "rep.hired":
                if e["rep_id"] in reps:
                    problems.append(f"{where}: {e['rep_id']} hired twice")
                if e.get("manager_id") and e["manager_id"] not in reps:
                    problems.append(f"{where}: manager {e['manager_id']} not hired before")
                reps[e["rep_id"]] = {"hired": eff, "terminated": None, **e}
            elif t == "rep.terminated":
                rep = reps.get(e["rep_id"])
                if rep is None:
                    problems.append(f"{where}: unknown rep {e['rep_id']}")
                elif rep["terminated"] is not None:
                    problems.append(f"{where}: {e['rep_id']} terminated twice")
                elif eff < rep["hired"]:
                    problems.append(f"{where}: termination before the hire")
                else:
                    rep["terminated"] = eff
                    rep["leaver"] = e["leaver"]
            elif t == "contract.signed":
                if e["contract_id"] in contracts:
                    problems.append(f"{where}: {e['contract_id']} signed twice")
                    continue
                if not employed(reps.get(e["rep_id"]), eff):
                    problems.append(f"{where}: rep {e['rep_id']} not employed on {eff}")
                contracts[e["contract_id"]] = {
                    "signed": eff,
                    "currency": e["currency"],
                    "acv0": Decimal(e["acv"]),
                    "renewals": [],
                    "expansions": [],
                    "churn": None,
                    "seller": e["rep_id"],
                    "owners": [],
                }
            elif t in CONTRACT_EVENTS:
                c = contracts.get(e["contract_id"])
                if c is None:
                    problems.append(f"{where}: unknown contract {e['contract_id']}")
                    continue
                if eff < c["signed"]:
                    problems.append(f"{where}: before the signing")
                if c["churn"] is not None and c["churn"] <= eff:
                    problems.append(f"{where}: contract churned on {c['churn']}")
                if t == "contract.renewed":
                    if eff <= c["signed"]:
                        problems.append(f"{where}: renewal not after the signing")
                    c["renewals"].append((eff, Decimal(e["acv"])))
                elif t == "contract.expanded":
                    c["expansions"].append((eff, Decimal(e["acv_delta"])))
                elif t == "contract.churned":
                    c["churn"] = eff
                elif t == "contract.reassigned":
                    if not employed(reps.get(e["rep_id"]), eff):
                        problems.append(f"{where}: reassigned to {e['rep_id']}, not employed on {eff}")
                    c["owners"].append((eff, e["rep_id"]))
                if t in ("contract.renewed", "contract.expanded"):
                    dates = {c["signed"], *(r[0] for r in c["renewals"]), *(x[0] for x in c["expansions"])}
                    for day in dates:
                        if acv_on(c, day) <= 0:
                            problems.append(f"{where}: ACV of {e['contract_id']} falls to {acv_on(c, day)} on {day}")
            elif t in REP_EVENTS:
                if e["rep_id"] not in reps:
                    problems.append(f"{where}: unknown rep {e['rep_id']}")
                if e.get("contract_id") and e["contract_id"] not in contracts:
                    problems.append(f"{where}: unknown contract {e['contract_id']}")
                c = contracts.get(e.get("contract_id") or "")
                if t == "adjustment.recorded" and c is not None and c["currency"] != e["currency"]:
                    problems.append(f"{where}: currency differs from the contract's")
                if t == "kpi.measured":
                    value = Decimal(e["value"])
                    if e["kpi"] == "csat" and not (1 <= value <= 5 and value == round(value, 1)):
                        problems.append(f"{where}: csat {value}")
                    if e["kpi"] == "nps" and not (-100 <= value <= 100 and value == int(value)):
                        problems.append(f"{where}: nps {value}")
                if t == "target.set" and "region" in reps.get(e["rep_id"], {}):
                    usd = reps[e["rep_id"]]["region"] == "west"
                    if e["currency"] != ("USD" if usd else "CNY"):
                        problems.append(f"{where}: target not in the rep's currency")
            else:
                problems.append(f"{where}: unexpected type")
    return problems


def features(ledger: DemoLedger) -> Counter[str]:
    """How often each case of the reference plan appears in the ledger."""
    out: Counter[str] = Counter()
    left = {e["rep_id"]: d(e["effective"]) for e in ledger.all_events() if e["type"] == "rep.terminated"}
    contracts: dict[str, dict[str, Any]] = {}
    for batch in ledger.batches:
        for e in batch.events:
            t, eff = e["type"], d(e["effective"])
            out[t] += 1
            if t == "rep.hired":
                out[f"role_{e['role']}"] += 1
            elif t == "rep.terminated":
                out[f"leaver_{e['leaver']}"] += 1
            elif t == "contract.signed":
                contracts[e["contract_id"]] = {
                    "signed": eff,
                    "acv0": Decimal(e["acv"]),
                    "renewals": [],
                    "expansions": [],
                    "owner": e["rep_id"],
                }
                out[f"currency_{e['currency']}"] += 1
                out[f"term_{e['term_months']}"] += 1
            elif t == "contract.renewed":
                c = contracts[e["contract_id"]]
                c["renewals"].append((eff, Decimal(e["acv"])))
                if eff.strftime("%Y-%m") < batch.period:
                    out["renewal_late"] += 1
                    if previous_period_end(batch.period) > eff - timedelta(days=1) + timedelta(days=90):
                        out["renewal_late_beyond_grace"] += 1
                else:
                    out["renewal_on_time"] += 1
            elif t == "contract.expanded":
                contracts[e["contract_id"]]["expansions"].append((eff, Decimal(e["acv_delta"])))
                out["downsell" if Decimal(e["acv_delta"]) < 0 else "upsell"] += 1
            elif t == "contract.churned":
                c = contracts[e["contract_id"]]
                out["churn_early" if eff < c["signed"] + timedelta(days=180) else "churn_late"] += 1
            elif t == "contract.reassigned":
                c = contracts[e["contract_id"]]
                gone = left.get(c["owner"])
                out["reassign_leaver" if gone is not None and gone <= eff else "reassign_rotation"] += 1
                c["owner"] = e["rep_id"]
            elif t == "service.cost":
                c = contracts[e["contract_id"]]
                if Decimal(e["amount"]) > Decimal("0.2") * acv_on(c, eff):
                    out["service_cost_above_20pct"] += 1
            elif t == "compliance.violation":
                scope = "contract" if e.get("contract_id") else "rep"
                out[f"{e['severity']}_{scope}"] += 1
            if not e.get("event_id"):
                out["without_event_id"] += 1
    return out


REQUIRED = (
    "renewal_on_time",
    "renewal_late",
    "renewal_late_beyond_grace",
    "churn_early",
    "churn_late",
    "reassign_leaver",
    "reassign_rotation",
    "veto_contract",
    "veto_rep",
    "warning_contract",
    "warning_rep",
    "leaver_good",
    "leaver_bad",
    "currency_USD",
    "currency_CNY",
    "downsell",
    "upsell",
    "service_cost_above_20pct",
    "adjustment.recorded",
    "target.set",
    "kpi.measured",
    "without_event_id",
)


@pytest.fixture(scope="module")
def default_ledger() -> DemoLedger:
    return generate(7)


@pytest.fixture(scope="module")
def small_ledger() -> DemoLedger:
    return generate(7, reps=12, contracts=60)


def test_deterministic_for_a_seed(default_ledger: DemoLedger) -> None:
    assert generate(7).all_events() == default_ledger.all_events()
    assert generate(8).all_events() != default_ledger.all_events()
    assert generate(3, reps=12, contracts=60) == generate(3, reps=12, contracts=60)


def test_default_shape(default_ledger: DemoLedger) -> None:
    assert len(default_ledger.batches) == 60
    assert default_ledger.batches[0].period == "2026-01" and default_ledger.batches[-1].period == "2030-12"
    assert all(isinstance(b, DemoBatch) and isinstance(b.events, tuple) for b in default_ledger.batches)
    counts = features(default_ledger)
    assert counts["contract.signed"] >= 400
    assert counts["role_director"] == 1 and counts["role_manager"] == 4
    assert 35 <= counts["role_rep"] <= 45
    json.dumps(default_ledger.all_events())  # JSON-ready


@pytest.mark.parametrize("which", ["default_ledger", "small_ledger"])
def test_valid_to_ingest_batch_by_batch(which: str, request: pytest.FixtureRequest) -> None:
    ledger = request.getfixturevalue(which)
    assert check_ledger(ledger, 2026, 5) == []


@pytest.mark.parametrize("which", ["default_ledger", "small_ledger"])
def test_every_feature_appears(which: str, request: pytest.FixtureRequest) -> None:
    counts = features(request.getfixturevalue(which))
    missing = [f for f in REQUIRED if counts[f] < 1]
    assert missing == [], f"missing {missing} in {dict(counts)}"
    assert counts["veto_contract"] + counts["veto_rep"] >= 3
    assert counts["warning_contract"] + counts["warning_rep"] >= 5


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 42])
def test_other_seeds_and_sizes_are_valid(seed: int) -> None:
    small = generate(seed, reps=12, contracts=60, first_year=2027, years=3)
    assert check_ledger(small, 2027, 3) == []
    assert [f for f in REQUIRED if features(small)[f] < 1] in ([], ["renewal_late_beyond_grace"])
    tiny = generate(seed, reps=6, contracts=8, years=2)
    assert check_ledger(tiny, 2026, 2) == []
    one_year = generate(seed, reps=9, contracts=30, years=1)
    assert check_ledger(one_year, 2026, 1) == []


def test_larger_ledger_is_valid() -> None:
    ledger = generate(5, reps=150, contracts=2500, years=4)
    assert check_ledger(ledger, 2026, 4) == []


def test_write_batches(tmp_path: Path, small_ledger: DemoLedger) -> None:
    paths = write_batches(small_ledger, tmp_path / "out")
    non_empty = [b for b in small_ledger.batches if b.events]
    assert [p.name for p in paths] == [f"{b.period}.jsonl" for b in non_empty]
    for path, batch in zip(paths, non_empty, strict=True):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == list(batch.events)
