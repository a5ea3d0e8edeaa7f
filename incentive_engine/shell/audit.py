"""The auditor's tools on the database: reproduce a closed cycle, explain its lines, export the chain.

Each is a replay (the fold over a ledger prefix) plus a diff or a lookup; nothing here writes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.canonical import GENESIS_HASH, record_text
from ..core.cycles import CycleResult, compute_cycle, cycle_from, history_of, line_json, total_json
from ..core.dates import period_end
from ..core.evaluation import Evaluation, evaluate_all
from ..core.events import Event, to_payload
from ..core.money import format_factor, format_money
from ..core.plan import PlanBook
from ..core.projections import ClosedCycle, LedgerState, Projector
from ..errors import CycleError
from . import service
from .store import Ledger


@dataclass(frozen=True)
class Reproduction:
    period: str
    identical: bool
    differences: list[str]
    lines: int


def reproduce(ledger: Ledger, state: LedgerState, period: str) -> Reproduction:
    """Recompute a closed cycle from the ledger as it stood at its close and diff it line by line."""
    cycle = _closed(state, period)
    return _compared(cycle, service.reproduce_cycle(ledger, state, cycle.period))


def reproduce_all(
    ledger: Ledger, state: LedgerState, periods: list[str], done: Callable[[], None] | None = None
) -> list[Reproduction]:
    """``reproduce`` of each of ``periods``, from one fold: the ledger is read once, every row validated
    again, and each cycle is recomputed (with the plans it used) when the fold reaches the position its
    close saw. A prefix folded on from a shorter prefix is the same state as one folded from the start,
    so each result is ``reproduce``'s; reading the prefix again from position 1 for every cycle made
    ``--all`` quadratic in the ledger's age (S: 59 cycles in 112 s). ``done`` is called after each."""
    cycles = sorted((_closed(state, p) for p in periods), key=lambda c: c.ledger_position)
    projector, at = Projector(), 0
    found: dict[str, Reproduction] = {}
    for cycle in cycles:
        with service.gc_paused():
            projector.apply_all(ledger.read(after=at, upto=cycle.ledger_position))
        at = max(at, cycle.ledger_position)
        book = service.registered_book(state, cycle.plans)
        found[cycle.period] = _compared(cycle, compute_cycle(book, projector.state, cycle.period, "reproduced"))
        if done is not None:
            done()
    return [found[service.check_period(p)] for p in periods]


def _closed(state: LedgerState, period: str) -> ClosedCycle:
    cycle = state.cycles.get(service.check_period(period))
    if cycle is None:
        raise CycleError(f"{period} is not closed: nothing to reproduce")
    return cycle


def _compared(cycle: ClosedCycle, again: CycleResult) -> Reproduction:
    period = cycle.period
    diffs = _diff("line", [dict(x) for x in cycle.lines], [line_json(x) for x in again.lines], "obligation")
    diffs += _diff(
        "total", [dict(t) for t in cycle.totals], [total_json(t) for t in again.totals], "rep_id", "currency"
    )
    if dict(cycle.plans) != again.plans:
        diffs.append(f"plans: issued {dict(cycle.plans)}, recomputed {again.plans}")
    return Reproduction(period, not diffs, diffs, len(cycle.lines))


def _diff(what: str, issued: list[dict[str, Any]], again: list[dict[str, Any]], *keys: str) -> list[str]:
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row.get("rep_id"), *(row.get(k) for k in keys))

    a = {key(r): r for r in issued}
    b = {key(r): r for r in again}
    out = []
    for k in sorted(set(a) | set(b), key=str):
        if k not in b:
            out.append(f"{what} {'/'.join(map(str, k))}: issued {a[k]} but not recomputed")
        elif k not in a:
            out.append(f"{what} {'/'.join(map(str, k))}: recomputed {b[k]} but not issued")
        elif a[k] != b[k]:
            changed = {
                f: (a[k].get(f), b[k].get(f)) for f in sorted(set(a[k]) | set(b[k])) if a[k].get(f) != b[k].get(f)
            }
            out.append(
                f"{what} {'/'.join(map(str, k))}: "
                + ", ".join(f"{f} issued {x!r} recomputed {y!r}" for f, (x, y) in changed.items())
            )
    if len(issued) != len(a) or len(again) != len(b):
        out.append(f"{what}s: duplicate rows (issued {len(issued)}, recomputed {len(again)})")
    return out


# --- explain ------------------------------------------------------------------------------------------


def describe(position: int, event: Event) -> str:
    """'contract.renewed at position 812, effective 2027-01-15, ACV 1,500,000.00'."""
    p = to_payload(event)
    parts = [f"{event.type} at position {position}, effective {event.effective.isoformat()}"]
    money = {"acv": "ACV", "acv_delta": "ACV change", "amount": "amount", "composite": "composite"}
    for field, label in money.items():
        if field in p:
            parts.append(f"{label} {_grouped(p[field])}")
    for field in (
        "contract_id",
        "rep_id",
        "term_months",
        "year",
        "leaver",
        "severity",
        "reason",
        "description",
        "approved_by",
        "period",
    ):
        if field in p:
            parts.append(f"{field.replace('_', ' ')} {p[field]}")
    return ", ".join(parts)


def _grouped(value: str) -> str:
    d = Decimal(value)
    return f"{d:,}" if d == d.to_integral_value() and "." not in value else f"{d:,f}"


def _events_at(ledger: Ledger, positions: set[int], upto: int | None) -> dict[int, Event]:
    # the facts' rows by position (at M, reading every row between the first and the last of one rep's
    # facts, validated, took about 11 of the 44 s of an `explain`)
    wanted = [p for p in positions if upto is None or p <= upto]
    return {rec.position: rec.event for rec in ledger.read_at(wanted)}


def explain(
    ledger: Ledger, book: PlanBook, state: LedgerState, period: str, rep_id: str, obligation: str | None = None
) -> dict[str, Any]:
    """Every line and evaluation of the rep in that cycle with its facts, factors and rule."""
    period = service.check_period(period)
    if rep_id not in state.reps:
        raise CycleError(f"unknown rep {rep_id!r}")
    cycle = state.cycles.get(period)
    if cycle is not None:
        book, seen = service.closed_cycle_inputs(ledger, state, period)
        status, upto = "closed", cycle.ledger_position
    else:
        seen, status, upto = state, "preview", state.position
    # The cycle's lines and listing are per obligation (earned - paid before), so the rep's are computed
    # from the obligations of the contracts the rep sold or was ever assigned (every payee is one of
    # those) and the manual adjustments, by the same rules and history as the whole cycle (at M, one
    # rep's closed month: 90.6 s with every obligation ever signed evaluated, 66.6 s so).
    mine = seen.contracts_by_person().get(rep_id, [])
    # the earlier cycles' lines, decoded once for what was paid and for what each last paying cycle saw
    earlier = [(c, c.lines) for p, c in sorted(seen.cycles.items()) if p < period]
    history = history_of(earlier)
    evaluated = evaluate_all(book, seen, period_end(period), contracts=mine)
    result = cycle_from(book, period, status, evaluated, history)
    evals = {e.obligation.obligation_id: (e, paid) for e, paid in result.evaluations if e.obligation.rep_id == rep_id}
    lines = {x.obligation: x for x in result.lines if x.rep_id == rep_id}
    wanted = sorted(set(evals) | set(lines))
    if obligation is not None:
        if obligation not in evals:
            # an earned, settled obligation is not listed by the cycle; explain it all the same
            paid = history.paid
            for ev in evaluated:
                if ev.obligation.obligation_id == obligation and ev.obligation.rep_id == rep_id:
                    evals[obligation] = (ev, paid.get(obligation, Decimal(0)))
        wanted = [o for o in (*wanted, obligation) if o == obligation][:1]
        if obligation not in evals:
            raise CycleError(f"{obligation} is not an obligation of {rep_id} due by {period}")
    last_paid_at = _last_line_positions(earlier)
    positions = {p for o in wanted if o in evals for p in evals[o][0].facts}
    events = _events_at(ledger, positions, upto)
    items = []
    for ob_id in wanted:
        ev, paid = evals.get(ob_id, (None, Decimal(0)))
        if ev is None:  # an earned, settled obligation has no listed evaluation; it has no line either
            continue
        line = lines.get(ob_id)
        item: dict[str, Any] = {
            "obligation": ob_id,
            "contract_id": ev.obligation.contract_id,
            "due": ev.obligation.due.isoformat(),
            "status": ev.status,
            "reason": ev.reason,
            "rule": ev.rule,
            "earned": format_money(ev.earned, ev.obligation.currency),
            "paid_to_date": format_money(paid, ev.obligation.currency),
            "base": format_money(ev.obligation.base, ev.obligation.currency),
            "factors": {k: format_factor(v) for k, v in ev.factors.items()},
            "computation": ev.detail,
            "facts": [
                {
                    "position": p,
                    "type": events[p].type if p in events else None,
                    "text": describe(p, events[p]) if p in events else f"position {p}",
                }
                for p in ev.facts
            ],
        }
        if line is not None:
            item["line"] = line_json(line)
            if line.kind in ("adjustment", "clawback"):
                item["changed_by"] = _changed_by(ev, last_paid_at.get(ob_id), events)
        items.append(item)
    return {
        "period": period,
        "as_of": period_end(period).isoformat(),
        "status": status,
        "rep_id": rep_id,
        "ledger_position": upto,
        "items": items,
    }


def _last_line_positions(
    earlier: list[tuple[ClosedCycle, tuple[dict[str, Any], ...]]],
) -> dict[str, tuple[int, date]]:
    """For each obligation: what the last earlier cycle that issued a line for it saw (position, as-of);
    ``earlier``: the cycles before the one explained, in period order, with their lines."""
    out: dict[str, tuple[int, date]] = {}
    for c, lines in earlier:
        for x in lines:
            out[x["obligation"]] = (c.ledger_position, c.as_of)
    return out


def _changed_by(ev: Evaluation, since: tuple[int, date] | None, events: dict[int, Event]) -> list[str]:
    """The facts the last paying cycle did not see: recorded after it, or effective after its as-of date."""
    if since is None:
        return ["first line for this obligation"]
    position, as_of = since
    later = [p for p in ev.facts if p > position or (p in events and events[p].effective > as_of)]
    if not later:
        return [f"no new fact since the cycle as of {as_of}: the date moved on ({ev.reason}: {ev.detail})"]
    return [describe(p, events[p]) if p in events else f"position {p}" for p in later]


# --- export -------------------------------------------------------------------------------------------


def export(ledger: Ledger, directory: Path, progress: Callable[[int], None] | None = None) -> tuple[Path, Path]:
    """ledger.jsonl: one line per event {"hash", "prev_hash", "record"}; ledger.digest: count, head, file hash."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ledger.jsonl"
    tmp = directory / "ledger.jsonl.part"
    file_hash = hashlib.sha256()
    prev, count = GENESIS_HASH, 0
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in ledger.read_rows():
            position, stream_id, version, type_, effective, event_id, recorded_at, payload, _content, h = row[:10]
            record = record_text(position, stream_id, version, type_, effective, event_id, recorded_at, payload)
            line = '{"hash":"' + h + '","prev_hash":"' + prev + '","record":' + record + "}\n"
            f.write(line)
            file_hash.update(line.encode("utf-8"))
            prev, count = h, count + 1
            if progress is not None and count % 10000 == 0:
                progress(10000)
    tmp.replace(path)
    digest = directory / "ledger.digest"
    digest.write_text(
        f"events {count}\nhead_hash {prev}\nfile ledger.jsonl\nfile_sha256 {file_hash.hexdigest()}\n", encoding="utf-8"
    )
    return path, digest
