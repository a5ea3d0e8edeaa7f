"""Test helpers: ledgers written as text, run through the pure core (no database).

``Sim`` mirrors what the shell does on a database - validate a batch against the state, append, close
cycles by appending the cycle event - so rules and cycles can be tested table-driven and fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from incentive_engine.core.cycles import CycleResult, compute_cycle, cycle_event, cycle_json
from incentive_engine.core.events import FACT_ADAPTER, Event, stream_of
from incentive_engine.core.plan import PlanBook, parse_plan
from incentive_engine.core.projections import Projector, Recorded
from incentive_engine.core.validation import check_batch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PLAN = ROOT / "rules" / "reference.yaml"
# A copy of ../shared/examples/worked (CI runs on a clean clone that may not sit next to ../shared).
WORKED = ROOT / "tests" / "data" / "worked"
SHARED_WORKED = ROOT.parent / "shared" / "examples" / "worked"


def reference_book(**overrides: str) -> PlanBook:
    text = REFERENCE_PLAN.read_text()
    for old, new in overrides.items():
        assert old in text, old
        text = text.replace(old, new)
    return PlanBook([parse_plan(text, "reference.yaml")])


def events(text: str) -> list[Event]:
    """One JSON object per line; blank lines and # comments ignored."""
    out = []
    for line in textwrap.dedent(text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(FACT_ADAPTER.validate_python(json.loads(line)))
    return out


class Sim:
    def __init__(self, book: PlanBook | None = None) -> None:
        self.book = book or reference_book()
        self.projector = Projector()
        self.position = 0
        self.versions: dict[str, int] = {}
        self.history: list[Recorded] = []

    @property
    def state(self):
        return self.projector.state

    def append(self, evs: list[Event]) -> None:
        for e in evs:
            self.position += 1
            stream = stream_of(e)
            self.versions[stream] = self.versions.get(stream, 0) + 1
            rec = Recorded(self.position, f"t{self.position:08d}", stream, self.versions[stream], e)
            self.history.append(rec)
            self.projector.apply(rec)

    def ingest(self, text: str) -> None:
        evs = events(text)
        problems = check_batch(self.state, evs)
        assert not problems, problems
        self.append(evs)

    def preview(self, period: str) -> CycleResult:
        return compute_cycle(self.book, self.state, period, "preview")

    def close(self, period: str) -> dict[str, Any]:
        result = compute_cycle(self.book, self.state, period, "closed")
        self.append([cycle_event(result, self.position)])
        return cycle_json(result)

    def evaluation(self, period: str, obligation: str) -> dict[str, Any]:
        for e in cycle_json(self.preview(period))["evaluations"]:
            if e["obligation"] == obligation:
                return e
        raise KeyError(obligation)


HIRE = """
{"type":"rep.hired","effective":"2020-01-01","rep_id":"R1","name":"A","role":"rep"}
{"type":"rep.hired","effective":"2020-01-01","rep_id":"R2","name":"B","role":"rep"}
"""


def signed(
    cid: str = "C1",
    day: str = "2026-01-15",
    acv: str = "1200000.00",
    term: int = 12,
    rep: str = "R1",
    currency: str = "CNY",
) -> str:
    return json.dumps(
        {
            "type": "contract.signed",
            "effective": day,
            "contract_id": cid,
            "account_id": "A" + cid,
            "rep_id": rep,
            "acv": acv,
            "currency": currency,
            "term_months": term,
        }
    )
