"""The service-cost lines read without the JSON decoder and pydantic (``core.reading._cost_line``) must be
exactly what the general way makes of them: the same event, the same fields given, or the general way."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from incentive_engine.core import reading
from incentive_engine.core.reading import _LINE_DECODER, _cost_line, read_events, to_event

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


def test_the_usual_lines_take_the_fast_way_and_get_the_general_ways_event(monkeypatch) -> None:
    with_id = TYPICAL.replace('"contract_id"', '"event_id": "crm-cost-\u00e9-7", "contract_id"')
    compact = TYPICAL.replace(": ", ":").replace(", ", ",")
    for line in (TYPICAL, with_id, compact, TYPICAL.replace("1261.84", "0"), TYPICAL.replace("1261.84", "007.50")):
        fast = _cost_line(line)
        assert fast is not None, line
        _same(fast, _general(line))
    (read,), problems = read_events("f.jsonl", (with_id + "\n").encode())
    assert problems == [] and read[0] == 1 and read[1].event_id == "crm-cost-\u00e9-7"
    taken: list[str] = []
    monkeypatch.setattr(reading, "_cost_line", lambda line: taken.append(line) or _cost_line(line))
    read_events("f.jsonl", "\n".join([TYPICAL, compact, '{"type": "rep.hired"}']).encode())
    assert taken == [TYPICAL, compact]  # both separators' lines take it, no other type's


def test_other_shapes_go_the_general_way() -> None:
    for line in (
        TYPICAL.replace('"amount": "1261.84"', '"amount": 1261.84'),  # a JSON number
        TYPICAL.replace('"amount": "1261.84"', '"amount": "-1"'),  # refused by the model: reported there
        TYPICAL.replace("2030-11-01", "2030-02-30"),  # not a calendar date
        TYPICAL.replace("CT-003550", "CT-0035\\u0030"),  # an escape
        TYPICAL.replace('"contract_id"', '"event_id": "", "contract_id"'),  # an empty id means none
        TYPICAL + " ",
        TYPICAL.replace("}", ', "amount": "1"}'),  # a key twice: the general way refuses it
    ):
        assert _cost_line(line) is None, line
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
def test_a_line_the_fast_way_reads_is_read_alike_the_general_way(day, event_id, contract_id, amount, colon, comma):
    def s(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    fields = [("type", s("service.cost")), ("effective", s(day))]
    if event_id is not None:
        fields.append(("event_id", s(event_id)))
    fields += [("contract_id", s(contract_id)), ("amount", s(amount))]
    line = "{" + comma.join(f'"{k}"{colon}{v}' for k, v in fields) + "}"
    fast = _cost_line(line)
    if fast is not None:
        _same(fast, _general(line))
        assert isinstance(fast.amount, Decimal)
    elif reading._COST_LINE.fullmatch(line):  # the shape, but refused by a check: the general way refuses it too
        assert _general(line) is None
