"""Plans as data: the pydantic model of a plan file, and choosing the plan in force for a contract.

A plan file (YAML) states every number of the reference plan as a parameter and lists, per obligation
kind, which named rules run and in which order (``core.rules`` holds the rule functions). Plans are
effective-dated and versioned: a contract is governed by the plan in force on its signing date.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..errors import PlanError, Problem
from .canonical import sha256_hex
from .money import config_decimal

Num = Annotated[Decimal, BeforeValidator(config_decimal)]
Share = Annotated[Num, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tranches(_Strict):
    count: Annotated[int, Field(ge=0, le=20)] = 4
    vesting_years: tuple[Annotated[int, Field(ge=1, le=20)], ...] = (1, 2, 3, 4)

    @model_validator(mode="after")
    def _match(self) -> Tranches:
        if len(self.vesting_years) != self.count:
            raise ValueError(f"vesting_years has {len(self.vesting_years)} entries but count is {self.count}")
        if list(self.vesting_years) != sorted(set(self.vesting_years)):
            raise ValueError("vesting_years must be strictly increasing")
        return self


class Commission(_Strict):
    new_business_rate: Share
    upfront_share: Share
    tranches: Tranches
    renewal_rate: Share


class NrrRule(_Strict):
    enabled: bool = True
    cap: Annotated[Num, Field(gt=0)]


class ServiceCostRule(_Strict):
    enabled: bool = True
    threshold: Annotated[Num, Field(ge=0)]
    factor: Annotated[Num, Field(ge=0, le=1)]
    window_years: Annotated[int, Field(ge=1, le=10)] = 1


class ScorecardRule(_Strict):
    enabled: bool = True
    gate: Annotated[Num, Field(ge=0, le=150)]
    cap: Annotated[Num, Field(gt=0, le=150)]


class LapseRule(_Strict):
    grace_days: Annotated[int, Field(ge=0, le=3650)]


class EarlyChurnRule(_Strict):
    window_days: Annotated[int, Field(ge=0, le=3650)]


UPFRONT_RULES = ("contract_veto", "early_churn")
RENEWAL_RULES = ("contract_veto", "no_owner")
TRANCHE_RULES = ("contract_veto", "rep_veto", "bad_leaver", "churned", "lapsed")


class Checks(_Strict):
    """Which named rules run, in order; the first that applies decides (reference-plan.md)."""

    upfront: tuple[Literal["contract_veto", "early_churn"], ...] = UPFRONT_RULES  # type: ignore[assignment]
    renewal: tuple[Literal["contract_veto", "no_owner"], ...] = RENEWAL_RULES  # type: ignore[assignment]
    tranche: tuple[Literal["contract_veto", "rep_veto", "bad_leaver", "churned", "lapsed"], ...] = TRANCHE_RULES  # type: ignore[assignment]


class Release(_Strict):
    nrr: NrrRule
    service_cost: ServiceCostRule
    scorecard: ScorecardRule
    lapse: LapseRule
    early_churn: EarlyChurnRule
    checks: Checks = Checks()


class Payout(_Strict):
    cadence: Literal["monthly"] = "monthly"


class PlanModel(_Strict):
    plan_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    effective_from: date
    description: str = ""
    commission: Commission
    release: Release
    payout: Payout = Payout()
    scorecards: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan with its identity: the SHA-256 of its file text (what a cycle records)."""

    model: PlanModel
    text: str
    filename: str
    content_hash: str
    scorecards: Any  # core.scorecards.ScorecardsSpec | None

    @property
    def plan_id(self) -> str:
        return self.model.plan_id

    @property
    def version(self) -> str:
        return self.model.version


def parse_plan(text: str, filename: str) -> Plan:
    """Validate a plan file's text; every problem names the file, the key and the reason."""
    try:
        raw = yaml.safe_load(text)
    except (ValueError, RecursionError, OverflowError) as exc:  # a scalar YAML cannot construct (2000-02-30)
        raise PlanError(str(Problem(filename, None, "yaml", f"cannot read a value: {exc}"[:300]))) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PlanError(str(Problem(filename, line, "yaml", str(getattr(exc, "problem", exc))))) from None
    if not isinstance(raw, dict):
        raise PlanError(str(Problem(filename, None, "(top)", "a plan file must be a mapping of keys")))
    try:
        model = PlanModel.model_validate(raw)
    except ValidationError as exc:
        problems = [
            Problem(filename, None, ".".join(str(p) for p in err["loc"]) or "(top)", err["msg"]) for err in exc.errors()
        ]
        raise PlanError("\n".join(str(p) for p in problems)) from None
    scorecards = None
    if model.scorecards is not None:
        from .scorecards import ScorecardsSpec  # the scorecard section has its own model

        try:
            scorecards = ScorecardsSpec.model_validate(model.scorecards)
        except (ValidationError, ValueError) as exc:
            errors = exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
            problems = [
                Problem(filename, None, ".".join(["scorecards", *(str(p) for p in err["loc"])]), err["msg"])
                for err in errors
            ]
            raise PlanError("\n".join(str(p) for p in problems)) from None
    return Plan(model, text, filename, sha256_hex(text), scorecards)


class PlanBook:
    """The plans available to an evaluation, ordered by effective date."""

    def __init__(self, plans: list[Plan]) -> None:
        ordered = sorted(plans, key=lambda p: (p.model.effective_from, p.version))
        seen: dict[date, Plan] = {}
        for p in ordered:
            other = seen.get(p.model.effective_from)
            if other is not None:
                raise PlanError(
                    f"{p.filename}: effective_from: {p.model.effective_from} is also the date of {other.filename}"
                )
            seen[p.model.effective_from] = p
        self.plans = ordered
        self._dates = [p.model.effective_from for p in ordered]

    def in_force(self, on: date) -> Plan:
        i = bisect_right(self._dates, on)
        if not self.plans:
            raise PlanError(f"no plan in force on {on}: no plan files")
        if i == 0:
            raise PlanError(f"no plan in force on {on} (the earliest plan starts {self._dates[0]})")
        return self.plans[i - 1]

    def by_hash(self) -> dict[str, Plan]:
        return {p.content_hash: p for p in self.plans}
