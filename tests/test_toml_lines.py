"""The key locator behind `PATH:LINE: key.path: reason` (routingd.daemon.core.toml_lines)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.toml_lines import key_positions, locate, where

TRICKY = '''\
# a comment with = and [brackets]
version = 1
[providers.ses]   # trailing comment
type = "sandbox"
  timeout = "2x"
headers = { Authorization = "a,}", "X-Y" = { z = 1 } }
[ providers . "odd.name" ]
url = """multi
line = [ ] not a key
"""
a.b.c = 3
'lit.eral' = 'x'
[[outages]]
provider = "a"
[[outages]]
kind = 'hang'
[outages.extra]
x = 1
[routes.default]
channels = [
  "email",   # first
  { group = ["sms"], timeout = "1s" },
]
'''

CASES = [
    (("version",), "t.toml:2"),
    (("providers", "ses", "timeout"), "t.toml:5"),                    # indented: still its line
    (("providers", "ses", "headers", "Authorization"), "t.toml:6:13"),  # inside an inline table
    (("providers", "ses", "headers", "X-Y", "z"), "t.toml:6:46"),
    (("providers", "odd.name", "url"), "t.toml:8"),
    (("providers", "odd.name", "a", "b", "c"), "t.toml:11:5"),        # dotted key
    (("providers", "odd.name", "lit.eral"), "t.toml:12"),
    (("outages", 0, "provider"), "t.toml:14"),
    (("outages", 1, "kind"), "t.toml:16"),                            # second [[outages]]
    (("outages", 1, "extra", "x"), "t.toml:18"),                      # a table inside its last element
    (("outages", 1), "t.toml:15"),
    (("routes", "default", "channels", 0), "t.toml:21"),             # array element on its own line
    (("routes", "default", "channels", 1, "timeout"), "t.toml:22:22"),
    (("routes", "default", "method"), "t.toml:19"),                   # missing: at its table's header
    (("providers", "ses", "type", "deeper"), "t.toml:4"),
    (("daemon",), "t.toml"),                                          # not in the file at all
]


def test_the_tricky_file_is_toml() -> None:
    assert tomllib.loads(TRICKY)["providers"]["odd.name"]["a"]["b"]["c"] == 3


@pytest.mark.parametrize("loc, expected", CASES)
def test_keys_are_located_on_tricky_layouts(loc: tuple, expected: str) -> None:
    assert where("t.toml", TRICKY, loc) == expected


def test_toml_syntax_errors_use_tomllib_position_and_no_text_means_no_line() -> None:
    assert where("t.toml", None, (), "not valid TOML: Invalid value (at line 3, column 9)") == "t.toml:3:9"
    assert where("t.toml", None, ("version",)) == "t.toml"
    assert where("t.toml", "x = 1\n", ()) == "t.toml"


def test_text_it_cannot_follow_keeps_what_it_found() -> None:
    assert locate('a = 1\nb = "unterminated\nc = 2\n', ("a",)) == (1, 1)
    assert locate("[t]\nx = = 3\n", ("t", "x")) == (2, 1)
    assert key_positions("") == {}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='ab=[]{}."\' \n#,\\1', max_size=80))
def test_any_text_is_scanned_without_an_exception(text: str) -> None:
    key_positions(text)
    where("f", text, ("a", "b"))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True),
                       st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), st.integers(0, 9),
                                       min_size=1, max_size=3), min_size=1, max_size=4))
def test_every_key_of_a_generated_file_is_found_on_its_line(doc: dict[str, dict[str, int]]) -> None:
    lines: list[str] = []
    expect: dict[tuple, int] = {}
    for table, keys in doc.items():
        lines.append(f"[{table}]")
        for k, v in keys.items():
            lines.append(f"{k} = {v}")
            expect[(table, k)] = len(lines)
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == doc
    for loc, line in expect.items():
        assert locate(text, loc) == (line, 1)
