"""Command-line values: tuples as plain lists, JSON lists or quoted strings; dicts as JSON
objects."""

from typing import Literal

import pytest

from opd_jax.config import ConfigOverrideError, parse_value


@pytest.mark.parametrize("text,tp,want", [
    ("0.3,0.7", tuple[float, ...], (0.3, 0.7)),
    ("[0.3, 0.7]", tuple[float, ...], (0.3, 0.7)),
    ("(1, 2)", tuple[int, ...], (1, 2)),
    ("[]", tuple[int, ...], ()),
    ('["math", "code"]', tuple[str, ...], ("math", "code")),
    ("math,code", tuple[str, ...], ("math", "code")),
    ("'math','code'", tuple[str, ...], ("math", "code")),
    ('["a,b", "c"]', tuple[str, ...], ("a,b", "c")),
    ("route", Literal["route", "mix"], "route"),
    ('{"enable_thinking": false, "n": 2}', dict[str, bool | int],
     {"enable_thinking": False, "n": 2}),
    ("{}", dict[str, int], {}),
])
def test_parse_value(text, tp, want):
    assert parse_value(text, tp, "f") == want


@pytest.mark.parametrize("text,tp", [
    ('[1, "x"]', tuple[int, ...]),
    ("blend", Literal["route", "mix"]),
    ("1.5", int),
    ("[1]", dict[str, int]),
    ("enable_thinking=false", dict[str, bool]),
])
def test_parse_value_errors_name_the_field(text, tp):
    with pytest.raises(ConfigOverrideError, match="teacher.f"):
        parse_value(text, tp, "teacher.f")
