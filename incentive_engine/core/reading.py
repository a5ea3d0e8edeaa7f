"""Reading event files (JSON Lines and CSV) into validated events, with every problem as a value.

Pure: text in, (events with their line numbers, problems) out. Numbers are read as Decimal straight
from the text (never through float); NaN/Infinity, duplicate keys, a BOM, CRLF line ends and blank
lines are handled explicitly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from ..errors import Problem
from .events import (
    _MONEY_FIELDS,
    ENGINE_TYPES,
    EVENT_CLASSES,
    FACT_TYPES,
    KPI_RANGES,
    ContractChurned,
    ContractExpanded,
    ContractRenewed,
    ContractSigned,
    Event,
    KpiMeasured,
    ServiceCost,
    _currency,
)
from .money import MoneyError, check_amount

MAX_LINE_CHARS = 100_000

# each fact type's model validator, picked by the line's "type": the same model and errors as the tagged
# union (``events.FACT_ADAPTER``), without the TypeAdapter's Python layer (6% of the validation of an M
# month's lines)
_VALIDATORS = {t: EVENT_CLASSES[t].__pydantic_validator__.validate_python for t in FACT_TYPES}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; fewer keys than pairs means a key was repeated
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return out


def _big_int(text: str) -> Any:
    if len(text.lstrip("-")) > 18:
        raise ValueError(f"number too large: {text[:30]}")
    return int(text)


def _decimal(text: str) -> Decimal:
    if len(text) > 40:
        raise ValueError(f"number too long: {text[:30]}...")
    return Decimal(text)


# one decoder for every line: json.loads with options builds a new JSONDecoder per call
_LINE_DECODER = json.JSONDecoder(
    parse_float=_decimal, parse_int=_big_int, parse_constant=_no_constants, object_pairs_hook=_no_duplicates
)


# A service cost as a CRM export writes it (most lines of a month's file): these keys in this order, strings
# without escapes, the amount a plain decimal string of ASCII digits. Such a line means one thing as JSON,
# and every check the model makes of it is made here (the shape of the ids and the amount, a calendar
# date), so it is read without the JSON decoder and pydantic: 1.7 instead of 5.1 us a line. A line of any
# other shape, or one that fails a check, goes the general way, which reports its problems; a test checks
# that both ways give the same event.
_COST_LINE = re.compile(
    r'\{"type": ?"service\.cost", ?"effective": ?"([0-9]{4}-[0-9]{2}-[0-9]{2})", ?'
    r'(?:"event_id": ?"([^"\\\x00-\x1f\x7f]{1,128})", ?)?'
    r'"contract_id": ?"([A-Za-z0-9][A-Za-z0-9._:@-]{0,63})", ?"amount": ?"([0-9]{1,15}(?:\.[0-9]{1,20})?)"\}'
)
_DAYS: dict[str, date] = {}
_new, _set = object.__new__, object.__setattr__


def _day(text: str) -> date | None:
    """The calendar date of a YYYY-MM-DD of ASCII digits (kept for the next line), or None if there is none."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    if len(_DAYS) < 100_000:
        _DAYS[text] = day
    return day


def _cost_line(line: str) -> tuple[ServiceCost, str | None] | None:
    """The service cost a line of ``_COST_LINE``'s shape is, with its canonical payload (None when the amount
    is not written canonically), or None (the line goes the general way)."""
    m = _COST_LINE.fullmatch(line)
    if m is None:
        return None
    effective, event_id, contract_id, amount = m.groups()
    day = _DAYS.get(effective) or _day(effective)
    if day is None:
        return None
    # what ``ServiceCost.model_construct`` builds (pydantic 2: the fields, the set of those given, no
    # extra, no private attributes), without its walk over the model's fields
    event = _new(ServiceCost)
    _set(event, "__dict__", {
        "type": "service.cost", "effective": day, "event_id": event_id, "contract_id": contract_id,
        "amount": Decimal(amount),
    })  # fmt: skip
    _set(event, "__pydantic_fields_set__", _GIVEN_WITH_ID.copy() if event_id else _GIVEN.copy())
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    # ``events.payload_json`` of it: the keys sorted, the id needs no escaping (its pattern), and the amount
    # reads back as written (``f"{amount:f}"``) unless it has a leading zero before a digit ("007.50")
    if len(amount) > 1 and amount[0] == "0" and amount[1] != ".":
        return event, None
    return event, f'{{"amount":"{amount}","contract_id":"{contract_id}"}}'


_GIVEN = {"type", "effective", "contract_id", "amount"}
_GIVEN_WITH_ID = {*_GIVEN, "event_id"}

# the same reader in C where it is built (``_lines.cost_line``: same rules, same event and payload; the
# November M file's 34,581 costs, 0.8-0.9 us a line against 1.7-1.9 us, and 1.0 us of ``payload_json``
# saved by both); optional, like the ledger's C parts, and off with ``INCENTIVE_NATIVE=0``
try:
    from . import _lines
except ImportError:  # pragma: no cover - the C part did not build here
    _lines = None  # type: ignore[assignment]
else:
    _lines.setup(ServiceCost, Decimal, _day, _DAYS, frozenset(_GIVEN), frozenset(_GIVEN_WITH_ID))


def _cost_reader() -> Callable[[str], tuple[ServiceCost, str | None] | None]:
    """The service-cost reader of a file: the C one unless it is not built or ``INCENTIVE_NATIVE=0``."""
    if _lines is not None and os.environ.get("INCENTIVE_NATIVE") != "0":
        return _lines.cost_line  # type: ignore[no-any-return]
    return _cost_line


# The other common lines a CRM export writes (a third of a month's file: renewals, signings, KPI
# measurements, expansions, churns) likewise: each type's usual shape, its keys in this order, strings
# without escapes, decimals as plain strings of ASCII digits, whole numbers as JSON integers. A line of that
# shape is one thing as JSON, and every check its model makes is made here (``_FlatShape.read``), so it is
# read without the JSON decoder and pydantic (a renewal: 3.4 instead of 6.9 us). A line of any other shape,
# or one a check refuses, goes the general way, which reports its problems; a test checks both ways give
# the same event for any values.
_VALUE = {
    "id": r'"([A-Za-z0-9][A-Za-z0-9._:@-]{0,63})"',
    "positive": r'"([0-9]{1,15}(?:\.[0-9]{1,20})?)"',
    "decimal": r'"(-?[0-9]{1,15}(?:\.[0-9]{1,20})?)"',
    "int": r"(-?(?:0|[1-9][0-9]{0,8}))",
    "currency": r'"([A-Z]{3})"',
    "kpi": r'"([a-z][a-z0-9_]{0,63})"',
    "text": r'"([^"\\\x00-\x1f]{1,2000})"',
}


# what each kind of value becomes (None: the text itself)
_CONVERT: dict[str, Callable[[str], Any] | None] = {
    "id": None, "positive": Decimal, "decimal": Decimal, "int": int, "currency": _currency, "kpi": None,
    "text": None,
}  # fmt: skip


class _FlatShape:
    """One fact type's usual line: ``fields`` (name, kind of value, optional) after type, effective and
    the optional event_id, in this order; ``ranges`` the bounds (inclusive) of numeric fields; ``nonzero``
    the fields that must not be zero (with the "positive" kind: greater than zero)."""

    def __init__(
        self,
        cls: type[Event],
        fields: tuple[tuple[str, str, bool], ...],
        ranges: dict[str, tuple[Any, Any]],
        nonzero: tuple[str, ...] = (),
    ) -> None:
        type_ = cls.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        parts = [
            r'\{"type": ?"' + re.escape(type_) + r'", ?"effective": ?"([0-9]{4}-[0-9]{2}-[0-9]{2})"',
            r'(?:, ?"event_id": ?"([^"\\\x00-\x1f\x7f]{1,128})")?',
        ]
        for name, kind, optional in fields:
            part = ', ?"' + name + '": ?' + _VALUE[kind]
            parts.append(f"(?:{part})?" if optional else part)
        self.match = re.compile("".join(parts) + r"\}").fullmatch
        self.cls, self.type, self.fields = cls, type_, fields
        self.steps = tuple(
            (name, _CONVERT[kind], ranges.get(name), name in nonzero) for name, kind, _ in fields
        )  # fmt: skip
        self.money = _MONEY_FIELDS.get(type_, ())
        self.kpi = cls is KpiMeasured
        # the instance dict in pydantic's order: its fields, each None until given
        self.blank = dict.fromkeys(cls.model_fields)
        self.blank["type"] = type_

    def read(self, line: str) -> Event | None:
        m = self.match(line)
        if m is None:
            return None
        effective, event_id, *texts = m.groups()
        day = _DAYS.get(effective) or _day(effective)
        if day is None:
            return None
        values = self.blank.copy()
        values["effective"] = day
        given = {"type", "effective"}
        if event_id is not None:
            values["event_id"] = event_id
            given.add("event_id")
        for (name, convert, bounds, nonzero), text in zip(self.steps, texts):  # noqa: B905 - as many by the pattern
            if text is None:
                continue
            given.add(name)
            if convert is None:
                values[name] = text
                continue
            try:
                value = convert(text)
            except ValueError:
                return None
            if (bounds is not None and not bounds[0] <= value <= bounds[1]) or (nonzero and value == 0):
                return None
            values[name] = value
        if (self.money or self.kpi) and not self._model_checks(values):
            return None
        event = _new(self.cls)
        _set(event, "__dict__", values)
        _set(event, "__pydantic_fields_set__", given)
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", None)
        return event

    def _model_checks(self, values: dict[str, Any]) -> bool:
        """The models' own validators: money in its currency's digits (``Event._money_digits``), a KPI
        in its range (``KpiMeasured._range``)."""
        currency = values.get("currency")
        for name in self.money if currency is not None else ():
            try:
                check_amount(values[name], currency)
            except MoneyError:
                return False
        if self.kpi:
            bounds = KPI_RANGES.get(values["kpi"])
            if bounds is not None and not bounds[0] <= values["value"] <= bounds[1]:
                return False
        return True


_TERM = (1, 120)
_FLAT_SHAPES = {
    shape.type: shape
    for shape in (
        _FlatShape(
            ContractRenewed, (("contract_id", "id", False), ("acv", "positive", False), ("term_months", "int", False)),
            {"term_months": _TERM}, nonzero=("acv",),
        ),
        _FlatShape(
            ContractSigned,
            (
                ("contract_id", "id", False), ("account_id", "id", False), ("rep_id", "id", False),
                ("acv", "positive", False), ("currency", "currency", False), ("term_months", "int", False),
                ("gross_margin", "positive", True),
            ),
            {"term_months": _TERM, "gross_margin": (0, 1)}, nonzero=("acv",),
        ),
        _FlatShape(
            KpiMeasured,
            (("rep_id", "id", False), ("year", "int", False), ("kpi", "kpi", False), ("value", "decimal", False)),
            {"year": (1900, 2200)},
        ),
        _FlatShape(
            ContractExpanded,
            (("contract_id", "id", False), ("acv_delta", "decimal", False)),
            {},
            nonzero=("acv_delta",),
        ),
        _FlatShape(ContractChurned, (("contract_id", "id", False), ("reason", "text", True)), {}),
    )
}  # fmt: skip
_TYPE_AT_START = re.compile(r'\{"type": ?"([a-z.]{1,24})"')


def _jsonl_rows(
    source: str, text: str
) -> Iterator[tuple[int, dict[str, Any] | Event | None, str | None, Problem | None]]:
    """Each line's number and its JSON object (or, for a line of a usual shape, its event already, and for
    a service cost its canonical payload too), or its problem."""
    read_cost = _cost_reader()
    # split at newlines only: str.splitlines() would also split at U+2028, form feeds, ... inside valid JSON
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if '"service.cost"' in line[:24] and (cost := read_cost(line)) is not None:
            yield number, cost[0], cost[1], None
            continue
        head = _TYPE_AT_START.match(line)
        shape = _FLAT_SHAPES.get(head[1]) if head is not None else None
        if shape is not None and (flat := shape.read(line)) is not None:
            yield number, flat, None, None
            continue
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            problem = Problem(source, number, "(line)", f"line longer than {MAX_LINE_CHARS} characters")
            yield number, None, None, problem
            continue
        try:
            value = _LINE_DECODER.decode(line)
        except (ValueError, RecursionError) as exc:
            yield number, None, None, Problem(source, number, "(json)", f"malformed JSON: {exc}")
            continue
        if not isinstance(value, dict):
            yield number, None, None, Problem(source, number, "(json)", "each line must be a JSON object")
            continue
        yield number, value, None, None


def _csv_rows(source: str, text: str) -> Iterator[tuple[int, dict[str, Any] | None, None, Problem | None]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, None, None, Problem(source, 1, "(csv)", f"malformed CSV header: {exc}")
        return
    header = [h.strip() for h in header]
    if "type" not in header:
        yield 1, None, None, Problem(source, 1, "(csv)", "the header must name the columns, including 'type'")
        return
    if len(set(header)) != len(header):
        yield 1, None, None, Problem(source, 1, "(csv)", "duplicate column names in the header")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, None, Problem(source, reader.line_num, "(csv)", f"malformed CSV: {exc}")
            return
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, None, None, Problem(source, number, "(csv)", f"{len(row)} cells but {len(header)} columns")
            continue
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if cell.strip() == "":
                continue
            if name == "components":
                try:
                    record[name] = json.loads(cell, parse_float=_decimal, parse_constant=_no_constants)
                except ValueError as exc:
                    yield number, None, None, Problem(source, number, name, f"must be a JSON object: {exc}")
                    break
            else:
                record[name] = cell.strip()
        else:
            yield number, record, None, None


def _printable(name: str) -> str:
    """A field name from the input, safe to print on one line (it can be anything the sender wrote)."""
    return name if name and name.isprintable() and len(name) <= 64 else repr(name[:64])


def _field_problems(source: str, number: int, exc: ValidationError, type_: str) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == type_:
            loc = loc[1:]
        msg = err["msg"].removeprefix("Value error, ")
        field = ".".join(_printable(p) for p in loc)
        if not field and ": " in msg and " " not in msg.split(": ", 1)[0]:
            field, msg = msg.split(": ", 1)
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field for {type_}"
        out.append(Problem(source, number, field or "(event)", msg))
    return out


def to_event(source: str, number: int, record: dict[str, Any]) -> tuple[Event | None, list[Problem]]:
    type_ = record.get("type")
    if not isinstance(type_, str):
        return None, [Problem(source, number, "type", "required field is missing or not a string")]
    if type_ in ENGINE_TYPES:
        return None, [Problem(source, number, "type", f"{type_} is written by the engine and cannot be ingested")]
    if type_ not in FACT_TYPES:
        return None, [Problem(source, number, "type", f"unknown event type {type_[:60]!r}")]
    try:
        return _VALIDATORS[type_](record), []
    except ValidationError as exc:
        return None, _field_problems(source, number, exc, type_)


def read_events(
    source: str, data: bytes, progress: Callable[[int], None] | None = None
) -> tuple[list[tuple[int, Event]], list[Problem]]:
    """Parse and validate a whole file. ``source`` names it in problems; the extension picks the format."""
    events: list[tuple[int, Event]] = []
    problems: list[Problem] = []
    for batch, found in read_event_batches(source, data, progress):
        events += [(number, event) for number, event, _ in batch]
        problems += found
    return events, problems


# lines per batch: small enough that a file's first rows are inserted early, large enough that each
# batch's lookups and INSERT statements are few (an M month's file: 7-10 batches)
BATCH_LINES = 8000


def read_event_batches(
    source: str, data: bytes, progress: Callable[[int], None] | None = None, size: int | None = None
) -> Iterator[tuple[list[tuple[int, Event, str | None]], list[Problem]]]:
    """``read_events`` a batch of about ``size`` lines (``BATCH_LINES``) at a time, so that a caller can
    write one batch while the next is read (``shell.service``): the same events and problems, in the same
    order, split. Each event comes with its line number and, where the reader wrote it as it read the line
    (a service cost of the usual shape), its canonical payload (``events.payload_json``), else None."""
    size = size or BATCH_LINES
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield [], [Problem(source, None, "(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        return
    if "\x00" in text:
        yield [], [Problem(source, None, "(file)", "contains NUL bytes (binary file?)")]
        return
    lower = source.lower()
    if lower.endswith(".jsonl") or lower.endswith(".ndjson"):
        rows = _jsonl_rows(source, text)
    elif lower.endswith(".csv"):
        rows = _csv_rows(source, text)
    else:
        yield [], [Problem(source, None, "(file)", "unknown file type: use .jsonl or .csv")]
        return
    events: list[tuple[int, Event, str | None]] = []
    problems: list[Problem] = []
    count = 0
    any_events = any_problems = False
    for number, record, payload, problem in rows:
        count += 1
        if progress is not None and count % 1000 == 0:
            progress(1000)
        if count % size == 0:
            yield events, problems
            any_events, any_problems = any_events or bool(events), any_problems or bool(problems)
            events, problems = [], []
        if problem is not None:
            problems.append(problem)
            continue
        assert record is not None
        if isinstance(record, Event):  # read whole (``_cost_line``, ``_FlatShape``)
            events.append((number, record, payload))
            continue
        event, found = to_event(source, number, record)
        if found:
            problems.extend(found)
        else:
            assert event is not None
            events.append((number, event, None))
    if not (events or problems or any_events or any_problems):
        problems.append(Problem(source, None, "(file)", "no events in the file"))
    yield events, problems
