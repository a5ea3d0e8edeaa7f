"""Calendar arithmetic as the reference plan defines it (pendulum semantics, no time zones)."""

from __future__ import annotations

import calendar
import re
from datetime import date, timedelta
from functools import lru_cache

import pendulum

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@lru_cache(maxsize=1 << 16)  # pure, and asked for every tranche of every contract a close evaluates
def add_years(d: date, years: int) -> date:
    """2024-02-29 + 1 year = 2025-02-28; + 4 years = 2028-02-29 (pendulum clamps to month end)."""
    p = pendulum.date(d.year, d.month, d.day).add(years=years)
    return date(p.year, p.month, p.day)


@lru_cache(maxsize=1 << 16)
def add_months(d: date, months: int) -> date:
    p = pendulum.date(d.year, d.month, d.day).add(months=months)
    return date(p.year, p.month, p.day)


def add_days(d: date, days: int) -> date:
    return d + timedelta(days=days)


def term_end(start: date, term_months: int) -> date:
    """Last day covered by a term: start + term months - 1 day."""
    return add_days(add_months(start, term_months), -1)


def parse_period(text: str) -> tuple[int, int]:
    m = _PERIOD.match(text)
    if not m:
        raise ValueError(f"period must be YYYY-MM, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def period_end(period: str) -> date:
    """A period's as-of date is its last day."""
    y, m = parse_period(period)
    return date(y, m, calendar.monthrange(y, m)[1])


def period_of(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def next_period(period: str) -> str:
    y, m = parse_period(period)
    return f"{y + (m // 12):04d}-{m % 12 + 1:02d}"


def periods_between(first: str, last: str) -> list[str]:
    """Every period from first to last inclusive."""
    out: list[str] = []
    p = first
    while p <= last:
        out.append(p)
        p = next_period(p)
    return out
