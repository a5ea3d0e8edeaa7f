"""The demo end to end on a small seed, statements that agree with the cycles, the payroll export."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from incentive_engine.core.evaluation import commission_parts
from incentive_engine.core.statements import ESTIMATE_LABEL
from incentive_engine.shell import service
from incentive_engine.shell.plans import default_rules_dir, load_plans
from incentive_engine.shell.store import Ledger

from .cli import ok


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo") / "out"
    out = ok(
        "demo", "--dir", str(directory), "--seed", "3", "--reps", "12", "--contracts", "60", db="sqlite:///unused.db"
    )
    db = f"sqlite:///{directory / 'ledger.db'}"
    return directory, db, out


def test_demo_runs_end_to_end_and_every_cycle_reproduces(demo):
    directory, db, out = demo
    assert "60 reproduced exactly" in out
    assert "OK: 60 closed cycle(s) reproduce exactly." in ok("audit", "reproduce", "--all", db=db)
    assert "hash chain intact" in ok("audit", "verify", db=db)
    assert len(list((directory / "statements").glob("*.html"))) == 14
    assert len(list((directory / "crm").glob("*.jsonl"))) >= 50


def test_demo_is_deterministic_for_a_seed(demo, tmp_path):
    _, db, _ = demo
    again = tmp_path / "again"
    ok("demo", "--dir", str(again), "--seed", "3", "--reps", "12", "--contracts", "60", db="sqlite:///unused.db")
    a = json.loads(ok("cycle", "show", "2030-12", "--format", "json", db=db))
    b = json.loads(ok("cycle", "show", "2030-12", "--format", "json", db=f"sqlite:///{again / 'ledger.db'}"))
    assert a == b
    for p in ("2027-06", "2029-01"):
        assert ok("cycle", "show", p, "--format", "json", db=db) == ok(
            "cycle", "show", p, "--format", "json", db=f"sqlite:///{again / 'ledger.db'}"
        )


def test_every_statement_agrees_with_the_cycles_lines(demo):
    _, db, _ = demo
    state = service.load_state(Ledger(db))
    lines: dict[tuple[str, str], Decimal] = {}
    payable: dict[tuple[str, str], Decimal] = {}
    for cycle in state.cycles.values():
        for x in cycle.lines:
            key = (x["rep_id"], x["currency"])
            lines[key] = lines.get(key, Decimal(0)) + Decimal(x["amount"])
        for t in cycle.totals:
            key = (t["rep_id"], t["currency"])
            payable[key] = payable.get(key, Decimal(0)) + Decimal(t["payable"])
    checked = set()
    for rep_id in sorted(state.reps):
        st = json.loads(ok("statement", rep_id, "--format", "json", db=db))
        for row in st["summary"]:
            key = (rep_id, row["currency"])
            assert Decimal(row["lines_total"]) == lines.get(key, 0), key
            assert Decimal(row["paid"]) == payable.get(key, 0), key
            # everything paid, net of what is still owed back, is what the lines add up to
            assert Decimal(row["paid"]) + Decimal(row["carried_balance"]) == lines.get(key, 0), key
            checked.add(key)
        per_contract = sum(Decimal(x["amount"]) for c in st["contracts"] for x in c["lines"])
        manual = sum(Decimal(x["amount"]) for x in st["manual_adjustments"])
        assert per_contract + manual == sum(v for (r, _), v in lines.items() if r == rep_id)
    assert checked == set(lines) | set(payable)


def test_estimate_is_labelled_and_equals_future_bases_times_current_factors(demo):
    _, db, _ = demo
    state = service.load_state(Ledger(db))
    book = load_plans(default_rules_dir())
    grand_total = Decimal(0)
    for seller in sorted({c.seller for c in state.contracts.values()}):
        st = json.loads(ok("statement", seller, "--through", "2028-06", "--format", "json", db=db))
        assert st["estimate_label"] == ESTIMATE_LABEL and "Estimate" in ESTIMATE_LABEL
        total = Decimal(0)
        for c in st["contracts"]:
            contract = state.contracts[c["contract_id"]]
            _, _, bases = commission_parts(contract, book.in_force(contract.signed))
            for ft in c["to_come"]:
                k = int(ft["obligation"].rsplit("/", 1)[1])
                assert Decimal(ft["base"]) == bases[k - 1]
                if ft["status"] == "to_come":
                    f = {name: Decimal(v) for name, v in ft["factors"].items()}
                    exact = bases[k - 1] * f["nrr"] * f["service"] * f["score"]
                    assert Decimal(ft["estimate"]) == exact.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
                    total += Decimal(ft["estimate"])
                else:
                    assert ft["estimate"] == "0.00"
        assert sum(Decimal(r["estimate_to_come"]) for r in st["summary"]) == total
        grand_total += total
    assert grand_total > 0


def test_payroll_export_sums_to_the_cycle_total(demo):
    _, db, _ = demo
    for period in ("2026-06", "2028-01", "2030-12"):
        cycle = json.loads(ok("cycle", "show", period, "--format", "json", db=db))
        rows = list(csv.DictReader(io.StringIO(ok("cycle", "export", period, "--format", "csv", db=db))))
        assert len(rows) == len(cycle["totals"])
        for cur in {t["currency"] for t in cycle["totals"]}:
            assert sum(Decimal(r["payable"]) for r in rows if r["currency"] == cur) == sum(
                Decimal(t["payable"]) for t in cycle["totals"] if t["currency"] == cur
            )


def test_the_payroll_export_reads_its_cycle_and_reps_alone_and_equals_the_one_from_a_replay(demo, monkeypatch):
    """``cycle export`` reads the period's cycle and the hires of the reps it pays, not the whole ledger;
    every month's export equals the one written from a full replay (names included), and a period not
    closed is refused as before."""
    from incentive_engine.shell import statements

    _, db, _ = demo
    ledger = Ledger(db)
    state = service.load_state(ledger)
    assert len(state.cycles) == 60
    exports = {p: statements.payroll_csv(state, p) for p in state.cycles}
    assert sum(len(text.splitlines()) - 1 for text in exports.values()) > 100  # rows besides the headers
    assert any(row["name"] for text in exports.values() for row in csv.DictReader(io.StringIO(text)))

    def no_replay(*args, **kwargs):
        raise AssertionError("the export replayed the ledger")

    monkeypatch.setattr(service, "load_state", no_replay)
    monkeypatch.setattr(service, "current_state", no_replay)
    for period, expected in exports.items():
        assert statements.payroll_csv(service.payroll_state(ledger, period), period) == expected, period
    with pytest.raises(Exception, match="2031-01 is not closed"):
        statements.payroll_csv(service.payroll_state(ledger, "2031-01"), "2031-01")
    ledger.dispose()


def test_statement_formats(demo, tmp_path):
    _, db, _ = demo
    state = service.load_state(Ledger(db))
    rep = sorted(r for r in state.reps if r.startswith("REP"))[0]
    html = ok("statement", rep, "--format", "html", "--out", str(tmp_path / "s.html"), db=db)
    assert "Wrote" in html and "<svg" in (tmp_path / "s.html").read_text()
    rows = list(csv.DictReader(io.StringIO(ok("statement", rep, "--format", "csv", db=db))))
    assert rows and {"obligation", "status", "earned", "paid"} <= set(rows[0])
    assert "Estimate" in ok("statement", rep, db=db)
    written = ok("statement", "--all", "--out", str(tmp_path / "all"), "--format", "json", db=db)
    assert f"Wrote {len(state.reps)} statements" in written
