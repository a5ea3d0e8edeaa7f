"""The orchestrator: each user operation reads top to bottom (read files -> project -> validate ->
append; project -> evaluate -> cycle -> append). All database writes happen inside one ``writer()``
transaction holding the ledger's single-writer lock, so every operation sees a consistent prefix and an
interrupted one leaves nothing behind."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from ..core.cycles import CycleResult, compute_cycle, cycle_event, lines_from_json, totals_from_json
from ..core.dates import parse_period, period_end
from ..core.events import Event, PlanRegistered, payload_json
from ..core.plan import PlanBook
from ..core.projections import ClosedCycle, LedgerState, Projector, Recorded, project
from ..core.reading import read_event_batches
from ..core.validation import check_batch, contracts_read_in_full, entities_read
from ..errors import CycleError, InputError, Problem
from . import obligations
from .plans import book_from_registered
from .store import AppendPipeline, Ledger, Writer, content_hashes, entities_state, fold_sorted, hires, stream_rows

Progress = Callable[[int], None]


def load_state(ledger: Ledger, upto: int | None = None, recorded_upto: str | None = None) -> LedgerState:
    """Replay: fold the ledger (or its prefix) into state. The whole ledger comes from the incremental
    projection (below); a prefix is always folded from position 0."""
    if upto is None and recorded_upto is None:
        return current_state(ledger)
    return project(ledger.read(upto=upto, recorded_upto=recorded_upto))


@dataclass
class _Projection:
    position: int
    hash: str
    projector: Projector


_PROJECTIONS: dict[str, _Projection] = {}


def current_state(ledger: Ledger, writer: Writer | None = None) -> LedgerState:
    """The state of the whole ledger, kept incrementally within this process: only events after the last
    projected position are folded in, after checking that the row at that position still carries the hash
    it had (else the projection is rebuilt from position 0). The result is the same fold as ``project``
    over every event (a property test checks it); it is valid until the next write."""
    source = writer if writer is not None else ledger
    cached = _PROJECTIONS.get(ledger.url)
    if cached is None or not _still_there(ledger, cached):
        cached = _Projection(0, "", Projector())
    # trusted fold (no pydantic re-validation, no event objects): every row was validated on its way in,
    # the database refuses updates, and tampering is what `audit verify` is for
    with gc_paused():
        source.fold(cached.projector, after=cached.position)
        state = cached.projector.state
        if state.position != cached.position:
            cached.position = state.position
            cached.hash = _hash_at(ledger, state.position)
            # frozen before collections resume: the first one after a pause would walk every object the
            # fold allocated (0.42 s after a 2M-event replay here), all of them kept
            _keep_projection()
    _PROJECTIONS[ledger.url] = cached
    return state


def _keep_projection() -> None:
    """The projection lives as long as the process and only grows: move its objects (and whatever else
    exists now) out of the garbage collector's reach (``gc.freeze``). Without it, every full collection
    walks millions of them: at 2M events that cost 4 of the 5 seconds of ingesting one 4,600-event file
    (collections triggered by allocations while validating and projecting)."""
    gc.freeze()


def _advance(ledger: Ledger, recorded: list[Recorded], head_hash: str) -> None:
    """With an append's commit: fold what was just written into this process's projection, so the next
    operation need not read it back. Only if the projection stood exactly where the append began."""
    cached = _PROJECTIONS.get(ledger.url)
    if not recorded or cached is None or cached.position != recorded[0].position - 1:
        return
    for rec in recorded:
        cached.projector.apply(rec)
    cached.position, cached.hash = recorded[-1].position, head_hash
    _keep_projection()


def _advance_while_committing(ledger: Ledger, w: Writer, recorded: list[Recorded]) -> None:
    """``_advance`` while ``w`` commits: the commit waits on the disk, the fold on Python (an M month's
    file: 0.18-0.33 s and 0.11-0.22 s). Should the commit fail, the projection, ahead of the ledger, is
    dropped."""
    head_hash = w.head()[1]
    w.while_committing(lambda: _advance(ledger, recorded, head_hash), lambda: _forget(ledger))


def _forget(ledger: Ledger) -> None:
    _PROJECTIONS.pop(ledger.url, None)


def _hash_at(ledger: Ledger, position: int) -> str:
    for row in ledger.read_rows(after=position - 1, upto=position):
        return str(row[9])
    return ""


def _still_there(ledger: Ledger, cached: _Projection) -> bool:
    return cached.position == 0 or _hash_at(ledger, cached.position) == cached.hash


def forget_projections() -> None:
    _PROJECTIONS.clear()


# --- ingest ---------------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    source: str
    appended: int = 0
    skipped: int = 0
    problems: list[Problem] = field(default_factory=list)
    first_position: int | None = None


def ingest_file(ledger: Ledger, path: Path, progress: Progress | None = None) -> IngestResult:
    """Validate a whole file and append it in one transaction, or append nothing and report every problem."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return IngestResult(source, problems=[Problem(source, None, "(file)", f"cannot read: {exc.strerror}")])
    with gc_paused():
        return _ingest(ledger, source, data, progress)


def _ingest(ledger: Ledger, source: str, data: bytes, progress: Progress | None) -> IngestResult:
    """The file's lines are read and validated a batch at a time (``read_event_batches``); each batch's
    new events go to the writer's append pipeline, which inserts them in a thread while the next batch is
    read; the reference rules then check every new event, beside the last inserts; and only if the whole
    file passed does the writer commit. Any problem: the writer rolls back, and the file gets its every
    problem (of reading, deduplication and the rules), nothing written."""
    problems: list[Problem] = []
    lines: list[int] = []  # the new events' line numbers, and the events
    events: list[Event] = []
    refused: Exception | None = None  # the append's own refusal: raised unless the file has problems
    with ledger.writer() as w:
        # a process that holds the whole ledger's projection brings it up to date before anything is inserted
        state = current_state(ledger, w) if ledger.url in _PROJECTIONS else None
        with _reads_beside(ledger) as reads, w.pipeline(reads) as pipeline:
            deduplicate = _Deduplicator(source, pipeline)
            for parsed, found in read_event_batches(source, data, progress):
                problems += found
                if not parsed:
                    continue
                fresh, found = deduplicate(parsed)
                problems += found
                lines += fresh.lines
                events += fresh.events
                if fresh.events and not problems and refused is None:
                    try:
                        pipeline.send(fresh.events, fresh.payloads, fresh.hashes)
                    except Exception as exc:
                        refused = exc
            # reference rules run on every line that parsed, even when others did not: every error is reported
            if state is None:
                state = _entities_state(reads if reads is not None else w.conn, events)
            problems += [Problem(source, lines[r.index], r.field, r.reason) for r in check_batch(state, events)]
            if problems:  # the writer's transaction rolls back: nothing of the file stays written
                problems.sort(key=lambda p: p.line or 0)
                raise _Abort(IngestResult(source, skipped=deduplicate.skipped, problems=problems))
            if refused is not None:
                raise refused
            recorded = pipeline.finish()
        _advance_while_committing(ledger, w, recorded)
    return IngestResult(source, len(recorded), deduplicate.skipped, [], recorded[0].position if recorded else None)


@contextmanager
def _reads_beside(ledger: Ledger) -> Iterator[Connection | None]:
    """A snapshot beside the writer (taken under its lock: the ledger as the writer found it), where the
    ledger has a second connection; else None (an in-memory SQLite ledger: the writer's reads itself)."""
    if not ledger.reads_beside_writer:
        yield None
        return
    with ledger.snapshot() as conn:
        yield conn


def payroll_state(ledger: Ledger, period: str) -> LedgerState:
    """What a payroll export reads (``statements.payroll_csv``): the period's ``cycle.closed`` and the
    hires (names) of the reps its totals pay, read by stream in one snapshot; not a replay of the ledger."""
    projector = Projector()
    with ledger.snapshot() as conn:
        cycle = closed_cycle(conn, check_period(period), projector)
        if cycle is not None:
            fold_sorted(hires(conn, {f"rep:{t['rep_id']}" for t in cycle.totals}), projector)
    return projector.state


def _entities_state(conn: Connection, events: list[Event]) -> LedgerState:
    contracts, reps = entities_read(events)
    return entities_state(conn, contracts, reps, in_full=contracts_read_in_full(events))


class _Abort(Exception):
    def __init__(self, result: IngestResult) -> None:
        self.result = result


def ingest_files(ledger: Ledger, paths: list[Path], progress: Progress | None = None) -> list[IngestResult]:
    results = []
    for path in paths:
        try:
            results.append(ingest_file(ledger, path, progress))
        except _Abort as abort:  # the writer rolled back: nothing of this file was appended
            results.append(abort.result)
    return results


@dataclass
class _Fresh:
    """A batch's new events, with their line numbers, canonical payloads and content hashes (in step)."""

    lines: list[int]
    events: list[Event]
    payloads: list[str]
    hashes: list[str]


class _Deduplicator:
    """Idempotent re-ingest: skip events already in the ledger (by event_id, else by content). Called on a
    file's batches in order, it answers as on the whole file at once: every lookup is of the ledger as
    it was before the file (``lookups``: the append pipeline's reads, beside the file's own rows), and
    what the batches before taught it (the ids seen, the stored copies of a content used up) carries on."""

    def __init__(self, source: str, lookups: AppendPipeline) -> None:
        self.source = source
        self.lookups = lookups
        self.skipped = 0
        self.seen_ids: dict[str, tuple[str, int]] = {}
        self.stored_counts: dict[str, int] = {}

    def __call__(self, parsed: list[tuple[int, Event, str | None]]) -> tuple[_Fresh, list[Problem]]:
        """The batch's new events and its problems."""
        stored_counts = self.stored_counts
        lines = [line for line, _, _ in parsed]
        events = [e for _, e, _ in parsed]
        # once, for deduplication and the append (most lines' the reader wrote as it read them)
        payloads = [p if p is not None else payload_json(e) for _, e, p in parsed]
        effectives = [e.effective.isoformat() for e in events]
        hashes = content_hashes([e.type for e in events], effectives, payloads)
        ids = [e.event_id for e in events]
        given = [i for i in ids if i]
        stored_ids = self.lookups.event_id_hashes(given)
        unseen = [(d, h) for i, d, h in zip(ids, effectives, hashes, strict=True) if not i and h not in stored_counts]
        found = self.lookups.content_hash_counts(unseen)
        for _, h in unseen:
            stored_counts.setdefault(h, found.get(h, 0))
        if (
            not stored_ids
            and len(set(given)) == len(given)
            and self.seen_ids.keys().isdisjoint(given)
            and not any(stored_counts[h] for i, h in zip(ids, hashes, strict=True) if not i)
        ):
            # the usual batch: no event of it stored, no id given twice: every event is new, as they come
            self.seen_ids.update(
                (i, (h, line)) for i, h, line in zip(ids, hashes, lines, strict=True) if i
            )  # fmt: skip
            return _Fresh(lines, events, payloads, hashes), []
        return self._one_by_one(lines, events, payloads, hashes, stored_ids)

    def _one_by_one(
        self, lines: list[int], events: list[Event], payloads: list[str], hashes: list[str], stored_ids: dict[str, str]
    ) -> tuple[_Fresh, list[Problem]]:
        source, seen_ids, stored_counts = self.source, self.seen_ids, self.stored_counts
        fresh = _Fresh([], [], [], [])
        problems: list[Problem] = []
        for line, event, payload, h in zip(lines, events, payloads, hashes, strict=True):
            if event.event_id:
                earlier, where = stored_ids.get(event.event_id), "already in the ledger"
                if earlier is None and event.event_id in seen_ids:
                    earlier, first_line = seen_ids[event.event_id]
                    where = f"used on line {first_line}"
                if earlier is not None:
                    if earlier != h:
                        message = f"{event.event_id!r} is {where} with different content"
                        problems.append(Problem(source, line, "event_id", message))
                    self.skipped += 1
                    continue
                seen_ids[event.event_id] = (h, line)
            elif stored_counts[h] > 0:
                stored_counts[h] -= 1
                self.skipped += 1
                continue
            fresh.lines.append(line)
            fresh.events.append(event)
            fresh.payloads.append(payload)
            fresh.hashes.append(h)
        return fresh, problems


# --- cycles ---------------------------------------------------------------------------------------------


def check_period(period: str) -> str:
    try:
        parse_period(period)
    except ValueError as exc:
        raise CycleError(str(exc)) from None
    return period


def preview(ledger: Ledger, book: PlanBook, period: str) -> CycleResult:
    """What closing ``period`` would issue, recording nothing. Incremental when the obligation projection
    matches the ledger, as the close is (in a read-only snapshot, no writer's lock); else from the
    whole state."""
    with ledger.snapshot() as conn:
        prepared = obligations.incremental(conn, book, check_period(period), "preview")
        if prepared is not None:
            return obligations.previewed(conn, prepared)
    state = load_state(ledger)
    _check_order(state, check_period(period))
    if period in state.cycles:
        raise CycleError(f"{period} is already closed; use `incentive cycle show {period}`")
    return compute_cycle(book, state, period, "preview")


def _check_order(state: LedgerState, period: str) -> None:
    last = state.last_closed_period()
    if last is not None and period < last and period not in state.cycles:
        raise CycleError(f"cannot close {period}: cycles close in order and {last} is already closed")


def close(ledger: Ledger, book: PlanBook, period: str) -> CycleResult:
    """Evaluate and record the cycle atomically: its plans (when first used) and the cycle in one transaction.

    Incremental when the obligation projection matches the ledger (``shell.obligations``): only what
    changed since the last close is evaluated. Otherwise the whole state is evaluated and the projection
    rebuilt; both give what ``compute_cycle`` gives."""
    check_period(period)
    with gc_paused():
        return _close(ledger, book, period)


def _close(ledger: Ledger, book: PlanBook, period: str) -> CycleResult:
    with ledger.writer() as w:
        closed = closed_cycle(w.conn, period)
        if closed is not None:  # a no-op that shows the cycle: from the derived rows when they are its
            shown = obligations.stored_listing(w.conn, closed, "already_closed")
            if shown is not None:
                return shown
        prepared = obligations.incremental(w.conn, book, period, "closed")
        if prepared is None:
            state = current_state(ledger, w)
            if period in state.cycles:
                return stored_cycle(ledger, state, period, "already_closed")
            _check_order(state, period)
            prepared = obligations.full(book, state, period, "closed")
            registered = set(state.plans)
        else:
            registered = obligations.registered_plans(w.conn)
        result = prepared.result

        by_hash = book.by_hash()
        events: list[Event] = []
        for h in sorted(result.plans):
            if h not in registered:
                p = by_hash[h]
                events.append(
                    PlanRegistered(
                        type="plan.registered",
                        effective=period_end(period),
                        plan_id=p.plan_id,
                        version=p.version,
                        content_hash=h,
                        filename=Path(p.filename).name,
                        text=p.text,
                    )
                )
        events.append(cycle_event(result, w.head()[0]))
        recorded = w.append(events, expected_versions={f"cycle:{period}": 0})
        stored = obligations.record(w, book, prepared)
        position = w.head()[0]
        _advance_while_committing(ledger, w, recorded)
    if stored:
        result = replace(result, evaluations=_listing(ledger, result, stored, position))
    return result


def _listing(ledger: Ledger, result: CycleResult, stored: int, position: int) -> obligations.Listing:
    """The cycle's listing: its evaluated obligations and, read when the listing is first read, the
    ``stored`` unchanged forfeitures the projection holds for the cycle recorded at ``position``."""
    listed = result.evaluations
    fresh = {ev.obligation.obligation_id for ev, _ in listed}

    def load() -> list[Any]:
        with ledger.engine.connect() as conn:
            rows = obligations.stored_forfeitures(conn, position, fresh)
        if len(rows) == stored:
            return obligations.merged(listed, rows)
        # the projection has moved on since (a later close, a rebuild): recompute from the ledger prefix
        return list(stored_cycle(ledger, load_state(ledger), result.period).evaluations)

    return obligations.Listing(len(listed) + stored, load)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a bulk operation: folding and validating allocate millions of
    small objects without cycles, and each automatic collection would walk the whole (large) state."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def closed_cycle(conn: Connection, period: str, projector: Projector | None = None) -> ClosedCycle | None:
    """The ``cycle.closed`` event of ``period`` as projected (into ``projector``, if given), read by its
    stream; None if not closed."""
    projector = Projector() if projector is None else projector
    fold_sorted(stream_rows(conn, [f"cycle:{period}"], "type = 'cycle.closed'"), projector)
    return projector.state.cycles.get(period)


def show_cycle(ledger: Ledger, period: str) -> CycleResult:
    """What a closed cycle issued (``stored_cycle``). The last closed cycle's listing is read from the
    derived rows its close wrote (``obligations.stored_listing``), in one snapshot; any other cycle's is
    recomputed from the ledger prefix it saw (at M, the whole command: 54 s and 2.8 GB for a recomputed
    month, 3-5 s and about 0.5 GB for the last one)."""
    with ledger.snapshot() as conn:
        closed = closed_cycle(conn, check_period(period))
        if closed is None:
            raise CycleError(f"{period} is not closed")
        shown = obligations.stored_listing(conn, closed, "closed")
    if shown is not None:
        return shown
    return stored_cycle(ledger, load_state(ledger), period)


def stored_cycle(ledger: Ledger, state: LedgerState, period: str, status: str = "closed") -> CycleResult:
    """What a closed cycle issued (its stored lines and totals) with its evaluations recomputed from the
    ledger prefix it saw and the plan versions it used."""
    cycle = state.cycles.get(check_period(period))
    if cycle is None:
        raise CycleError(f"{period} is not closed")
    # the lines are the stored ones; the evaluations are recomputed by the trusted fold of rows validated
    # when they were appended (4x faster); `audit reproduce` folds the prefix with full validation
    recomputed = reproduce_cycle(ledger, state, period, trusted=True)
    return CycleResult(
        period,
        cycle.as_of,
        status,
        lines_from_json(cycle.lines),
        recomputed.evaluations,
        totals_from_json(cycle.totals),
        dict(cycle.plans),
    )


def registered_book(state: LedgerState, hashes: dict[str, str]) -> PlanBook:
    missing = [h for h in hashes if h not in state.plans]
    if missing:
        raise CycleError(f"plan versions {', '.join(missing)} are not registered in the ledger")
    return book_from_registered({h: (state.plans[h].filename, state.plans[h].text) for h in hashes})


def closed_cycle_inputs(
    ledger: Ledger, state: LedgerState, period: str, *, trusted: bool = False
) -> tuple[PlanBook, LedgerState]:
    """What a closed cycle saw: the plans it used (from their registered texts) and the ledger prefix,
    folded with every row re-validated, or by the trusted fold (``Ledger.fold``) when ``trusted``."""
    cycle = state.cycles[period]
    book = registered_book(state, cycle.plans)
    if not trusted:
        return book, load_state(ledger, upto=cycle.ledger_position)
    projector = Projector()
    with gc_paused():
        ledger.fold(projector, upto=cycle.ledger_position)
    return book, projector.state


def reproduce_cycle(ledger: Ledger, state: LedgerState, period: str, *, trusted: bool = False) -> CycleResult:
    """Recompute a closed cycle from the ledger as it stood at its close, with the plans it used."""
    book, prefix = closed_cycle_inputs(ledger, state, period, trusted=trusted)
    return compute_cycle(book, prefix, period, "reproduced")


def raise_input(results: list[IngestResult]) -> None:
    problems = [p for r in results for p in r.problems]
    if problems:
        raise InputError(problems)
