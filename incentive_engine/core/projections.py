"""Folding the event log into state: a pure function of the events (replay is a fold).

The state keeps each fact with its business date and its ledger position, not just "current values",
because evaluation reads the ledger "as known" at any as-of date and the auditor's tools cite the
position of every fact that decided a result. Entities are built by one mutable builder inside
``project``/``Projector.apply`` and are not mutated after; callers treat them as read-only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple

from . import dates
from .canonical import canonical_json, sha256_hex
from .events import (
    AdjustmentRecorded,
    ComplianceViolation,
    ContractChurned,
    ContractExpanded,
    ContractReassigned,
    ContractRenewed,
    ContractSigned,
    CycleClosed,
    Event,
    KpiMeasured,
    PlanRegistered,
    RepHired,
    RepTerminated,
    ScorecardPublished,
    ServiceCost,
    TargetSet,
)

# A pure function of two values, memoised: pendulum's month arithmetic takes microseconds a call, and
# term ends are asked for again and again by every evaluation of a tranche.
term_end = lru_cache(maxsize=1 << 16)(dates.term_end)


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as the ledger stored it: where (position) and when (recorded_at, UTC ISO) it was written."""

    position: int
    recorded_at: str
    stream_id: str
    stream_version: int
    event: Event


class Fact(NamedTuple):
    """A dated value with the ledger position that recorded it (for 'as known' reads and for explain).

    A named tuple rather than a frozen dataclass: as immutable, and built three times faster (a frozen
    dataclass sets each field through ``object.__setattr__``); a replay builds one per service cost,
    expansion, reassignment and KPI, most of a ledger's events."""

    effective: date
    position: int
    value: Any


@dataclass(slots=True)
class Rep:
    rep_id: str
    name: str
    role: str
    region: str | None
    manager_id: str | None
    hired: date
    hired_position: int
    terminated: Fact | None = None  # value: "good" | "bad"

    def employed_on(self, d: date) -> bool:
        return self.hired <= d and (self.terminated is None or self.terminated.effective > d)


@dataclass(slots=True)
class Renewal:
    effective: date
    acv: Decimal
    term_months: int
    position: int


@dataclass(slots=True)
class Contract:
    contract_id: str
    account_id: str
    seller: str
    currency: str
    signed: date
    acv0: Decimal
    term_months: int
    gross_margin: Decimal | None
    signed_position: int
    renewals: list[Renewal] = field(default_factory=list)  # sorted by (effective, position)
    expansions: list[Fact] = field(default_factory=list)  # value: Decimal delta
    churn: Fact | None = None  # value: reason | None
    reassignments: list[Fact] = field(default_factory=list)  # value: rep_id
    service_costs: list[Fact] = field(default_factory=list)  # value: Decimal amount

    # --- the contract's state on a date d (reference-plan.md, "The contract's state on a date d") ---

    def renewals_until(self, d: date) -> list[Renewal]:
        return [r for r in self.renewals if r.effective <= d]

    def acv_on(self, d: date) -> Decimal:
        """ACV set by the latest signing/renewal <= d plus expansions after that date and <= d."""
        base_date, acv = self.signed, self.acv0
        for r in self.renewals:
            if r.effective <= d:
                base_date, acv = r.effective, r.acv
        for e in self.expansions:
            if base_date < e.effective <= d:
                acv += e.value
        return acv

    def term_end_on(self, d: date) -> date:
        end = term_end(self.signed, self.term_months)
        for r in self.renewals:
            if r.effective <= d:
                end = term_end(r.effective, r.term_months)
        return end

    def churned_by(self, d: date) -> bool:
        return self.churn is not None and self.churn.effective <= d

    def owner_on(self, d: date) -> str:
        owner = self.seller
        for f in self.reassignments:
            if f.effective <= d:
                owner = f.value
        return owner

    def owner_fact_on(self, d: date) -> Fact | None:
        last = None
        for f in self.reassignments:
            if f.effective <= d:
                last = f
        return last

    def change_dates(self) -> list[date]:
        """Every date on which the ACV may change (for 'ACV never reaches 0' checks)."""
        return sorted({self.signed, *(r.effective for r in self.renewals), *(e.effective for e in self.expansions)})


@dataclass(frozen=True, slots=True)
class Violation:
    rep_id: str
    severity: str
    contract_id: str | None
    effective: date
    description: str
    position: int


@dataclass(frozen=True, slots=True)
class Adjustment:
    event_id: str
    rep_id: str
    amount: Decimal
    currency: str
    reason: str
    approved_by: str
    contract_id: str | None
    effective: date
    position: int


@dataclass(frozen=True, slots=True)
class Target:
    amount: Decimal
    currency: str
    effective: date
    position: int


@dataclass(frozen=True, slots=True)
class Scorecard:
    composite: Decimal
    components: dict[str, Any] | None
    effective: date
    position: int


@dataclass(frozen=True, slots=True, eq=False)
class ClosedCycle:
    """A closed cycle as recorded. What it issued (``lines``, ``totals``) is held either decoded or as the
    JSON text of its stored payload, decoded on each read: the trusted fold keeps the lines as text (at M,
    sixty cycles of ~25,000 lines each were 1.2 GB of dicts, half the replayed state, that most commands
    never read; the totals, a fraction of it, are decoded to check where the lines end). Equal whichever
    way it is held."""

    period: str
    as_of: date
    ledger_position: int
    plans: dict[str, str]
    lines_held: tuple[dict[str, Any], ...] | str
    totals_held: tuple[dict[str, Any], ...] | str
    position: int
    recorded_at: str

    @property
    def lines(self) -> tuple[dict[str, Any], ...]:
        return _issued(self.lines_held)

    @property
    def totals(self) -> tuple[dict[str, Any], ...]:
        return _issued(self.totals_held)

    def _key(self) -> tuple[Any, ...]:
        return (self.period, self.as_of, self.ledger_position, self.plans, self.lines, self.totals, self.position,
                self.recorded_at)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClosedCycle):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


def _issued(held: tuple[dict[str, Any], ...] | str) -> tuple[dict[str, Any], ...]:
    return held if isinstance(held, tuple) else tuple(json.loads(held))


@dataclass(frozen=True, slots=True)
class RegisteredPlan:
    plan_id: str
    version: str
    content_hash: str
    filename: str
    text: str
    position: int


@dataclass(slots=True)
class LedgerState:
    """Everything the ledger knows, with dates and positions. Built only by ``Projector``."""

    position: int = 0
    reps: dict[str, Rep] = field(default_factory=dict)
    contracts: dict[str, Contract] = field(default_factory=dict)
    targets: dict[tuple[str, int], list[Target]] = field(default_factory=dict)
    kpis: dict[tuple[str, int, str], list[Fact]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    scorecards: dict[tuple[str, int], list[Scorecard]] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)
    cycles: dict[str, ClosedCycle] = field(default_factory=dict)
    plans: dict[str, RegisteredPlan] = field(default_factory=dict)
    # derived, not state: vetoes by contract and by rep (see ``vetoes_by``); not dumped, not compared
    _veto_index: tuple[int, dict[str, list[Violation]], dict[str, list[Violation]]] | None = field(
        default=None, repr=False, compare=False
    )
    # derived, likewise: the years each rep has scorecard publications for (see ``scorecard_years``)
    _card_index: tuple[int, dict[str, list[int]]] | None = field(default=None, repr=False, compare=False)

    # --- queries used by rules and scorecards ---

    def vetoes_by(self) -> tuple[dict[str, list[Violation]], dict[str, list[Violation]]]:
        """Veto violations by contract and by rep, each list in ledger order (as ``violations``). Built
        on first use and again whenever ``violations`` has grown (it only ever grows), so the rules look
        up a contract's or a seller's vetoes instead of scanning every finding for every obligation."""
        index = self._veto_index
        if index is None or index[0] != len(self.violations):
            by_contract: dict[str, list[Violation]] = {}
            by_rep: dict[str, list[Violation]] = {}
            for v in self.violations:
                if v.severity == "veto":
                    by_rep.setdefault(v.rep_id, []).append(v)
                    if v.contract_id is not None:
                        by_contract.setdefault(v.contract_id, []).append(v)
            index = self._veto_index = (len(self.violations), by_contract, by_rep)
        return index[1], index[2]

    def scorecard_years(self, rep_id: str) -> list[int]:
        """The years ``scorecards`` holds publications of ``rep_id`` for. Indexed like ``vetoes_by`` (and
        again whenever a (rep, year) key was added: keys are never removed), so that finding a rep's
        latest scorecard does not scan every rep's."""
        index = self._card_index
        if index is None or index[0] != len(self.scorecards):
            years: dict[str, list[int]] = {}
            for rep, year in self.scorecards:
                years.setdefault(rep, []).append(year)
            index = self._card_index = (len(self.scorecards), years)
        return index[1].get(rep_id, [])

    def contracts_by_person(self) -> dict[str, list[Contract]]:
        """The contracts by everyone who sold or was ever assigned them: a contract's owner on any date,
        and so the payee of any of its obligations, is one of these (for readers of one person's
        contracts, such as scorecards and statements, that must not scan the whole book per person)."""
        out: dict[str, list[Contract]] = {}
        for c in self.contracts.values():
            for person in {c.seller, *(f.value for f in c.reassignments)}:
                out.setdefault(person, []).append(c)
        return out

    def latest_scorecard(self, rep_id: str, year: int, as_of: date) -> Scorecard | None:
        """The latest publication recorded so far (highest position) whose effective date is <= as_of."""
        best = None
        for s in self.scorecards.get((rep_id, year), ()):
            if s.effective <= as_of and (best is None or s.position > best.position):
                best = s
        return best

    def latest_target(self, rep_id: str, year: int) -> Target | None:
        items = self.targets.get((rep_id, year))
        return max(items, key=lambda t: t.position) if items else None

    def latest_kpi(self, rep_id: str, year: int, kpi: str) -> Fact | None:
        items = self.kpis.get((rep_id, year, kpi))
        return max(items, key=lambda f: f.position) if items else None

    def last_closed_period(self) -> str | None:
        return max(self.cycles) if self.cycles else None


class Projector:
    """Applies recorded events to a state, one at a time, in ledger order (the fold's step)."""

    def __init__(self, state: LedgerState | None = None) -> None:
        self.state = state if state is not None else LedgerState()

    def apply_all(self, records: Iterable[Recorded]) -> LedgerState:
        for r in records:
            self.apply(r)
        return self.state

    def apply(self, rec: Recorded) -> None:
        s = self.state
        e = rec.event
        pos = rec.position
        s.position = pos
        handler = _HANDLERS.get(type(e))
        if handler is None:
            raise TypeError(f"no projection for event type {e.type}")
        handler(s, e, pos, rec)

    def apply_values(self, position: int, type_: str, values: Any) -> None:
        """The same step for a business fact given as its field values (any object with the event's
        attributes, already typed: dates, Decimals) rather than as a validated event: a full replay of
        rows already validated on their way in skips building millions of event objects. The engine's
        own events (which need their ``Recorded``) go through ``apply``."""
        s = self.state
        s.position = position
        _FACT_HANDLERS[type_](s, values, position, None)

    def closed_cycle(self, cycle: ClosedCycle) -> None:
        """The step for a ``cycle.closed`` given as its projection (the trusted fold builds it from the
        stored payload without decoding what the cycle issued)."""
        self.state.position = cycle.position
        self.state.cycles[cycle.period] = cycle

    def service_cost(self, position: int, effective: date, contract_id: str, amount: Decimal) -> None:
        """``apply_values`` of a ``service.cost`` given as its two fields: most of a ledger's events are
        service costs, and a replay calls this for each of them without building their field values."""
        s = self.state
        s.position = position
        _add_cost(s.contracts[contract_id].service_costs, effective, position, amount)

    def contract_lists(self, groups: Iterable[tuple[str, str, list[Any], bool]], last_position: int) -> None:
        """Many steps at once of the facts a contract keeps in lists (``CONTRACT_LISTS``: service costs,
        expansions, renewals), a contract and a type at a time: each group is one contract's facts of one
        type in position order, as its handler would build them, ``ordered`` when they are also in
        (effective, position) order. Each list ends as those steps one by one leave it (every fact, in
        (effective, position) order), and the state's position as the last of them left it. No other step
        reads these lists, so a replay may take them after the other facts (``shell.store``'s reader does)."""
        contracts = self.state.contracts
        for type_, contract_id, items, ordered in groups:
            held = getattr(contracts[contract_id], CONTRACT_LISTS[type_])
            if held and items and _by_date(held[-1]) > _by_date(items[0]):
                ordered = False
            held += items
            if not ordered:
                held.sort(key=_by_date)
        if last_position > self.state.position:
            self.state.position = last_position


# the facts a contract keeps in a list, by event type: the list (each in (effective, position) order)
CONTRACT_LISTS = {"service.cost": "service_costs", "contract.expanded": "expansions", "contract.renewed": "renewals"}
_by_date = attrgetter("effective", "position")

_new_tuple = tuple.__new__


def _add_cost(costs: list[Fact], effective: date, position: int, amount: Decimal) -> None:
    """``_insort`` of a service cost, inline, its Fact built without the named tuple's Python ``__new__``
    (this runs for most rows of a replay)."""
    fact = _new_tuple(Fact, (effective, position, amount))
    if costs:
        last = costs[-1]
        costs.append(fact)
        if last[0] > effective or (last[0] == effective and last[1] > position):
            costs.sort(key=_fact_key)
    else:
        costs.append(fact)


def _insort(items: list[Any], item: Any, key: Any) -> None:
    """Keep lists in (effective, position) order even when facts arrive late. Every item here has
    ``effective`` and ``position``; comparing them directly (not through ``key``) keeps the common case,
    a fact later than the last one, cheap: this runs for most events of a replay."""
    if items:
        last = items[-1]
        items.append(item)
        if last.effective > item.effective or (last.effective == item.effective and last.position > item.position):
            items.sort(key=key)
    else:
        items.append(item)


def _fact_key(f: Fact) -> tuple[date, int]:
    return (f.effective, f.position)


def _rep_hired(s: LedgerState, e: RepHired, pos: int, rec: Recorded) -> None:
    s.reps[e.rep_id] = Rep(e.rep_id, e.name, e.role, e.region, e.manager_id, e.effective, pos)


def _rep_terminated(s: LedgerState, e: RepTerminated, pos: int, rec: Recorded) -> None:
    s.reps[e.rep_id].terminated = Fact(e.effective, pos, e.leaver)


def _target_set(s: LedgerState, e: TargetSet, pos: int, rec: Recorded) -> None:
    s.targets.setdefault((e.rep_id, e.year), []).append(Target(e.amount, e.currency, e.effective, pos))


def _signed(s: LedgerState, e: ContractSigned, pos: int, rec: Recorded) -> None:
    s.contracts[e.contract_id] = Contract(
        e.contract_id, e.account_id, e.rep_id, e.currency, e.effective, e.acv, e.term_months, e.gross_margin, pos
    )


def _renewed(s: LedgerState, e: ContractRenewed, pos: int, rec: Recorded) -> None:
    _insort(
        s.contracts[e.contract_id].renewals,
        Renewal(e.effective, e.acv, e.term_months, pos),
        lambda r: (r.effective, r.position),
    )


def _expanded(s: LedgerState, e: ContractExpanded, pos: int, rec: Recorded) -> None:
    _insort(s.contracts[e.contract_id].expansions, Fact(e.effective, pos, e.acv_delta), _fact_key)


def _churned(s: LedgerState, e: ContractChurned, pos: int, rec: Recorded) -> None:
    c = s.contracts[e.contract_id]
    if c.churn is None or e.effective < c.churn.effective:
        c.churn = Fact(e.effective, pos, e.reason)


def _reassigned(s: LedgerState, e: ContractReassigned, pos: int, rec: Recorded) -> None:
    _insort(s.contracts[e.contract_id].reassignments, Fact(e.effective, pos, e.rep_id), _fact_key)


def _service_cost(s: LedgerState, e: ServiceCost, pos: int, rec: Recorded) -> None:
    _add_cost(s.contracts[e.contract_id].service_costs, e.effective, pos, e.amount)


def _kpi(s: LedgerState, e: KpiMeasured, pos: int, rec: Recorded) -> None:
    s.kpis.setdefault((e.rep_id, e.year, e.kpi), []).append(Fact(e.effective, pos, e.value))


def _violation(s: LedgerState, e: ComplianceViolation, pos: int, rec: Recorded) -> None:
    s.violations.append(Violation(e.rep_id, e.severity, e.contract_id, e.effective, e.description, pos))


def _scorecard(s: LedgerState, e: ScorecardPublished, pos: int, rec: Recorded) -> None:
    s.scorecards.setdefault((e.rep_id, e.year), []).append(Scorecard(e.composite, e.components, e.effective, pos))


def _adjustment(s: LedgerState, e: AdjustmentRecorded, pos: int, rec: Recorded) -> None:
    s.adjustments.append(
        Adjustment(e.event_id, e.rep_id, e.amount, e.currency, e.reason, e.approved_by, e.contract_id, e.effective, pos)
    )


def _cycle(s: LedgerState, e: CycleClosed, pos: int, rec: Recorded) -> None:
    s.cycles[e.period] = ClosedCycle(
        e.period, e.as_of, e.ledger_position, dict(e.plans), e.lines, e.totals, pos, rec.recorded_at
    )


def _plan(s: LedgerState, e: PlanRegistered, pos: int, rec: Recorded) -> None:
    s.plans[e.content_hash] = RegisteredPlan(e.plan_id, e.version, e.content_hash, e.filename, e.text, pos)


_HANDLERS: dict[type[Event], Any] = {
    RepHired: _rep_hired,
    RepTerminated: _rep_terminated,
    TargetSet: _target_set,
    ContractSigned: _signed,
    ContractRenewed: _renewed,
    ContractExpanded: _expanded,
    ContractChurned: _churned,
    ContractReassigned: _reassigned,
    ServiceCost: _service_cost,
    KpiMeasured: _kpi,
    ComplianceViolation: _violation,
    ScorecardPublished: _scorecard,
    AdjustmentRecorded: _adjustment,
    CycleClosed: _cycle,
    PlanRegistered: _plan,
}


# business facts by type name, for ``Projector.apply_values``
_FACT_HANDLERS: dict[str, Any] = {
    cls.model_fields["type"].annotation.__args__[0]: handler  # type: ignore[union-attr]
    for cls, handler in _HANDLERS.items()
    if cls not in (CycleClosed, PlanRegistered)
}


def project(records: Iterable[Recorded]) -> LedgerState:
    """The fold: events in ledger order -> state."""
    return Projector().apply_all(records)


def state_digest(state: LedgerState) -> str:
    """SHA-256 of a canonical dump of every projection (identical however often replay runs)."""
    return sha256_hex(canonical_json(dump_state(state)))


def dump_state(state: LedgerState) -> dict[str, Any]:
    def rep(r: Rep) -> dict[str, Any]:
        return {
            "rep_id": r.rep_id,
            "name": r.name,
            "role": r.role,
            "region": r.region,
            "manager_id": r.manager_id,
            "hired": r.hired,
            "terminated": _fact(r.terminated),
        }

    def contract(c: Contract) -> dict[str, Any]:
        return {
            "contract_id": c.contract_id,
            "account_id": c.account_id,
            "seller": c.seller,
            "currency": c.currency,
            "signed": c.signed,
            "acv0": c.acv0,
            "term_months": c.term_months,
            "gross_margin": c.gross_margin,
            "renewals": [[r.effective, r.acv, r.term_months, r.position] for r in c.renewals],
            "expansions": [_fact(f) for f in c.expansions],
            "churn": _fact(c.churn),
            "reassignments": [_fact(f) for f in c.reassignments],
            "service_costs": [_fact(f) for f in c.service_costs],
        }

    return {
        "position": state.position,
        "reps": {k: rep(v) for k, v in sorted(state.reps.items())},
        "contracts": {k: contract(v) for k, v in sorted(state.contracts.items())},
        "targets": {
            f"{k[0]}/{k[1]}": [[t.amount, t.currency, t.effective, t.position] for t in v]
            for k, v in sorted(state.targets.items())
        },
        "kpis": {"/".join(map(str, k)): [_fact(f) for f in v] for k, v in sorted(state.kpis.items())},
        "violations": [
            [v.rep_id, v.severity, v.contract_id, v.effective, v.description, v.position] for v in state.violations
        ],
        "scorecards": {
            f"{k[0]}/{k[1]}": [[s.composite, s.components, s.effective, s.position] for s in v]
            for k, v in sorted(state.scorecards.items())
        },
        "adjustments": [
            [
                a.event_id,
                a.rep_id,
                a.amount,
                a.currency,
                a.reason,
                a.approved_by,
                a.contract_id,
                a.effective,
                a.position,
            ]
            for a in state.adjustments
        ],
        "cycles": {
            k: [c.as_of, c.ledger_position, c.plans, list(c.lines), list(c.totals), c.position]
            for k, c in sorted(state.cycles.items())
        },
        "plans": {k: [p.plan_id, p.version, p.filename, p.position] for k, p in sorted(state.plans.items())},
    }


def _fact(f: Fact | None) -> list[Any] | None:
    return None if f is None else [f.effective, f.position, f.value]
