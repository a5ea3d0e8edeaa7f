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
    Money-based KPIs use one currency per holder and year: the currency of the holder's latest target for
    Y; else (managers/directors) the currency of the team members' targets for Y if they all share one;
    else the single currency of all contracts the team ever sold or owned; else none (money KPIs then have
    no value). Contracts in other currencies are left out of money KPIs. For a single-currency rep this is
    simply "all of the rep's contracts".

Derived KPIs (for a rep R; ``T`` = the team, ``{R}`` for role ``rep``; Y = the calendar year)
    revenue_attainment   sum of ACV0 of contracts signed in Y by T (seller) in the target's currency /
                         the holder's latest target for Y (no target -> no value). Managers/directors
                         without an own target: team ACV0 signed / sum of the team members' latest
                         targets for Y, if those share one currency (else no value).
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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from math import floor
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from .dates import add_days, term_end
from .projections import Contract, LedgerState
from .weights import ahp, check_consistency, combine, entropy_weights, fixed_weights, parse_ratio

# --- numbers -------------------------------------------------------------------------------------


def to_decimal(value: object) -> Decimal:
    """YAML ints, floats (via str(), never binary) and strings to Decimal; booleans are refused."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int | float):
        d = Decimal(str(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except ArithmeticError:
            raise ValueError(f"not a number: {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d


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
    return Decimal(units).scaleb(-places)


def _display(value: Fraction, places: int) -> Decimal:
    """Rounded half-up, trailing zeros dropped, never in exponent form: 1.2, 150, 0.571429."""
    d = _round_half_up(value, places).normalize()
    if d == 0:
        return Decimal(0)
    sign, digits, exp = d.as_tuple()
    if isinstance(exp, int) and exp > 0:
        d = d.quantize(Decimal(1))
    return d


def _to_decimal_exact(value: Fraction) -> Decimal:
    """A rational as Decimal: exact when it terminates within 40 digits, else 40 significant digits."""
    import decimal

    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_UP)
    return ctx.divide(Decimal(value.numerator), Decimal(value.denominator))


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
            raise ValueError(f"{name}: higher is better needs threshold < target < stretch, "
                             f"got {threshold}, {target}, {stretch}")
    elif direction == "lower":
        if not threshold > target > stretch:
            raise ValueError(f"{name}: lower is better needs threshold > target > stretch, "
                             f"got {threshold}, {target}, {stretch}")
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
                    raise ValueError(f"AHP matrix is {len(m.matrix)}x{len(m.matrix)} but the role has "
                                     f"{len(self.kpis)} KPIs (rows and columns follow the kpis order)")
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
"""


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
