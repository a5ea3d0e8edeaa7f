"""The CLI's printers: JSON, the same text as ``json.dumps(indent=2, ensure_ascii=False)``, faster; big
tables, the same text as rich's default table where rich would not wrap, faster."""

from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from rich.text import Text

from incentive_engine.core.cycles import CycleResult, Line, Total
from incentive_engine.shell import render
from incentive_engine.shell.render import plain_table, pretty_json

_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(_values)
def test_pretty_json_prints_what_json_dumps_prints(value):
    assert pretty_json(value) == json.dumps(value, indent=2, ensure_ascii=False)


@given(st.dictionaries(st.integers() | st.booleans() | st.none(), st.text(), min_size=1, max_size=3))
def test_keys_that_are_not_strings_are_left_to_json_dumps(value):
    assert pretty_json({"a": [value]}) == json.dumps({"a": [value]}, indent=2, ensure_ascii=False)


def test_strings_are_escaped_as_json_dumps_escapes_them():
    text = 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f u2028 \u2028 astral \U0001f600 e\u0301'
    assert pretty_json({text: [text, {}, []]}) == json.dumps({text: [text, {}, []]}, indent=2, ensure_ascii=False)
    assert json.loads(pretty_json({text: text})) == {text: text}


# printable cells: no control characters, no zero-width or combining marks that rich measures apart, and
# no spaces but the plain one and none at either end (rich prints a no-break space as a plain one and
# drops a right-aligned cell's trailing spaces; the engine's cells have none)
_cells = st.text(st.characters(categories=("L", "N", "P", "S"), include_characters=" "), max_size=12).map(str.strip)


@given(
    st.lists(st.text(st.characters(categories=("L", "N")), min_size=1, max_size=10), min_size=1, max_size=5),
    st.data(),
)
def test_a_plain_table_is_the_text_of_richs_table(columns, data):
    rows = data.draw(st.lists(st.tuples(*[_cells] * len(columns)), max_size=6))
    right = data.draw(st.sets(st.integers(0, len(columns) - 1)))
    t = Table(title="Title")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in right else "left")
    for r in rows:
        t.add_row(*(Text(c) for c in r))
    buf = io.StringIO()
    Console(file=buf, width=1_000, color_system=None).print(t)
    expected = [line.rstrip() for line in buf.getvalue().splitlines()]
    assert plain_table("Title", tuple(columns), rows, right).splitlines() == expected


def test_a_cycle_too_big_for_rich_is_printed_whole_as_text(monkeypatch):
    """Above ``RICH_ROWS`` rows the cycle's tables are written as text, every row and cell in them."""
    lines = tuple(
        Line(f"R{i % 7}", f"C{i}", f"C{i}/upfront", "payment", Decimal(i) / 4, "CNY", "earned") for i in range(40)
    )
    totals = tuple(Total(f"R{i}", "CNY", Decimal(i), Decimal(0), Decimal(i), Decimal(0)) for i in range(7))
    result = CycleResult("2030-11", date(2030, 11, 30), "closed", lines, (), totals, {})
    printed = {}
    for limit in (10, 1_000):
        buf = io.StringIO()
        monkeypatch.setattr(render, "out", Console(file=buf, width=1_000, color_system=None))
        monkeypatch.setattr(render, "RICH_ROWS", limit)
        render.cycle_table(result)
        printed[limit] = [line.rstrip() for line in buf.getvalue().splitlines()]
    assert printed[10] == printed[1_000]  # the same text either way, here where rich does not wrap
    assert len(printed[10]) == 1 + (4 + 40 + 1) + (4 + 7 + 1)
    assert "│ R6  │ C13      │ C13/upfront │ payment │   3.25 │ CNY      │ earned │" in printed[10]


def test_scorecards_print_the_same_text_as_a_rich_table_or_as_text(monkeypatch):
    from types import SimpleNamespace as NS

    def kpi(name, value):
        return NS(
            name=name, value=None if value is None else Decimal(value), score=Decimal("1.1"), weight=Decimal("0.5")
        )

    cards = [
        NS(rep_id=f"R{i}", role="rep", kpis=[kpi("revenue_attainment", "0.95"), kpi("csat", None if i % 3 else "4.2")],
           composite=None if i == 4 else Decimal("101.5") + i, vetoed=i == 2, warnings=["big customer"] if i == 1 else [])
        for i in range(6)
    ]  # fmt: skip
    printed = {}
    for limit in (3, 1_000):
        buf = io.StringIO()
        monkeypatch.setattr(render, "out", Console(file=buf, width=1_000, color_system=None))
        monkeypatch.setattr(render, "RICH_ROWS", limit)
        render.scorecard_table(cards, 2029)
        printed[limit] = [line.rstrip() for line in buf.getvalue().splitlines()]
    assert printed[3] == printed[1_000]
    assert "│ R2     │ rep  │   0.95 -> 1.1, 0.5 │               - │ 103.50 VETO │" in printed[3]
    assert printed[3][-1] == "warning - R1: big customer"
