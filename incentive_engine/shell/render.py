"""Output for people (rich tables) and programs (JSON), kept apart from the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..core.cycles import CycleResult, cycle_json, evaluation_json
from ..core.money import format_money
from .obligations import EVALUATION_KEYS, Listing, stored_evaluation_values
from .service import gc_paused

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    sys.stdout.write(pretty_json(value) + "\n")


_str = json.encoder.encode_basestring  # the C function json.dumps(ensure_ascii=False) uses for a str
_LITERALS = {True: "true", False: "false", None: "null"}


class _Other(Exception):
    """A value ``pretty_json`` leaves to ``json.dumps``."""


def pretty_json(value: Any) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)``, the same text, several times faster on the
    shapes this program prints (objects, arrays, strings, integers): a month's cycle at M lists 170,000
    evaluations, and the standard library indents with its pure-Python encoder. Anything else (floats,
    keys that are not strings) goes to ``json.dumps`` itself. A test compares the two on random values."""
    try:
        return _pretty(value, "\n")
    except _Other:
        return json.dumps(value, indent=2, ensure_ascii=False)


def _pretty(value: Any, pad: str) -> str:
    t = type(value)
    if t is str:
        return _str(value)
    if t is dict:
        if not value:
            return "{}"
        inner = pad + "  "
        return _layout(tuple(value), pad) % tuple(
            [_str(v) if type(v) is str else _pretty(v, inner) for v in value.values()]
        )
    if t is list or t is tuple:
        if not value:
            return "[]"
        inner = pad + "  "
        return "[" + inner + ("," + inner).join([_pretty(v, inner) for v in value]) + pad + "]"
    if t is int:
        return int.__repr__(value)
    if value is None or t is bool:
        return _LITERALS[value]
    raise _Other


_LAYOUTS: dict[tuple[tuple[Any, ...], str], str] = {}


def _layout(keys: tuple[Any, ...], pad: str) -> str:
    """The text of an object with these keys at this indentation, a ``%s`` for each value: the rows of a
    listing share a few key sets, so each object costs one lookup and one formatting."""
    layout = _LAYOUTS.get((keys, pad))
    if layout is None:
        if any(type(k) is not str for k in keys):
            raise _Other
        if len(_LAYOUTS) > 1_000:
            _LAYOUTS.clear()
        inner = pad + "  "
        body = ("," + inner).join(_str(k).replace("%", "%%") + ": %s" for k in keys)
        layout = _LAYOUTS[keys, pad] = "{" + inner + body + pad + "}"
    return layout


def cycle_table(result: CycleResult) -> None:
    out.print(f"[bold]Cycle {result.period}[/bold] (as of {result.as_of}) - {result.status}")
    lines = [
        (x.rep_id, x.contract_id or "", x.obligation, x.kind, format_money(x.amount, x.currency), x.currency, x.reason)
        for x in result.lines
    ]
    if lines:
        table("Lines", ("rep", "contract", "obligation", "kind", "amount", "currency", "reason"), lines, right={4})
    else:
        out.print("No lines.")
    listing = result.evaluations
    # held and forfeited ones as their JSON rows: a listing renders its stored rows from their text
    rows = (
        listing.json_rows()
        if isinstance(listing, Listing)
        else (evaluation_json(e, p) for e, p in listing if e.status != "earned")
    )
    pending = [
        (r["rep_id"], r["obligation"], r["due"], r["status"], r["reason"], r["paid_to_date"])
        for r in rows
        if r["status"] != "earned"
    ]
    if pending:
        columns = ("rep", "obligation", "due", "status", "reason", "paid to date")
        table("Held and forfeited obligations", columns, pending)
    amounts = ("lines_total", "carried_in", "payable", "carried_out")
    totals = [
        (t.rep_id, t.currency, *(format_money(getattr(t, a), t.currency) for a in amounts)) for t in result.totals
    ]
    if totals:
        columns = ("rep", "currency", "lines", "carried in", "payable", "carried out")
        table("Totals per rep and currency", columns, totals, right={2, 3, 4, 5})
    else:
        out.print("No totals.")


# rich lays a table out by measuring, wrapping and padding every cell: about 0.5 ms a row, so the cycle
# of a month at M (17,615 lines, 170,746 held and forfeited, 7,216 totals) took 107 s to print. Above
# this many rows a table is written as text in the same box style, each column as wide as its widest cell
# (no wrapping: `less -S` reads it), in about a second.
RICH_ROWS = 1_000


def table(
    title: str,
    columns: tuple[str, ...],
    rows: list[tuple[str, ...]],
    right: Collection[int] = (),
    no_wrap: Collection[int] = (),
) -> None:
    """A titled table of text cells (``right``: the columns aligned right; ``no_wrap``: the columns rich
    does not wrap in a narrow terminal; the text table wraps none)."""
    if len(rows) <= RICH_ROWS:
        t = Table(title=title)
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if i in right else "left", no_wrap=i in no_wrap)
        for r in rows:
            t.add_row(*(Text(c) for c in r))
        out.print(t)
        return
    out.file.write(plain_table(title, columns, rows, right))
    out.file.flush()


def _width(cell: str) -> int:
    return len(cell) if cell.isascii() else cell_len(cell)


def plain_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], right: Collection[int]) -> str:
    """The table as text, in rich's default box (``box.HEAVY_HEAD``), with the title centred above it."""
    # ASCII text (ids, amounts, reasons: the usual case) is padded by str.format in C, one call a row;
    # other text is measured in terminal cells as rich measures it (a CJK character takes two)
    narrow = "".join(columns).isascii() and all("".join(r).isascii() for r in rows)
    measure = len if narrow else _width
    widths = [max(map(measure, column)) for column in zip(columns, *rows, strict=True)]

    def row(cells: tuple[str, ...], bar: str) -> str:
        padded = [
            " " * (w - _width(c)) + c if i in right else c + " " * (w - _width(c))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return bar + " " + (" " + bar + " ").join(padded) + " " + bar

    def rule(left: str, fill: str, cross: str, end: str) -> str:
        return left + cross.join(fill * (w + 2) for w in widths) + end

    if narrow:
        cells = " │ ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))
        body = ("│ " + cells + " │").format
        lines = [body(*r) for r in rows]
    else:
        lines = [row(r, "│") for r in rows]
    total = sum(widths) + 3 * len(widths) + 1
    text = [
        title.center(total).rstrip(),
        rule("┏", "━", "┳", "┓"),
        row(columns, "┃"),
        rule("┡", "━", "╇", "┩"),
        *lines,
        rule("└", "─", "┴", "┘"),
    ]
    return "\n".join(text) + "\n"


def cycle_output(result: CycleResult, fmt: str) -> None:
    # (a cycle can list 170,000 evaluations: building their dicts would trigger collections that walk them)
    with gc_paused():
        _cycle_output(result, fmt)


def _cycle_output(result: CycleResult, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(cycle_json_text(result) + "\n")
    else:
        cycle_table(result)


def cycle_json_text(result: CycleResult) -> str:
    """``pretty_json(cycle_json(result))``, the same text; a listing's stored rows (at M, 143,602 of the
    170,746 evaluations of a month) are formatted straight from their values, not built as dicts and walked."""
    listing = result.evaluations
    if not isinstance(listing, Listing):
        return pretty_json(cycle_json(result))
    try:
        parts = [
            _str(k) + ": " + (_evaluations_text(listing, "\n  ") if k == "evaluations" else _pretty(v, "\n  "))
            for k, v in cycle_json(result, ()).items()
        ]
    except _Other:  # pragma: no cover - a cycle's lines and totals are strings
        return pretty_json(cycle_json(result, listing.json_rows()))
    return "{\n  " + ",\n  ".join(parts) + "\n}"


def _evaluations_text(listing: Listing, pad: str) -> str:
    """The listing as ``_pretty`` writes a list of ``evaluation_json`` objects at indentation ``pad``."""
    inner = pad + "  "
    fields = inner + "  "
    layout = _layout(EVALUATION_KEYS, inner)
    texts = []
    for item in listing.items():
        if Listing.is_stored(item):
            rep, cid, oid, due, status, earned, paid, factors, reason = stored_evaluation_values(item[3], item[4])
            texts.append(
                layout
                % (_str(rep), "null" if cid is None else _str(cid), _str(oid), _str(due), _str(status), _str(earned),
                   _str(paid), _pretty(factors, fields), _str(reason))
            )  # fmt: skip
        else:
            texts.append(_pretty(evaluation_json(*item), inner))
    return "[" + inner + ("," + inner).join(texts) + pad + "]" if texts else "[]"


def explain_table(result: dict[str, Any]) -> None:
    out.print(
        f"[bold]{result['rep_id']} in {result['period']}[/bold] ({result['status']}, ledger position "
        f"{result['ledger_position']})"
    )
    if not result["items"]:
        out.print("No lines, held or forfeited obligations.")
    for item in result["items"]:
        line = item.get("line")
        head = f"[bold]{item['obligation']}[/bold] due {item['due']}: {item['status']} ({item['reason']})"
        head += f", rule {item['rule']}"
        out.print(head)
        out.print(
            f"  earned {item['earned']} of base {item['base']}; paid to date {item['paid_to_date']}", highlight=False
        )
        if line:
            out.print(f"  line: {line['kind']} {line['amount']} {line['currency']}", highlight=False)
        if item["factors"]:
            out.print("  factors: " + ", ".join(f"{k} {v}" for k, v in item["factors"].items()), highlight=False)
        if item["computation"]:
            out.print(f"  how: {item['computation']}", highlight=False, markup=False)
        for f in item["facts"]:
            out.print(f"  fact: {f['text']}", highlight=False, markup=False)
        for c in item.get("changed_by", []):
            out.print(f"  changed by: {c}", highlight=False, markup=False)


def scorecard_table(cards: list, year: int) -> None:  # list[RepScorecard]
    """One row per person: each KPI as value -> score (weight); warnings listed under the table."""
    names: list[str] = []
    for c in cards:
        for k in c.kpis:
            if k.name not in names:
                names.append(k.name)
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for c in cards:
        cells = []
        by = {k.name: k for k in c.kpis}
        for n in names:
            k = by.get(n)
            if k is None or k.value is None:
                cells.append("-")
            else:
                cells.append(f"{_short(k.value)} -> {_short(k.score)}, {_short(k.weight)}")
        composite = "-" if c.composite is None else f"{c.composite:.2f}"
        rows.append((c.rep_id, c.role, *cells, composite + (" VETO" if c.vetoed else "")))
        notes += [f"{c.rep_id}: {w}" for w in c.warnings]
    columns = ("person", "role", *(n.replace("_", " ") for n in names), "composite")
    # (a scorecard per person: 11,000 rows at M, a table rich would take seconds to lay out)
    title = f"Scorecards {year} (each KPI: value -> score, weight)"
    table(title, columns, rows, right=range(2, len(columns)), no_wrap={0, 1, len(columns) - 1})
    for n in notes:
        out.print(f"warning - {n}", highlight=False, markup=False)


def _short(value: Any) -> str:
    text = f"{value.normalize():f}"
    return text if len(text) <= 8 else f"{value:.4f}"


def demo_summary(report: Any) -> None:  # demo.DemoReport
    t = Table(title="Five years of payouts (per year and currency)")
    cols = ("paid", "clawed_back", "held", "forfeited", "deferred_to_come", "carried_balances")
    t.add_column("year")
    t.add_column("cur")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for row in report.summary:
        t.add_row(str(row["year"]), row["currency"], *(f"{row[c]:,.2f}" for c in cols))
    out.print(t)
    out.print(
        "held, forfeited and deferred to come are base amounts as of each year's December close; carried balances "
        "are what reps still owe back from clawbacks.",
        highlight=False,
    )
    out.print(
        f"Ledger: {report.db_url} ({report.events} events, {report.cycles} closed cycles, "
        f"{report.reproduced} reproduced exactly)",
        highlight=False,
    )
    out.print(f"Statements: {report.directory / 'statements'} ({len(report.statements)} files), e.g.", highlight=False)
    for p in report.statements[:3]:
        out.print(f"  {p}", highlight=False)
    out.print(f"CRM exports: {report.directory / 'crm'}", highlight=False)
