"""Balanced scorecards: the plan's KPI definitions, KPI values derived from the ledger, the scoring curve,
the composite, the compliance gate and the concentration warning. Pure functions of ``LedgerState``.

Reference semantics: reference-plan.md, "Scorecards". Every event recorded so far counts; the year's
windows decide what does (no as-of cut-off here: a late fact changes the scorecard the next time it is
computed, and publishing again supersedes the earlier publication).

Exactness
    KPI values, scores and the composite are computed with exact rationals (``fractions.Fraction``), so
    the composite ``sum(w x score) / sum(w)`` is rounded half-up to 2 decimals exactly once and can never
    land a cent off through an intermediate quotient. ``KpiResult`` shows rounded copies for people and for
    the published ``components``: value to 6 decimals, score to 4, effective weight to 6 (all half-up);
    the composite is computed from the unrounded numbers.

Scoring curve (``score``)
    Higher is better: v < threshold -> 0; threshold -> 50, linear to 100 at target, linear to 150 at
    stretch; above stretch 150. Lower is better mirrors every comparison (v > threshold -> 0, ...).

Composite
    KPIs with no value are left out and the remaining weights renormalised (``KpiResult.weight`` is the
    effective, renormalised weight; 0 for a KPI left out). A KPI whose plan weight is 0 (e.g. an entropy
    weight of 0) is shown but cannot carry a composite alone: if the KPIs with a value have weights summing
    to 0, there is no composite (as for "no KPI at all"). Compliance gate (``veto_gate: true``): any
    ``compliance.violation`` of severity ``veto`` against the scorecard's holder with an effective date in
    Y sets the composite to 0; KPI values and scores stay in the output, ``vetoed`` is true. A holder with
    no composite stays without one even when vetoed (there is nothing to publish).

Reporting currency (currencies never mix)
    Money-based KPIs use one currency per holder and year: the currency of the holder's (team) target for
    Y (see ``team_target``) if it has exactly one; else, with no target at all, the single currency of all
    contracts the team ever sold or owned; else none (money KPIs then have no value). Contracts in other
    currencies are left out of money KPIs. For a single-currency rep this is simply "all of the rep's
    contracts".

Derived KPIs (for a rep R; ``T`` = the team, ``{R}`` for role ``rep``; Y = the calendar year)
    revenue_attainment   sum of ACV0 of contracts signed in Y by T (seller) in the target's currency /
                         the holder's latest target for Y (no target -> no value). Managers/directors: the
                         target is their own latest target for Y if set, else the sum of their direct
                         reports' targets found the same way, recursively (a director's managers' targets
                         where they have one, else those managers' reps' - never both); a team target in
                         several currencies -> no value.
    renewal_rate         terms whose scheduled end E falls in Y, of contracts owned by T on E and not
                         churned before Jan 1 of Y: the share renewed (a renewal effective after the term's
                         start and <= E + 90 days). Terms: [signed, term_end(signed, term_months)], then one
                         per renewal [renewal date, term_end(renewal date, its term_months)]. Zero terms ->
                         no value.
    upsell_rate          positive expansion deltas effective in Y on contracts owned by T on the expansion
                         date / sum of ACV(Jan 1 of Y) over contracts owned by T on Jan 1 of Y and active then
                         (signed on or before it, not churned by it, Jan 1 <= term end on Jan 1). Zero
                         denominator -> no value. Reporting currency only.
    churn_rate           contracts churned in Y and owned by T on the churn date / contracts owned by T and
                         active on Jan 1 of Y (as above). Literal: a contract signed and churned within Y
                         counts in the numerator only, so the rate can exceed 1. Zero denominator -> none.
    gross_margin_contribution
                         sum of ACV0 x gross_margin over contracts signed in Y by T in the reporting
                         currency that state a gross margin (0 if none; no value without a currency).
    average_acv          mean ACV0 of contracts signed in Y by T (reporting currency); none signed -> none.
    revenue_growth       S(Y) / S(Y-1) - 1, S = ACV0 signed by T in that year (reporting currency); no value
                         when S(Y-1) = 0.
    clv                  mean over accounts of the summed contract lifetime values of the contracts owned by
                         T on Dec 31 of Y (signed by then, reporting currency, stating a gross margin):
                         ``ACV(ref) x years x gross_margin - service costs effective <= Dec 31`` where
                         ref = Dec 31 of Y, or the day before the churn if churned by then, and years =
                         (initial term months + months of every renewal effective <= ref) / 12. No such
                         contract -> no value.
    customer_concentration
                         the largest account's share of the ACV(Dec 31 of Y) of the contracts owned by T and
                         active on Dec 31 of Y (reporting currency), accounts by ``account_id``. Zero total
                         -> no value. The same number drives the concentration warning
                         (``concentration_warning``: share strictly above it -> a warning, never a payout
                         change).
    measured KPIs        ``source: measured``: the latest ``kpi.measured`` (highest ledger position) for
                         (holder, Y, name).

Roles and team aggregation
    A scorecard is computed for every rep of the role hired on or before Dec 31 of Y (terminated or not).
    ``rep``: T = {R}. ``manager`` and ``director``: T = the holder plus everyone below them through
    ``manager_id``, transitively (a manager's reps; a director's managers and their reps), limited to people
    hired on or before Dec 31 of Y. Rates are pooled over the team's terms/contracts (not averaged per rep);
    money KPIs are team sums in the reporting currency; revenue attainment as above. Measured KPIs: the
    holder's own ``kpi.measured`` if present, else the plain mean of the latest values of the team members
    (below the holder) who have one. The compliance gate looks at the holder's own violations only.

Weights: ``core.weights`` (fixed, AHP, entropy over the year's holders of the same role, combined).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from math import floor
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from .dates import add_days, term_end
from .money import config_decimal as to_decimal
from .projections import Contract, LedgerState, Violation
from .weights import ahp, check_consistency, combine, entropy_weights, fixed_weights, parse_ratio

# --- numbers -------------------------------------------------------------------------------------

_CTX = decimal.Context(prec=40, rounding=ROUND_HALF_UP)
_WIDE = decimal.Context(prec=80, rounding=ROUND_HALF_UP)  # for display rounding: never cuts digits


Num = Annotated[Decimal, BeforeValidator(to_decimal)]
Ratio = Annotated[Decimal, BeforeValidator(parse_ratio)]


def _frac(value: object) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Fraction(value)
    return Fraction(to_decimal(value))


def _round_half_up(value: Fraction, places: int) -> Decimal:
    """Exact half-up (away from zero on ties) rounding of a rational to ``places`` decimals."""
    scaled = abs(value) * 10**places
    units = floor(scaled + Fraction(1, 2))
    if value < 0:
        units = -units
    return Decimal(units).scaleb(-places, context=_WIDE)


def _display(value: Fraction, places: int) -> Decimal:
    """Rounded half-up, trailing zeros dropped, never in exponent form: 1.2, 150, 0.571429."""
    d = _round_half_up(value, places).normalize(context=_WIDE)
    if d == 0:
        return Decimal(0)
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp > 0:
        d = d.quantize(Decimal(1))
    return d


def _to_decimal_exact(value: Fraction) -> Decimal:
    """A rational as Decimal: exact when it terminates within 40 digits, else 40 significant digits."""
    return _CTX.divide(Decimal(value.numerator), Decimal(value.denominator))


# --- the plan file's scorecard section ---------------------------------------------------------

Perspective = Literal["financial", "customer", "process", "learning"]
Direction = Literal["higher", "lower"]
RoleName = Literal["rep", "manager", "director"]
Source = Literal["derived", "measured"]

_STRICT = ConfigDict(frozen=True, extra="forbid")


class KpiSpec(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    perspective: Perspective
    source: Source
    direction: Direction
    weight: Annotated[Num, Field(ge=0)] | None = None
    threshold: Num
    target: Num
    stretch: Num

    @model_validator(mode="after")
    def _check(self) -> KpiSpec:
        if self.source == "derived" and self.name not in DERIVED_KPIS:
            known = ", ".join(sorted(DERIVED_KPIS))
            raise ValueError(f"unknown derived KPI {self.name!r} (known: {known}; or use source: measured)")
        _check_curve(self.threshold, self.target, self.stretch, self.direction, self.name)
        return self


def _check_curve(threshold: Decimal, target: Decimal, stretch: Decimal, direction: str, name: str = "KPI") -> None:
    if direction == "higher":
        if not threshold < target < stretch:
            raise ValueError(
                f"{name}: higher is better needs threshold < target < stretch, got {threshold}, {target}, {stretch}"
            )
    elif direction == "lower":
        if not threshold > target > stretch:
            raise ValueError(
                f"{name}: lower is better needs threshold > target > stretch, got {threshold}, {target}, {stretch}"
            )
    else:
        raise ValueError(f"{name}: direction must be 'higher' or 'lower', got {direction!r}")


class FixedMethod(BaseModel):
    """Weights as written on each KPI (``weight``), normalised to sum 1."""

    model_config = _STRICT
    method: Literal["fixed"]


class AhpMethod(BaseModel):
    """Pairwise comparison matrix in the order of the role's ``kpis``; CR must be < 0.10."""

    model_config = _STRICT
    method: Literal["ahp"]
    matrix: Annotated[list[list[Ratio]], Field(min_length=1, max_length=10)]


class EntropyMethod(BaseModel):
    """Entropy weights over all holders' KPI values of the year (see core.weights)."""

    model_config = _STRICT
    method: Literal["entropy"]


class FixedPart(FixedMethod):
    share: Annotated[Num, Field(ge=0)]


class AhpPart(AhpMethod):
    share: Annotated[Num, Field(ge=0)]


class EntropyPart(EntropyMethod):
    share: Annotated[Num, Field(ge=0)]


CombinedPartSpec = Annotated[FixedPart | AhpPart | EntropyPart, Field(discriminator="method")]


class CombinedMethod(BaseModel):
    """Weighted mean of other methods' weight vectors by ``share`` (no nesting)."""

    model_config = _STRICT
    method: Literal["combined"]
    methods: Annotated[list[CombinedPartSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _shares(self) -> CombinedMethod:
        if sum(p.share for p in self.methods) <= 0:
            raise ValueError("combined: the shares must sum to more than 0")
        return self


WeightsSpec = Annotated[FixedMethod | AhpMethod | EntropyMethod | CombinedMethod, Field(discriminator="method")]


def _methods(weights: FixedMethod | AhpMethod | EntropyMethod | CombinedMethod) -> list[Any]:
    return list(weights.methods) if isinstance(weights, CombinedMethod) else [weights]


class RoleScorecardSpec(BaseModel):
    model_config = _STRICT

    weights: WeightsSpec = FixedMethod(method="fixed")
    kpis: Annotated[list[KpiSpec], Field(min_length=1, max_length=30)]

    @model_validator(mode="after")
    def _check(self) -> RoleScorecardSpec:
        names = [k.name for k in self.kpis]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate KPI names: {', '.join(dupes)}")
        methods = _methods(self.weights)
        uses_fixed = any(m.method == "fixed" for m in methods)
        if uses_fixed:
            missing = [k.name for k in self.kpis if k.weight is None]
            if missing:
                raise ValueError(f"fixed weights need a weight on every KPI (missing: {', '.join(missing)})")
            if sum(k.weight for k in self.kpis if k.weight is not None) <= 0:
                raise ValueError("fixed weights must sum to more than 0")
        else:
            stray = [k.name for k in self.kpis if k.weight is not None]
            if stray:
                raise ValueError(f"KPI weight is only used by the fixed method (given on: {', '.join(stray)})")
        for m in methods:
            if m.method == "ahp":
                if len(m.matrix) != len(self.kpis):
                    raise ValueError(
                        f"AHP matrix is {len(m.matrix)}x{len(m.matrix)} but the role has "
                        f"{len(self.kpis)} KPIs (rows and columns follow the kpis order)"
                    )
                check_consistency(ahp(m.matrix))  # raises AhpConsistencyError("AHP consistency ratio ...")
        return self


class ScorecardsSpec(BaseModel):
    """The plan file's ``scorecards:`` section."""

    model_config = _STRICT

    concentration_warning: Annotated[Num, Field(ge=0, le=1)] | None = None
    veto_gate: StrictBool = True
    roles: Annotated[dict[RoleName, RoleScorecardSpec], Field(min_length=1)]


def parse_scorecards(section: Mapping[str, Any]) -> ScorecardsSpec:
    """Validate the value under the plan file's ``scorecards:`` key."""
    return ScorecardsSpec.model_validate(section)


def load_scorecards_yaml(text: str) -> ScorecardsSpec:
    """Parse a YAML document whose top-level key is ``scorecards``."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "scorecards" not in data:
        raise ValueError("expected a mapping with a top-level 'scorecards' key")
    return parse_scorecards(data["scorecards"])


REFERENCE_SCORECARDS_YAML = """\
scorecards:
  concentration_warning: 0.30        # largest customer's share of the rep's ACV above this -> warning (not a payout change)
  veto_gate: true                    # any veto violation of R effective in Y -> composite 0
  roles:
    rep:
      weights: {method: fixed}
      kpis:
        - {name: revenue_attainment, perspective: financial, source: derived, direction: higher, weight: 0.40, threshold: 0.8, target: 1.0, stretch: 1.2}
        - {name: renewal_rate, perspective: customer, source: derived, direction: higher, weight: 0.20, threshold: 0.70, target: 0.85, stretch: 0.95}
        - {name: csat, perspective: customer, source: measured, direction: higher, weight: 0.20, threshold: 3.5, target: 4.0, stretch: 4.5}
        - {name: nps, perspective: customer, source: measured, direction: higher, weight: 0.10, threshold: 0, target: 30, stretch: 50}
        - {name: upsell_rate, perspective: financial, source: derived, direction: higher, weight: 0.10, threshold: 0.05, target: 0.10, stretch: 0.20}
    manager:                         # KPIs aggregate the team (manager_id); see core/scorecards.py
      weights: {method: fixed}
      kpis:
        - {name: revenue_attainment, perspective: financial, source: derived, direction: higher, weight: 0.35, threshold: 0.8, target: 1.0, stretch: 1.2}
        - {name: upsell_rate, perspective: financial, source: derived, direction: higher, weight: 0.10, threshold: 0.05, target: 0.10, stretch: 0.20}
        - {name: renewal_rate, perspective: customer, source: derived, direction: higher, weight: 0.20, threshold: 0.70, target: 0.85, stretch: 0.95}
        - {name: csat, perspective: customer, source: measured, direction: higher, weight: 0.15, threshold: 3.5, target: 4.0, stretch: 4.5}
        - {name: churn_rate, perspective: process, source: derived, direction: lower, weight: 0.10, threshold: 0.15, target: 0.10, stretch: 0.05}
        - {name: training_completion, perspective: learning, source: measured, direction: higher, weight: 0.10, threshold: 0.6, target: 0.8, stretch: 1.0}
    director:                        # AHP weights; rows/columns in the kpis order; CR = 0.015
      weights:
        method: ahp
        matrix:
          - [1,   2,   3,   5, 4]
          - [1/2, 1,   2,   4, 3]
          - [1/3, 1/2, 1,   3, 2]
          - [1/5, 1/4, 1/3, 1, 1/2]
          - [1/4, 1/3, 1/2, 2, 1]
      kpis:
        - {name: revenue_attainment, perspective: financial, source: derived, direction: higher, threshold: 0.8, target: 1.0, stretch: 1.2}
        - {name: revenue_growth, perspective: financial, source: derived, direction: higher, threshold: 0.0, target: 0.10, stretch: 0.25}
        - {name: renewal_rate, perspective: customer, source: derived, direction: higher, threshold: 0.70, target: 0.85, stretch: 0.95}
        - {name: customer_concentration, perspective: process, source: derived, direction: lower, threshold: 0.40, target: 0.25, stretch: 0.15}
        - {name: employee_engagement, perspective: learning, source: measured, direction: higher, threshold: 60, target: 70, stretch: 80}
"""  # noqa: E501  (the YAML is kept in the plan file's own layout)


# --- scoring --------------------------------------------------------------------------------------

_50 = Fraction(50)
_100 = Fraction(100)
_150 = Fraction(150)


def _score_exact(v: Fraction, threshold: Fraction, target: Fraction, stretch: Fraction, direction: str) -> Fraction:
    if direction == "lower":
        # Mirror: lower is better is higher is better on the negated axis.
        v, threshold, target, stretch = -v, -threshold, -target, -stretch
    if v < threshold:
        return Fraction(0)
    if v <= target:
        return _50 + _50 * (v - threshold) / (target - threshold)
    if v <= stretch:
        return _100 + _50 * (v - target) / (stretch - target)
    return _150


def score(value: object, threshold: object, target: object, stretch: object, direction: str) -> Decimal:
    """The scoring curve: 0 below threshold, 50 at it, 100 at target, 150 at and above stretch.

    Exact (rational) arithmetic; the result is exact whenever it terminates (e.g. 120, 112.5).
    """
    t, g, s = _frac(threshold), _frac(target), _frac(stretch)
    _check_curve_frac(t, g, s, direction)
    return _to_decimal_exact(_score_exact(_frac(value), t, g, s, direction))


def _check_curve_frac(t: Fraction, g: Fraction, s: Fraction, direction: str) -> None:
    if direction == "higher":
        ok = t < g < s
    elif direction == "lower":
        ok = t > g > s
    else:
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if not ok:
        order = "threshold < target < stretch" if direction == "higher" else "threshold > target > stretch"
        raise ValueError(f"{direction} is better needs {order}")


# --- derived KPIs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    """Whose scorecard, for which year, over which people, in which currency."""

    state: LedgerState
    holder: str
    role: str
    year: int
    members: frozenset[str]  # the holder and everyone below (just the holder for role "rep")
    below: tuple[str, ...]  # everyone below the holder, sorted
    targets: Mapping[str, Fraction]  # the (team) target for Y by currency, see team_target
    currency: str | None  # the reporting currency for money KPIs
    # every contract a member sold or was ever assigned, by contract_id: the only ones any KPI of the
    # scope can count (each filter asks for a seller or an owner on some date in ``members``)
    contracts: tuple[Contract, ...]
    vetoes: tuple[Violation, ...]  # the holder's veto findings effective in Y, by (effective, position)

    @property
    def jan1(self) -> date:
        return date(self.year, 1, 1)

    @property
    def dec31(self) -> date:
        return date(self.year, 12, 31)


def _reports(state: LedgerState, year: int) -> dict[str, list[str]]:
    """Direct reports by manager_id, of people hired on or before Dec 31 of Y."""
    dec31 = date(year, 12, 31)
    children: dict[str, list[str]] = {}
    for r in sorted(state.reps.values(), key=lambda r: r.rep_id):
        if r.manager_id is not None and r.hired <= dec31:
            children.setdefault(r.manager_id, []).append(r.rep_id)
    return children


@dataclass(frozen=True)
class _Book:
    """What every scope of one year reads, indexed once per computation (``_book``). Scanning the whole
    ledger per holder instead made the scorecards quadratic: each of 11,000 holders went through all
    200,000 contracts once per KPI, hours at the benchmark's M size (a holder's veto findings come from
    ``LedgerState.vetoes_by`` likewise)."""

    children: dict[str, list[str]]  # ``_reports`` of the year
    contracts: dict[str, list[Contract]]  # ``LedgerState.contracts_by_person``


def _book(state: LedgerState, year: int) -> _Book:
    return _Book(_reports(state, year), state.contracts_by_person())


def team_of(
    state: LedgerState, holder: str, year: int, children: Mapping[str, list[str]] | None = None
) -> tuple[str, ...]:
    """Everyone below ``holder`` through ``manager_id``, transitively, hired on or before Dec 31 of Y.
    ``children``: ``_reports(state, year)``, when the caller has it already."""
    if children is None:
        children = _reports(state, year)
    seen: set[str] = {holder}
    stack = [holder]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    seen.discard(holder)
    return tuple(sorted(seen))


def team_target(
    state: LedgerState, holder: str, year: int, role: str = "rep", children: Mapping[str, list[str]] | None = None
) -> dict[str, Fraction]:
    """The target for Y by currency: the holder's own latest target if set; else (managers, directors) the sum
    of their direct reports' team targets, recursively. So a director's target is the managers' targets
    where managers have one, else their reps' - never both (no double counting). ``children`` as for
    ``team_of``."""
    if role == "rep":
        children = {}
    elif children is None:
        children = _reports(state, year)
    seen = {holder}

    def walk(person: str) -> dict[str, Fraction]:
        own = state.latest_target(person, year)
        if own is not None:
            return {own.currency: Fraction(own.amount)}
        out: dict[str, Fraction] = {}
        for child in children.get(person, ()):
            if child in seen:
                continue
            seen.add(child)
            for currency, amount in walk(child).items():
                out[currency] = out.get(currency, Fraction(0)) + amount
        return out

    return walk(holder)


def _make_scope(state: LedgerState, holder: str, role: str, year: int, book: _Book | None = None) -> _Scope:
    if book is None:
        book = _book(state, year)
    below = () if role == "rep" else team_of(state, holder, year, book.children)
    members = frozenset((holder, *below))
    targets = team_target(state, holder, year, role, book.children)
    # the contracts any member sold or was ever assigned (a director's team: most of the book)
    sold = {c.contract_id: c for m in members for c in book.contracts.get(m, ())}
    contracts = tuple(sold[k] for k in sorted(sold))
    if len(targets) == 1:
        currency: str | None = next(iter(targets))
    elif targets:
        currency = None
    else:
        found = {c.currency for c in contracts}
        currency = next(iter(found)) if len(found) == 1 else None
    vetoes = tuple(
        sorted(
            (v for v in state.vetoes_by()[1].get(holder, ()) if v.effective.year == year),
            key=lambda v: (v.effective, v.position),
        )
    )
    return _Scope(state, holder, role, year, members, below, targets, currency, contracts, vetoes)


def _in_currency(scope: _Scope) -> list[Contract]:
    return [c for c in scope.contracts if c.currency == scope.currency]


def _active_on(c: Contract, d: date) -> bool:
    """Signed on or before d, not churned by d, and d within a term (d <= term end on d)."""
    return c.signed <= d and not c.churned_by(d) and d <= c.term_end_on(d)


def _terms(c: Contract) -> list[tuple[date, date]]:
    """[start, scheduled end] of the initial term and of each renewal's term."""
    return [(c.signed, term_end(c.signed, c.term_months))] + [
        (r.effective, term_end(r.effective, r.term_months)) for r in c.renewals
    ]


def _signed_sum(scope: _Scope, year: int, currency: str | None) -> Fraction:
    return sum(
        (
            Fraction(c.acv0)
            for c in scope.contracts
            if c.seller in scope.members and c.signed.year == year and c.currency == currency
        ),
        Fraction(0),
    )


def kpi_revenue_attainment(scope: _Scope) -> Fraction | None:
    if len(scope.targets) != 1:
        return None  # no target, or a team target in several currencies
    ((currency, amount),) = scope.targets.items()
    return _signed_sum(scope, scope.year, currency) / amount


def kpi_renewal_rate(scope: _Scope) -> Fraction | None:
    due = renewed = 0
    for c in scope.contracts:
        if c.churn is not None and c.churn.effective < scope.jan1:
            continue
        for start, end in _terms(c):
            if end.year != scope.year or c.owner_on(end) not in scope.members:
                continue
            due += 1
            limit = add_days(end, 90)
            if any(start < r.effective <= limit for r in c.renewals):
                renewed += 1
    return Fraction(renewed, due) if due else None


def kpi_upsell_rate(scope: _Scope) -> Fraction | None:
    if scope.currency is None:
        return None
    base = Fraction(0)
    upsell = Fraction(0)
    for c in _in_currency(scope):
        if _active_on(c, scope.jan1) and c.owner_on(scope.jan1) in scope.members:
            base += Fraction(c.acv_on(scope.jan1))
        for e in c.expansions:
            if e.effective.year == scope.year and e.value > 0 and c.owner_on(e.effective) in scope.members:
                upsell += Fraction(e.value)
    return upsell / base if base else None


def kpi_churn_rate(scope: _Scope) -> Fraction | None:
    active = churned = 0
    for c in scope.contracts:
        if _active_on(c, scope.jan1) and c.owner_on(scope.jan1) in scope.members:
            active += 1
        if (
            c.churn is not None
            and c.churn.effective.year == scope.year
            and c.owner_on(c.churn.effective) in scope.members
        ):
            churned += 1
    return Fraction(churned, active) if active else None


def kpi_gross_margin_contribution(scope: _Scope) -> Fraction | None:
    if scope.currency is None:
        return None
    return sum(
        (
            Fraction(c.acv0) * Fraction(c.gross_margin)
            for c in _in_currency(scope)
            if c.seller in scope.members and c.signed.year == scope.year and c.gross_margin is not None
        ),
        Fraction(0),
    )


def kpi_average_acv(scope: _Scope) -> Fraction | None:
    if scope.currency is None:
        return None
    acvs = [Fraction(c.acv0) for c in _in_currency(scope) if c.seller in scope.members and c.signed.year == scope.year]
    return sum(acvs, Fraction(0)) / len(acvs) if acvs else None


def kpi_revenue_growth(scope: _Scope) -> Fraction | None:
    if scope.currency is None:
        return None
    before = _signed_sum(scope, scope.year - 1, scope.currency)
    if before == 0:
        return None
    return _signed_sum(scope, scope.year, scope.currency) / before - 1


def kpi_clv(scope: _Scope) -> Fraction | None:
    if scope.currency is None:
        return None
    per_account: dict[str, Fraction] = {}
    for c in _in_currency(scope):
        if c.signed > scope.dec31 or c.gross_margin is None or c.owner_on(scope.dec31) not in scope.members:
            continue
        ref = scope.dec31
        if c.churn is not None and c.churn.effective <= scope.dec31:
            ref = max(c.signed, c.churn.effective - timedelta(days=1))
        months = c.term_months + sum(r.term_months for r in c.renewals if r.effective <= ref)
        cost = sum((Fraction(f.value) for f in c.service_costs if f.effective <= scope.dec31), Fraction(0))
        value = Fraction(c.acv_on(ref)) * Fraction(months, 12) * Fraction(c.gross_margin) - cost
        per_account[c.account_id] = per_account.get(c.account_id, Fraction(0)) + value
    if not per_account:
        return None
    return sum(per_account.values(), Fraction(0)) / len(per_account)


def concentration(scope: _Scope) -> tuple[Fraction, str] | None:
    """(largest account's share of the active ACV on Dec 31 of Y, that account) or None."""
    if scope.currency is None:
        return None
    by_account: dict[str, Fraction] = {}
    for c in _in_currency(scope):
        if _active_on(c, scope.dec31) and c.owner_on(scope.dec31) in scope.members:
            by_account[c.account_id] = by_account.get(c.account_id, Fraction(0)) + Fraction(c.acv_on(scope.dec31))
    total = sum(by_account.values(), Fraction(0))
    if total <= 0:
        return None
    account = min(by_account, key=lambda a: (-by_account[a], a))
    return by_account[account] / total, account


def kpi_customer_concentration(scope: _Scope) -> Fraction | None:
    found = concentration(scope)
    return None if found is None else found[0]


DERIVED_KPIS: dict[str, Callable[[_Scope], Fraction | None]] = {
    "revenue_attainment": kpi_revenue_attainment,
    "renewal_rate": kpi_renewal_rate,
    "upsell_rate": kpi_upsell_rate,
    "churn_rate": kpi_churn_rate,
    "gross_margin_contribution": kpi_gross_margin_contribution,
    "average_acv": kpi_average_acv,
    "revenue_growth": kpi_revenue_growth,
    "clv": kpi_clv,
    "customer_concentration": kpi_customer_concentration,
}


def _measured(scope: _Scope, name: str) -> Fraction | None:
    st = scope.state
    own = st.latest_kpi(scope.holder, scope.year, name)
    if own is not None:
        return Fraction(own.value)
    values = [f.value for f in (st.latest_kpi(r, scope.year, name) for r in scope.below) if f is not None]
    if not values:
        return None
    return sum((Fraction(v) for v in values), Fraction(0)) / len(values)


def _kpi_value(kpi: KpiSpec, scope: _Scope) -> Fraction | None:
    if kpi.source == "measured":
        return _measured(scope, kpi.name)
    return DERIVED_KPIS[kpi.name](scope)


def kpi_values(
    state: LedgerState, rep_id: str, year: int, kpis: Sequence[KpiSpec], role: str = "rep"
) -> list[Decimal | None]:
    """Each KPI's value for one holder (rounded to 6 decimals for display), in the order given."""
    scope = _make_scope(state, rep_id, role, year)
    return [None if v is None else _display(v, 6) for v in (_kpi_value(k, scope) for k in kpis)]


# --- weights ------------------------------------------------------------------------------------------


def role_weights(
    role_spec: RoleScorecardSpec, values: Sequence[Sequence[Fraction | Decimal | None]]
) -> tuple[Decimal, ...]:
    """The role's weight vector (kpis order, sums to 1 up to rounding); ``values[holder][kpi]`` feeds entropy."""
    kpis = role_spec.kpis

    def vector(m: Any) -> tuple[Decimal, ...]:
        if m.method == "fixed":
            return fixed_weights([k.weight for k in kpis])
        if m.method == "ahp":
            return ahp(m.matrix).weights
        dec_rows = [[None if v is None else _to_decimal_exact(_frac(v)) for v in row] for row in values]
        return entropy_weights(dec_rows, [k.direction for k in kpis])

    w = role_spec.weights
    if isinstance(w, CombinedMethod):
        return combine([(vector(m), m.share) for m in w.methods])
    return vector(w)


# --- scorecards -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiResult:
    name: str
    perspective: str
    value: Decimal | None  # rounded half-up to 6 decimals for display
    score: Decimal | None  # 0..150, rounded half-up to 4 decimals for display
    weight: Decimal  # effective (renormalised over the KPIs with a value), 6 decimals; 0 if left out


@dataclass(frozen=True)
class RepScorecard:
    rep_id: str
    role: str
    year: int
    kpis: tuple[KpiResult, ...]
    composite: Decimal | None  # 2 decimals, half-up; None = no scorecard (no KPI with a value)
    vetoed: bool
    warnings: tuple[str, ...]

    def components(self) -> dict[str, Any]:
        """JSON-ready (Decimals as strings) for the ``scorecard.published`` event's ``components``."""
        return {
            "role": self.role,
            "vetoed": self.vetoed,
            "warnings": list(self.warnings),
            "kpis": [_kpi_json(k) for k in self.kpis],
        }


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _kpi_json(k: KpiResult) -> dict[str, Any]:
    return {
        "name": k.name,
        "perspective": k.perspective,
        "value": _s(k.value),
        "score": _s(k.score),
        "weight": _s(k.weight),
    }


def scorecard_json(cards: Iterable[RepScorecard]) -> list[dict[str, Any]]:
    """JSON-ready rows for ``scorecard compute --format json``."""
    return [
        {
            "rep_id": c.rep_id,
            "role": c.role,
            "year": c.year,
            "composite": _s(c.composite),
            "vetoed": c.vetoed,
            "warnings": list(c.warnings),
            "kpis": [_kpi_json(k) for k in c.kpis],
        }
        for c in cards
    ]


def composite_of(items: Sequence[tuple[Fraction | Decimal, Fraction | Decimal]]) -> Decimal | None:
    """round_half_up(sum(w x score) / sum(w), 2) over (weight, score) pairs; None if the weights sum to 0."""
    total = sum((_frac(w) for w, _ in items), Fraction(0))
    if total <= 0:
        return None
    return _round_half_up(sum((_frac(w) * _frac(s) for w, s in items), Fraction(0)) / total, 2)


def _card(
    spec: ScorecardsSpec,
    role_spec: RoleScorecardSpec,
    scope: _Scope,
    values: Sequence[Fraction | None],
    weights: Sequence[Decimal],
) -> RepScorecard:
    scores: list[Fraction | None] = []
    for k, v in zip(role_spec.kpis, values, strict=True):
        scores.append(
            None if v is None else _score_exact(v, _frac(k.threshold), _frac(k.target), _frac(k.stretch), k.direction)
        )
    present = [(Fraction(w), s) for w, s in zip(weights, scores, strict=True) if s is not None]
    wsum = sum((w for w, _ in present), Fraction(0))
    composite = composite_of(present)
    results = tuple(
        KpiResult(
            name=k.name,
            perspective=k.perspective,
            value=None if v is None else _display(v, 6),
            score=None if s is None else _display(s, 4),
            weight=_display(Fraction(w) / wsum, 6) if s is not None and wsum > 0 else Decimal(0),
        )
        for k, v, s, w in zip(role_spec.kpis, values, scores, weights, strict=True)
    )
    warnings: list[str] = []
    vetoes = scope.vetoes
    vetoed = spec.veto_gate and bool(vetoes)
    if vetoed:
        if composite is not None:
            composite = Decimal("0.00")
        dates = ", ".join(sorted({v.effective.isoformat() for v in vetoes}))
        effect = ": composite set to 0" if composite is not None else ""
        warnings.append(f"compliance veto effective {dates}{effect}")
    if spec.concentration_warning is not None:
        found = concentration(scope)
        if found is not None and found[0] > _frac(spec.concentration_warning):
            share, account = found
            pct = format(_display(share * 100, 2), "f")
            limit = format(_display(_frac(spec.concentration_warning) * 100, 2), "f")
            warnings.append(
                f"customer concentration: account {account} holds {pct}% of the ACV active on "
                f"{scope.dec31.isoformat()} (warning above {limit}%)"
            )
    return RepScorecard(scope.holder, scope.role, scope.year, results, composite, vetoed, tuple(warnings))


def compute_scorecards(spec: ScorecardsSpec, state: LedgerState, year: int, role: str = "rep") -> list[RepScorecard]:
    """Scorecards for every rep of ``role`` hired on or before Dec 31 of ``year``, sorted by rep_id.

    Reps with no KPI value get ``composite=None`` (shown, never published).
    """
    role_spec = spec.roles.get(role)  # type: ignore[call-overload]
    if role_spec is None:
        raise ValueError(f"the plan has no scorecard for role {role!r} (it has: {', '.join(sorted(spec.roles))})")
    dec31 = date(year, 12, 31)
    holders = sorted(r.rep_id for r in state.reps.values() if r.role == role and r.hired <= dec31)
    book = _book(state, year)
    scopes = [_make_scope(state, h, role, year, book) for h in holders]
    values = [[_kpi_value(k, sc) for k in role_spec.kpis] for sc in scopes]
    weights = role_weights(role_spec, values)
    return [_card(spec, role_spec, sc, vals, weights) for sc, vals in zip(scopes, values, strict=True)]
