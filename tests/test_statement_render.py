"""Statements rendered for people: a self-contained HTML page with an SVG chart, a CSV that cannot run as a
formula, and rich tables; the HTML is also rendered by a real headless Chromium."""

from __future__ import annotations

import copy
import csv
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from incentive_engine.core.statements import build_statement
from incentive_engine.shell.statement_render import (
    CSV_COLUMNS,
    format_amount,
    safe_cell,
    statement_csv,
    statement_html,
    statement_table,
)

from .ledgers import WORKED, Sim

ADJUSTMENT = (
    '{"type":"adjustment.recorded","effective":"2027-03-10","event_id":"adj-1","rep_id":"R3","amount":"-500.00",'
    '"currency":"CNY","reason":"-spiff correction =1+1","approved_by":"head of sales"}'
)
PERIODS = [f"{y}-{m:02d}" for y in (2026, 2027) for m in range(1, 13)][:18]  # 2026-01 .. 2027-06


@pytest.fixture(scope="module")
def statements() -> dict[str, dict[str, Any]]:
    sim = Sim()
    sim.ingest((WORKED / "01-facts.jsonl").read_text())
    sim.ingest(ADJUSTMENT)
    for p in PERIODS:
        sim.close(p)
    return {rep: build_statement(sim.book, sim.state, rep, "2027-06") for rep in ("R1", "R2", "R3")}


# ------------------------------------------------------------------------------------------ HTML structure

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Walker(HTMLParser):
    """Checks that every element is closed in order, and collects what the tests look for."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.svgs: list[dict[str, str | None]] = []
        self.bars: list[dict[str, str | None]] = []
        self.bar_titles: list[str] = []
        self.text_in: dict[str, list[str]] = {}  # id or class -> text inside it
        self._capture: list[tuple[str, int]] = []  # (key, depth)
        self._in_bar = False
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag == "svg":
            self.svgs.append(a)
        if tag == "rect" and (a.get("class") or "").startswith("bar-"):
            self.bars.append(a)
            self._in_bar = True
        if tag in VOID:
            return  # <wbr> and friends do not separate words
        self._separate()
        self.stack.append(tag)
        keys = [a["id"]] if a.get("id") else []
        keys += (a.get("class") or "").split()
        for k in keys:
            self._capture.append((k or "", len(self.stack)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "rect" and (a.get("class") or "").startswith("bar-"):
            self.bars.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}> at {self.getpos()}")
            return
        self._separate()
        self._capture = [(k, d) for k, d in self._capture if d < len(self.stack)]
        self.stack.pop()
        if tag == "rect":
            self._in_bar = False

    def handle_data(self, data: str) -> None:
        for k in dict.fromkeys(k for k, _ in self._capture):
            self.text_in.setdefault(k, []).append(data)
        if self._in_bar and self.stack and self.stack[-1] == "title" and data.strip():
            self.bar_titles.append(data)

    def _separate(self) -> None:
        """Element boundaries separate words (cells of a row, terms of a list)."""
        self.handle_data(" ")

    def text(self, key: str) -> str:
        return " ".join("".join(self.text_in.get(key, [])).split())


def walk(text: str) -> Walker:
    w = Walker()
    w.feed(text)
    w.close()
    assert not w.errors, w.errors[:5]
    assert w.stack == [], f"unclosed elements: {w.stack}"
    return w


def test_html_is_well_formed_self_contained_and_complete(statements):
    st = statements["R1"]
    page = statement_html(st)
    w = walk(page)
    assert w.doctype.lower() == "doctype html"
    assert w.tags["html"] == w.tags["head"] == w.tags["body"] == 1
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    # self-contained: nothing is fetched
    assert "http://" not in page and "https://" not in page
    assert not {"script", "link", "img", "iframe", "object"} & set(w.tags)
    assert "@import" not in page and "url(" not in page
    # ids are unique; the summary and every contract can be found
    assert len(w.ids) == len(set(w.ids))
    assert "totals" in w.ids
    for c in st["contracts"]:
        assert f"contract-{c['contract_id']}" in w.ids
    assert "Paid 123,750.00" in w.text("totals")
    assert "Carried balance 0.00" in w.text("totals")
    # the chart: an inline SVG that scales, labelled for screen readers, with bars that have a title
    assert len(w.svgs) == 1
    svg = w.svgs[0]
    assert svg["role"] == "img" and "paid" in (svg["aria-label"] or "").lower()
    assert (svg["viewbox"] or "").startswith("0 0 ")
    assert w.bars, "no bar in the chart"
    assert {b["class"] for b in w.bars} == {"bar-paid", "bar-deferred"}
    assert "2026-Q1 paid: 60,000.00 CNY" in w.bar_titles
    assert "2028-Q1 deferred (to come): 15,000.00 CNY" in w.bar_titles
    assert "Amount (CNY)" in w.text("chart") and "Quarter" in w.text("chart")
    # the estimate of what is still to come is labelled, in a visible note
    assert " ".join(st["estimate_label"].split()) in w.text("estimate")
    # every obligation and future tranche of the contract is shown, with its factors
    contract = w.text("contract-C1")
    for ob in st["contracts"][0]["obligations"] + st["contracts"][0]["to_come"]:
        assert ob["obligation"] in contract
    assert "NRR 1.25 × service 1.0 × score 1.0" in contract
    assert "18,750.00" in contract
    # the per-cycle table
    assert "2027-01 CNY 63,750.00 0.00 63,750.00 0.00" in w.text("cycles")
    # same statement, same page
    assert statement_html(copy.deepcopy(st)) == page


def test_html_shows_clawbacks_forfeits_manual_adjustments_and_negative_balances(statements):
    st = statements["R3"]
    w = walk(statement_html(st))
    totals = w.text("totals")
    assert "Clawed back -25,000.00" in totals
    assert "Forfeited 31,250.00" in totals
    assert "Carried balance -20,500.00" in totals
    c3 = w.text("contract-C3")
    assert "forfeited" in c3 and "early churn" in c3 and "-25,000.00" in c3 and "clawback" in c3
    manual = w.text("manual")
    assert "ADJ/adj-1" in manual and "-500.00" in manual and "-spiff correction =1+1" in manual
    assert {b["class"] for b in w.bars} == {"bar-paid", "bar-deferred", "bar-forfeited"}


def test_html_escapes_every_text():
    evil = '<script>alert("x")</script>'
    st: dict[str, Any] = {
        "rep": {"rep_id": 'R"1', "name": evil, "role": "<b>rep</b>", "region": "&east", "terminated": None},
        "through": "2027-06",
        "as_of": "2027-06-30",
        "summary": [{"currency": "CNY", "paid": "1.00", "carried_balance": "0.00"}],
        "contracts": [
            {
                "contract_id": 'C"><img src=x onerror=alert(1)>',
                "account_id": evil,
                "currency": "CNY",
                "signed": "2026-01-15",
                "seller": "R1",
                "owner": "R1",
                "acv_at_signing": "10.00",
                "acv_now": "10.00",
                "term_end": "2027-01-14",
                "churned": None,
                "commission": "1.00",
                "plan": "reference@1",
                "obligations": [
                    {
                        "obligation": "C/upfront",
                        "kind": "upfront",
                        "due": "2026-01-15",
                        "base": "1.00",
                        "status": "earned",
                        "reason": evil,
                        "earned": "1.00",
                        "paid": "1.00",
                        "factors": {"nrr": "<i>1</i>"},
                        "detail": evil,
                    }
                ],
                "to_come": [],
                "lines": [
                    {
                        "period": "2026-01",
                        "obligation": "C/upfront",
                        "kind": "payment",
                        "amount": "1.00",
                        "currency": "CNY",
                        "reason": evil,
                    }
                ],
            }
        ],
        "manual_adjustments": [
            {
                "period": "2026-02",
                "obligation": "ADJ/<x>",
                "kind": "manual",
                "amount": "-1.00",
                "currency": "CNY",
                "reason": evil,
            }
        ],
        "cycles": [],
        "estimate_label": "<u>estimate</u>",
        "chart": [{"currency": "C<N>Y", "quarter": "2026-Q1", "paid": "1.00", "deferred": "0", "forfeited": "0"}],
    }
    page = statement_html(st)
    w = walk(page)
    low = page.lower()
    assert "<script" not in low and "<img" not in low and "<b>" not in low and "<i>" not in low and "<u>" not in low
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert 'contract-C"><img_src=x_onerror=alert(1)>' in w.ids  # escaped in the attribute; no whitespace in an id
    assert evil in w.text("rep-name")
    assert "<u>estimate</u>" in w.text("estimate")
    assert "Amount (C<N>Y)" in w.text("chart")


def test_several_currencies_get_one_chart_each_and_an_empty_statement_renders():
    st = {
        "rep": {"rep_id": "R9", "name": "N", "role": "rep", "region": None, "terminated": "2027-01-31"},
        "through": "2027-06",
        "as_of": "2027-06-30",
        "summary": [],
        "contracts": [],
        "manual_adjustments": [],
        "cycles": [],
        "estimate_label": "Estimate.",
        "chart": [],
    }
    w = walk(statement_html(st))
    assert not w.svgs and "Nothing to chart yet." in w.text("chart")
    assert "Left on 2027-01-31" in w.text("statement-header")
    st["chart"] = [
        {"currency": "EUR", "quarter": "2026-Q3", "paid": "1000.00", "deferred": "0.00", "forfeited": "0.00"},
        {"currency": "EUR", "quarter": "2027-Q2", "paid": "0.00", "deferred": "250.00", "forfeited": "50.00"},
        {"currency": "JPY", "quarter": "2026-Q1", "paid": "1500000", "deferred": "0", "forfeited": "0"},
    ]
    w = walk(statement_html(st))
    assert len(w.svgs) == 2
    assert [t for t in w.bar_titles if "EUR" in t] == [
        "2026-Q3 paid: 1,000.00 EUR",
        "2027-Q2 deferred (to come): 250.00 EUR",
        "2027-Q2 forfeited: 50.00 EUR",
    ]
    assert "2026-Q1 paid: 1,500,000 JPY" in w.bar_titles
    # a time axis: the empty quarters between 2026-Q3 and 2027-Q2 are drawn (as empty groups)
    assert statement_html(st).count('data-quarter="2026-Q4"') == 1


def test_bars_are_scaled_to_the_largest_quarter(statements):
    w = walk(statement_html(statements["R1"]))
    heights = {b["class"] + " " + str(i): float(b["height"] or 0) for i, b in enumerate(w.bars)}
    paid = [h for k, h in heights.items() if k.startswith("bar-paid")]
    deferred = [h for k, h in heights.items() if k.startswith("bar-deferred")]
    # 60,000 and 63,750 paid; 15,000 deferred a year: proportional heights
    assert paid[1] / paid[0] == pytest.approx(63750 / 60000, rel=1e-3)
    assert deferred[0] / paid[0] == pytest.approx(15000 / 60000, rel=1e-3)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("123750.00", "123,750.00"),
        ("-25000.00", "-25,000.00"),
        ("0.00", "0.00"),
        ("1500000", "1,500,000"),
        ("1234567.891", "1,234,567.891"),
        ("n/a", "n/a"),
        (None, ""),
    ],
)
def test_format_amount_keeps_exact_decimals(raw, shown):
    assert format_amount(raw) == shown


# ------------------------------------------------------------------------------------------ CSV


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("-25000.00", "-25000.00"),
        ("-25000", "-25000"),
        ("25000.00", "25000.00"),
        ("-cmd", "'-cmd"),
        ("-1+1", "'-1+1"),
        ("-1e5", "'-1e5"),
        ("@x", "'@x"),
        ("+x", "'+x"),
        ("+1", "'+1"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain = text", "plain = text"),
        ("", ""),
        (None, ""),
    ],
)
def test_safe_cell(cell, safe):
    assert safe_cell(cell) == safe


def test_csv_has_one_row_per_obligation_tranche_to_come_and_manual_adjustment(statements):
    for rep, st in statements.items():
        rows = list(csv.reader(io.StringIO(statement_csv(st))))
        assert tuple(rows[0]) == CSV_COLUMNS
        expected = sum(len(c["obligations"]) + len(c["to_come"]) for c in st["contracts"])
        expected += len({x["obligation"] for x in st["manual_adjustments"]})
        assert len(rows) - 1 == expected, rep
        assert all(len(r) == len(CSV_COLUMNS) and r[0] == rep for r in rows[1:])

    rows = list(csv.DictReader(io.StringIO(statement_csv(statements["R1"]))))
    by_ob = {r["obligation"]: r for r in rows}
    assert by_ob["C1/tranche/1"] == {
        "rep_id": "R1",
        "contract_id": "C1",
        "obligation": "C1/tranche/1",
        "kind": "tranche",
        "due": "2027-01-15",
        "status": "earned",
        "reason": "earned",
        "base": "15000.00",
        "earned": "18750.00",
        "paid": "18750.00",
        "estimate": "",
        "currency": "CNY",
    }
    assert (by_ob["C1/tranche/2"]["status"], by_ob["C1/tranche/2"]["estimate"]) == ("to_come", "18750.00")
    assert by_ob["C1/tranche/2"]["due"] == "2028-01-15"


def test_csv_cells_never_start_a_formula(statements):
    rows = list(csv.DictReader(io.StringIO(statement_csv(statements["R3"]))))
    manual = next(r for r in rows if r["obligation"] == "ADJ/adj-1")
    assert manual["reason"] == "'-spiff correction =1+1"
    assert manual["paid"] == "-500.00"  # a negative amount stays a number
    assert manual["kind"] == "manual"
    dead = next(r for r in rows if r["obligation"] == "C3/tranche/2")
    assert (dead["status"], dead["reason"], dead["estimate"]) == ("to_come", "churned", "0.00")
    st = copy.deepcopy(statements["R3"])
    st["rep"]["rep_id"] = "=HYPERLINK(1)"
    st["contracts"][0]["obligations"][0]["reason"] = "@SUM(A1)"
    for r in csv.reader(io.StringIO(statement_csv(st))):
        for cell in r:
            assert safe_cell(cell) == cell or cell.startswith("'"), cell
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell


# ------------------------------------------------------------------------------------------ terminal


def test_rich_tables_label_the_estimate_and_print_text_literally(statements):
    st = copy.deepcopy(statements["R1"])
    st["rep"]["name"] = "[bold]Li[/bold]"
    console = Console(record=True, width=160, color_system=None)
    statement_table(st, console)
    text = console.export_text()
    assert "[bold]Li[/bold]" in text
    assert "Summary" in text and "123,750.00" in text
    assert "Contract C1" in text and "C1/tranche/1" in text and "NRR 1.25" in text
    assert "Still to come - ESTIMATE" in text and "Estimate, not a promise" in text
    assert "Payout cycles" in text


# ------------------------------------------------------------------------------------------ a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail("chromium is not installed but CI is set: install it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); set CI=true to make this a failure")
    return CHROMIUM


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - only on a broken browser
        pytest.fail(f"chromium did not finish within 60 s: {exc}")


def test_headless_chromium_renders_the_statement(statements, tmp_path):
    chromium = _chromium()
    page = tmp_path / "R1.html"
    page.write_text(statement_html(statements["R1"]), encoding="utf-8")
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]

    dom = _run([chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", page.as_uri()])
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="totals"' in dom.stdout
    assert "123,750.00" in dom.stdout  # the paid total, as rendered
    assert "56,250.00" in dom.stdout  # the estimate to come
    assert "<svg" in dom.stdout and 'class="bar-paid"' in dom.stdout
    assert 'id="contract-C1"' in dom.stdout

    shot = tmp_path / "R1.png"
    png = _run([chromium, *CHROMIUM_FLAGS, *profile, "--window-size=390,844", f"--screenshot={shot}", page.as_uri()])
    assert png.returncode == 0, png.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
