"""Loading plan files from a rules directory (I/O around the pure ``core.plan``)."""

from __future__ import annotations

from pathlib import Path

from ..core.plan import Plan, PlanBook, parse_plan
from ..errors import PlanError

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


def default_rules_dir() -> Path:
    return SHIPPED_RULES


def load_plans(directory: Path) -> PlanBook:
    if not directory.is_dir():
        raise PlanError(f"{directory}: not a directory of plan files")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise PlanError(f"{directory}: no plan files (*.yaml)")
    plans: list[Plan] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"{f}: cannot read: {exc}") from None
        plans.append(parse_plan(text, str(f)))
    return PlanBook(plans)


def book_from_registered(texts: dict[str, tuple[str, str]]) -> PlanBook:
    """A plan book from plan texts stored in the ledger (content hash -> (filename, text))."""
    return PlanBook([parse_plan(text, filename) for filename, text in texts.values()])
