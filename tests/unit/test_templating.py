"""Quoting filters: whatever the value, it comes back unchanged and the structure holds."""

import string

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bakery.checks import load_hcl, parse_envfile
from bakery.errors import BakeryError
from bakery.templating import (
    envfile_value,
    hcl_value,
    ini_value,
    make_environment,
    render,
    sql_literal,
    to_yaml_inline,
    to_yaml_nested,
)

HOSTILE = [
    "a'b",
    'a"b',
    "a\nb",
    "k: v",
    "# x",
    "{{ x }}",
    "*x",
    "&x",
    "!x",
    "ünï",
    "${x}",
    "%{x}",
    "\\",
    "- a",
    "[a]",
    "",
    " lead",
    "trail ",
    "\t",
    "\u2028",
    "\x85",
    "\x7f",
    "@x",
    "`x`",
]
# These machines are noisy, and the first HCL parse builds its parser (~0.2 s): a per-example
# deadline would fail on timing, not on behaviour.
no_deadline = settings(deadline=None)
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@pytest.mark.parametrize("value", HOSTILE)
def test_yaml_inline_round_trips_hostile_strings(value):
    document = yaml.safe_load(f"key: {to_yaml_inline(value)}\nnext: 1\n")
    assert document == {"key": value, "next": 1}


@no_deadline
@given(st.lists(st.one_of(text, st.integers(), st.booleans()), max_size=5))
def test_yaml_inline_round_trips_any_list(value):
    assert yaml.safe_load(f"key: {to_yaml_inline(value)}\nnext: 1\n") == {"key": value, "next": 1}


@no_deadline
@given(st.dictionaries(text, st.one_of(text, st.integers(), st.booleans()), max_size=5))
# Found by Hypothesis: a kept trailing break ("|+" ends the document with "..."), and a
# line of a literal block holding only a no-break space (left unindented).
@example({"": "\n"})
@example({"": "\n\xa0"})
def test_yaml_nested_round_trips_any_mapping(value):
    document = yaml.safe_load(f"top:\n  key:{to_yaml_nested(value, 4)}\n  next: 1\n")
    assert document == {"top": {"key": value, "next": 1}}


@no_deadline
@given(text)
def test_hcl_round_trips_any_string(value):
    try:
        literal = hcl_value(value)
    except BakeryError:
        control = any(ord(c) < 0x20 and c not in "\n\t\r" for c in value)
        assert control or "${" in value or "%{" in value
        return
    parsed = load_hcl(f'key = {literal}\nother = "x"\n')
    assert parsed == {"key": value, "other": "x"}


@no_deadline
@given(text)
def test_envfile_round_trips_or_refuses(value):
    try:
        quoted = envfile_value(value)
    except BakeryError:
        assert any(ord(c) < 0x20 or c == "\x7f" for c in value)
        return
    assert parse_envfile(f'A={quoted}\nB="x"\n') == {"A": value, "B": "x"}


@pytest.mark.parametrize("value", ["a\nb", "a\rb", " x", "x "])
def test_ini_refuses_what_it_cannot_carry(value):
    with pytest.raises(BakeryError):
        ini_value(value)


def test_sql_literal_doubles_quotes():
    assert sql_literal("it's") == "'it''s'"


def test_undefined_template_values_are_errors(tmp_path):
    (tmp_path / "x.j2").write_text("{{ missing }}")
    env = make_environment(tmp_path)
    with pytest.raises(BakeryError, match="template x.j2: 'missing' is undefined"):
        render(env, "x.j2")


def test_overrides_come_first(tmp_path):
    (tmp_path / "nebula.yml.j2").write_text("overridden {{ 1 + 1 }}")
    assert render(make_environment(tmp_path), "nebula.yml.j2") == "overridden 2"


def test_printable_ascii_is_left_readable():
    assert to_yaml_inline(string.ascii_letters) == f'"{string.ascii_letters}"'
