"""The CLI's JSON printer: the same text as ``json.dumps(indent=2, ensure_ascii=False)``, faster."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from incentive_engine.shell.render import pretty_json

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
