"""Incremental payout cycles: the obligation projection, kept in the ledger's database.

A cycle evaluates every obligation due by its as-of date, so a full close costs in proportion to
everything ever signed. Yet between two closes, an obligation's evaluation can change only if a fact its
rules read changed (``core.evaluation.fact_scopes``), if it became due, or if it is held (the grace
period runs on the calendar). An unchanged earned obligation was paid its earned amount by the last
cycle (that is the true-up), so it has no line and is not listed; an unchanged forfeited one was trued
up to zero, has no line either, and is listed again exactly as before: the close counts those and leaves
them in the projection until its listing is read (``Listing``). So a close needs only:

- the contracts touched by the facts that are new or newly visible since the last close (recorded after
  the position it saw, or effective after its as-of date), by contracts newly vesting a tranche, and by
  held obligations: their streams are read by ``stream_id`` and folded with the core projector;
- the reps' terminations (and those leavers' hires), compliance findings, scorecards and manual
  adjustments (small, by type);
- for each obligation evaluated so far, one row of ``obligation_state``: paid to date, number of lines,
  status at the last close and, when not earned, its evaluation as listed.

``obligation_state`` and ``projection_meta`` are derived data, never a source of truth. They are written
in the same transaction as the ``cycle.closed`` event they reflect, and the meta row names that event's
position and chain hash and the plan versions used. When that row's hash differs (or the cycle is not
the last one, or the plans changed, or the format is older), the close runs in full from the events and
rebuilds the projection. ``audit verify`` and ``audit reproduce`` never read it (reproduce replays the
ledger prefix). ``compute_cycle`` over the full state gives the same result; the tests check it.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any, overload

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from ..core.canonical import canonical_json
from ..core.cycles import (
    CycleResult,
    Line,
    PaidHistory,
    cycle_from,
    evaluation_json,
    lines_from_json,
    paid_history,
    totals_from_json,
)
from ..core.dates import period_end
from ..core.evaluation import (
    LATER_ONLY_TYPES,
    Evaluation,
    Obligation,
    add_years,
    costs_needed_from,
    evaluate_all,
    fact_scopes,
    tranche_id,
    upfront_id,
)
from ..core.money import ZERO, format_factor, format_money
from ..core.plan import PlanBook
from ..core.projections import ClosedCycle, LedgerState, Projector, Renewal
from .store import (
    Writer,
    driver_rows,
    fact_views,
    fold_service_costs,
    fold_sorted,
    head_position,
    hires,
    refresh_statistics,
    rows_where,
    stream_rows,
)
from .tables import LISTING_TABLE, META_TABLE, OBLIGATION_TABLE, RESOLD

FORMAT = 2  # bump when the rows' meaning changes: older projections are then rebuilt (2: payee and seller kept current)
META_NAME = "obligations"
# the meta row of the last closed cycle's listing (``cycle_listing``, migration 0006) and its format
LISTING_NAME = "cycle_listing"
LISTING_FORMAT = 1
IN_CHUNK = 500
# the reps' facts the rules read (terminations, vetoes, scorecards) and the manual adjustments
# (scorecards are read apart: only the years the evaluated tranches can read). A rep is looked up only
# for its termination (``bad_leaver``, ``no_owner``; a rep not in the state has none), so the hires read
# are the leavers' alone (``store.hires``): most reps' records are hires, and every rep ever hired has one
CONTEXT_TYPES = ("rep.terminated", "compliance.violation", "adjustment.recorded")


def book_key(book: PlanBook) -> str:
    """Identity of the plan book (which plan governs a contract depends on every plan in it)."""
    return canonical_json(sorted(p.content_hash for p in book.plans))


# --- the evaluation of a listed obligation, stored --------------------------------------------------


# one encoder for every row (json.dumps with options builds a new one per call: 25% of this encoding)
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def evaluation_to_json(ev: Evaluation) -> str:
    ob = ev.obligation
    r = ob.renewal
    return _ENCODE(
        [
            ob.obligation_id, ob.kind, ob.contract_id, ob.rep_id, ob.currency, ob.due.isoformat(), str(ob.base),
            ob.plan_hash, ob.tranche,
            None if r is None else [r.effective.isoformat(), str(r.acv), r.term_months, r.position],
            ev.status, str(ev.earned), ev.reason, ev.rule, [[k, str(v)] for k, v in ev.factors.items()],
            list(ev.facts), ev.detail,
        ]
    )  # fmt: skip


_scan = json.JSONDecoder().scan_once  # the C scanner: our own compact JSON needs no whitespace handling
_fromiso = date.fromisoformat


def evaluation_from_json(text_: str) -> Evaluation:
    # every cycle re-lists every forfeited obligation: this runs for each of them, so it stays lean
    oid, kind, cid, rep, cur, due, base, plan_hash, tranche, r, status, earned, reason, rule, factors, facts, detail = (
        _scan(text_, 0)[0]
    )
    renewal = None if r is None else Renewal(_fromiso(r[0]), Decimal(r[1]), r[2], r[3])
    ob = Obligation(oid, kind, cid, rep, cur, _fromiso(due), Decimal(base), plan_hash, tranche, renewal)
    return Evaluation(
        ob, status, Decimal(earned), reason, rule, {k: Decimal(v) for k, v in factors} if factors else {},
        tuple(facts), detail,
    )  # fmt: skip


_TEXTS: dict[tuple[str, str], str] = {}  # (stored amount or factor, currency or "") -> its text in the listing


def _text(value: str, currency: str) -> str:
    """``format_money`` (a currency) or ``format_factor`` ("") of a stored value, memoised: the stored
    forfeitures repeat a handful of values (their earned and paid amounts are zero)."""
    out = _TEXTS.get((value, currency))
    if out is None:
        if len(_TEXTS) > 10_000:
            _TEXTS.clear()
        out = format_money(Decimal(value), currency) if currency else format_factor(Decimal(value))
        _TEXTS[value, currency] = out
    return out


# the keys of ``core.cycles.evaluation_json``, in its order
EVALUATION_KEYS = (
    "rep_id",
    "contract_id",
    "obligation",
    "due",
    "status",
    "earned",
    "paid_to_date",
    "factors",
    "reason",
)


def stored_evaluation_values(text_: str, paid: str) -> tuple[Any, ...]:
    """The values of ``evaluation_json(evaluation_from_json(text_), Decimal(paid))``, in the order of
    ``EVALUATION_KEYS``, without building the evaluation: the CLI prints every stored forfeiture."""
    oid, _, cid, rep, cur, due, _, _, _, _, status, earned, reason, _, factors, _, _ = _scan(text_, 0)[0]
    return (
        rep, cid, oid, due, status, _text(earned, cur), _text(paid, cur),
        {k: _text(v, "") for k, v in factors} if factors else {}, reason,
    )  # fmt: skip


def stored_evaluation_json(text_: str, paid: str) -> dict[str, Any]:
    """``evaluation_json(evaluation_from_json(text_), Decimal(paid))`` (a test checks they are equal)."""
    return dict(zip(EVALUATION_KEYS, stored_evaluation_values(text_, paid), strict=True))


# the projection's listed rows (forfeited, or held) of its cycle as (payee, contract or "", obligation,
# evaluation, paid): the first three are their place in the listing (``_order``). One statement, so that the
# meta row's check and the rows come from one snapshot: no rows at all when the projection is at another cycle.
_STORED = (
    f"SELECT payee, COALESCE(contract_id, ''), obligation_id, evaluation, paid FROM {OBLIGATION_TABLE} "
    f"WHERE status IN ({{statuses}}) AND evaluation IS NOT NULL "
    f"AND (SELECT cycle_position FROM {META_TABLE} WHERE name = '{META_NAME}') = {{mark}}"
)


def _stored_rows(conn: Connection, cycle_position: int, statuses: str) -> list[tuple[Any, ...]]:
    """The projection's rows of these statuses (``'forfeited'``, ``'held', 'forfeited'``) that carry an
    evaluation, as (payee, contract or "", obligation, evaluation, paid), if it stands at that cycle."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return driver_rows(conn, _STORED.format(statuses=statuses, mark=mark), (cycle_position,))


def _rows_intact(conn: Connection, meta: tuple[Any, ...]) -> bool:
    """The projection holds as many rows as its meta row says (none removed or added behind the engine's back)."""
    return bool(conn.execute(text(f"SELECT COUNT(*) FROM {OBLIGATION_TABLE}")).scalar_one() == meta[5])


_stored_key = itemgetter(0, 1, 2)


def _order(ev: Evaluation) -> tuple[str, str, str]:
    """The order of a cycle's evaluations (``evaluate_all``): payee, contract, obligation."""
    ob = ev.obligation
    return (ob.rep_id, ob.contract_id or "", ob.obligation_id)


def merged(listed: Sequence[tuple[Evaluation, Decimal]], stored: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``listed`` (in evaluation order) and ``stored`` rows (payee, contract or "", obligation, evaluation
    text, paid text) in any order, merged in evaluation order (the rows stay undecoded)."""
    stored.sort(key=_stored_key)
    items: list[tuple[Any, ...]] = []
    start = 0
    for pair in listed:
        at = bisect_left(stored, _order(pair[0]), start, key=_stored_key)
        items += stored[start:at]
        items.append(pair)
        start = at
    items += stored[start:]
    return items


class Listing(Sequence[tuple[Evaluation, Decimal]]):
    """A cycle's listed evaluations when most of them are unchanged forfeitures: the evaluated ones, and
    how many stored forfeitures join them. The close counts those (an index count) but does not read
    them: ``load`` fetches them (and merges them in evaluation order) when the listing is first read, and
    each is decoded when read. So the close costs what changed, not what was ever forfeited (the CLI's
    JSON output, which prints every one, still reads them all). Equal to a tuple of the same
    (evaluation, paid) pairs."""

    __slots__ = ("_items", "_load", "_size")

    def __init__(self, size: int, load: Callable[[], list[tuple[Any, ...]]]) -> None:
        self._size = size
        self._load = load
        self._items: list[tuple[Any, ...]] | None = None  # (evaluation, paid), or a stored row

    def _all(self) -> list[tuple[Any, ...]]:
        if self._items is None:
            items = self._load()
            if len(items) != self._size:  # pragma: no cover - the loaders check what they return
                raise RuntimeError(f"a cycle listing of {self._size} evaluations loaded {len(items)}")
            self._items = items
        return self._items

    @staticmethod
    def _decoded(item: tuple[Any, ...]) -> tuple[Evaluation, Decimal]:
        if isinstance(item[0], str):  # a stored row
            return evaluation_from_json(item[3]), Decimal(item[4])
        return item  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> tuple[Evaluation, Decimal]: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[tuple[Evaluation, Decimal], ...]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self._decoded(i) for i in self._all()[index])
        return self._decoded(self._all()[index])

    def __iter__(self) -> Iterator[tuple[Evaluation, Decimal]]:
        return (self._decoded(i) for i in self._all())

    def items(self) -> list[tuple[Any, ...]]:
        """Each (evaluation, paid) pair or stored row (``is_stored``), in order, undecoded."""
        return self._all()

    @staticmethod
    def is_stored(item: tuple[Any, ...]) -> bool:
        """A stored row: (payee, contract or "", obligation, evaluation text, paid text)."""
        return isinstance(item[0], str)

    def json_rows(self) -> Iterator[dict[str, Any]]:
        """``evaluation_json`` of each, in order; the stored ones rendered from their text."""
        for item in self._all():
            if isinstance(item[0], str):
                yield stored_evaluation_json(item[3], item[4])
            else:
                yield evaluation_json(*item)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Listing | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Listing({self._size} evaluations)"


def stored_forfeitures(conn: Connection, cycle_position: int, fresh: set[str]) -> list[tuple[Any, ...]]:
    """The forfeitures the projection holds for the cycle recorded at ``cycle_position`` but those in
    ``fresh`` (evaluated by that cycle, so listed already); none if the projection is at another cycle."""
    return [r for r in _stored_rows(conn, cycle_position, "'forfeited'") if r[2] not in fresh]


# a cycle's listing as rows (payee, contract or "", obligation, evaluation, paid before the cycle): the
# earned ones it listed, then the projection's held and forfeited ones (paid after the cycle, corrected by
# the caller), the latter only while the meta row stands at that cycle (one statement, one snapshot)
_LISTED = f"SELECT payee, COALESCE(contract_id, ''), obligation_id, evaluation, paid FROM {LISTING_TABLE}"


def stored_listing(conn: Connection, cycle: ClosedCycle, status: str) -> CycleResult | None:
    """A closed cycle as ``service.stored_cycle`` recomputes it (its stored lines and totals, its listed
    evaluations), from the derived rows, when the cycle is the one they belong to. Its listing is every
    obligation it paid a line or did not find earned: the earned ones listed (``cycle_listing``) and the
    projection's held and forfeited rows (those the cycle evaluated, and the unchanged forfeitures), whose
    paid to date before the cycle is the row's less the cycle's line. None when either meta row names
    another cycle (a later close, a rebuild), the rows' count differs from a meta row's, or the rows
    predate migration 0006: the caller then recomputes the cycle. Reads only, in the caller's
    transaction or snapshot."""
    listing = conn.execute(
        text(f"SELECT format, period, cycle_position, cycle_hash, rows FROM {META_TABLE} WHERE name = :n"),
        {"n": LISTING_NAME},
    ).first()
    meta = _meta(conn)
    if listing is None or meta is None:
        return None
    cycle_hash = conn.execute(text("SELECT hash FROM ledger_event WHERE position = :p"), {"p": cycle.position}).scalar()
    if tuple(listing[:4]) != (LISTING_FORMAT, cycle.period, cycle.position, cycle_hash):
        return None
    if meta[:4] != (FORMAT, cycle.period, cycle.position, cycle_hash):
        return None
    if not _rows_intact(conn, meta):
        return None
    rows = driver_rows(conn, _LISTED, ())
    if len(rows) != listing[4]:
        return None
    lines = lines_from_json(cycle.lines)
    issued = {x.obligation: x.amount for x in lines}
    for r in _stored_rows(conn, cycle.position, "'held', 'forfeited'"):
        amount = issued.get(r[2])
        rows.append(r if amount is None else (*r[:4], str(Decimal(r[4]) - amount)))
    rows.sort(key=_stored_key)
    return CycleResult(
        cycle.period, cycle.as_of, status, lines, Listing(len(rows), lambda: rows), totals_from_json(cycle.totals),
        dict(cycle.plans),
    )  # fmt: skip


# --- reading the projection -------------------------------------------------------------------------


@dataclass(frozen=True)
class _LastCycle:
    period: str
    position: int
    hash: str
    as_of: date
    ledger_position: int
    plans: dict[str, str]
    totals: list[dict[str, Any]]


def _last_cycle(conn: Connection) -> _LastCycle | None:
    # the position from the type index alone, then that one row (never every cycle's payload)
    position = conn.execute(text("SELECT MAX(position) FROM ledger_event WHERE type = 'cycle.closed'")).scalar()
    if position is None:
        return None
    sql = "SELECT position, hash, payload FROM ledger_event WHERE position = :p"
    row = conn.execute(text(sql), {"p": position}).one()
    p = json.loads(row[2])
    return _LastCycle(
        p["period"], int(row[0]), str(row[1]), date.fromisoformat(p["as_of"]), int(p["ledger_position"]),
        dict(p["plans"]), list(p["totals"]),
    )  # fmt: skip


def _meta(conn: Connection) -> tuple[int, str, int, str, str, int] | None:
    row = conn.execute(
        text(f"SELECT format, period, cycle_position, cycle_hash, book, rows FROM {META_TABLE} WHERE name = :n"),
        {"n": META_NAME},
    ).first()
    return None if row is None else (int(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]), int(row[5]))


def registered_plans(conn: Connection) -> set[str]:
    """Content hashes of the plans already registered in the ledger."""
    rows = conn.execute(text("SELECT stream_id FROM ledger_event WHERE type = 'plan.registered'"))
    return {str(r[0]).removeprefix("plan:") for r in rows}


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    items = sorted(set(values))
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


def _in(conn: Connection, sql: str, name: str, values: Iterable[Any], **params: Any) -> Iterator[Any]:
    stmt = text(sql).bindparams(bindparam(name, expanding=True))
    for chunk in _chunks(values):
        yield from conn.execute(stmt, {name: chunk, **params})


@dataclass(frozen=True)
class _Row:
    paid: Decimal
    lines: int
    status: str
    evaluation: str | None
    # the columns the close looks obligations up by (``_lookup``): a row whose payee or seller changed
    # (a late reassignment) is written even when its amounts did not, or a later fact about the new rep
    # would not find it
    payee: str | None = None
    seller: str | None = None


# --- the close ----------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A cycle, computed and ready to be recorded with ``record``."""

    result: CycleResult
    evaluated: list[Evaluation]  # fresh evaluations (their rows may change)
    sellers: dict[str, str]  # contract -> seller, for the rows
    rows: dict[str, _Row]  # the rows of the evaluated obligations before this cycle
    full: bool  # evaluated everything: the projection is rebuilt from scratch
    count: int = 0  # rows in the projection before this cycle (incremental)
    cycle_position: int = 0  # the position of the cycle those rows stand at (incremental)


def incremental(conn: Connection, book: PlanBook, period: str, status: str) -> Prepared | None:
    """The cycle for ``period`` from the projection, or None when the projection cannot be used (missing,
    stale, other plans) or ``period`` is not after the last closed one (the caller's full path decides).
    Reads only: ``conn`` is the close's writer transaction, or a preview's snapshot."""
    meta = _meta(conn)
    last = _last_cycle(conn)
    if meta is None or last is None:
        return None
    if meta[:5] != (FORMAT, last.period, last.position, last.hash, book_key(book)):
        return None  # built at another cycle (or its row no longer carries that hash), or with other plans
    if not _rows_intact(conn, meta):
        return None
    if period <= last.period:
        return None
    head = head_position(conn)
    as_of = period_end(period)
    work = _what_changed(conn, book, last, as_of, head)

    # the partial state, in two reads of plain rows (folded by the projector's fast path, no event objects):
    # every event of the contracts to evaluate but their service costs, and the reps' context; then the
    # service costs (most of a contract's events) of the contracts with a tranche to evaluate, from that
    # tranche's window on: the one rule that reads costs, ``_earned_tranche``, reads no earlier ones
    # (the contract's stream holds no costs, which have their own; but for those recorded by an engine
    # that kept them there: ``core.events.COST_STREAM``)
    streams = [f"contract:{cid}" for cid in work.contracts]
    records = stream_rows(conn, streams, "type <> 'service.cost'")
    context = rows_where(conn, f"type IN ({', '.join('?' * len(CONTEXT_TYPES))})", CONTEXT_TYPES)
    records += context + hires(conn, {r[1] for r in context if r[3] == "rep.terminated"})
    # scorecards: a tranche vesting in year Y reads the seller's Y-1 scorecard, so only the years from the
    # one before the earliest due date evaluated (the reps' yearly scorecards are most of the context)
    year = _year_column(conn)
    records += rows_where(
        conn, f"type = 'scorecard.published' AND {year} >= ?", (_earliest_due(work, records).year - 1,)
    )
    projector = Projector()
    fold_sorted(records, projector)
    state = projector.state
    costs_from: dict[date, list[str]] = {}
    for cid in work.contracts:
        first = _first_tranche(book, state, cid, as_of, work)
        if first is not None:
            costs_from.setdefault(costs_needed_from(book, first).replace(day=1), []).append(cid)
    for cutoff, with_tranche in costs_from.items():  # (a contract's costs are kept in date order)
        fold_service_costs(conn, with_tranche, cutoff.isoformat(), projector)
    evaluated = evaluate_all(book, state, as_of, work.selects_due)

    rows: dict[str, _Row] = {}
    for oid, paid, lines, st, ev, payee, seller in _in(
        conn, f"SELECT obligation_id, paid, lines, status, evaluation, payee, seller FROM {OBLIGATION_TABLE} "
        "WHERE obligation_id IN :ids", "ids", [e.obligation.obligation_id for e in evaluated],
    ):  # fmt: skip
        rows[oid] = _Row(Decimal(paid), int(lines), st, ev, payee, seller)

    # Unchanged forfeited obligations are listed again, as they were (held ones were evaluated above); there
    # is one per forfeiture ever made. Each earns nothing and was trued up to zero by the cycle that
    # forfeited it (``record`` checks it), so unchanged it has no line and changes no total: the cycle
    # needs only their number (``record`` counts them), and the listing reads them when it is read.
    paid = {oid: r.paid for oid, r in rows.items()}
    counts = {oid: r.lines for oid, r in rows.items()}
    evaluated.sort(key=_order)
    carried = {
        (t["rep_id"], t["currency"]): Decimal(t["carried_out"]) for t in last.totals if Decimal(t["carried_out"])
    }  # as paid_history reads them from the last cycle
    result = cycle_from(book, period, status, evaluated, PaidHistory(paid, counts, carried), last.plans)
    sellers = {cid: c.seller for cid, c in state.contracts.items()}
    return Prepared(result, evaluated, sellers, rows, full=False, count=meta[5], cycle_position=last.position)


def previewed(conn: Connection, plan: Prepared) -> CycleResult:
    """An incremental cycle's result as a preview shows it (nothing recorded): its evaluations, and the
    projection's forfeitures that it did not evaluate, listed again as they were (what ``record`` and the
    close's listing give once recorded). Read here, in the caller's snapshot."""
    evaluated = {ev.obligation.obligation_id for ev in plan.evaluated}
    rows = stored_forfeitures(conn, plan.cycle_position, evaluated)
    listed = plan.result.evaluations
    return replace(plan.result, evaluations=Listing(len(listed) + len(rows), lambda: merged(listed, rows)))


def _earliest_due(work: _Work, rows: list[tuple[Any, ...]]) -> date:
    """The earliest due date of the obligations an incremental close evaluates: per contract, the date it
    is evaluated from, or its signing (its up-front payment) when every obligation of it is."""
    signed = {r[1]: date.fromisoformat(r[4]) for r in rows if r[3] == "contract.signed"}
    earliest = date.max
    for cid in work.contracts:
        day = work.earliest.get(cid, date.min)
        if day == date.min:
            day = signed.get(f"contract:{cid}", date.min)
        earliest = min(earliest, day)
    return earliest if earliest != date.max else work.after


def _year_column(conn: Connection) -> str:
    """SQL for a payload's integer "year" (the payload is canonical JSON text)."""
    if conn.dialect.name == "postgresql":
        return "CAST(CAST(payload AS jsonb) ->> 'year' AS INTEGER)"
    return "json_extract(payload, '$.year')"


def full(book: PlanBook, state: LedgerState, period: str, status: str) -> Prepared:
    """The cycle from the whole state (``compute_cycle``), keeping every evaluation for a rebuild."""
    evaluated = evaluate_all(book, state, period_end(period))
    history = paid_history(state, period)
    result = cycle_from(book, period, status, evaluated, history)
    rows = {oid: _Row(p, history.lines.get(oid, 0), "", None) for oid, p in history.paid.items()}
    sellers = {cid: c.seller for cid, c in state.contracts.items()}
    return Prepared(result, evaluated, sellers, rows, full=True)


def record(w: Writer, book: PlanBook, plan: Prepared) -> int:
    """After the cycle event is appended (same transaction): bring the rows and the meta row to it.
    Returns how many stored forfeitures the cycle lists besides the ones in its result (incremental)."""
    conn = w.conn
    position, hash_ = w.head()
    issued: dict[str, Line] = {x.obligation: x for x in plan.result.lines}
    changed: list[tuple[Any, ...]] = []
    count = 0 if plan.full else plan.count
    for ev in plan.evaluated:
        ob = ev.obligation
        old = plan.rows.get(ob.obligation_id)
        line = issued.get(ob.obligation_id)
        paid = (old.paid if old else ZERO) + (line.amount if line else ZERO)
        lines = (old.lines if old else 0) + (1 if line else 0)
        evaluation = None if ev.status == "earned" else evaluation_to_json(ev)
        if ev.status == "forfeited" and paid:  # pragma: no cover - cycle_from issues the clawback to zero
            raise RuntimeError(f"{ob.obligation_id} is forfeited with {paid} paid to date after {plan.result.period}")
        seller = plan.sellers.get(ob.contract_id, ob.rep_id) if ob.kind != "manual" else ob.rep_id
        if (
            not plan.full
            and old is not None
            and (old.paid, old.lines, old.status, old.evaluation, old.payee, old.seller)
            == (paid, lines, ev.status, evaluation, ob.rep_id, seller)
        ):
            continue  # unchanged: no write
        count += old is None or plan.full
        changed.append(
            (ob.obligation_id, ob.contract_id, ob.kind, seller, ob.rep_id, ob.due.isoformat(), ev.status,
             str(paid), lines, evaluation)
        )  # fmt: skip
    if plan.full:
        conn.execute(text(f"DELETE FROM {OBLIGATION_TABLE}"))
    _upsert(conn, changed)
    refresh_statistics(conn, OBLIGATION_TABLE, len(changed), count)
    params = {
        "n": META_NAME, "f": FORMAT, "p": plan.result.period, "cp": position, "ch": hash_, "b": book_key(book),
        "r": count,
    }  # fmt: skip
    conn.execute(text(_META_UPSERT), params)
    _record_listing(conn, plan, {**params, "n": LISTING_NAME})
    if plan.full:
        return 0  # the result lists everything
    # every forfeited row is listed; those evaluated now are in the result already (a count on the index)
    forfeited = conn.execute(text(f"SELECT COUNT(*) FROM {OBLIGATION_TABLE} WHERE status = 'forfeited'")).scalar_one()
    return int(forfeited) - sum(1 for ev in plan.evaluated if ev.status == "forfeited")


_COLUMNS = ("obligation_id", "contract_id", "kind", "seller", "payee", "due", "status", "paid", "lines", "evaluation")
_META_UPSERT = (
    f"INSERT INTO {META_TABLE} (name, format, period, cycle_position, cycle_hash, book, rows) "
    "VALUES (:n, :f, :p, :cp, :ch, :b, :r) ON CONFLICT (name) DO UPDATE SET format = excluded.format, "
    "period = excluded.period, cycle_position = excluded.cycle_position, "
    "cycle_hash = excluded.cycle_hash, book = excluded.book, rows = excluded.rows"
)


def _record_listing(conn: Connection, plan: Prepared, meta: dict[str, Any]) -> None:
    """The earned obligations the cycle listed (those it paid a line, all of them evaluated now), replacing
    the previous cycle's, and the meta row that names the cycle they belong to. The cycle's other listed
    evaluations, held and forfeited, are the projection's rows that are not earned (``stored_listing``).
    Each row's evaluation is encoded here: about 17,500 at M, 0.1-0.2 s of a close.

    PostgreSQL empties the table by TRUNCATE (in this transaction: it rolls back with it): a DELETE leaves
    every row dead in the table until a vacuum, and on a server without autovacuum the table, and each
    read of it, would grow by a month's rows every month. A show whose snapshot is older than the TRUNCATE
    finds the table empty, and its row count check sends it to the recomputation."""
    empty = "TRUNCATE" if conn.dialect.name == "postgresql" else "DELETE FROM"
    conn.execute(text(f"{empty} {LISTING_TABLE}"))
    rows = [
        (i, ev.obligation.obligation_id, ev.obligation.contract_id, ev.obligation.rep_id, str(paid),
         evaluation_to_json(ev))
        for i, (ev, paid) in enumerate(pair for pair in plan.result.evaluations if pair[0].status == "earned")
    ]  # fmt: skip
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {LISTING_TABLE} ({', '.join(_LISTING_COLUMNS)}) VALUES ({', '.join([mark] * 6)})"
    for i in range(0, len(rows), 10_000):
        conn.exec_driver_sql(sql, rows[i : i + 10_000])
    conn.execute(text(_META_UPSERT), {**meta, "f": LISTING_FORMAT, "r": len(rows)})


_LISTING_COLUMNS = ("seq", "obligation_id", "contract_id", "payee", "paid", "evaluation")


def _upsert(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    sql = (
        f"INSERT INTO {OBLIGATION_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))}) "
        f"ON CONFLICT (obligation_id) DO UPDATE SET {updates}"
    )
    for i in range(0, len(rows), 10_000):
        conn.exec_driver_sql(sql, list(rows[i : i + 10_000]))


# --- what changed since the last close ----------------------------------------------------------------


@dataclass
class _Work:
    """What an incremental close evaluates: obligations due from a date (per contract), single
    obligations, and everything newly due (after the last as-of date)."""

    after: date  # the last cycle's as-of date: obligations due later are new, always evaluated
    since: dict[str, date]  # contract -> evaluate its obligations due on or after this date
    ids: set[str]  # and these obligations
    contracts: set[str]  # the contracts to read (those above, and the ones newly vesting a tranche)
    earliest: dict[str, date] = field(default_factory=dict)  # contract -> the earliest due date evaluated

    def due_from(self, contract_id: str, day: date) -> None:
        self.contracts.add(contract_id)
        self.earliest[contract_id] = min(day, self.earliest.get(contract_id, day))

    def selects_due(self, contract_id: str, obligation_id: str, due: date) -> bool:
        if due > self.after or obligation_id in self.ids:
            return True
        since = self.since.get(contract_id)
        return since is not None and due >= since


def _first_tranche(book: PlanBook, state: LedgerState, cid: str, as_of: date, work: _Work) -> date | None:
    """The due date of the first tranche of ``cid`` the close evaluates (as ``obligations_of`` lists them),
    or None when it evaluates none."""
    c = state.contracts.get(cid)
    if c is None or c.signed > as_of:
        return None
    for k, years in enumerate(book.in_force(c.signed).model.commission.tranches.vesting_years, 1):
        vest = add_years(c.signed, years)
        if vest > as_of:
            return None
        if work.selects_due(cid, tranche_id(cid, k), vest):
            return vest
    return None


def _what_changed(conn: Connection, book: PlanBook, last: _LastCycle, as_of: date, head: int) -> _Work:
    """The obligations that may evaluate differently at ``as_of`` than at the last close: those reached
    (``fact_scopes``) by facts recorded since the position it saw, or effective since its as-of date."""
    seen, before = last.ledger_position, last.as_of
    # facts effective after as_of change nothing yet (every rule reads facts effective by as_of); the close
    # whose window holds their date finds them with the facts "ahead" below
    # (nor facts of the LATER_ONLY_TYPES effective after the last as-of date: they reach nothing evaluated)
    later_only = ", ".join("?" * len(LATER_ONLY_TYPES))
    changed = rows_where(
        conn,
        f"position > ? AND position <= ? AND effective <= ? AND (effective <= ? OR type NOT IN ({later_only}))",
        (seen, head, as_of.isoformat(), before.isoformat(), *LATER_ONLY_TYPES),
    )
    # facts recorded before the last close but effective since its as-of date: positions first (from the
    # effective index alone, which holds the position), then those few rows
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT position FROM ledger_event WHERE effective > {mark} AND effective <= {mark} AND position <= {mark}"
    ahead = [p for (p,) in driver_rows(conn, sql, (before.isoformat(), as_of.isoformat(), seen))]
    for i in range(0, len(ahead), 500):
        chunk = ahead[i : i + 500]
        clause = f"position IN ({', '.join('?' * len(chunk))}) AND type NOT IN ({later_only})"
        changed += rows_where(conn, clause, (*chunk, *LATER_ONLY_TYPES))
    work = _Work(before, {}, set(), set())
    lookups: list[tuple[str, str, str]] = []  # (column, value, due from) over evaluated obligations

    def since(cid: str, day: date) -> None:
        work.since[cid] = min(day, work.since.get(cid, day))
        work.due_from(cid, day)

    for fact in fact_views(changed):  # (each fact's fields as a view: fact_scopes reads a few of them)
        for scope in fact_scopes(fact):
            kind = scope[0]
            if kind == "contract":
                since(scope[1], date.min)
            elif kind == "contract_from":
                since(scope[1], date.fromisoformat(scope[2]))
            elif kind == "upfront":  # one obligation; it reads no service cost, so the cutoff stays
                work.ids.add(upfront_id(scope[1]))
                work.contracts.add(scope[1])
            elif kind in ("evaluated_from", "seller_from", "payee_from"):
                if scope[2] <= before.isoformat():  # else nothing evaluated so far is due that late
                    column = {"evaluated_from": "contract_id", "seller_from": "seller", "payee_from": "payee"}[kind]
                    lookups.append((column, scope[1], scope[2]))
            elif kind == "seller_tranche_year":
                if f"{scope[2]}-01-01" <= before.isoformat():
                    lookups.append(("seller_tranche", scope[1], scope[2]))
            else:  # pragma: no cover - fact_scopes and this reader change together
                raise ValueError(f"unknown scope {scope}")
    held = conn.execute(text(f"SELECT obligation_id, contract_id, due FROM {OBLIGATION_TABLE} WHERE status = 'held'"))
    # (the grace period runs on the calendar: held obligations are evaluated every time)
    for oid, cid, due in [*_lookup(conn, lookups), *held]:
        work.ids.add(oid)
        if cid is not None:  # manual adjustments have no contract (and are always evaluated)
            work.due_from(cid, date.fromisoformat(due))
    new = date.fromordinal(before.toordinal() + 1)
    for cid in _vesting(conn, book, before, as_of):
        work.due_from(cid, new)
    return work


def _lookup(conn: Connection, lookups: list[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
    """Evaluated obligations (id, contract, due) matching (column = value AND due >= from), grouped by column
    and date so that each group is one IN (...) query per 500 values."""
    groups: dict[tuple[str, str], set[str]] = {}
    for column, value, due_from in lookups:
        groups.setdefault((column, due_from), set()).add(value)
    base = f"SELECT obligation_id, contract_id, due FROM {OBLIGATION_TABLE} WHERE kind != 'manual' AND "
    for (column, due_from), values in sorted(groups.items()):
        if column == "seller_tranche":  # due_from holds the vesting year
            extra, dates = (
                " AND kind = 'tranche' AND due >= :lo AND due <= :hi",
                {"lo": f"{due_from}-01-01", "hi": f"{due_from}-12-31"},
            )
        else:
            extra, dates = " AND due >= :lo", {"lo": due_from}
        for by in _BY_SELLER if column in ("seller", "seller_tranche") else (f"{column} IN :v",):
            yield from _in(conn, base + by + extra, "v", values, **dates)


# "seller IN :v" as two disjoint lookups, one index each: the rows whose seller is their payee (up-front
# payments, tranches, most renewals) by the payee index; the others by the partial index over exactly
# those rows (migration 0005)
_BY_SELLER = ("payee IN :v AND seller = payee", f"seller IN :v AND {RESOLD}")


def _vesting(conn: Connection, book: PlanBook, after: date, upto: date) -> set[str]:
    """Contracts with a tranche vesting in (after, upto] under any plan's vesting years."""
    years = sorted({y for p in book.plans for y in p.model.commission.tranches.vesting_years})
    out: set[str] = set()
    slack = timedelta(days=3)  # add_years clamps Feb 29: widen the window, then test exactly
    for k in years:
        lo, hi = add_years(after, -k) - slack, add_years(upto, -k) + slack
        for stream_id, effective in conn.execute(
            text(
                "SELECT stream_id, effective FROM ledger_event "
                "WHERE type = 'contract.signed' AND effective > :lo AND effective <= :hi"
            ),
            {"lo": lo.isoformat(), "hi": hi.isoformat()},
        ):
            if after < add_years(date.fromisoformat(effective), k) <= upto:
                out.add(stream_id.removeprefix("contract:"))
    return out
