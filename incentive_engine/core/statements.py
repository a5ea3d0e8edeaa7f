"""A rep's statement (pure): what was paid, what is deferred, held, forfeited and why, and an estimate
of what is still to come. Built from the closed cycles (what was actually issued) and an evaluation as of
the statement's date (why each obligation stands where it does)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from .cycles import PaidHistory, history_of
from .dates import add_years, period_end
from .evaluation import Evaluation, Obligation, commission_parts, evaluate_all
from .money import CONTEXT, ZERO, format_factor, format_money, round_money
from .plan import Plan, PlanBook
from .projections import Adjustment, Contract, LedgerState

ESTIMATE_LABEL = (
    "Estimate, not a promise: what is still to come if every customer stays at today's ACV and your latest "
    "scorecard applies; later facts (renewals, churn, service cost, scorecards, compliance) change it."
)


@dataclass(frozen=True, slots=True)
class FutureTranche:
    obligation: Obligation
    estimate: Decimal
    factors: dict[str, Decimal]
    reason: str  # 'to_come' or why the estimate is zero


def _quarter(d: date | str) -> str:
    text = d if isinstance(d, str) else d.isoformat()
    return f"{text[:4]}-Q{(int(text[5:7]) - 1) // 3 + 1}"


def future_tranches(plan: Plan, state: LedgerState, contract: Contract, as_of: date) -> list[FutureTranche]:
    """Tranches not yet vested, estimated with today's factors: base x NRR(today) x SVC(last year) x SCORE(latest)."""
    _, _, bases = commission_parts(contract, plan)
    rel = plan.model.release
    out: list[FutureTranche] = []
    dead = _dead_reason(plan, state, contract, as_of)
    acv = contract.acv_on(as_of)
    nrr_num = min(rel.nrr.cap * contract.acv0, acv) if rel.nrr.enabled else contract.acv0
    svc = Decimal(1)
    if rel.service_cost.enabled:
        start = add_years(as_of, -rel.service_cost.window_years)
        cost = sum((f.value for f in contract.service_costs if start < f.effective <= as_of), ZERO)
        if cost / acv > rel.service_cost.threshold:
            svc = rel.service_cost.factor
    score = Decimal(1)
    if rel.scorecard.enabled:
        card = _latest_card(state, contract.seller, as_of)
        if card is not None:
            score = ZERO if card < rel.scorecard.gate else min(card, rel.scorecard.cap) / 100
    factors = {"nrr": CONTEXT.divide(nrr_num, contract.acv0), "service": svc, "score": score}
    for k, (years, base) in enumerate(zip(plan.model.commission.tranches.vesting_years, bases, strict=True), 1):
        vest = add_years(contract.signed, years)
        if vest <= as_of:
            continue
        ob = Obligation(
            f"{contract.contract_id}/tranche/{k}",
            "tranche",
            contract.contract_id,
            contract.seller,
            contract.currency,
            vest,
            base,
            plan.content_hash,
            tranche=k,
        )
        if dead:
            out.append(FutureTranche(ob, ZERO, {}, dead))
            continue
        product = CONTEXT.multiply(CONTEXT.multiply(CONTEXT.multiply(base, nrr_num), svc), score)
        out.append(
            FutureTranche(
                ob, round_money(CONTEXT.divide(product, contract.acv0), contract.currency), factors, "to_come"
            )
        )
    return out


def _dead_reason(plan: Plan, state: LedgerState, c: Contract, as_of: date) -> str:
    """Facts already known that forfeit every future tranche."""
    if c.churned_by(as_of):
        return "churned"
    by_contract, by_rep = state.vetoes_by()
    if any(v.effective <= as_of for v in by_contract.get(c.contract_id, ())) or any(
        c.signed <= v.effective <= as_of for v in by_rep.get(c.seller, ())
    ):
        return "compliance_veto"
    rep = state.reps.get(c.seller)
    if rep and rep.terminated and rep.terminated.value == "bad" and rep.terminated.effective <= as_of:
        return "bad_leaver"
    return ""


def _latest_card(state: LedgerState, rep_id: str, as_of: date) -> Decimal | None:
    best = None
    for year in state.scorecard_years(rep_id):
        for s in state.scorecards[(rep_id, year)]:
            if s.effective <= as_of and (best is None or (year, s.position) > best[0]):
                best = ((year, s.position), s.composite)
    return None if best is None else best[1]


@dataclass(frozen=True)
class Issued:
    """What every statement through one period reads from the whole ledger, decoded and indexed once
    (``issued_through``): the closed cycles' lines (JSON text in a replayed state) and totals by rep, what
    was paid per obligation, the contracts by everyone who sold or was ever assigned them, and the manual
    adjustments by rep. Without it each statement decoded every cycle and evaluated every obligation of
    the ledger: at the benchmark's M size about 30 s a statement, so ``statement --all`` (11,000 people)
    would have taken days."""

    through: str
    history: PaidHistory  # paid per obligation by the cycles through ``through``
    lines: dict[str, list[tuple[str, dict[str, Any]]]]  # rep -> (period, line), in period order
    totals: dict[str, list[tuple[str, dict[str, Any]]]]  # rep -> (period, total), in period order
    contracts: dict[str, list[Contract]]  # person -> the contracts they sold or were ever assigned
    adjustments: dict[str, list[Adjustment]]  # rep -> their manual adjustments, in ledger order


def issued_through(state: LedgerState, through: str) -> Issued:
    decoded = [(c, c.lines) for p, c in sorted(state.cycles.items()) if p <= through]
    lines: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    totals: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for cycle, issued in decoded:
        for x in issued:
            lines.setdefault(x["rep_id"], []).append((cycle.period, x))
        for t in cycle.totals:
            totals.setdefault(t["rep_id"], []).append((cycle.period, t))
    adjustments: dict[str, list[Adjustment]] = {}
    for adj in state.adjustments:
        adjustments.setdefault(adj.rep_id, []).append(adj)
    return Issued(through, history_of(decoded), lines, totals, state.contracts_by_person(), adjustments)


def build_statement(
    book: PlanBook, state: LedgerState, rep_id: str, through: str, issued: Issued | None = None
) -> dict[str, Any]:
    """The statement as data (JSON-ready): every later format renders this one structure. ``issued``:
    ``issued_through(state, through)``, when several statements of the same state and period are built."""
    as_of = period_end(through)
    rep = state.reps.get(rep_id)
    if issued is None:
        issued = issued_through(state, through)
    elif issued.through != through:
        raise ValueError(f"the issued lines are through {issued.through}, the statement through {through}")
    history = issued.history
    mine = issued.contracts.get(rep_id, [])
    adjustments = issued.adjustments.get(rep_id, [])
    evaluated = evaluate_all(book, state, as_of, contracts=mine, adjustments=adjustments)
    evaluations = [e for e in evaluated if e.obligation.rep_id == rep_id]
    by_ob: dict[str, Evaluation] = {e.obligation.obligation_id: e for e in evaluations}

    my_lines = issued.lines.get(rep_id, [])
    lines_by_ob: dict[str, list[dict[str, Any]]] = {}
    for period, x in my_lines:
        lines_by_ob.setdefault(x["obligation"], []).append({**x, "period": period})

    contract_ids = sorted(
        {e.obligation.contract_id for e in evaluations if e.obligation.contract_id}
        | {c.contract_id for c in mine if c.seller == rep_id and c.signed <= as_of}
    )
    contracts = []
    sums: dict[str, dict[str, Decimal]] = {}

    def add(cur: str, key: str, amount: Decimal) -> None:
        sums.setdefault(cur, {}).setdefault(key, ZERO)
        sums[cur][key] += amount

    chart: dict[tuple[str, str], dict[str, Decimal]] = {}

    def bar(cur: str, when: date | str, key: str, amount: Decimal) -> None:
        slot = chart.setdefault((cur, _quarter(when)), {"paid": ZERO, "deferred": ZERO, "forfeited": ZERO})
        slot[key] += amount

    for cid in contract_ids:
        c = state.contracts[cid]
        plan = book.in_force(c.signed)
        total, _, _ = commission_parts(c, plan)
        cur = c.currency
        entry: dict[str, Any] = {
            "contract_id": cid,
            "account_id": c.account_id,
            "currency": cur,
            "signed": c.signed.isoformat(),
            "seller": c.seller,
            "owner": c.owner_on(as_of),
            "acv_at_signing": format_money(c.acv0, cur),
            "acv_now": format_money(c.acv_on(as_of), cur),
            "term_end": c.term_end_on(as_of).isoformat(),
            "churned": c.churn.effective.isoformat() if c.churned_by(as_of) else None,
            "commission": format_money(total, cur) if c.seller == rep_id else None,
            "plan": f"{plan.plan_id}@{plan.version}",
            "obligations": [],
            "to_come": [],
            "lines": [],
        }
        for ob_id, ev in sorted(by_ob.items()):
            if ev.obligation.contract_id != cid:
                continue
            ob = ev.obligation
            paid = history.paid.get(ob_id, ZERO)
            entry["obligations"].append(
                {
                    "obligation": ob_id,
                    "kind": ob.kind,
                    "due": ob.due.isoformat(),
                    "base": format_money(ob.base, cur),
                    "status": ev.status,
                    "reason": ev.reason,
                    "earned": format_money(ev.earned, cur),
                    "paid": format_money(paid, cur),
                    "factors": {k: format_factor(v) for k, v in ev.factors.items()},
                    "detail": ev.detail,
                }
            )
            if ev.status == "held":
                add(cur, "held", ob.base)
            elif ev.status == "forfeited":
                add(cur, "forfeited", ob.base)
                bar(cur, ob.due, "forfeited", ob.base)
        if c.seller == rep_id:
            for ft in future_tranches(plan, state, c, as_of):
                entry["to_come"].append(
                    {
                        "obligation": ft.obligation.obligation_id,
                        "vesting": ft.obligation.due.isoformat(),
                        "base": format_money(ft.obligation.base, cur),
                        "estimate": format_money(ft.estimate, cur),
                        "factors": {k: format_factor(v) for k, v in ft.factors.items()},
                        "status": ft.reason,
                    }
                )
                if ft.reason == "to_come":
                    add(cur, "deferred_to_come", ft.obligation.base)
                    add(cur, "estimate_to_come", ft.estimate)
                    bar(cur, ft.obligation.due, "deferred", ft.obligation.base)
        for ob_id in sorted(lines_by_ob):
            if ob_id.startswith(cid + "/"):
                entry["lines"] += [_line(x) for x in lines_by_ob[ob_id]]
        contracts.append(entry)

    manual = [_line(x) for ob_id in sorted(lines_by_ob) if ob_id.startswith("ADJ/") for x in lines_by_ob[ob_id]]
    cycle_rows = []
    carried: dict[str, Decimal] = {}
    for period, t in issued.totals.get(rep_id, []):
        cur = t["currency"]
        cycle_rows.append(
            {
                "period": period,
                **{k: t[k] for k in ("currency", "lines_total", "carried_in", "payable", "carried_out")},
            }
        )
        add(cur, "paid", Decimal(t["payable"]))
        bar(cur, period + "-01", "paid", Decimal(t["payable"]))
        carried[cur] = Decimal(t["carried_out"])
    for _, x in my_lines:
        amount = Decimal(x["amount"])
        if x["kind"] == "clawback":
            add(x["currency"], "clawed_back", amount)
        elif x["kind"] == "manual":
            add(x["currency"], "manual_adjustments", amount)
        add(x["currency"], "lines_total", amount)
    keys = (
        "lines_total",
        "paid",
        "clawed_back",
        "manual_adjustments",
        "held",
        "forfeited",
        "deferred_to_come",
        "estimate_to_come",
    )
    summary = []
    for cur in sorted(set(sums) | set(carried)):
        row = {"currency": cur, **{k: format_money(sums.get(cur, {}).get(k, ZERO), cur) for k in keys}}
        row["carried_balance"] = format_money(carried.get(cur, ZERO), cur)
        summary.append(row)
    return {
        "rep": {
            "rep_id": rep_id,
            "name": rep.name if rep else None,
            "role": rep.role if rep else None,
            "region": rep.region if rep else None,
            "terminated": rep.terminated.effective.isoformat() if rep and rep.terminated else None,
        },
        "through": through,
        "as_of": as_of.isoformat(),
        "summary": summary,
        "contracts": contracts,
        "manual_adjustments": manual,
        "cycles": cycle_rows,
        "estimate_label": ESTIMATE_LABEL,
        "chart": [
            {"currency": cur, "quarter": q, **{k: format_money(v, cur) for k, v in vals.items()}}
            for (cur, q), vals in sorted(chart.items())
        ],
    }


def _line(x: dict[str, Any]) -> dict[str, Any]:
    return {k: x[k] for k in ("period", "obligation", "kind", "amount", "currency", "reason")}
