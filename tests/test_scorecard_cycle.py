"""A republished scorecard supersedes the earlier one and the next cycle trues up the tranches it moved."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

from .cli import ok
from .ledgers import WORKED


def test_republishing_supersedes_and_the_next_cycle_trues_up(tmp_path):
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ok("init", db=db)
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    ok("scorecard", "publish", "2026", db=db)
    jan = json.loads(ok("cycle", "close", "2027-01", "--format", "json", db=db))
    paid = {x["obligation"]: Decimal(x["amount"]) for x in jan["lines"]}
    assert paid["C1/tranche/1"] == Decimal("22500.00")  # composite 136.07, factor capped at 1.2
    # a corrected CSAT arrives: 3.0 is below the threshold (score 0)
    (tmp_path / "fix.jsonl").write_text(
        json.dumps(
            {
                "type": "kpi.measured",
                "effective": "2026-12-31",
                "rep_id": "R1",
                "year": 2026,
                "kpi": "csat",
                "value": "3.0",
            }
        )
        + "\n"
    )
    ok("ingest", str(tmp_path / "fix.jsonl"), db=db)
    rows = json.loads(ok("scorecard", "compute", "2026", "--role", "rep", "--format", "json", db=db))
    composite = Decimal(next(r for r in rows if r["rep_id"] == "R1")["composite"])
    assert composite == Decimal("101.79")  # (0.4 x 150 + 0.2 x 0 + 0.1 x 112.5) / 0.7
    assert "Published 1 scorecard" in ok("scorecard", "publish", "2026", db=db)
    feb = json.loads(ok("cycle", "close", "2027-02", "--format", "json", db=db))
    (line,) = [x for x in feb["lines"] if x["obligation"] == "C1/tranche/1"]
    # 15,000 x 1.25 x 1.0179 = 19,085.625: a half-up tie -> 19,085.63 (banker's rounding would give .62)
    new_amount = (Decimal("15000.00") * Decimal("1.25") * composite / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert new_amount == Decimal("19085.63")
    assert line["kind"] == "clawback"
    assert Decimal(line["amount"]) == new_amount - Decimal("22500.00")
    assert "0 scorecard(s)" in ok("scorecard", "publish", "2026", db=db)
