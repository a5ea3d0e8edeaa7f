"""Statements and the payroll export: build (pure core) then render to the asked format."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.console import Console

from ..core.plan import PlanBook
from ..core.projections import LedgerState
from ..core.statements import build_statement, issued_through
from ..errors import CycleError
from . import render


def _through(state: LedgerState, through: str | None) -> str:
    if through is not None:
        from .service import check_period

        return check_period(through)
    last = state.last_closed_period()
    if last is None:
        raise CycleError("no closed cycle yet: give --through PERIOD")
    return last


def render_one(book: PlanBook, state: LedgerState, rep_id: str, through: str | None, fmt: str) -> str | None:
    if rep_id not in state.reps:
        raise CycleError(f"unknown rep {rep_id!r}")
    st = build_statement(book, state, rep_id, _through(state, through))
    from . import statement_render

    if fmt == "json":
        return render.pretty_json(st) + "\n"
    if fmt == "csv":
        return statement_render.statement_csv(st)
    if fmt == "html":
        return statement_render.statement_html(st)
    statement_render.statement_table(st, render.out)
    return None


def write_all(book: PlanBook, state: LedgerState, through: str | None, out: Path, fmt: str) -> list[Path]:
    from . import statement_render

    period = _through(state, through)
    out.mkdir(parents=True, exist_ok=True)
    ext = {"table": "txt", "json": "json", "csv": "csv", "html": "html"}[fmt]
    written = []
    issued = issued_through(state, period)  # decoded and indexed once for every rep's statement
    for rep_id in sorted(state.reps):
        st = build_statement(book, state, rep_id, period, issued)
        if fmt == "json":
            text = render.pretty_json(st) + "\n"
        elif fmt == "csv":
            text = statement_render.statement_csv(st)
        elif fmt == "html":
            text = statement_render.statement_html(st)
        else:
            console = Console(file=io.StringIO(), width=120, color_system=None)
            statement_render.statement_table(st, console)
            text = console.file.getvalue()  # type: ignore[attr-defined]
        path = out / f"{rep_id}.{ext}"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def payroll_csv(state: LedgerState, period: str) -> str:
    """One row per rep and currency with the payable amount; the sum equals the cycle's payable total."""
    from .statement_render import safe_cell

    cycle = state.cycles.get(period)
    if cycle is None:
        raise CycleError(f"{period} is not closed: close it before exporting it to payroll")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["period", "rep_id", "name", "currency", "payable", "carried_out"])
    for t in cycle.totals:
        rep = state.reps.get(t["rep_id"])
        w.writerow(
            [
                safe_cell(x)
                for x in (period, t["rep_id"], rep.name if rep else "", t["currency"], t["payable"], t["carried_out"])
            ]
        )
    return buf.getvalue()
