"""The auditor's toolkit: explain names the right facts, reproduce survives plan changes and catches
tampering, export verifies with the documented script, manual adjustments become manual lines."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from incentive_engine.core.dates import periods_between
from incentive_engine.shell.store import Ledger

from .cli import incentive, ok
from .ledgers import REFERENCE_PLAN, WORKED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def worked_db(tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'ledger.db'}"
    ok("init", db=db)
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    ok("scorecard", "publish", "2026", db=db)
    for p in periods_between("2026-01", "2027-11"):
        ok("cycle", "close", p, db=db)
    ok("ingest", str(WORKED / "02-late-renewal.jsonl"), db=db)
    for p in periods_between("2027-12", "2028-12"):
        ok("cycle", "close", p, db=db)
    return db


def explain(db: str, period: str, rep: str, obligation: str) -> dict:
    out = json.loads(ok("explain", period, rep, "--obligation", obligation, "--format", "json", db=db))
    (item,) = out["items"]
    return item


def fact_types(item: dict) -> list[str]:
    return [f["type"] for f in item["facts"]]


def test_explain_churn_forfeiture(worked_db):
    item = explain(worked_db, "2028-01", "R1", "C1/tranche/2")
    assert (item["status"], item["rule"]) == ("forfeited", "churned")
    assert fact_types(item) == ["contract.churned"]
    assert "effective 2027-09-30" in item["facts"][0]["text"] and "moved to a competitor" in item["facts"][0]["text"]


def test_explain_late_renewal_true_up(worked_db):
    item = explain(worked_db, "2027-12", "R3", "C4/tranche/1")
    assert item["line"]["kind"] == "payment" and item["line"]["amount"] == "1375.00"
    assert "contract.renewed" in fact_types(item)
    renewal = next(f for f in item["facts"] if f["type"] == "contract.renewed")
    assert "effective 2027-08-20, ACV 110,000.00" in renewal["text"]
    assert item["factors"] == {"nrr": "1.1", "service": "1.0", "score": "1.0"}


def test_explain_veto(worked_db):
    item = explain(worked_db, "2028-03", "R2", "C2/tranche/2")
    assert (item["rule"], item["reason"]) == ("rep_veto", "compliance_veto")
    assert fact_types(item) == ["compliance.violation"]
    assert "gift to the buyer's procurement lead" in item["facts"][0]["text"]


def test_explain_early_churn_clawback(worked_db):
    item = explain(worked_db, "2026-05", "R3", "C3/upfront")
    assert item["line"]["kind"] == "clawback" and item["rule"] == "early_churn"
    assert item["changed_by"] and "contract.churned" in item["changed_by"][0]
    assert "effective 2026-05-01" in item["changed_by"][0]


def test_explain_scorecard_gate(tmp_path):
    db = f"sqlite:///{tmp_path / 'gate.db'}"
    ok("init", db=db)
    facts = tmp_path / "gate.jsonl"
    facts.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"type": "rep.hired", "effective": "2025-01-01", "rep_id": "R1", "name": "A", "role": "rep"},
                {
                    "type": "contract.signed",
                    "effective": "2026-01-15",
                    "contract_id": "C1",
                    "account_id": "A1",
                    "rep_id": "R1",
                    "acv": "100000.00",
                    "currency": "CNY",
                    "term_months": 24,
                },
                {
                    "type": "scorecard.published",
                    "effective": "2027-01-01",
                    "rep_id": "R1",
                    "year": 2026,
                    "composite": "42.5",
                },
            ]
        )
        + "\n"
    )
    ok("ingest", str(facts), db=db)
    ok("cycle", "close", "2027-01", db=db)
    item = explain(db, "2027-01", "R1", "C1/tranche/1")
    assert (item["status"], item["rule"]) == ("forfeited", "scorecard_gate")
    assert "scorecard.published" in fact_types(item) and "composite 42.5" in item["computation"] + str(item["facts"])
    table = ok("explain", "2027-01", "R1", db=db)
    assert "scorecard_gate" in table and "scorecard.published at position 3" in table


def test_reproduce_uses_the_registered_plan_after_rules_change(worked_db, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    changed = REFERENCE_PLAN.read_text().replace("new_business_rate: 0.10", "new_business_rate: 0.12")
    (rules / "reference.yaml").write_text(changed)
    assert "reproduce exactly" in ok("--rules", str(rules), "audit", "reproduce", "--all", db=worked_db)
    # ...while a preview under the changed file does pay differently (the change is real)
    preview = json.loads(ok("--rules", str(rules), "cycle", "preview", "2029-01", "--format", "json", db=worked_db))
    assert any(x["kind"] == "adjustment" for x in preview["lines"])


def test_tampering_with_issued_lines_is_caught_by_verify_and_reproduce(worked_db, tmp_path):
    copy = tmp_path / "tampered.db"
    with sqlite3.connect(worked_db.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # a consistent copy (the ledger runs in WAL mode)
    db = f"sqlite:///{copy}"
    led = Ledger(db)
    with led.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_event_no_update")
        row = conn.execute(
            text("SELECT position, payload FROM ledger_event WHERE type='cycle.closed' AND stream_id='cycle:2027-01'")
        ).one()
        payload = row.payload.replace('"amount":"22500.00"', '"amount":"32500.00"')
        assert payload != row.payload
        conn.execute(text("UPDATE ledger_event SET payload=:p WHERE position=:n"), {"p": payload, "n": row.position})
    led.dispose()
    r = incentive("audit", "verify", db=db)
    assert r.code == 1 and f"position {row.position}" in r.err
    r = incentive("audit", "reproduce", "2027-01", db=db)
    assert r.code == 1 and "C1/tranche/1" in r.err and "32500.00" in r.err
    # --all folds the ledger once for every cycle: the same differences as each cycle reproduced alone
    # (the cycles after 2027-01 differ too: what they count as paid before comes from the altered lines)
    from incentive_engine.shell import audit, service

    state = service.load_state(led)
    periods = sorted(state.cycles)
    alone = [audit.reproduce(led, state, p) for p in periods]
    assert audit.reproduce_all(led, state, periods) == alone
    differing = [x.period for x in alone if not x.identical]
    assert differing[0] == "2027-01" and "2026-12" not in differing
    r = incentive("audit", "reproduce", "--all", db=db)
    assert r.code == 1 and f"{len(differing)} of 36 closed cycles do not reproduce" in r.err, r
    assert "line R1/C1/tranche/1: amount issued '32500.00' recomputed '22500.00'" in r.err


def test_reproducing_every_cycle_from_one_fold_equals_reproducing_each(worked_db):
    """``reproduce_all`` folds on from one cycle's position to the next; each result is ``reproduce``'s,
    which folds the prefix from position 1 (periods asked in any order)."""
    from incentive_engine.shell import audit, service

    led = Ledger(worked_db)
    state = service.load_state(led)
    periods = sorted(state.cycles, reverse=True)
    assert len(periods) == 36
    assert audit.reproduce_all(led, state, periods) == [audit.reproduce(led, state, p) for p in periods]


def test_export_verifies_with_the_documented_script(worked_db, tmp_path):
    ok("audit", "export", "--out", str(tmp_path / "export"), db=worked_db)
    guide = (ROOT / "docs" / "auditor-guide.md").read_text()
    script = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    assert len([x for x in script.splitlines() if x.strip()]) <= 30
    (tmp_path / "verify.py").write_text(script)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "verify.py"), str(tmp_path / "export")],
        capture_output=True,
        text=True,
        check=True,
    )
    head = Ledger(worked_db).head()
    assert run.stdout.strip() == f"OK {head[0]} events, head {head[1]}"
    lines = (tmp_path / "export" / "ledger.jsonl").read_text().splitlines()
    tampered = lines[0].replace('"name":"Li Wei"', '"name":"Li Wie"')
    assert tampered != lines[0]
    (tmp_path / "export" / "ledger.jsonl").write_text("\n".join([tampered, *lines[1:]]) + "\n")
    run = subprocess.run(
        [sys.executable, str(tmp_path / "verify.py"), str(tmp_path / "export")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "FAILED at position 1"


def test_manual_adjustment_becomes_a_manual_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'adj.db'}"
    ok("init", db=db)
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    ok("cycle", "close", "2026-02", db=db)
    adj = tmp_path / "adj.jsonl"
    adj.write_text(
        json.dumps(
            {
                "type": "adjustment.recorded",
                "effective": "2026-02-20",
                "event_id": "adj-7",
                "rep_id": "R3",
                "amount": "-1200.50",
                "currency": "CNY",
                "reason": "duplicate travel allowance",
                "approved_by": "CFO",
            }
        )
        + "\n"
    )
    ok("ingest", str(adj), db=db)
    out = json.loads(ok("cycle", "close", "2026-03", "--format", "json", db=db))
    manual = [x for x in out["lines"] if x["kind"] == "manual"]
    assert manual == [
        {
            "rep_id": "R3",
            "contract_id": None,
            "obligation": "ADJ/adj-7",
            "kind": "manual",
            "amount": "-1200.50",
            "currency": "CNY",
            "reason": "duplicate travel allowance",
        }
    ]
    assert json.loads(ok("cycle", "close", "2026-04", "--format", "json", db=db))["lines"] == []
    item = explain(db, "2026-03", "R3", "ADJ/adj-7")
    assert "approved by CFO" in item["computation"]
    r = incentive("ingest", str(tmp_path / "noid.jsonl"), db=db)
    assert r.code == 1
    (tmp_path / "noid.jsonl").write_text(
        json.dumps(
            {
                "type": "adjustment.recorded",
                "effective": "2026-02-20",
                "rep_id": "R3",
                "amount": "5.00",
                "currency": "CNY",
                "reason": "x",
                "approved_by": "CFO",
            }
        )
        + "\n"
    )
    r = incentive("ingest", str(tmp_path / "noid.jsonl"), db=db)
    assert r.code == 1 and "event_id" in r.err


def test_explain_a_settled_obligation_and_an_unknown_one(worked_db):
    item = explain(worked_db, "2028-06", "R1", "C1/upfront")  # paid in 2026-01, nothing since
    assert (item["status"], item["earned"], item["paid_to_date"], item["rule"]) == (
        "earned",
        "60000.00",
        "60000.00",
        "upfront",
    )
    assert "line" not in item and fact_types(item) == ["contract.signed"]
    r = incentive("explain", "2028-06", "R1", "--obligation", "C9/upfront", db=worked_db)
    assert r.code == 1 and "C9/upfront is not an obligation of R1 due by 2028-06" in r.err


@pytest.mark.parametrize(
    "args",
    [("explain", "R1", "2026-03"), ("statement", "R1", "--through", "March")],
    ids=["explain", "statement"],
)
def test_a_bad_period_is_refused_before_the_ledger_is_replayed(worked_db, monkeypatch, args):
    """A typo is told at once: on a large ledger the replay takes seconds to minutes (14 s at M)."""
    from incentive_engine.shell import service

    def replay(*_a, **_k):
        raise AssertionError("replayed before checking the period")

    monkeypatch.setattr(service, "load_state", replay)
    r = incentive(*args, db=worked_db)
    assert r.code != 0 and "period must be YYYY-MM" in r.out + r.err, r


def test_explain_reads_every_contract_its_rep_is_paid_for(tmp_path, monkeypatch):
    """explain evaluates only the contracts the rep sold or was ever assigned: the same items as with every
    contract of the ledger read, for every rep and month, and a renewal paid to the rep a contract was
    reassigned to is among them."""
    from incentive_engine.core.projections import LedgerState

    db = f"sqlite:///{tmp_path / 'reassigned.db'}"
    facts = [
        *(
            {"type": "rep.hired", "effective": "2025-01-01", "rep_id": r, "name": r, "role": "rep"}
            for r in ("R1", "R2", "R3")
        ),
        *(
            {
                "type": "contract.signed",
                "effective": "2026-01-15",
                "contract_id": cid,
                "account_id": "A" + cid,
                "rep_id": rep,
                "acv": "120000.00",
                "currency": "CNY",
                "term_months": 12,
            }
            for cid, rep in (("C1", "R1"), ("C2", "R3"))
        ),
        {"type": "contract.reassigned", "effective": "2026-06-01", "contract_id": "C1", "rep_id": "R2"},
        {
            "type": "contract.renewed",
            "effective": "2027-01-15",
            "contract_id": "C1",
            "acv": "150000.00",
            "term_months": 12,
        },
        {"type": "contract.churned", "effective": "2026-09-30", "contract_id": "C2"},
    ]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(f) for f in facts) + "\n")
    ok("init", db=db)
    ok("ingest", str(path), db=db)
    months = periods_between("2026-01", "2027-02")
    for p in months[:-1]:
        ok("cycle", "close", p, db=db)  # the last month stays open: explained as a preview

    def explained() -> list[dict]:
        return [json.loads(ok("explain", p, r, "--format", "json", db=db)) for p in months for r in ("R1", "R2", "R3")]

    narrow = explained()
    with monkeypatch.context() as m:
        m.setattr(
            LedgerState, "contracts_by_person", lambda self: {r: list(self.contracts.values()) for r in self.reps}
        )
        assert explained() == narrow
    renewal = [item for e in narrow if e["rep_id"] == "R2" and e["period"] == "2027-01" for item in e["items"]]
    assert [i["obligation"] for i in renewal] == ["C1/renewal/2027-01-15"]
