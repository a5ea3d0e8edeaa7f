"""Seeded synthetic ledgers for the benchmark: the demo generator's organisation at enterprise sizes.

``synthesize`` is pure and deterministic (same arguments, same batches). It starts from
``incentive_engine.demo.generate`` (a realistic org: hires, leavers, contracts with renewals, late
renewals, lapses, churns, up/downsells, reassignments, costs, targets, KPIs, compliance findings) and adds
what a large key-account organisation has on top, so the event counts reach the sizes of the issue:

- monthly usage-based ``service.cost`` lines on live contracts (small: 0.2-1% of the ACV, so they rarely
  cross the 20% service-cost threshold on their own), at the rate that brings the ledger to its target
  number of events;
- each January, a ``scorecard.published`` per sales rep for the year before (as another system would send
  them; composites 30-140, so a few tranches meet the scorecard gate). The engine's own ``scorecard
  publish`` is not part of this benchmark.

Every batch, ingested in order, passes the ledger's validation (the benchmark checks that it does).
"""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass
from datetime import date
from typing import Any

from incentive_engine.demo import generate


@dataclass(frozen=True)
class Size:
    name: str
    reps: int
    contracts: int
    events: int  # the target number of events over ``years``
    years: int = 5
    history: int = 0  # of the years, how many belong to an earlier book (``doubled``)


SIZES: dict[str, Size] = {
    "XS": Size("XS", 100, 2_000, 20_000),  # for smoke runs of the benchmark itself
    "S": Size("S", 1_000, 20_000, 200_000),
    "M": Size("M", 10_000, 200_000, 2_000_000),
}


def doubled(size: Size) -> Size:
    """The same organisation and monthly activity after as many years of earlier history (the growth
    measurement): ``synthesize`` gives the organisation of ``size``, moved ``size.years`` later, after an
    earlier book of the same size (its own reps and contracts) that stops renewing when those years end,
    so that its contracts run to the end of their terms and lapse. The last years' activity is the
    organisation's own; what doubles is the history (events, contracts, forfeitures, reps' records).

    (The same generator over ten years instead is no measure of history: contracts renewed for ten
    years leave a live book half as large again in the last year, with as many more renewals, expansions
    and churns each month.)"""
    return Size(f"{size.name}x2", size.reps, size.contracts * 2, size.events * 2, size.years * 2, size.years)


def _earlier(event: dict[str, Any]) -> dict[str, Any]:
    """An event of the earlier book: its own ids (every ``*_id`` and the approver), prefixed ``H-``."""
    return {
        k: f"H-{v}" if isinstance(v, str) and (k.endswith("_id") or k == "approved_by") else v for k, v in event.items()
    }


@dataclass(frozen=True)
class Batch:
    period: str
    events: list[dict[str, Any]]


def _add_months(d: date, n: int) -> date:
    m0 = d.month - 1 + n
    y, m = d.year + m0 // 12, m0 % 12 + 1
    return date(y, m, min(d.day, calendar.monthrange(y, m)[1]))


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _cents(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def synthesize(size: Size, seed: int = 7, first_year: int = 2026) -> list[Batch]:
    if size.history:
        part = Size(size.name, size.reps, size.contracts // 2, size.events // 2, size.years - size.history)
        past = [Batch(b.period, [_earlier(e) for e in b.events]) for b in _synthesize(part, seed + 1, first_year)]
        return past + _synthesize(part, seed, first_year + size.history)
    return _synthesize(size, seed, first_year)


def _synthesize(size: Size, seed: int, first_year: int) -> list[Batch]:
    demo = generate(seed, reps=size.reps, contracts=size.contracts, first_year=first_year, years=size.years)
    batches = [Batch(b.period, list(b.events)) for b in demo.batches]
    rng = random.Random(seed * 7919 + size.contracts)
    periods = {b.period: i for i, b in enumerate(batches)}
    last_day = date(first_year + size.years - 1, 12, 31)

    # each contract's live window: signing .. the end of its last term, or the day before its churn
    signed: dict[str, tuple[date, int, str]] = {}  # cid -> (signed, acv cents, currency)
    ends: dict[str, date] = {}
    churn: dict[str, date] = {}
    sales: dict[str, date] = {}  # sales reps and their hiring date
    for b in batches:
        for e in b.events:
            t = e["type"]
            if t == "contract.signed":
                d = date.fromisoformat(e["effective"])
                signed[e["contract_id"]] = (d, _cents(e["acv"]), e["currency"])
                ends[e["contract_id"]] = _add_months(d, int(e["term_months"]))
            elif t == "contract.renewed":
                d = date.fromisoformat(e["effective"])
                ends[e["contract_id"]] = max(ends[e["contract_id"]], _add_months(d, int(e["term_months"])))
            elif t == "contract.churned":
                churn[e["contract_id"]] = date.fromisoformat(e["effective"])
            elif t == "rep.hired" and e["role"] == "rep":
                sales[e["rep_id"]] = date.fromisoformat(e["effective"])

    def live(cid: str) -> tuple[date, date]:
        start = signed[cid][0]
        end = min(ends[cid], last_day)
        if cid in churn:
            end = min(end, date.fromordinal(churn[cid].toordinal() - 1))
        return start, end

    windows = {cid: live(cid) for cid in signed}
    contract_months = sum(max(0, (e.year - s.year) * 12 + e.month - s.month + 1) for s, e in windows.values())

    scorecards: list[tuple[int, dict[str, Any]]] = []
    for year in range(first_year, first_year + size.years - 1):
        jan = date(year + 1, 1, 1)
        for rep_id, hired in sorted(sales.items()):
            if hired < jan:
                composite = rng.uniform(30, 50) if rng.random() < 0.03 else rng.uniform(60, 140)
                scorecards.append(
                    (
                        periods[f"{year + 1:04d}-01"],
                        {
                            "type": "scorecard.published",
                            "effective": jan.isoformat(),
                            "event_id": f"hr-score-{rep_id}-{year}",
                            "rep_id": rep_id,
                            "year": year,
                            "composite": f"{composite:.2f}",
                        },
                    )
                )

    base = sum(len(b.events) for b in batches) + len(scorecards)
    rate = max(0.0, (size.events - base) / contract_months) if contract_months else 0.0
    extra: list[list[dict[str, Any]]] = [[] for _ in batches]
    for cid in sorted(signed):
        start, end = windows[cid]
        _, acv, _ = signed[cid]
        month = date(start.year, start.month, 1)
        while month <= end:
            n = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
            lo = max(start, month)
            month_end = date(month.year, month.month, calendar.monthrange(month.year, month.month)[1])
            hi = min(end, month_end)
            for _ in range(n):
                d = date.fromordinal(rng.randint(lo.toordinal(), hi.toordinal()))
                cents = max(1, round(acv * rng.uniform(0.002, 0.01)))
                extra[periods[f"{d.year:04d}-{d.month:02d}"]].append(
                    {"type": "service.cost", "effective": d.isoformat(), "contract_id": cid, "amount": _money(cents)}
                )
            month = _add_months(month, 1)

    for p, event in scorecards:
        batches[p].events.append(event)
    for b, more in zip(batches, extra, strict=True):
        more.sort(key=lambda e: e["effective"])
        b.events.extend(more)
    return batches
