"""Payout cycles: the true-up, netting per rep and currency, carry-forward (pure).

Closing period P evaluates every obligation due by P's last day; each obligation's line is
``earned(A) - paid to date`` (paid to date = its lines in all earlier closed cycles). Late facts therefore
never rewrite closed cycles: they surface as adjustment or clawback lines in the next one.

Cycle life (explicit state table):   (none) --preview--> (none)     (none) --close--> closed
                                      closed --close--> closed (no-op, "already_closed")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from .dates import period_end
from .evaluation import Evaluation, evaluate_all
from .events import CycleClosed
from .money import ZERO, format_factor, format_money
from .plan import PlanBook
from .projections import ClosedCycle, LedgerState


@dataclass(frozen=True, slots=True)
class Line:
    rep_id: str
    contract_id: str | None
    obligation: str
    kind: str  # payment | adjustment | clawback | manual
    amount: Decimal
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class Total:
    rep_id: str
    currency: str
    lines_total: Decimal
    carried_in: Decimal
    payable: Decimal
    carried_out: Decimal


@dataclass(frozen=True, slots=True)
class CycleResult:
    period: str
    as_of: date
    status: str  # preview | closed | already_closed
    lines: tuple[Line, ...]
    # (evaluation, paid to date before this cycle); a tuple, or a lazily decoded sequence from an
    # incremental close (shell.obligations.Listing): both compare equal when their items do
    evaluations: Sequence[tuple[Evaluation, Decimal]]
    totals: tuple[Total, ...]
    plans: dict[str, str]  # content hash -> "plan_id@version" of the plans that governed an evaluation


@dataclass(slots=True)
class PaidHistory:
    """What earlier closed cycles paid: per obligation, and the balance each (rep, currency) carried out."""

    paid: dict[str, Decimal]
    lines: dict[str, int]
    carried: dict[tuple[str, str], Decimal]


def paid_history(state: LedgerState, before_period: str) -> PaidHistory:
    before = [state.cycles[p] for p in sorted(state.cycles) if p < before_period]
    return history_of((cycle, cycle.lines) for cycle in before)


def history_of(issued: Iterable[tuple[ClosedCycle, tuple[dict[str, Any], ...]]]) -> PaidHistory:
    """``paid_history`` of closed cycles given in period order, each with its lines decoded (a caller that
    reads the lines too decodes them once)."""
    paid: dict[str, Decimal] = {}
    count: dict[str, int] = {}
    carried: dict[tuple[str, str], Decimal] = {}
    for cycle, lines in issued:
        for line in lines:
            ob = line["obligation"]
            paid[ob] = paid.get(ob, ZERO) + Decimal(line["amount"])
            count[ob] = count.get(ob, 0) + 1
        carried = {
            (t["rep_id"], t["currency"]): Decimal(t["carried_out"]) for t in cycle.totals if Decimal(t["carried_out"])
        }
    return PaidHistory(paid, count, carried)


def compute_cycle(book: PlanBook, state: LedgerState, period: str, status: str = "preview") -> CycleResult:
    """The cycle for ``period`` from the state as known (only closed cycles before ``period`` count as paid)."""
    as_of = period_end(period)
    return cycle_from(book, period, status, evaluate_all(book, state, as_of), paid_history(state, period))


def cycle_from(
    book: PlanBook,
    period: str,
    status: str,
    evaluations: list[Evaluation],
    history: PaidHistory,
    plans_seen: dict[str, str] | None = None,
) -> CycleResult:
    """The true-up, netting and carry-forward of ``period`` from its evaluations and what was paid before.

    ``compute_cycle`` passes every obligation due. An incremental close passes only the obligations whose
    facts changed, the newly due and the held ones, plus the unchanged forfeited ones (which are listed in
    every cycle): an unchanged earned obligation was paid exactly its earned amount by the last cycle, so
    it has no line and is not listed. ``plans_seen`` are the plans of the obligations left out (the last
    cycle's plans); ``evaluations`` must be sorted as ``evaluate_all`` sorts them."""
    as_of = period_end(period)
    lines: list[Line] = []
    listed: list[tuple[Evaluation, Decimal]] = []
    by_hash = book.by_hash()
    plans: dict[str, str] = dict(plans_seen or {})
    for ev in evaluations:
        ob = ev.obligation
        if ob.plan_hash and ob.plan_hash not in plans:
            plans[ob.plan_hash] = f"{by_hash[ob.plan_hash].plan_id}@{by_hash[ob.plan_hash].version}"
        paid = history.paid.get(ob.obligation_id, ZERO)
        delta = ev.earned - paid
        if delta:
            if ob.kind == "manual":
                kind = "manual"
            elif delta < 0:
                kind = "clawback"
            else:
                kind = "adjustment" if history.lines.get(ob.obligation_id) else "payment"
            lines.append(Line(ob.rep_id, ob.contract_id, ob.obligation_id, kind, delta, ob.currency, ev.reason))
        if delta or ev.status != "earned":
            listed.append((ev, paid))
    lines.sort(key=lambda x: (x.rep_id, x.contract_id or "", x.obligation))
    return CycleResult(period, as_of, status, tuple(lines), tuple(listed), net(lines, history.carried), plans)


def net(lines: list[Line], carried: dict[tuple[str, str], Decimal]) -> tuple[Total, ...]:
    """Per rep and currency: net = lines + carried in; pay it if >= 0, else carry it forward."""
    sums: dict[tuple[str, str], Decimal] = {}
    for line in lines:
        key = (line.rep_id, line.currency)
        sums[key] = sums.get(key, ZERO) + line.amount
    totals = []
    for key in sorted(set(sums) | set(carried)):
        lines_total = sums.get(key, ZERO)
        carried_in = carried.get(key, ZERO)
        n = lines_total + carried_in
        payable, carried_out = (n, ZERO) if n >= 0 else (ZERO, n)
        totals.append(Total(key[0], key[1], lines_total, carried_in, payable, carried_out))
    return tuple(totals)


# --- JSON shapes (interfaces.md) -----------------------------------------------------------------------


def line_json(line: Line) -> dict[str, Any]:
    return {
        "rep_id": line.rep_id,
        "contract_id": line.contract_id,
        "obligation": line.obligation,
        "kind": line.kind,
        "amount": format_money(line.amount, line.currency),
        "currency": line.currency,
        "reason": line.reason,
    }


def total_json(t: Total) -> dict[str, Any]:
    return {
        "rep_id": t.rep_id,
        "currency": t.currency,
        "lines_total": format_money(t.lines_total, t.currency),
        "carried_in": format_money(t.carried_in, t.currency),
        "payable": format_money(t.payable, t.currency),
        "carried_out": format_money(t.carried_out, t.currency),
    }


def evaluation_json(ev: Evaluation, paid: Decimal) -> dict[str, Any]:
    ob = ev.obligation
    return {
        "rep_id": ob.rep_id,
        "contract_id": ob.contract_id,
        "obligation": ob.obligation_id,
        "due": ob.due.isoformat(),
        "status": ev.status,
        "earned": format_money(ev.earned, ob.currency),
        "paid_to_date": format_money(paid, ob.currency),
        "factors": {k: format_factor(v) for k, v in ev.factors.items()},
        "reason": ev.reason,
    }


def cycle_json(result: CycleResult, evaluations: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON shape of a cycle (interfaces.md); ``evaluations``, when given, is the ``evaluation_json``
    of each of ``result.evaluations`` already rendered (``shell.obligations.Listing.json_rows``)."""
    return {
        "period": result.period,
        "as_of": result.as_of.isoformat(),
        "status": result.status,
        "lines": [line_json(x) for x in result.lines],
        "evaluations": (
            [evaluation_json(e, p) for e, p in result.evaluations] if evaluations is None else list(evaluations)
        ),
        "totals": [total_json(t) for t in result.totals],
    }


def lines_from_json(rows: tuple[dict[str, Any], ...]) -> tuple[Line, ...]:
    return tuple(
        Line(
            r["rep_id"], r["contract_id"], r["obligation"], r["kind"], Decimal(r["amount"]), r["currency"], r["reason"]
        )
        for r in rows
    )


def totals_from_json(rows: tuple[dict[str, Any], ...]) -> tuple[Total, ...]:
    return tuple(
        Total(
            r["rep_id"],
            r["currency"],
            Decimal(r["lines_total"]),
            Decimal(r["carried_in"]),
            Decimal(r["payable"]),
            Decimal(r["carried_out"]),
        )
        for r in rows
    )


def cycle_event(result: CycleResult, ledger_position: int) -> CycleClosed:
    """The event that records a closed cycle: what it saw, which plans it used and what it issued."""
    return CycleClosed(
        type="cycle.closed",
        effective=result.as_of,
        period=result.period,
        as_of=result.as_of,
        ledger_position=ledger_position,
        plans=result.plans,
        lines=tuple(line_json(x) for x in result.lines),
        totals=tuple(total_json(t) for t in result.totals),
    )
