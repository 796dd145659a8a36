"""routing.toml validation that helps (issue 18 item 5): integers and booleans are TOML's, not
strings; a duration of a bare small integer is flagged as milliseconds; TOML's spelling of
values; an unknown key names the closest valid one and lists them."""

from __future__ import annotations

import pytest

from routingd.daemon.core.policy import PolicyError, parse_policy

BASE = """
[providers.mail]
type = "sandbox"
[channels.email]
providers = ["mail"]
requires = "email"
[routes.default]
channels = ["email"]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "r.toml", env={})
    return e.value.lines()


@pytest.mark.parametrize("line, expected", [
    ('retries = "1"', 'providers.mail.retries: expected an integer, got "1"'),
    ("retries = 1.0", "providers.mail.retries: expected an integer, got 1.0"),
    ("retries = true", "providers.mail.retries: expected an integer, got true"),
    ('breaker = { failures = "3" }', 'providers.mail.breaker.failures: expected an integer, got "3"'),
])
def test_integers_are_toml_integers(line: str, expected: str) -> None:
    lines = errors(BASE.replace('type = "sandbox"', f'type = "sandbox"\n{line}'))
    assert len(lines) == 1 and lines[0].endswith(expected), lines


def test_booleans_are_toml_booleans_and_errors_spell_values_as_toml() -> None:
    lines = errors(BASE + '[daemon]\nwatch = "yes"\nmax_body = true\n')
    assert any(line.endswith('daemon.watch: expected true or false, got "yes"') for line in lines), lines
    assert any(line.endswith("daemon.max_body: expected an integer, got true") for line in lines), lines
    lines = errors(BASE.replace('type = "sandbox"', 'type = "sandbox"\nbreaker = "on"'))
    assert not any("True" in line or "False" in line for line in lines), lines


def test_a_validator_saying_got_true_says_it_as_toml() -> None:
    lines = errors(BASE.replace('type = "sandbox"', 'type = "sandbox"\ntimeout = true'))
    assert len(lines) == 1 and lines[0].endswith("got true"), lines


@pytest.mark.parametrize("text, expected", [
    ("[timeout]\nprovider = \"1s\"\n" + BASE,
     "r.toml:1: timeout: unknown key; did you mean 'timeouts'? valid keys: version, daemon, timeouts, "
     "failover, providers, channels, routes, templates"),
    (BASE.replace('type = "sandbox"', 'type = "sandbox"\nretires = 1'),
     "r.toml:4: providers.mail.retires: unknown key; did you mean 'retries'? valid keys: "),
    (BASE + "[routes.default.timeouts]\nchanel = \"1s\"\n",
     "routes.default.timeouts.chanel: unknown key; did you mean 'channel'? valid keys: provider, channel, message"),
])
def test_an_unknown_key_says_did_you_mean_and_lists_the_valid_keys(text: str, expected: str) -> None:
    lines = errors(text)
    assert any(expected in line for line in lines), lines


def test_a_bare_small_integer_duration_warns_that_it_is_milliseconds() -> None:
    p = parse_policy("[timeouts]\nprovider = 2\nmessage = 60000\n" + BASE.replace(
        'type = "sandbox"', 'type = "sandbox"\nbreaker = { cooldown = 30 }'), "r.toml", env={})
    assert any(w.startswith('timeouts.provider = 2 is 2 ms') and '"2s"' in w for w in p.warnings), p.warnings
    assert any(w.startswith("providers.mail.breaker.cooldown = 30 is 30 ms") for w in p.warnings), p.warnings
    assert not any("message" in w and "ms (a bare" in w for w in p.warnings), p.warnings   # 60000: clearly ms
    p = parse_policy('[timeouts]\nprovider = "2ms"\n' + BASE, "r.toml", env={})
    assert not any("bare integer" in w for w in p.warnings), p.warnings
