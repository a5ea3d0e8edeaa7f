"""The service-cost lines read without the JSON decoder and pydantic (``core.reading._cost_line``, and its C
twin ``core._lines.cost_line``) must be exactly what the general way makes of them: the same event, the
same fields given, and the canonical payload ``events.payload_json`` writes, or the general way."""

from __future__ import annotations

import json
import os
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from incentive_engine.core import reading
from incentive_engine.core.events import payload_json
from incentive_engine.core.reading import _LINE_DECODER, _cost_line, read_event_batches, read_events, to_event

TYPICAL = '{"type": "service.cost", "effective": "2030-11-01", "contract_id": "CT-003550", "amount": "1261.84"}'


def _general(line: str):
    """The general way: the strict JSON decoder, then the model's validation (None if either refuses)."""
    try:
        record = _LINE_DECODER.decode(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    event, problems = to_event("f.jsonl", 1, record)
    return None if problems else event


def _same(fast, general) -> None:
    assert general is not None, "the fast way accepted a line the general way refuses"
    assert type(fast) is type(general) and fast == general
    assert fast.__pydantic_fields_set__ == general.__pydantic_fields_set__
    # repr, not ==: Decimal("1.50") == Decimal("1.5"), but the ledger stores the digits as written
    assert repr(fast.__dict__) == repr(general.__dict__)
    assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (general.__pydantic_extra__, None)
    assert fast.model_dump() == general.model_dump()


def _same_cost(read, line: str) -> None:
    """``read`` (a cost-line reader's answer) is the general way's event, with its canonical payload or None."""
    assert read is not None, line
    fast, payload = read
    _same(fast, _general(line))
    assert payload is None or payload == payload_json(fast)


# the Python reader, and the C one where it is built (CI builds it: it must not be skipped there)
_NATIVE = pytest.param(
    reading._lines.cost_line if reading._lines is not None else None,
    marks=pytest.mark.skipif(
        reading._lines is None and not os.environ.get("CI"), reason="the C reader is not built here"
    ),
    id="C",
)
READERS = [pytest.param(_cost_line, id="python"), _NATIVE]


@pytest.mark.parametrize("read_cost", READERS)
def test_the_usual_lines_take_the_fast_way_and_get_the_general_ways_event(monkeypatch, read_cost) -> None:
    with_id = TYPICAL.replace('"contract_id"', '"event_id": "crm-cost-\u00e9-7", "contract_id"')
    compact = TYPICAL.replace(": ", ":").replace(", ", ",")
    for line in (TYPICAL, with_id, compact, TYPICAL.replace("1261.84", "0"), TYPICAL.replace("1261.84", "007.50")):
        _same_cost(read_cost(line), line)
    assert read_cost(TYPICAL)[1] == '{"amount":"1261.84","contract_id":"CT-003550"}'
    assert read_cost(TYPICAL.replace("1261.84", "007.50"))[1] is None  # not as written: payload_json writes 7.50
    assert read_cost(TYPICAL.replace("1261.84", "0.50"))[1] == '{"amount":"0.50","contract_id":"CT-003550"}'
    monkeypatch.setattr(reading, "_cost_reader", lambda: read_cost)
    (read,), problems = read_events("f.jsonl", (with_id + "\n").encode())
    assert problems == [] and read[0] == 1 and read[1].event_id == "crm-cost-\u00e9-7"
    taken: list[str] = []
    monkeypatch.setattr(reading, "_cost_reader", lambda: lambda line: taken.append(line) or read_cost(line))
    file = "\n".join([TYPICAL, compact, USUAL["contract.renewed"]]).encode()
    (((first, second, renewal), problems),) = read_event_batches("f.jsonl", file)
    assert taken == [TYPICAL, compact]  # both separators' lines take it, no other type's
    assert problems == [] and first[2] == second[2] == payload_json(first[1])  # the reader's payload, handed on
    assert renewal[2] is None  # written later, by payload_json


def test_the_c_reader_is_the_one_files_are_read_with_unless_turned_off(monkeypatch) -> None:
    if reading._lines is None:
        pytest.skip("the C reader is not built here")
    assert reading._cost_reader() is reading._lines.cost_line
    monkeypatch.setenv("INCENTIVE_NATIVE", "0")
    assert reading._cost_reader() is _cost_line


@pytest.mark.parametrize("read_cost", READERS)
def test_other_shapes_go_the_general_way(read_cost) -> None:
    for line in (
        TYPICAL.replace('"amount": "1261.84"', '"amount": 1261.84'),  # a JSON number
        TYPICAL.replace('"amount": "1261.84"', '"amount": "-1"'),  # refused by the model: reported there
        TYPICAL.replace("2030-11-01", "2030-02-30"),  # not a calendar date
        TYPICAL.replace("CT-003550", "CT-0035\\u0030"),  # an escape
        TYPICAL.replace('"contract_id"', '"event_id": "", "contract_id"'),  # an empty id means none
        TYPICAL + " ",
        TYPICAL.replace("}", ', "amount": "1"}'),  # a key twice: the general way refuses it
        TYPICAL.replace('"1261.84"', '"1234567890123456"'),  # more digits than the pattern allows
        TYPICAL.replace('"1261.84"', '"1."'),  # no digits after the point
        TYPICAL.replace('"contract_id"', '"event_id": "' + "e" * 129 + '", "contract_id"'),  # too long an id
        TYPICAL.replace("CT-003550", "C" * 65),  # too long a contract id
        TYPICAL.replace("CT-003550", "-CT"),  # a contract id starts with a letter or digit
        TYPICAL.replace('"type": ', '"type":  '),  # two spaces
        TYPICAL[:-1],  # cut short
    ):
        assert read_cost(line) is None, line
    events, problems = read_events("f.jsonl", TYPICAL.replace('"1261.84"', '"-1"').encode())
    assert events == [] and [(p.line, p.field) for p in problems] == [(1, "amount")]


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=140)
_digits = st.text(st.sampled_from("0123456789.-e٣ "), min_size=0, max_size=40)
_day = st.one_of(st.dates().map(str), st.text(st.sampled_from("0123456789-"), max_size=12))
_id = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,70}", fullmatch=True), _text)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    day=_day,
    event_id=st.none() | _text,
    contract_id=_id,
    amount=st.one_of(_digits, st.decimals(allow_nan=False, allow_infinity=False).map(str)),
    colon=st.sampled_from([": ", ":"]),
    comma=st.sampled_from([", ", ","]),
)
@example(day="2030-11-01", event_id="x\x7f", contract_id="C1", amount="1", colon=": ", comma=", ")
@example(day="0000-01-01", event_id=None, contract_id="C1", amount="1", colon=": ", comma=", ")
@example(day="2030-11-01", event_id=None, contract_id="C1", amount="1234567890123456", colon=": ", comma=", ")
@example(day="2030-11-01", event_id="\u00e9\U0001f600", contract_id="C1", amount="00.10", colon=":", comma=",")
def test_a_line_the_fast_way_reads_is_read_alike_the_general_way(day, event_id, contract_id, amount, colon, comma):
    """Both readers, on the same line: the same answer (an event and payload, or None), the general way's."""

    def s(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    fields = [("type", s("service.cost")), ("effective", s(day))]
    if event_id is not None:
        fields.append(("event_id", s(event_id)))
    fields += [("contract_id", s(contract_id)), ("amount", s(amount))]
    line = "{" + comma.join(f'"{k}"{colon}{v}' for k, v in fields) + "}"
    read = _cost_line(line)
    if reading._lines is not None:
        native = reading._lines.cost_line(line)
        assert (native is None) == (read is None), line
        if native is not None:
            _same_cost(native, line)
            assert native[1] == read[1]
    if read is not None:
        _same_cost(read, line)
        assert isinstance(read[0].amount, Decimal)
    elif reading._COST_LINE.fullmatch(line):  # the shape, but refused by a check: the general way refuses it too
        assert _general(line) is None


# --- the other usual lines (``core.reading._FlatShape``) ------------------------------------------------

USUAL = {
    "contract.renewed": '{"type": "contract.renewed", "effective": "2030-07-01", "event_id": "crm-ren-059903-3", '
    '"contract_id": "CT-059903", "acv": "2494443.00", "term_months": 12}',
    "contract.signed": '{"type": "contract.signed", "effective": "2030-12-01", "event_id": "crm-opp-196637", '
    '"contract_id": "CT-196637", "account_id": "AC-157008", "rep_id": "REP-3207", "acv": "1588897.67", '
    '"currency": "CNY", "term_months": 36, "gross_margin": "0.54"}',
    "kpi.measured": '{"type": "kpi.measured", "effective": "2030-12-31", "rep_id": "REP-0001", "year": 2030, '
    '"kpi": "csat", "value": "4.2"}',
    "contract.expanded": '{"type": "contract.expanded", "effective": "2030-12-01", "event_id": "crm-exp-013550-1", '
    '"contract_id": "CT-013550", "acv_delta": "-54700.00"}',
    "contract.churned": '{"type": "contract.churned", "effective": "2030-12-01", "event_id": "crm-chn-013365", '
    '"contract_id": "CT-013365", "reason": "project cancelled"}',
}


def test_every_flat_shape_reads_its_usual_line_as_the_general_way(monkeypatch) -> None:
    assert set(reading._FLAT_SHAPES) == set(USUAL)
    for type_, line in USUAL.items():
        fast = reading._FLAT_SHAPES[type_].read(line)
        assert fast is not None, type_
        _same(fast, _general(line))
    file = "\n".join([*USUAL.values(), TYPICAL, '{"type": "rep.hired", "effective": "2030-01-01"}']).encode()
    taken: list[str] = []
    for shape in reading._FLAT_SHAPES.values():
        monkeypatch.setattr(shape, "read", lambda line, read=shape.read: taken.append(line) or read(line))
    fast_events, fast_problems = read_events("f.jsonl", file)
    assert taken == list(USUAL.values())  # each usual line once, no cost line, no other type's
    monkeypatch.setattr(reading, "_FLAT_SHAPES", {})
    assert (fast_events, fast_problems) == read_events("f.jsonl", file)  # the same events and problems
    assert {p.line for p in fast_problems} == {7}  # the rep.hired line, refused the general way


def test_flat_lines_of_other_shapes_or_refused_go_the_general_way() -> None:
    renewed, signed, kpi = USUAL["contract.renewed"], USUAL["contract.signed"], USUAL["kpi.measured"]
    for type_, line in (
        ("contract.renewed", renewed.replace('"2494443.00"', "2494443.00")),  # a JSON number
        ("contract.renewed", renewed.replace('"2494443.00"', '"0.00"')),  # not greater than zero
        ("contract.renewed", renewed.replace(": 12}", ": 121}")),  # out of range
        ("contract.renewed", renewed.replace(": 12}", ": 012}")),  # not JSON
        ("contract.renewed", renewed.replace(": 12}", ': "12"}')),  # a string where a number is written
        ("contract.signed", signed.replace('"CNY"', '"XXX"')),  # not a currency
        ("contract.signed", signed.replace('"CNY"', '"JPY"')),  # more digits than the currency has
        ("contract.signed", signed.replace('"0.54"', '"1.01"')),  # out of range
        ("kpi.measured", kpi.replace('"4.2"', '"5.5"')),  # a CSAT above 5
        ("kpi.measured", kpi.replace('"csat"', '"CSAT"')),  # not a KPI name
        ("contract.expanded", USUAL["contract.expanded"].replace("-54700.00", "-0")),  # zero
        ("contract.churned", USUAL["contract.churned"].replace("project cancelled", "")),  # empty
        ("contract.churned", USUAL["contract.churned"].replace("project", "pro\\u006aect")),  # an escape
        ("contract.churned", USUAL["contract.churned"].replace("}", ', "extra": 1}')),  # an unknown key
    ):
        assert reading._FLAT_SHAPES[type_].read(line) is None, line


_decimal_text = st.one_of(
    _digits, st.decimals(allow_nan=False, allow_infinity=False).map(str), st.sampled_from(["0", "-0", "1.0", "1e3"])
)
_plain_decimal = (
    st.integers(0, 4)
    .flatmap(lambda places: st.decimals(min_value=-(10**7), max_value=10**7, places=places, allow_nan=False))
    .map(str)
)
# each kind's values of the usual shape (in range or just outside it), and values of any shape
_usual_by_kind = {
    "id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
    "positive": _plain_decimal.map(lambda d: d.lstrip("-")),
    "decimal": _plain_decimal,
    "int": st.integers(1, 120) | st.integers(1900, 2200) | st.sampled_from([0, -0, 121, 1899, 2201]),
    "currency": st.sampled_from(["USD", "JPY", "KWD", "CNY", "XXX"]),
    "kpi": st.sampled_from(["csat", "nps", "revenue_attainment", "x" * 65]),
    "text": st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters='"\\'), min_size=1
    ),
}
_any_value = st.one_of(_id, _decimal_text, st.integers(-3, 3), _text, st.none(), st.booleans())
_usual_day = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)).map(str)


@st.composite
def _flat_line(draw: st.DrawFn) -> tuple[str, str]:
    """A line of one of the flat types: its fields in the usual order, each value of its kind (valid or
    not) or now and then of another JSON type; optional fields and the event id present or not."""
    type_ = draw(st.sampled_from(sorted(reading._FLAT_SHAPES)))
    colon, comma = draw(st.sampled_from([": ", ":"])), draw(st.sampled_from([", ", ","]))
    fields: list[tuple[str, object]] = [
        ("type", type_),
        ("effective", draw(_day if draw(st.integers(0, 15)) == 0 else _usual_day)),
    ]
    if draw(st.booleans()):
        fields.append(("event_id", draw(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True) | _text)))
    for name, kind, optional in reading._FLAT_SHAPES[type_].fields:
        if optional and draw(st.booleans()):
            continue
        fields.append((name, draw(_any_value if draw(st.integers(0, 15)) == 0 else _usual_by_kind[kind])))
    line = "{" + comma.join(f"{json.dumps(k)}{colon}{json.dumps(v, ensure_ascii=False)}" for k, v in fields) + "}"
    return type_, line


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_flat_line())
@example(("kpi.measured", '{"type": "kpi.measured", "effective": "2030-12-31", "rep_id": "R1", "year": 2030, '
          '"kpi": "nps", "value": "-100"}'))  # fmt: skip
@example(("contract.signed", USUAL["contract.signed"].replace(', "gross_margin": "0.54"', "")))
def test_a_flat_line_the_fast_way_reads_is_read_alike_the_general_way(case: tuple[str, str]) -> None:
    type_, line = case
    shape = reading._FLAT_SHAPES[type_]
    fast = shape.read(line)
    if fast is not None:
        _same(fast, _general(line))
    elif shape.match(line):  # the shape, but refused by a check: the general way refuses it too
        assert _general(line) is None, line
