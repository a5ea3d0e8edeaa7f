"""`incentive demo`: a realistic five-year key-account org run end to end, as a compensation team would.

Each month: load the month's CRM export, (each January) publish last year's scorecards, close the cycle.
Then verify the chain, reproduce every closed cycle, write every rep's statement and print a summary."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.dates import period_end, periods_between
from ..core.evaluation import evaluate_all
from ..core.money import ZERO
from ..core.plan import PlanBook
from ..core.projections import LedgerState, Projector
from ..core.statements import future_tranches
from ..demo import generate, write_batches
from ..errors import InputError, IntegrityFailure
from . import audit, scorecard_service, service, statements
from .store import Ledger


@dataclass
class DemoReport:
    directory: Path
    db_url: str
    events: int
    cycles: int
    reproduced: int
    statements: list[Path]
    summary: list[dict[str, Any]]


Step = Callable[[str], None]


def run_demo(
    directory: Path,
    seed: int,
    book: PlanBook,
    *,
    reps: int = 40,
    contracts: int = 420,
    first_year: int = 2026,
    years: int = 5,
    step: Step | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> DemoReport:
    say = step or (lambda _m: None)
    tick = on_progress or (lambda _what, _done, _total: None)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "crm").mkdir(parents=True)
    db_url = f"sqlite:///{directory / 'ledger.db'}"
    ledger = Ledger(db_url)
    ledger.init()

    demo = generate(seed, reps=reps, contracts=contracts, first_year=first_year, years=years)
    files = {p.stem: p for p in write_batches(demo, directory / "crm")}
    say(
        f"Generated {len(demo.all_events())} CRM events for {reps} people and {contracts} contracts "
        f"({first_year}-{first_year + years - 1}) into {directory / 'crm'}"
    )

    periods = periods_between(f"{first_year}-01", f"{first_year + years - 1}-12")
    for i, period in enumerate(periods, 1):
        if period in files:
            results = service.ingest_files(ledger, [files[period]])
            problems = [p for r in results for p in r.problems]
            if problems:
                raise InputError(problems)
        if period.endswith("-01") and int(period[:4]) > first_year:
            scorecard_service.publish(ledger, book, int(period[:4]) - 1)
        service.close(ledger, book, period)
        tick("closing monthly cycles", i, len(periods))
    # the last year's scorecards are published too (they would govern tranches vesting the year after)
    scorecard_service.publish(ledger, book, first_year + years - 1)

    report = ledger.verify()
    if not report.ok:
        raise IntegrityFailure(report.message)
    say(f"Verified the hash chain: {report.events} events intact")

    state = service.load_state(ledger)
    reproduced = reproduce_all(ledger, state, lambda done, total: tick("reproducing cycles", done, total))
    say(f"Reproduced all {reproduced} closed cycles exactly from the ledger as it stood at each close")

    written = statements.write_all(book, state, None, directory / "statements", "html")
    say(f"Wrote {len(written)} HTML statements")
    summary = yearly_summary(ledger, book, state, first_year, years)
    ledger.dispose()
    return DemoReport(directory, db_url, report.events, len(state.cycles), reproduced, written, summary)


def reproduce_all(ledger: Ledger, state: LedgerState, progress: Callable[[int, int], None]) -> int:
    """Reproduce every closed cycle; one pass over the ledger, advancing the prefix from cycle to cycle."""
    failed = []
    cycles = sorted(state.cycles)
    for i, period in enumerate(cycles, 1):
        r = audit.reproduce(ledger, state, period)
        if not r.identical:
            failed.append(r)
        progress(i, len(cycles))
    if failed:
        raise IntegrityFailure(
            f"{len(failed)} cycles do not reproduce: " + "; ".join(f"{r.period}: {r.differences[0]}" for r in failed)
        )
    return len(cycles)


def yearly_summary(ledger: Ledger, book: PlanBook, state: LedgerState, first_year: int, years: int) -> list[dict]:
    """Per year and currency: paid, clawed back, manual adjustments; and at year end: held, forfeited,
    deferred still to come and carried balances (as the ledger stood at that year's December close)."""
    rows: dict[tuple[int, str], dict[str, Decimal]] = {}

    def add(year: int, cur: str, key: str, amount: Decimal) -> None:
        row = rows.setdefault((year, cur), {})
        row[key] = row.get(key, ZERO) + amount

    for period, cycle in sorted(state.cycles.items()):
        year = int(period[:4])
        for t in cycle.totals:
            add(year, t["currency"], "paid", Decimal(t["payable"]))
        for x in cycle.lines:
            if x["kind"] == "clawback":
                add(year, x["currency"], "clawed_back", -Decimal(x["amount"]))
    projector = Projector()
    records = ledger.read()
    pending = None
    for year in range(first_year, first_year + years):
        dec = f"{year}-12"
        cycle = state.cycles.get(dec)
        if cycle is None:
            continue
        if pending is not None and pending.position <= cycle.ledger_position:
            projector.apply(pending)
            pending = None
        for rec in records:
            if rec.position > cycle.ledger_position:
                pending = rec
                break
            projector.apply(rec)
        prefix = projector.state
        as_of = period_end(dec)
        for ev in evaluate_all(book, prefix, as_of):
            if ev.status in ("held", "forfeited") and ev.obligation.kind != "manual":
                add(year, ev.obligation.currency, ev.status, ev.obligation.base)
        for c in prefix.contracts.values():
            for ft in future_tranches(book.in_force(c.signed), prefix, c, as_of):
                if ft.reason == "to_come":
                    add(year, c.currency, "deferred_to_come", ft.obligation.base)
        for t in cycle.totals:
            add(year, t["currency"], "carried_balances", Decimal(t["carried_out"]))
    keys = ("paid", "clawed_back", "held", "forfeited", "deferred_to_come", "carried_balances")
    return [
        {"year": y, "currency": cur, **{k: vals.get(k, ZERO) for k in keys}} for (y, cur), vals in sorted(rows.items())
    ]
