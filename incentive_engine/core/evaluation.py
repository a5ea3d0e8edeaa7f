"""Evaluation: (plans, ledger state as known, as-of date) -> every obligation's status and earned amount.

Obligations come from contracts (up-front, tranches) and renewals. Each is evaluated by the named rules
its plan lists, in order; the first rule that applies decides (reference-plan.md, "Earned amount of each
obligation"). Rules are pure functions with one signature, registered by name in ``RULES``.

Obligation life (an explicit state table; it is recomputed from the facts at every as-of date, so a late
fact can move an obligation back, and the cycle turns the difference into an adjustment or clawback):

    not due --(due date <= as-of)--> held | earned | forfeited
    held --(renewal recorded in grace)--> earned        held --(grace over)--> forfeited
    forfeited --(late fact changes the facts)--> earned   earned --(late veto/churn fact)--> forfeited
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from . import dates
from .dates import add_days
from .events import Event
from .money import CONTEXT, ZERO, round_money, split_minor_units
from .plan import Plan, PlanBook
from .projections import Adjustment, Contract, LedgerState, Renewal

# Pure calendar arithmetic, memoised: pendulum takes microseconds a call and an evaluation asks for the
# same few thousand dates again and again (a cache of a pure function cannot change a result).
add_years = lru_cache(maxsize=1 << 16)(dates.add_years)

Status = Literal["earned", "held", "forfeited"]
Kind = Literal["upfront", "tranche", "renewal", "manual"]


@dataclass(frozen=True, slots=True)
class Obligation:
    obligation_id: str
    kind: Kind
    contract_id: str | None
    rep_id: str  # the payee: the seller for up-front and tranches, the owner on the date for renewals
    currency: str
    due: date
    base: Decimal
    plan_hash: str
    tranche: int | None = None
    renewal: Renewal | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    obligation: Obligation
    status: Status
    earned: Decimal
    reason: str  # 'earned' or the forfeit/hold reason of reference-plan.md
    rule: str  # the named rule that decided
    factors: dict[str, Decimal] = field(default_factory=dict)
    facts: tuple[int, ...] = ()  # ledger positions of the facts that decided
    detail: str = ""  # how the amount or decision was computed, in words


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule sees: the plan, the state as known, the as-of date and the obligation at hand."""

    plan: Plan
    state: LedgerState
    as_of: date
    contract: Contract
    obligation: Obligation


Outcome = tuple[Status, str, tuple[int, ...], str]  # status, reason, fact positions, detail
Rule = Callable[[Context], Outcome | None]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return register


# --- the contract's obligations ------------------------------------------------------------------

# which of a contract's obligations to build: (contract id, obligation id, due date) -> wanted?
Selector = Callable[[str, str, date], bool]


def commission_parts(contract: Contract, plan: Plan) -> tuple[Decimal, Decimal, tuple[Decimal, ...]]:
    """C = round(rate x ACV0); U = round(C x share); D = C - U split cent-exactly over the tranches."""
    cm = plan.model.commission
    cur = contract.currency
    total = round_money(cm.new_business_rate * contract.acv0, cur)
    upfront = round_money(total * cm.upfront_share, cur)
    deferred = total - upfront
    bases = split_minor_units(deferred, cm.tranches.count, cur) if cm.tranches.count else ()
    if not bases and deferred:
        upfront = total  # no tranches: everything is up front, so bases still sum to the commission
    return total, upfront, bases


def obligations_of(
    contract: Contract, plan: Plan, state: LedgerState, as_of: date, select: Selector | None = None
) -> Iterator[Obligation]:
    """Every obligation of a contract due on or before as_of (facts effective after as_of do not exist);
    with ``select``, only those it selects by (contract, obligation id, due date): the others are not
    built at all (an incremental close selects a few of the obligations of each contract it reads)."""
    if contract.signed > as_of:
        return
    _, upfront, bases = commission_parts(contract, plan)
    cid, cur, h = contract.contract_id, contract.currency, plan.content_hash
    oid = upfront_id(cid)
    if select is None or select(cid, oid, contract.signed):
        yield Obligation(oid, "upfront", cid, contract.seller, cur, contract.signed, upfront, h)
    for k, (years, base) in enumerate(zip(plan.model.commission.tranches.vesting_years, bases, strict=True), 1):
        vest = add_years(contract.signed, years)
        if vest > as_of:
            break
        oid = tranche_id(cid, k)
        if select is None or select(cid, oid, vest):
            yield Obligation(oid, "tranche", cid, contract.seller, cur, vest, base, h, tranche=k)
    rate = plan.model.commission.renewal_rate
    # one renewal obligation per date: a second renewal recorded for the same date corrects the first
    # (the latest recorded wins, as it does for the contract's ACV and term)
    latest: dict[date, Renewal] = {}
    for r in contract.renewals:
        if r.effective <= as_of:
            latest[r.effective] = r
    for day, r in sorted(latest.items()):
        oid = f"{cid}/renewal/{day.isoformat()}"
        if select is not None and not select(cid, oid, day):
            continue
        yield Obligation(
            oid,
            "renewal",
            cid,
            contract.owner_on(day),
            cur,
            day,
            round_money(rate * r.acv, cur),
            h,
            renewal=r,
        )


# --- named rules (reference-plan.md) ---------------------------------------------------------------


@rule("contract_veto")
def contract_veto(ctx: Context) -> Outcome | None:
    """A veto naming this contract, effective <= as-of: nothing of the contract is earned."""
    # the contract's own vetoes (severity veto), in ledger order: the first match of a scan of all findings
    for v in ctx.state.vetoes_by()[0].get(ctx.contract.contract_id, ()):
        if v.effective <= ctx.as_of:
            return (
                "forfeited",
                "compliance_veto",
                (v.position,),
                f"veto on contract {v.contract_id} effective {v.effective}: {v.description}",
            )
    return None


@rule("rep_veto")
def rep_veto(ctx: Context) -> Outcome | None:
    """A veto of the seller dated between signing and vesting forfeits the tranche."""
    c, vest = ctx.contract, ctx.obligation.due
    for v in ctx.state.vetoes_by()[1].get(c.seller, ()):  # the seller's vetoes, in ledger order
        if v.effective <= ctx.as_of and c.signed <= v.effective <= vest:
            return (
                "forfeited",
                "compliance_veto",
                (v.position,),
                f"veto of seller {v.rep_id} effective {v.effective}, between signing {c.signed} and vesting {vest}",
            )
    return None


@rule("bad_leaver")
def bad_leaver(ctx: Context) -> Outcome | None:
    rep = ctx.state.reps.get(ctx.contract.seller)
    t = rep.terminated if rep else None
    if t is not None and t.value == "bad" and t.effective <= ctx.obligation.due:
        return (
            "forfeited",
            "bad_leaver",
            (t.position,),
            f"seller {rep.rep_id} left as a bad leaver on {t.effective}, before vesting {ctx.obligation.due}",
        )
    return None


@rule("churned")
def churned(ctx: Context) -> Outcome | None:
    ch = ctx.contract.churn
    if ch is not None and ch.effective <= ctx.obligation.due and ch.effective <= ctx.as_of:
        detail = f"contract churned on {ch.effective}, by vesting {ctx.obligation.due}"
        return ("forfeited", "churned", (ch.position,), detail)
    return None


@rule("lapsed")
def lapsed(ctx: Context) -> Outcome | None:
    c, vest = ctx.contract, ctx.obligation.due
    end = c.term_end_on(vest)
    if vest <= end:
        return None
    grace = ctx.plan.model.release.lapse.grace_days
    last = [r.position for r in c.renewals if r.effective <= vest][-1:] or [c.signed_position]
    until = add_days(end, grace)
    if ctx.as_of <= until:
        return (
            "held",
            "awaiting_renewal",
            tuple(last),
            f"term ended {end}, no renewal covers vesting {vest}; held until {until} ({grace} days grace)",
        )
    return (
        "forfeited",
        "lapsed",
        tuple(last),
        f"term ended {end}, no renewal covers vesting {vest} and the {grace}-day grace ended {until}",
    )


@rule("early_churn")
def early_churn(ctx: Context) -> Outcome | None:
    c, ch = ctx.contract, ctx.contract.churn
    window = ctx.plan.model.release.early_churn.window_days
    if ch is not None and ch.effective <= ctx.as_of and ch.effective < add_days(c.signed, window):
        return (
            "forfeited",
            "early_churn",
            (ch.position,),
            f"churned on {ch.effective}, less than {window} days after signing on {c.signed}",
        )
    return None


@rule("no_owner")
def no_owner(ctx: Context) -> Outcome | None:
    r = ctx.obligation.renewal
    assert r is not None
    rep = ctx.state.reps.get(ctx.obligation.rep_id)
    t = rep.terminated if rep else None
    if t is not None and t.effective <= r.effective:
        return (
            "forfeited",
            "no_owner",
            (t.position,),
            f"owner {rep.rep_id} was terminated on {t.effective}, on or before the renewal {r.effective}",
        )
    return None


# --- evaluation -----------------------------------------------------------------------------------


def evaluate_obligation(plan: Plan, state: LedgerState, as_of: date, contract: Contract, ob: Obligation) -> Evaluation:
    checks = plan.model.release.checks
    names = {"upfront": checks.upfront, "renewal": checks.renewal, "tranche": checks.tranche}[ob.kind]
    ctx = Context(plan, state, as_of, contract, ob)
    for name in names:
        outcome = RULES[name](ctx)
        if outcome is not None:
            status, reason, facts, detail = outcome
            return Evaluation(ob, status, ZERO, reason, name, {}, facts, detail)
    if ob.kind == "upfront":
        return Evaluation(
            ob,
            "earned",
            ob.base,
            "earned",
            "upfront",
            {},
            (contract.signed_position,),
            f"up-front share of the commission on ACV {contract.acv0}",
        )
    if ob.kind == "renewal":
        assert ob.renewal is not None
        return Evaluation(
            ob,
            "earned",
            ob.base,
            "earned",
            "renewal",
            {},
            (ob.renewal.position,),
            f"renewal rate x renewal ACV {ob.renewal.acv}",
        )
    return _earned_tranche(ctx)


def _earned_tranche(ctx: Context) -> Evaluation:
    """round(base x min(cap x ACV0, ACV(V)) x SVC x SCORE / ACV0), the single division last."""
    plan, state, c, ob = ctx.plan, ctx.state, ctx.contract, ctx.obligation
    rel = plan.model.release
    vest = ob.due
    facts: list[int] = [c.signed_position]
    details: list[str] = []

    acv_v = c.acv_on(vest)
    if rel.nrr.enabled:
        nrr_num = min(rel.nrr.cap * c.acv0, acv_v)
        facts += [r.position for r in c.renewals if r.effective <= vest]
        facts += [e.position for e in c.expansions if e.effective <= vest]
        details.append(f"NRR = min({rel.nrr.cap}, ACV {acv_v} on {vest} / ACV0 {c.acv0})")
    else:
        nrr_num = c.acv0

    svc = Decimal(1)
    if rel.service_cost.enabled:
        start = add_years(vest, -rel.service_cost.window_years)
        costs = [f for f in c.service_costs if start < f.effective <= vest]
        total_cost = sum((f.value for f in costs), ZERO)
        facts += [f.position for f in costs]
        if total_cost / acv_v > rel.service_cost.threshold:
            svc = rel.service_cost.factor
        details.append(f"service cost {total_cost} in ({start}, {vest}] / ACV {acv_v} vs {rel.service_cost.threshold}")

    score = Decimal(1)
    if rel.scorecard.enabled:
        year = vest.year - 1
        card = state.latest_scorecard(c.seller, year, ctx.as_of)
        if card is None:
            details.append(f"no {year} scorecard for {c.seller}: score factor 1")
        else:
            facts.append(card.position)
            if card.composite < rel.scorecard.gate:
                return Evaluation(
                    ob,
                    "forfeited",
                    ZERO,
                    "scorecard_gate",
                    "scorecard_gate",
                    {},
                    tuple(facts),
                    f"{year} composite {card.composite} < gate {rel.scorecard.gate}",
                )
            score = min(card.composite, rel.scorecard.cap) / 100
            details.append(f"{year} composite {card.composite}, capped at {rel.scorecard.cap}, / 100")

    product = CONTEXT.multiply(CONTEXT.multiply(CONTEXT.multiply(ob.base, nrr_num), svc), score)
    exact = CONTEXT.divide(product, c.acv0)
    earned = round_money(exact, c.currency)
    factors = {"nrr": CONTEXT.divide(nrr_num, c.acv0), "service": svc, "score": score}
    return Evaluation(ob, "earned", earned, "earned", "tranche", factors, tuple(sorted(set(facts))), "; ".join(details))


def evaluate_all(
    book: PlanBook,
    state: LedgerState,
    as_of: date,
    select: Selector | None = None,
    contracts: Iterable[Contract] | None = None,
    adjustments: Iterable[Adjustment] | None = None,
) -> list[Evaluation]:
    """Every obligation due on or before as_of, evaluated; sorted by payee, contract, obligation.
    ``select`` narrows it to some of the contracts' obligations, ``contracts`` to those contracts' (each
    obligation's evaluation reads its own contract only, so a subset is evaluated as in the whole), and
    ``adjustments`` to those manual adjustments (all of them by default, whatever ``select`` says)."""
    out: list[Evaluation] = []
    for contract in state.contracts.values() if contracts is None else contracts:
        if contract.signed > as_of:
            continue
        plan = book.in_force(contract.signed)
        for ob in obligations_of(contract, plan, state, as_of, select):
            out.append(evaluate_obligation(plan, state, as_of, contract, ob))
    for adj in state.adjustments if adjustments is None else adjustments:
        if adj.effective <= as_of:
            ob = Obligation(
                f"ADJ/{adj.event_id}",
                "manual",
                adj.contract_id,
                adj.rep_id,
                adj.currency,
                adj.effective,
                adj.amount,
                "",
            )
            out.append(
                Evaluation(
                    ob,
                    "earned",
                    adj.amount,
                    adj.reason,
                    "manual_adjustment",
                    {},
                    (adj.position,),
                    f"manual adjustment approved by {adj.approved_by}: {adj.reason}",
                )
            )
    out.sort(key=lambda e: (e.obligation.rep_id, e.obligation.contract_id or "", e.obligation.obligation_id))
    return out


# --- what a fact can change (for incremental cycles) ------------------------------------------------
#
# An obligation's evaluation is a function of the facts the rules above read. A closed cycle's evaluations
# therefore stay valid until one of those facts changes, and an incremental close (shell.obligations)
# re-evaluates only what a new or newly visible fact can reach. The map below is that knowledge, kept
# beside the rules it describes: a rule that starts reading another kind of fact must be declared here
# (tests compare incremental and full closes over random ledgers). Scopes, with d the fact's date:
#   ("contract", C)               every obligation of contract C
#   ("contract_from", C, d)       C's obligations due on or after d, including ones the fact creates
#   ("upfront", C)                C's up-front payment
#   ("evaluated_from", C, d)      C's obligations already evaluated by a cycle and due on or after d
#   ("seller_from", R, d)         obligations already evaluated of contracts R sold, due on or after d
#   ("payee_from", R, d)          obligations already evaluated that pay R, due on or after d
#   ("seller_tranche_year", R, Y) tranches already evaluated of contracts R sold, vesting in year Y
# Obligations that become due are always evaluated, held ones too, and manual adjustments.

Scope = tuple[str, ...]


def upfront_id(contract_id: str) -> str:
    return f"{contract_id}/upfront"


def tranche_id(contract_id: str, k: int) -> str:
    return f"{contract_id}/tranche/{k}"


def costs_needed_from(book: PlanBook, due: date) -> date:
    """The earliest service cost the rules read for an obligation due on ``due`` (the service-cost
    window of any plan in the book): costs before it cannot change that obligation's evaluation. Every
    other fact of a contract is read whatever its date."""
    start = due
    for plan in book.plans:
        sc = plan.model.release.service_cost
        if sc.enabled:
            start = min(start, add_years(due, -sc.window_years))
    return start


# the fact types whose one scope is "evaluated_from" their effective date: effective after a close's as-of
# date, such a fact reaches nothing that close evaluated (what is due that late is newly due, evaluated
# anyway), so the next close need not read it to know what changed (most of a month's facts: its costs)
LATER_ONLY_TYPES = ("contract.expanded", "contract.reassigned", "service.cost")


def fact_scopes(event: Event) -> tuple[Scope, ...]:
    """The obligations ``event`` can change, as scopes (see above); () when it changes none."""
    t = event.type
    d = event.effective.isoformat()
    if t == "contract.signed":  # a new contract
        return (("contract", event.contract_id),)  # type: ignore[attr-defined]
    if t == "contract.churned":  # churned: obligations due from d; early_churn: the up-front (due before d)
        return (("contract_from", event.contract_id, d), ("upfront", event.contract_id))  # type: ignore[attr-defined]
    if t == "contract.renewed":  # its renewal obligation; the ACV and term of tranches vesting from d
        return (("contract_from", event.contract_id, d),)  # type: ignore[attr-defined]
    if t in LATER_ONLY_TYPES:
        # ACV(V) and service costs up to V; the owner of renewals from d: only obligations due from d
        return (("evaluated_from", event.contract_id, d),)  # type: ignore[attr-defined]
    if t == "rep.terminated":  # bad_leaver: the seller's tranches vesting from d; no_owner: the payee's renewals
        return (("seller_from", event.rep_id, d), ("payee_from", event.rep_id, d))  # type: ignore[attr-defined]
    if t == "compliance.violation":
        if event.severity != "veto":  # type: ignore[attr-defined]
            return ()  # the rules read vetoes only
        scopes: tuple[Scope, ...] = (("seller_from", event.rep_id, d),)  # type: ignore[attr-defined]  # rep_veto
        cid = event.contract_id  # type: ignore[attr-defined]
        return (*scopes, ("contract", cid)) if cid else scopes  # contract_veto: every obligation of cid
    if t == "scorecard.published":  # the score factor of tranches vesting the year after
        return (("seller_tranche_year", event.rep_id, str(event.year + 1)),)  # type: ignore[attr-defined]
    if t in ("rep.hired", "target.set", "kpi.measured", "adjustment.recorded", "plan.registered", "cycle.closed"):
        # no rule reads hires, targets or KPIs (scorecards do, and reach cycles as scorecard.published);
        # adjustments are always evaluated afresh; plans and cycles are compared by the close itself
        return ()
    raise ValueError(f"no declared scope for facts of type {t}")
