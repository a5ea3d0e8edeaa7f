"""The worked example (../shared/examples/worked/) through the real CLI on a fresh SQLite ledger."""

from __future__ import annotations

import json

import pytest

from incentive_engine.core.dates import period_end, periods_between

from .cli import incentive, ok
from .conftest import module_pg_database
from .ledgers import SHARED_WORKED, WORKED


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def worked(request, tmp_path_factory, _pg_admin):
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path_factory.mktemp('worked') / 'ledger.db'}"
    else:
        db = module_pg_database(request, _pg_admin)
    ok("init", db=db)
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    published = ok("scorecard", "publish", "2026", db=db)
    outputs = {}
    for p in periods_between("2026-01", "2027-11"):
        outputs[p] = json.loads(ok("cycle", "close", p, "--format", "json", db=db))
    ok("ingest", str(WORKED / "02-late-renewal.jsonl"), db=db)
    for p in periods_between("2027-12", "2030-12"):
        outputs[p] = json.loads(ok("cycle", "close", p, "--format", "json", db=db))
    return db, outputs, published


def test_scorecard_2026_for_r1_is_136_07(worked):
    db, _, published = worked
    assert "Published 1 scorecard" in published
    rows = json.loads(ok("scorecard", "compute", "2026", "--role", "rep", "--format", "json", db=db))
    by_rep = {r["rep_id"]: r for r in rows}
    assert by_rep["R1"]["composite"] == "136.07"
    assert by_rep["R2"]["composite"] is None and by_rep["R3"]["composite"] is None


def test_every_month_issues_exactly_the_expected_lines_and_totals(worked):
    _, outputs, _ = worked
    expected = {x["period"]: x for x in json.loads((WORKED / "expected-lines.json").read_text())}
    for period, out in outputs.items():
        assert out["status"] == "closed"
        assert out["as_of"] == period_end(period).isoformat()
        want = expected.get(period, {"lines": [], "totals": []})
        assert out["lines"] == want["lines"], period
        assert out["totals"] == want["totals"], period


def test_held_and_forfeited_obligations_match(worked):
    _, outputs, _ = worked
    expected = {x["period"]: x for x in json.loads((WORKED / "expected-evaluations.json").read_text())}
    previous: dict[str, str] = {}
    for period, out in outputs.items():
        want = expected.get(period, {"evaluations": [], "newly_held_or_forfeited": []})
        assert out["evaluations"] == want["evaluations"], period
        status = {e["obligation"]: e["status"] for e in out["evaluations"]}
        newly = sorted(o for o, s in status.items() if s in ("held", "forfeited") and previous.get(o) != s)
        assert newly == sorted(want["newly_held_or_forfeited"]), period
        previous = status


def test_the_numbers_the_readme_describes(worked):
    """Derived from the spec by hand (reference-plan.md), independently of the expected files."""
    _, outputs, _ = worked
    lines = {(p, x["obligation"]): x for p, out in outputs.items() for x in out["lines"]}
    assert lines[("2026-01", "C1/upfront")]["amount"] == "60000.00"  # 10% x 1,200,000 x 50%
    assert lines[("2027-01", "C1/tranche/1")]["amount"] == "22500.00"  # 15,000 x NRR 1.25 x score 1.2
    assert lines[("2027-01", "C1/renewal/2027-01-15")]["amount"] == "45000.00"  # 3% x 1,500,000
    assert lines[("2026-03", "C2/upfront")]["amount"] == "16666.67"  # round(33,333.33 x 0.5) half-up
    assert lines[("2027-03", "C2/tranche/1")]["amount"] == "3333.34"  # 4,166.67 x service 0.8
    assert lines[("2026-05", "C3/upfront")]["kind"] == "clawback"
    assert lines[("2027-12", "C4/tranche/1")]["amount"] == "1375.00"  # 1,250 x NRR 1.1, paid after all
    final = outputs["2030-12"]["totals"]
    assert final == [
        {
            "rep_id": "R3",
            "currency": "CNY",
            "lines_total": "0.00",
            "carried_in": "-15325.00",
            "payable": "0.00",
            "carried_out": "-15325.00",
        }
    ]


def test_closing_again_is_a_no_op_that_says_so(worked):
    db, outputs, _ = worked
    r = incentive("cycle", "close", "2027-01", "--format", "json", db=db)
    assert r.code == 0 and "already closed" in r.err
    again = json.loads(r.out)
    assert again["status"] == "already_closed"
    assert again["lines"] == outputs["2027-01"]["lines"] and again["totals"] == outputs["2027-01"]["totals"]
    assert (
        json.loads(ok("cycle", "show", "2027-01", "--format", "json", db=db))["evaluations"]
        == outputs["2027-01"]["evaluations"]
    )


def test_closing_out_of_order_is_refused(worked):
    db, _, _ = worked
    r = incentive("cycle", "preview", "2026-06", db=db)
    assert r.code == 1 and "already closed" in r.err


def test_audit_verify_and_reproduce_every_month(worked):
    db, _, _ = worked
    assert "hash chain intact" in ok("audit", "verify", db=db)
    assert "60 closed cycle(s) reproduce exactly" in ok("audit", "reproduce", "--all", db=db)
    assert ok("audit", "reproduce", "2027-12", db=db)


@pytest.mark.skipif(not SHARED_WORKED.is_dir(), reason="../shared is not next to this checkout")
def test_the_copy_of_the_worked_example_is_current():
    for f in SHARED_WORKED.iterdir():
        assert (WORKED / f.name).read_bytes() == f.read_bytes(), f.name
