"""The reference rules an event must satisfy against what the ledger already knows (pure).

``check_batch`` walks a file's events in order against the current state plus the file's earlier events,
and returns every problem found (not just the first): a file is all-or-nothing, and the person fixing it
wants the whole list. The state is never mutated: touched entities are copied into an overlay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from .events import (
    AdjustmentRecorded,
    ComplianceViolation,
    ContractChurned,
    ContractExpanded,
    ContractReassigned,
    ContractRenewed,
    ContractSigned,
    Event,
    KpiMeasured,
    RepHired,
    RepTerminated,
    ScorecardPublished,
    ServiceCost,
    TargetSet,
)
from .money import MoneyError, check_amount
from .projections import Contract, LedgerState, Projector, Recorded, Rep


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int  # position of the event in the batch (0-based)
    field: str
    reason: str


# the facts that change what later lines of a file are checked against (no check reads service costs:
# most of a month's lines, they are checked but not applied to the scratch state)
_CONTRACT_EVENTS = (ContractSigned, ContractRenewed, ContractExpanded, ContractChurned, ContractReassigned)


class _Scratch:
    """A copy-on-write view: reads fall through to the base state, writes copy the entity first."""

    def __init__(self, base: LedgerState) -> None:
        self.base = base
        # one scratch state for the whole batch, holding only the copies (one LedgerState per event
        # used to cost more than the check itself)
        self.state = LedgerState()
        self.reps: dict[str, Rep] = self.state.reps
        self.contracts: dict[str, Contract] = self.state.contracts
        self.projector = Projector(self.state)

    def rep(self, rep_id: str) -> Rep | None:
        return self.reps.get(rep_id) or self.base.reps.get(rep_id)

    def contract(self, contract_id: str) -> Contract | None:
        return self.contracts.get(contract_id) or self.base.contracts.get(contract_id)

    def apply(self, event: Event, fake_position: int) -> None:
        """Apply an accepted event to copies of the entities it touches."""
        if type(event) is ServiceCost:
            return  # checked, not applied (see _CONTRACT_EVENTS): most lines, so asked first
        if isinstance(event, _CONTRACT_EVENTS):
            cid = event.contract_id
            if cid not in self.contracts:
                c = self.base.contracts.get(cid)
                if c is not None:
                    self.contracts[cid] = _copy_contract(c)
        elif isinstance(event, RepHired | RepTerminated):
            rid = event.rep_id
            if rid not in self.reps:
                r = self.base.reps.get(rid)
                if r is not None:
                    self.reps[rid] = copy.copy(r)
        else:
            return  # other facts do not affect what later lines of the same file are checked against
        self.projector.apply(Recorded(fake_position, "", "", 0, event))


def entities_read(events: Sequence[Event]) -> tuple[set[str], set[str]]:
    """The contracts and the reps ``check_batch`` can look up in the state for ``events``: every
    ``contract_id``, ``rep_id`` and ``manager_id`` they name (a superset: looking up more changes nothing).
    The rules read nothing else of the state but its position, so a file checked against only these
    entities gets the same answer as against the whole ledger (``shell.service`` reads them from their
    streams instead of replaying the ledger; a test compares the two)."""
    contracts: set[str] = set()
    reps: set[str] = set()
    for event in events:
        fields = event.__dict__
        cid = fields.get("contract_id")
        if cid is not None:
            contracts.add(cid)
        for name in ("rep_id", "manager_id"):
            rid = fields.get(name)
            if rid is not None:
                reps.add(rid)
    return contracts, reps


def contracts_read_in_full(events: Sequence[Event]) -> set[str]:
    """Of the contracts ``entities_read`` names, those whose whole history the rules read: the ones a
    ``contract.expanded`` of ``events`` names (its check replays the contract's ACV over every renewal and
    expansion). For every other contract the rules read only its signing (date, currency) and its churns,
    so ``shell.store.entities_state`` reads only those rows of it (most of a month's lines are service
    costs of contracts with years of renewals behind them; a test compares the answers)."""
    return {e.contract_id for e in events if isinstance(e, ContractExpanded)}


def check_batch(state: LedgerState, events: Sequence[Event]) -> list[Rejection]:
    scratch = _Scratch(state)
    problems: list[Rejection] = []
    fake_position = state.position
    for index, event in enumerate(events):
        found = _check(scratch, event)
        if found:
            problems.extend(Rejection(index, f, r) for f, r in found)
            continue
        fake_position += 1
        scratch.apply(event, fake_position)
    # manager references may point forward within the file: check once the whole file is known
    for index, event in enumerate(events):
        if isinstance(event, RepHired) and event.manager_id and scratch.rep(event.manager_id) is None:
            problems.append(Rejection(index, "manager_id", f"unknown rep {event.manager_id!r}"))
    problems.sort(key=lambda p: p.index)
    return problems


def _employed(s: _Scratch, rep_id: str, on: date, field: str) -> list[tuple[str, str]]:
    rep = s.rep(rep_id)
    if rep is None:
        return [(field, f"unknown rep {rep_id!r} (no rep.hired)")]
    if rep.hired > on:
        return [(field, f"rep {rep_id!r} is hired only on {rep.hired}, after {on}")]
    if rep.terminated is not None and rep.terminated.effective <= on:
        return [(field, f"rep {rep_id!r} was terminated on {rep.terminated.effective}")]
    return []


def _known_rep(s: _Scratch, rep_id: str) -> list[tuple[str, str]]:
    return [] if s.rep(rep_id) is not None else [("rep_id", f"unknown rep {rep_id!r} (no rep.hired)")]


def _live_contract(s: _Scratch, contract_id: str, on: date) -> tuple[Contract | None, list[tuple[str, str]]]:
    c = s.contract(contract_id)
    if c is None:
        return None, [("contract_id", f"unknown contract {contract_id!r} (no contract.signed)")]
    if on < c.signed:
        return c, [("effective", f"{on} is before contract {contract_id!r} was signed on {c.signed}")]
    if c.churn is not None and c.churn.effective <= on:
        return c, [("contract_id", f"contract {contract_id!r} churned on {c.churn.effective}")]
    return c, []


def _digits(value: Decimal, currency: str, field: str) -> list[tuple[str, str]]:
    try:
        check_amount(value, currency)
    except MoneyError as exc:
        return [(field, str(exc))]
    return []


def _acv_stays_positive(c: Contract, field: str) -> list[tuple[str, str]]:
    for d in c.change_dates():
        acv = c.acv_on(d)
        if acv <= 0:
            return [(field, f"the ACV of contract {c.contract_id!r} would fall to {acv} on {d}")]
    return []


def _check(s: _Scratch, e: Event) -> list[tuple[str, str]]:
    check = _CHECKS.get(type(e))
    if check is None:
        return [("type", f"{e.type} cannot be ingested")]
    return check(s, e)


def _rep_hired(s: _Scratch, e: RepHired) -> list[tuple[str, str]]:
    if s.rep(e.rep_id) is not None:
        return [("rep_id", f"rep {e.rep_id!r} is already hired")]
    return []


def _rep_terminated(s: _Scratch, e: RepTerminated) -> list[tuple[str, str]]:
    rep = s.rep(e.rep_id)
    if rep is None:
        return [("rep_id", f"unknown rep {e.rep_id!r} (no rep.hired)")]
    if rep.terminated is not None:
        return [("rep_id", f"rep {e.rep_id!r} was already terminated on {rep.terminated.effective}")]
    if e.effective < rep.hired:
        return [("effective", f"{e.effective} is before rep {e.rep_id!r} was hired on {rep.hired}")]
    return []


def _contract_signed(s: _Scratch, e: ContractSigned) -> list[tuple[str, str]]:
    if s.contract(e.contract_id) is not None:
        return [("contract_id", f"contract {e.contract_id!r} is already signed")]
    return _employed(s, e.rep_id, e.effective, "rep_id")


def _contract_renewed(s: _Scratch, e: ContractRenewed) -> list[tuple[str, str]]:
    c, found = _live_contract(s, e.contract_id, e.effective)
    if c is None or found:
        return found
    if e.effective <= c.signed:
        return [("effective", f"a renewal must come after the signing on {c.signed}")]
    return _digits(e.acv, c.currency, "acv")


def _contract_expanded(s: _Scratch, e: ContractExpanded) -> list[tuple[str, str]]:
    c, found = _live_contract(s, e.contract_id, e.effective)
    if c is None or found:
        return found
    found = _digits(e.acv_delta, c.currency, "acv_delta")
    if found:
        return found
    trial = _copy_contract(c)
    Projector(_single(trial)).apply(Recorded(10**12, "", "", 0, e))
    return _acv_stays_positive(trial, "acv_delta")


def _contract_churned(s: _Scratch, e: ContractChurned) -> list[tuple[str, str]]:
    return _live_contract(s, e.contract_id, e.effective)[1]


def _contract_reassigned(s: _Scratch, e: ContractReassigned) -> list[tuple[str, str]]:
    _, found = _live_contract(s, e.contract_id, e.effective)
    return found or _employed(s, e.rep_id, e.effective, "rep_id")


def _service_cost(s: _Scratch, e: ServiceCost) -> list[tuple[str, str]]:
    c, found = _live_contract(s, e.contract_id, e.effective)
    if c is None or found:
        return found
    return _digits(e.amount, c.currency, "amount")


def _rep_fact(s: _Scratch, e: TargetSet | KpiMeasured | ScorecardPublished) -> list[tuple[str, str]]:
    return _known_rep(s, e.rep_id)


def _compliance_violation(s: _Scratch, e: ComplianceViolation) -> list[tuple[str, str]]:
    found = _known_rep(s, e.rep_id)
    if e.contract_id is not None and s.contract(e.contract_id) is None:
        found.append(("contract_id", f"unknown contract {e.contract_id!r} (no contract.signed)"))
    return found


def _adjustment_recorded(s: _Scratch, e: AdjustmentRecorded) -> list[tuple[str, str]]:
    found = _known_rep(s, e.rep_id)
    if e.contract_id is not None:
        c = s.contract(e.contract_id)
        if c is None:
            found.append(("contract_id", f"unknown contract {e.contract_id!r} (no contract.signed)"))
        elif c.currency != e.currency:
            found.append(("currency", f"contract {e.contract_id!r} is in {c.currency}, not {e.currency}"))
    return found


# each ingestible fact's rules, by its class (one lookup a line instead of a chain of isinstance tests:
# a service cost, most of a file, came ninth)
_CHECKS: dict[type[Event], Callable[[_Scratch, Any], list[tuple[str, str]]]] = {
    RepHired: _rep_hired,
    RepTerminated: _rep_terminated,
    ContractSigned: _contract_signed,
    ContractRenewed: _contract_renewed,
    ContractExpanded: _contract_expanded,
    ContractChurned: _contract_churned,
    ContractReassigned: _contract_reassigned,
    ServiceCost: _service_cost,
    TargetSet: _rep_fact,
    KpiMeasured: _rep_fact,
    ScorecardPublished: _rep_fact,
    ComplianceViolation: _compliance_violation,
    AdjustmentRecorded: _adjustment_recorded,
}


def _copy_contract(c: Contract) -> Contract:
    """A copy the projector may append to without touching the original. Shallow is enough (and far
    cheaper than deepcopy): the facts inside the lists are immutable, only the lists grow."""
    return Contract(  # positional, not dataclasses.replace: 10x cheaper, and every ingested line may copy one
        c.contract_id, c.account_id, c.seller, c.currency, c.signed, c.acv0, c.term_months, c.gross_margin,
        c.signed_position, list(c.renewals), list(c.expansions), c.churn, list(c.reassignments),
        list(c.service_costs),
    )  # fmt: skip


def _single(c: Contract) -> LedgerState:
    state = LedgerState()
    state.contracts[c.contract_id] = c
    return state
