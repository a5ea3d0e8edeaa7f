"""Scorecards on the database: compute from the projected ledger, publish as ``scorecard.published``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from ..core.events import ScorecardPublished
from ..core.plan import PlanBook
from ..core.projections import LedgerState
from ..core.scorecards import RepScorecard, compute_scorecards
from ..errors import PlanError
from .service import current_state, load_state
from .store import Ledger

ROLES = ("rep", "manager", "director")


def scorecards_for(book: PlanBook, state: LedgerState, year: int, roles: tuple[str, ...]) -> list[RepScorecard]:
    """The scorecards of ``year`` under the plan in force on Dec 31 of that year."""
    plan = book.in_force(date(year, 12, 31))
    if plan.scorecards is None:
        raise PlanError(f"{plan.filename}: scorecards: the plan in force on {year}-12-31 defines no scorecards")
    cards: list[RepScorecard] = []
    for role in roles:
        if role in plan.scorecards.roles:
            cards += compute_scorecards(plan.scorecards, state, year, role)
    return sorted(cards, key=lambda c: c.rep_id)


def publish(ledger: Ledger, book: PlanBook, year: int, effective: date | None = None) -> tuple[int, int]:
    """Append one scorecard.published per person with a composite; an unchanged republication is skipped.

    Returns (published, unchanged)."""
    effective = effective or date(year + 1, 1, 1)
    with ledger.writer() as w:
        state = current_state(ledger, w)
        events = []
        unchanged = 0
        for card in scorecards_for(book, state, year, ROLES):
            if card.composite is None:
                continue
            latest = max(state.scorecards.get((card.rep_id, year), []), key=lambda s: s.position, default=None)
            components = card.components()
            if (
                latest is not None
                and latest.composite == card.composite
                and latest.components == components
                and latest.effective == effective
            ):
                unchanged += 1
                continue
            events.append(
                ScorecardPublished(
                    type="scorecard.published",
                    effective=effective,
                    rep_id=card.rep_id,
                    year=year,
                    composite=card.composite,
                    components=components,
                )
            )
        if events:
            w.append(events)
    return len(events), unchanged


def compute(ledger: Ledger, book: PlanBook, year: int, role: str | None) -> list[RepScorecard]:
    state = load_state(ledger)
    return scorecards_for(book, state, year, (role,) if role else ROLES)


def composite_text(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.2f}"
