"""A rep's statement rendered for people and spreadsheets: one self-contained HTML page (with a hand-written
SVG chart), a CSV with one row per obligation, and rich tables for the terminal.

Pure functions: the statement dict of ``core.statements.build_statement`` in, text out. Every text that comes
from the ledger is escaped (HTML) or neutralised (CSV formula injection); amounts keep their exact decimals
and only gain thousands separators.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["CSV_COLUMNS", "format_amount", "safe_cell", "statement_csv", "statement_html", "statement_table"]

# ---------------------------------------------------------------------------------------------- helpers

_PLAIN_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """A CSV cell that no spreadsheet will run as a formula.

    A cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading apostrophe; a plain
    decimal number (``-25000.00``) is left alone so negative amounts stay numbers. ``None`` is an empty cell.
    """
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def format_amount(value: Any) -> str:
    """An exact decimal string with thousands separators for people: '123750.00' -> '123,750.00'.

    The digits are kept as they are (no rounding); anything that is not a number is returned unchanged.
    """
    if value is None:
        return ""
    text = str(value)
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    return format(number, ",f")


def _dec(value: Any) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return number if number.is_finite() else Decimal(0)


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _factors_text(factors: dict[str, Any] | None) -> str:
    if not factors:
        return ""
    names = {"nrr": "NRR", "service": "service", "score": "score"}
    return " × ".join(f"{names.get(k, k)} {v}" for k, v in factors.items())


def _label(code: Any) -> str:
    """'awaiting_renewal' -> 'awaiting renewal' (for people; the code stays in the CSV)."""
    return "" if code is None else str(code).replace("_", " ")


# Summary rows in the order people read them: key, label, css class.
_SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("paid", "Paid", "paid"),
    ("deferred_to_come", "Deferred, still to come", "deferred"),
    ("estimate_to_come", "Estimated to come *", "estimate-amount"),
    ("held", "Held", "held"),
    ("forfeited", "Forfeited", "forfeited"),
    ("clawed_back", "Clawed back", "clawback"),
    ("manual_adjustments", "Manual adjustments", "manual"),
    ("lines_total", "Net of all lines issued", "net"),
    ("carried_balance", "Carried balance", "carried"),
)

_COLORS = {"paid": "#0b6bcb", "deferred": "#7cc4f2", "forfeited": "#d55e00"}
_SERIES = (("paid", "Paid"), ("deferred", "Deferred (to come)"), ("forfeited", "Forfeited"))

# ---------------------------------------------------------------------------------------------- chart


def _quarter_index(quarter: str) -> int | None:
    m = re.fullmatch(r"(\d{4})-Q([1-4])", quarter)
    return None if m is None else int(m.group(1)) * 4 + int(m.group(2)) - 1


def _quarter_name(index: int) -> str:
    return f"{index // 4}-Q{index % 4 + 1}"


def _through_quarter(through: str) -> int | None:
    m = re.fullmatch(r"(\d{4})-(\d{2})", through or "")
    if m is None or not 1 <= int(m.group(2)) <= 12:
        return None
    return int(m.group(1)) * 4 + (int(m.group(2)) - 1) // 3


def _nice_step(maximum: Decimal, ticks: int) -> Decimal:
    """A round tick step (1, 2, 2.5 or 5 x 10^k) so that ``ticks`` steps cover ``maximum``."""
    if maximum <= 0:
        return Decimal(1)
    raw = maximum / ticks
    magnitude = Decimal(10) ** raw.adjusted()
    for m in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _compact(value: Decimal) -> str:
    """Axis labels: 2500 -> '2.5k', 1500000 -> '1.5M' (the exact amounts are in the titles and tables)."""
    for size, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "k")):
        if abs(value) >= size:
            return f"{(value / size).normalize():f}{suffix}"
    return f"{value.normalize():f}"


def _n(x: float) -> str:
    """SVG coordinates: short, no exponent."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _chart_svg(currency: str, rows: list[dict[str, Any]], through: str, chart_no: int) -> str:
    """A stacked bar chart of paid / deferred / forfeited per quarter, scaled to the largest quarter."""
    values: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        slot = values.setdefault(str(r.get("quarter", "")), {k: Decimal(0) for k, _ in _SERIES})
        for k, _ in _SERIES:
            slot[k] += _dec(r.get(k, 0))
    indices = {q: _quarter_index(q) for q in values}
    if all(i is not None for i in indices.values()):
        lo, hi = min(indices.values()), max(indices.values())  # type: ignore[type-var]
        quarters = [_quarter_name(i) for i in range(lo, hi + 1)]  # a time axis: empty quarters stay visible
    else:
        quarters = sorted(values)
    zero = {k: Decimal(0) for k, _ in _SERIES}
    n = len(quarters)

    left, right, top, bottom, plot_h = 64.0, 32.0, 52.0, 56.0, 190.0
    slot_w = min(60.0, max(20.0, (380.0 - left - right) / n))
    bar_w = slot_w * 0.64
    width = left + n * slot_w + right
    height = top + plot_h + bottom
    tallest = max((sum(max(v, Decimal(0)) for v in values.get(q, zero).values()) for q in quarters), default=0)
    step = _nice_step(Decimal(tallest), 5)
    ticks = max(1, math.ceil(Decimal(tallest) / step))
    y_max = step * ticks

    def y_of(amount: Decimal) -> float:
        return top + plot_h - float(amount / y_max) * plot_h

    totals = {k: sum((values.get(q, zero)[k] for q in quarters), Decimal(0)) for k, _ in _SERIES}
    aria = (
        f"Bar chart of paid, deferred and forfeited commission per quarter in {currency}: "
        + ", ".join(f"{label.lower()} {format_amount(totals[k])} in total" for k, label in _SERIES)
        + "."
    )
    out = [
        f'<svg viewBox="0 0 {_n(width)} {_n(height)}" '
        f'width="{_n(width)}" height="{_n(height)}" role="img" aria-label="{_e(aria)}" '
        'class="chart-svg" '
        f'style="min-width:{_n(min(width, 560.0) * 0.72)}px;max-width:{_n(width * 1.4)}px" font-size="13" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">',
        f'<title id="chart-title-{chart_no}">{_e(aria)}</title>',
    ]
    # legend
    x = left
    for key, label in _SERIES:
        out.append(
            f'<rect x="{_n(x)}" y="10" width="12" height="12" rx="2" fill="{_COLORS[key]}" class="legend-{key}"/>'
        )
        out.append(f'<text x="{_n(x + 17)}" y="21" fill="currentColor">{_e(label)}</text>')
        x += 17 + len(label) * 7.2 + 14
    # grid and y axis
    for i in range(ticks + 1):
        amount = step * i
        y = y_of(amount)
        out.append(
            f'<line x1="{_n(left)}" x2="{_n(width - right)}" y1="{_n(y)}" y2="{_n(y)}" '
            f'stroke="currentColor" stroke-opacity="{0.45 if i == 0 else 0.15}"/>'
        )
        out.append(
            f'<text x="{_n(left - 6)}" y="{_n(y + 4)}" text-anchor="end" fill="currentColor" '
            f'font-size="12">{_e(_compact(amount))}</text>'
        )
    out.append(
        f'<text transform="translate(14 {_n(top + plot_h / 2)}) rotate(-90)" text-anchor="middle" '
        f'fill="currentColor" font-size="12">Amount ({_e(currency)})</text>'
    )
    # bars
    for i, q in enumerate(quarters):
        x0 = left + i * slot_w + (slot_w - bar_w) / 2
        base = Decimal(0)
        out.append(f'<g class="bar" data-quarter="{_e(q)}">')
        for key, label in _SERIES:
            amount = values.get(q, zero)[key]
            if amount <= 0:
                continue
            y_top, y_bottom = y_of(base + amount), y_of(base)
            base += amount
            out.append(
                f'<rect x="{_n(x0)}" y="{_n(y_top)}" width="{_n(bar_w)}" height="{_n(max(y_bottom - y_top, 1.5))}" '
                f'fill="{_COLORS[key]}" class="bar-{key}"><title>{_e(q)} {_e(label.lower())}: '
                f"{_e(format_amount(amount))} {_e(currency)}</title></rect>"
            )
        out.append("</g>")
    # x axis: quarter ticks and years
    axis_y = top + plot_h
    idx = [_quarter_index(q) for q in quarters]
    first_q1 = next((i for i, v in enumerate(idx) if v is not None and v % 4 == 0), None)
    for i, q in enumerate(quarters):
        cx = left + i * slot_w + slot_w / 2
        v = idx[i]
        if v is None:
            out.append(
                f'<text x="{_n(cx)}" y="{_n(axis_y + 14)}" text-anchor="middle" fill="currentColor" '
                f'font-size="9">{_e(q)}</text>'
            )
            continue
        if slot_w >= 22 or v % 4 == 0:
            out.append(
                f'<text x="{_n(cx)}" y="{_n(axis_y + 13)}" text-anchor="middle" fill="currentColor" '
                f'fill-opacity="0.7" font-size="10">Q{v % 4 + 1}</text>'
            )
        show_year = v % 4 == 0 or (i == 0 and (first_q1 is None or first_q1 >= 3))
        if show_year:
            out.append(
                f'<line x1="{_n(cx - slot_w / 2)}" x2="{_n(cx - slot_w / 2)}" y1="{_n(axis_y)}" '
                f'y2="{_n(axis_y + 30)}" stroke="currentColor" stroke-opacity="0.3"/>'
            )
            out.append(
                f'<text x="{_n(cx - slot_w / 2 + 3)}" y="{_n(axis_y + 28)}" fill="currentColor" '
                f'font-weight="600">{v // 4}</text>'
            )
    out.append(
        f'<text x="{_n(left + n * slot_w / 2)}" y="{_n(height - 6)}" text-anchor="middle" fill="currentColor" '
        f'font-size="12">Quarter</text>'
    )
    # where the statement stands: everything right of the line is still to come
    tq = _through_quarter(through)
    if tq is not None and idx and all(v is not None for v in idx) and idx[0] <= tq <= idx[-1]:  # type: ignore[operator]
        mx = left + (tq - idx[0] + 1) * slot_w  # type: ignore[operator]
        anchor, dx = ("start", 4) if mx < width / 2 else ("end", -4)
        out.append(
            f'<line x1="{_n(mx)}" x2="{_n(mx)}" y1="{_n(top - 12)}" y2="{_n(axis_y)}" stroke="currentColor" '
            f'stroke-dasharray="4 3" stroke-opacity="0.7"/>'
        )
        out.append(
            f'<text x="{_n(mx + dx)}" y="{_n(top - 4)}" text-anchor="{anchor}" fill="currentColor" '
            f'font-size="12">through {_e(through)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
:root{color-scheme:light dark;--fg:#1d232b;--muted:#5b6573;--bg:#fff;--card:#f5f7fa;--line:#d9dee5;
--ok:#1a7f37;--warn:#9a6700;--bad:#c4320a;--info:#0b6bcb;--est-bg:#fff8e1;--est-line:#e0b040}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--muted:#a3acb9;--bg:#14171c;--card:#1d2128;
--line:#333a45;--ok:#4ac26b;--warn:#d4a72c;--bad:#f47067;--info:#6cb6ff;--est-bg:#2b2611;--est-line:#9a7a1c}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);line-height:1.45;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:64rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.25rem 0}
h2{font-size:1.2rem;margin:2rem 0 .5rem;padding-bottom:.25rem;border-bottom:1px solid var(--line)}
h3{font-size:1.05rem;margin:1.25rem 0 .5rem}
h4{font-size:.95rem;margin:1rem 0 .35rem}
.muted,.who{color:var(--muted)}
.who{margin:0;display:flex;flex-wrap:wrap;gap:.25rem 1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,24rem));gap:.75rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.75rem 1rem}
.card h3{margin:0 0 .5rem}
dl.kv{display:grid;grid-template-columns:1fr auto;gap:.2rem 1rem;margin:0}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
dl.kv dd.paid{font-weight:700}
dl.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(12rem,1fr));gap:.2rem 1rem;margin:0 0 .5rem}
dl.facts div{display:flex;justify-content:space-between;gap:.5rem;border-bottom:1px dotted var(--line)}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;text-align:right}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.25rem 0 .75rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
p.cap{color:var(--muted);font-size:.85rem;margin:.5rem 0 .25rem}
th,td{padding:.35rem .5rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-weight:600;background:var(--card);white-space:nowrap}
tbody th{font-weight:500;min-width:7rem}
tr.ob th,tr.ob td{border-bottom:0}
tr.why td{color:var(--muted);font-size:.8rem;padding-top:0}
tr.why div{position:sticky;left:.5rem;max-width:calc(100vw - 3rem)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.id{white-space:nowrap}
.neg{color:var(--bad)}
.badge{display:inline-block;padding:0 .4rem;border-radius:.6rem;font-size:.8rem;border:1px solid currentColor;
white-space:nowrap}
.s-earned{color:var(--ok)}.s-held{color:var(--warn)}.s-forfeited{color:var(--bad)}.s-to_come{color:var(--info)}
.estimate{background:var(--est-bg);border-left:4px solid var(--est-line);padding:.5rem .75rem;margin:.75rem 0;
border-radius:.25rem}
.estimate strong{display:block}
.chart{margin:.5rem 0}
.chart-scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
.chart svg{display:block;width:100%;height:auto;max-width:60rem;color:var(--fg)}
figcaption{font-size:.8rem;margin-top:.25rem}
details{margin:.25rem 0 1rem}
summary{cursor:pointer;color:var(--muted)}
footer{margin:2rem 0 1rem;color:var(--muted);font-size:.8rem}
@media (max-width:30rem){main{padding:.75rem}h1{font-size:1.3rem}table{font-size:.85rem}}
@media print{.chart-scroll,.scroll{overflow:visible}details{display:none}}
"""


def _status_badge(status: Any, css: str = "") -> str:
    s = str(status or "")
    css = css or re.sub(r"[^a-z_]", "", s.lower())
    return f'<span class="badge s-{css}">{_e(_label(s))}</span>'


def _num_td(value: Any, extra: str = "") -> str:
    text = format_amount(value)
    css = "num" + (" neg" if text.startswith("-") and _dec(value) != 0 else "") + (f" {extra}" if extra else "")
    return f'<td class="{css}">{_e(text)}</td>'


def _table(tid: str, caption: str, head: list[tuple[str, bool]], rows: list[str], extra_class: str = "") -> str:
    """A table in a horizontal scroll wrapper; ``head`` is (label, numeric) pairs, ``rows`` ready-made <tr>s.

    The caption is a paragraph above the wrapper (not a <caption>) so it stays readable on a narrow screen
    while the table scrolls; the table is labelled by it (``tid`` is the paragraph's unique id)."""
    cap_id = _e(tid)
    num_cls = ' class="num"'
    ths = "".join(f'<th scope="col"{num_cls if num else ""}>{_e(label)}</th>' for label, num in head)
    cls = f' class="{extra_class}"' if extra_class else ""
    return (
        f'<p class="cap" id="{cap_id}">{_e(caption)}</p>'
        f'<div class="scroll"><table{cls} aria-labelledby="{cap_id}"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _lines_rows(lines: list[dict[str, Any]], with_currency: bool = False) -> list[str]:
    rows = []
    for x in sorted(lines, key=lambda x: (str(x.get("period", "")), str(x.get("obligation", "")))):
        cells = [
            f'<td class="id">{_e(x.get("period"))}</td>',
            f'<td class="id">{_e(x.get("obligation"))}</td>',
            _num_td(x.get("amount")),
        ]
        if with_currency:
            cells.append(f"<td>{_e(x.get('currency'))}</td>")
        cells.append(f"<td>{_e(_label(x.get('kind')))}</td>")
        cells.append(f"<td>{_e(_label(x.get('reason')))}</td>")
        rows.append(f'<tr class="line-{_e(x.get("kind"))}">{"".join(cells)}</tr>')
    return rows


def _ob_id(value: Any) -> str:
    """An obligation id that may wrap after its slashes on a narrow screen: 'C1/<wbr>renewal/<wbr>2027-01-15'."""
    return _e(value).replace("/", "/<wbr>")


def _ob_key(o: dict[str, Any]) -> tuple[int, str, str]:
    """Up-front first, then tranches, renewals and manual adjustments, each by due date."""
    order = {"upfront": 0, "tranche": 1, "renewal": 2, "manual": 3}.get(str(o.get("kind")), 4)
    return order, str(o.get("due")), str(o.get("obligation"))


def _contract_section(c: dict[str, Any]) -> str:
    cid = str(c.get("contract_id", ""))
    cur = str(c.get("currency", ""))
    anchor = "contract-" + re.sub(r"\s", "_", cid)
    facts = [
        ("Account", c.get("account_id")),
        ("Signed", c.get("signed")),
        ("Seller", c.get("seller")),
        ("Owner now", c.get("owner")),
        ("Plan", c.get("plan")),
        (f"ACV at signing ({cur})", format_amount(c.get("acv_at_signing"))),
        (f"ACV now ({cur})", format_amount(c.get("acv_now"))),
        ("Term ends", c.get("term_end")),
    ]
    if c.get("churned"):
        facts.append(("Churned", c.get("churned")))
    if c.get("commission") is not None:
        facts.append((f"Commission ({cur})", format_amount(c.get("commission"))))
    parts = [
        f'<section class="contract" id="{_e(anchor)}" aria-labelledby="{_e(anchor)}-h">',
        f'<h3 id="{_e(anchor)}-h">Contract {_e(cid)}'
        + (' <span class="badge s-forfeited">churned</span>' if c.get("churned") else "")
        + "</h3>",
        '<dl class="facts">',
        *(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts),
        "</dl>",
    ]
    obligations = sorted(c.get("obligations") or [], key=_ob_key)
    rows = []
    for o in obligations:
        # the columns a rep looks for first (what, status, money) come first: they fit a phone without scrolling
        rows.append(
            f'<tr class="ob ob-{_e(o.get("kind"))}">'
            f'<th scope="row">{_ob_id(o.get("obligation"))}</th>'
            f"<td>{_status_badge(o.get('status'))}</td>"
            f"{_num_td(o.get('earned'))}{_num_td(o.get('paid'))}"
            f'<td class="id">{_e(o.get("due"))}</td>'
            f"{_num_td(o.get('base'))}"
            f'<td class="id">{_e(_factors_text(o.get("factors")))}</td></tr>'
        )
        why = _label(o.get("reason"))
        if o.get("detail"):
            why = f"{why}: {o.get('detail')}" if why else str(o.get("detail"))
        if why:
            rows.append(f'<tr class="why"><td colspan="7"><div>{_e(why)}</div></td></tr>')
    if rows:
        parts.append(
            _table(
                f"{anchor}-due",
                f"Up-front, tranches and renewals due so far ({cur}), each with why it stands where it does",
                [
                    ("Obligation", False),
                    ("Status", False),
                    ("Earned", True),
                    ("Paid", True),
                    ("Due / vests", False),
                    ("Base", True),
                    ("Factors", False),
                ],
                rows,
                "obligations",
            )
        )
    else:
        parts.append('<p class="muted">Nothing due yet on this contract.</p>')
    to_come = c.get("to_come") or []
    if to_come:
        rows = [
            f'<tr class="to-come"><th scope="row">{_ob_id(t.get("obligation"))}</th>'
            f"{_num_td(t.get('estimate'), 'estimate-amount')}"
            f'<td class="id">{_e(t.get("vesting"))}</td>'
            f"<td>{_status_badge(t.get('status'), 'to_come' if t.get('status') == 'to_come' else 'forfeited')}</td>"
            f"{_num_td(t.get('base'))}"
            f'<td class="id">{_e(_factors_text(t.get("factors")))}</td></tr>'
            for t in sorted(to_come, key=lambda t: (str(t.get("vesting")), str(t.get("obligation"))))
        ]
        parts.append('<h4>Tranches still to come <a href="#estimate-note">(estimate *)</a></h4>')
        parts.append(
            _table(
                f"{anchor}-to-come",
                f"Estimate, not a promise ({cur}): see the note on estimates; base before factors, factors as of today",
                [
                    ("Tranche", False),
                    ("Estimate *", True),
                    ("Vests on", False),
                    ("Status", False),
                    ("Base", True),
                    ("Factors today", False),
                ],
                rows,
                "to-come",
            )
        )
    lines = c.get("lines") or []
    if lines:
        parts.append("<h4>Lines issued (payments, adjustments, clawbacks)</h4>")
        parts.append(
            _table(
                f"{anchor}-lines",
                f"Every line issued for this contract, by cycle ({cur})",
                [("Cycle", False), ("Obligation", False), ("Amount", True), ("Kind", False), ("Reason", False)],
                _lines_rows(lines),
                "lines",
            )
        )
    parts.append("</section>")
    return "".join(parts)


def statement_html(st: dict[str, Any]) -> str:
    """One self-contained HTML5 page (no external resources) that reads well on a phone."""
    rep = st.get("rep") or {}
    rep_id = rep.get("rep_id") or ""
    name = rep.get("name") or rep_id or "Unknown rep"
    through = str(st.get("through") or "")
    label = st.get("estimate_label") or "Estimate, not a promise."
    p: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f"<title>Commission statement: {_e(name)} ({_e(rep_id)}) through {_e(through)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        '<header class="statement-header">',
        f'<p class="muted">Commission statement through {_e(through)}</p>',
        f'<h1><span class="rep-name">{_e(name)}</span> <span class="muted">({_e(rep_id)})</span></h1>',
        '<p class="who">',
        f"<span>Role: {_e(rep.get('role') or '-')}</span>",
        f"<span>Region: {_e(rep.get('region') or '-')}</span>",
        f"<span>Through: {_e(through)} (as of {_e(st.get('as_of'))})</span>",
    ]
    if rep.get("terminated"):
        p.append(f"<span>Left on {_e(rep.get('terminated'))}</span>")
    p += ["</p>", "</header>"]

    # summary
    p += ['<section id="totals" aria-labelledby="totals-h">', '<h2 id="totals-h">Summary</h2>']
    summary = st.get("summary") or []
    if summary:
        p.append('<div class="cards">')
        for row in summary:
            cur = row.get("currency", "")
            p.append(f'<div class="card" data-currency="{_e(cur)}"><h3>{_e(cur)}</h3><dl class="kv">')
            for key, text, css in _SUMMARY_ROWS:
                if key in row:
                    value = format_amount(row[key])
                    neg = " neg" if value.startswith("-") and _dec(row[key]) != 0 else ""
                    p.append(f'<dt>{_e(text)}</dt><dd class="{css}{neg}">{_e(value)}</dd>')
            p.append("</dl></div>")
        p.append("</div>")
    else:
        p.append('<p class="muted">Nothing paid, deferred or forfeited yet.</p>')
    p += [
        '<div class="estimate" id="estimate-note" role="note">',
        f"<strong>* Still to come is an estimate</strong> {_e(label)}",
        "</div>",
        "</section>",
    ]

    # chart
    p += ['<section id="chart" aria-labelledby="chart-h">', '<h2 id="chart-h">Paid, deferred and forfeited</h2>']
    chart = st.get("chart") or []
    by_cur: dict[str, list[dict[str, Any]]] = {}
    for r in chart:
        by_cur.setdefault(str(r.get("currency", "")), []).append(r)
    if not by_cur:
        p.append('<p class="muted">Nothing to chart yet.</p>')
    for no, (cur, rows) in enumerate(sorted(by_cur.items()), 1):
        if len(by_cur) > 1:
            p.append(f"<h3>{_e(cur)}</h3>")
        p.append(f'<figure class="chart" data-currency="{_e(cur)}">')
        p.append(f'<div class="chart-scroll">{_chart_svg(cur, rows, through, no)}</div>')
        p.append(
            '<figcaption class="muted">Paid: what each cycle paid, by the quarter of the cycle. Deferred: tranches '
            "still to come (their base, before factors). Forfeited: obligations lost, by their vesting quarter."
            "</figcaption>"
        )
        p.append("</figure>")
        data_rows = [
            f"<tr><td>{_e(r.get('quarter'))}</td>{_num_td(r.get('paid'))}{_num_td(r.get('deferred'))}"
            f"{_num_td(r.get('forfeited'))}</tr>"
            for r in sorted(rows, key=lambda r: str(r.get("quarter")))
        ]
        p.append("<details><summary>The chart's numbers</summary>")
        p.append(
            _table(
                f"chart-data-{no}",
                f"Per quarter ({cur}); deferred amounts are tranche bases before factors",
                [("Quarter", False), ("Paid", True), ("Deferred", True), ("Forfeited", True)],
                data_rows,
            )
        )
        p.append("</details>")
    p.append("</section>")

    # contracts
    p += ['<section id="contracts" aria-labelledby="contracts-h">', '<h2 id="contracts-h">Contracts</h2>']
    contracts = st.get("contracts") or []
    if not contracts:
        p.append('<p class="muted">No contracts.</p>')
    p += [_contract_section(c) for c in contracts]
    p.append("</section>")

    # manual adjustments
    p += ['<section id="manual" aria-labelledby="manual-h">', '<h2 id="manual-h">Manual adjustments</h2>']
    manual = st.get("manual_adjustments") or []
    if manual:
        p.append(
            _table(
                "manual-cap",
                "Approved manual adjustments, by cycle",
                [
                    ("Cycle", False),
                    ("Adjustment", False),
                    ("Amount", True),
                    ("Currency", False),
                    ("Kind", False),
                    ("Reason", False),
                ],
                _lines_rows(manual, with_currency=True),
                "manual",
            )
        )
    else:
        p.append('<p class="muted">None.</p>')
    p.append("</section>")

    # cycles
    p += ['<section id="cycles" aria-labelledby="cycles-h">', '<h2 id="cycles-h">Payout cycles</h2>']
    cycles = st.get("cycles") or []
    if cycles:
        rows = [
            f"<tr><td>{_e(c.get('period'))}</td><td>{_e(c.get('currency'))}</td>{_num_td(c.get('lines_total'))}"
            f"{_num_td(c.get('carried_in'))}{_num_td(c.get('payable'))}{_num_td(c.get('carried_out'))}</tr>"
            for c in cycles
        ]
        p.append(
            _table(
                "cycles-cap",
                "Each closed cycle: its lines, the balance carried in, what was payable and what was carried out",
                [
                    ("Cycle", False),
                    ("Currency", False),
                    ("Lines", True),
                    ("Carried in", True),
                    ("Payable", True),
                    ("Carried out", True),
                ],
                rows,
                "cycles",
            )
        )
    else:
        p.append('<p class="muted">No closed cycle paid anything to this rep yet.</p>')
    p.append("</section>")

    p += [
        "<footer>",
        f"<p>Built from the ledger as of {_e(st.get('as_of'))}. Amounts are exact, in each contract's currency; "
        "paid means payable in a closed cycle. * Estimates are not promises.</p>",
        "</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(p) + "\n"


# ---------------------------------------------------------------------------------------------- CSV

CSV_COLUMNS: tuple[str, ...] = (
    "rep_id",
    "contract_id",
    "obligation",
    "kind",
    "due",
    "status",
    "reason",
    "base",
    "earned",
    "paid",
    "estimate",
    "currency",
)


def statement_csv(st: dict[str, Any]) -> str:
    """One row per obligation: those due so far, the tranches still to come (status ``to_come``, the
    estimate filled in) and the manual adjustments; every cell neutralised against formula injection."""
    rep_id = (st.get("rep") or {}).get("rep_id") or ""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for c in st.get("contracts") or []:
        cid, cur = c.get("contract_id"), c.get("currency")
        for o in sorted(c.get("obligations") or [], key=_ob_key):
            seen.add(str(o.get("obligation")))
            rows.append(
                {
                    "contract_id": cid,
                    "obligation": o.get("obligation"),
                    "kind": o.get("kind"),
                    "due": o.get("due"),
                    "status": o.get("status"),
                    "reason": o.get("reason"),
                    "base": o.get("base"),
                    "earned": o.get("earned"),
                    "paid": o.get("paid"),
                    "currency": cur,
                }
            )
        for t in c.get("to_come") or []:
            status = str(t.get("status") or "")
            rows.append(
                {
                    "contract_id": cid,
                    "obligation": t.get("obligation"),
                    "kind": "tranche",
                    "due": t.get("vesting"),
                    "status": "to_come",
                    "reason": "estimate" if status in ("", "to_come") else status,
                    "base": t.get("base"),
                    "estimate": t.get("estimate"),
                    "currency": cur,
                }
            )
    # manual adjustments: one row per adjustment (its issued lines summed), unless a contract already listed it
    manual: dict[str, dict[str, Any]] = {}
    for x in st.get("manual_adjustments") or []:
        ob = str(x.get("obligation"))
        if ob in seen:
            continue
        row = manual.get(ob)
        if row is None:
            manual[ob] = {
                "contract_id": "",
                "obligation": ob,
                "kind": x.get("kind") or "manual",
                "due": x.get("period"),
                "status": "paid",
                "reason": x.get("reason"),
                "paid": _dec(x.get("amount")),
                "currency": x.get("currency"),
            }
        else:
            row["paid"] += _dec(x.get("amount"))
    for row in manual.values():
        row["paid"] = f"{row['paid']:f}"
        rows.append(row)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for row in rows:
        row["rep_id"] = rep_id
        w.writerow([safe_cell(row.get(col)) for col in CSV_COLUMNS])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- terminal


def _t(value: Any, style: str = "") -> Text:
    """Literal text for rich (never parsed as markup)."""
    return Text("" if value is None else str(value), style=style)


def _amount(value: Any) -> Text:
    text = format_amount(value)
    return Text(text, style="red" if text.startswith("-") and _dec(value) != 0 else "")


_STATUS_STYLE = {"earned": "green", "held": "yellow", "forfeited": "red", "to_come": "cyan"}


def statement_table(st: dict[str, Any], console: Console) -> None:
    """The statement as rich tables: summary, each contract's obligations, what is still to come (estimate)."""
    rep = st.get("rep") or {}
    header = Text()
    header.append("Statement ", style="bold")
    header.append(f"{rep.get('name') or rep.get('rep_id') or 'unknown rep'} ({rep.get('rep_id') or ''})", style="bold")
    header.append(f" - role {rep.get('role') or '-'}, region {rep.get('region') or '-'}")
    header.append(f", through {st.get('through')} (as of {st.get('as_of')})")
    if rep.get("terminated"):
        header.append(f", left on {rep.get('terminated')}")
    console.print(header)

    rows = st.get("summary") or []
    summary = Table(title="Summary")
    summary.add_column("")
    for r in rows:
        summary.add_column(_t(r.get("currency")), justify="right")
    for key, label, _ in _SUMMARY_ROWS:
        if any(key in r for r in rows):
            summary.add_row(_t(label.replace(" *", " (estimate)")), *(_amount(r.get(key)) for r in rows))
    console.print(summary if st.get("summary") else Text("Nothing paid, deferred or forfeited yet."))

    for c in st.get("contracts") or []:
        cur = c.get("currency") or ""
        facts = (
            f"signed {c.get('signed')}, ACV {format_amount(c.get('acv_at_signing'))} -> "
            f"{format_amount(c.get('acv_now'))} {cur}, plan {c.get('plan')}"
        )
        if c.get("commission") is not None:
            facts += f", commission {format_amount(c.get('commission'))} {cur}"
        if c.get("churned"):
            facts += f", churned {c.get('churned')}"
        t = Table(title=Text(f"Contract {c.get('contract_id')} ({c.get('account_id')})"), caption=_t(facts))
        for col in ("obligation", "kind", "due", "status", "reason", "factors"):
            t.add_column(col)
        for col in ("base", "earned", "paid"):
            t.add_column(col, justify="right")
        obligations = sorted(c.get("obligations") or [], key=_ob_key)
        for o in obligations:
            status = str(o.get("status") or "")
            t.add_row(
                _t(o.get("obligation")),
                _t(o.get("kind")),
                _t(o.get("due")),
                _t(status, _STATUS_STYLE.get(status, "")),
                _t(o.get("reason")),
                _t(_factors_text(o.get("factors"))),
                _amount(o.get("base")),
                _amount(o.get("earned")),
                _amount(o.get("paid")),
            )
        for x in c.get("lines") or []:
            if x.get("kind") in ("clawback", "adjustment"):
                t.add_row(
                    _t(x.get("obligation")),
                    _t(x.get("kind"), "magenta"),
                    _t(x.get("period")),
                    _t(""),
                    _t(x.get("reason")),
                    _t(""),
                    _t(""),
                    _t(""),
                    _amount(x.get("amount")),
                )
        console.print(t)

    to_come = [(c, x) for c in st.get("contracts") or [] for x in c.get("to_come") or []]
    if to_come:
        t = Table(
            title=Text("Still to come - ESTIMATE", style="bold yellow"),
            caption=_t(st.get("estimate_label") or "Estimate, not a promise."),
        )
        for col in ("contract", "tranche", "vests", "status", "factors today"):
            t.add_column(col)
        for col in ("base", "estimate", "currency"):
            t.add_column(col, justify="right" if col != "currency" else "left")
        for c, x in to_come:
            status = str(x.get("status") or "")
            t.add_row(
                _t(c.get("contract_id")),
                _t(x.get("obligation")),
                _t(x.get("vesting")),
                _t(status, _STATUS_STYLE.get(status, "red")),
                _t(_factors_text(x.get("factors"))),
                _amount(x.get("base")),
                _amount(x.get("estimate")),
                _t(c.get("currency")),
            )
        console.print(t)

    manual = st.get("manual_adjustments") or []
    if manual:
        t = Table(title="Manual adjustments")
        for col in ("cycle", "adjustment", "amount", "currency", "reason"):
            t.add_column(col, justify="right" if col == "amount" else "left")
        for x in manual:
            t.add_row(
                _t(x.get("period")),
                _t(x.get("obligation")),
                _amount(x.get("amount")),
                _t(x.get("currency")),
                _t(x.get("reason")),
            )
        console.print(t)

    cycles = st.get("cycles") or []
    if cycles:
        t = Table(title="Payout cycles")
        t.add_column("cycle")
        t.add_column("currency")
        for col in ("lines", "carried in", "payable", "carried out"):
            t.add_column(col, justify="right")
        for x in cycles:
            t.add_row(
                _t(x.get("period")),
                _t(x.get("currency")),
                *(_amount(x.get(k)) for k in ("lines_total", "carried_in", "payable", "carried_out")),
            )
        console.print(t)
