"""routing.toml validation: every error names the file, the key path and the reason."""

from __future__ import annotations

import re

from pathlib import Path

import pytest

from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.config_files import load_policy
from routingd.daemon.core.policy import PROVIDER_TYPES, Policy, PolicyError, parse_policy

REPO = Path(__file__).resolve().parent.parent

BASE = """
[providers.ses]
type = "http"
url = "https://email.example.com/send"

[providers.sendgrid]
type = "sandbox"

[channels.email]
providers = ["ses", "sendgrid"]

[routes.default]
channels = ["email"]
"""


def parse(text: str, env: dict[str, str] | None = None) -> Policy:
    return parse_policy(text, "conf/routing.toml", env={} if env is None else env)


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse(text, env)
    lines = e.value.lines()
    assert lines, "a PolicyError must carry at least one problem"
    assert all(re.match(r"conf/routing\.toml(:\d+(:\d+)?)?: ", line) for line in lines), lines
    assert str(e.value) == "\n".join(lines)
    # the line of each key is tested in tests/test_toml_lines.py; here: what the problem is
    return [re.sub(r"^conf/routing\.toml:\d+(:\d+)?: ", "conf/routing.toml: ", line) for line in lines]


def one_error(text: str, env: dict[str, str] | None = None) -> str:
    lines = errors(text, env)
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------- valid files


def test_bundled_routing_toml_is_valid() -> None:
    policy = load_policy(str(REPO / "routing.toml"), env={})
    assert "default" in policy.routes
    assert {"email", "sms", "push"} <= set(policy.channels)
    assert all(p.type == "sandbox" for p in policy.providers.values())
    assert policy.warnings == ()


def test_minimal_file_and_defaults() -> None:
    p = parse(BASE)
    ses = p.providers["ses"]
    assert (ses.retries, ses.confirm, ses.timeout, ses.receipt_timeout) == (0, "response", None, 120_000)
    assert (ses.breaker.failures, ses.breaker.cooldown) == (5, 30_000)
    assert list(p.model.failover.on) == [408, 429, "5xx", "timeout", "network"]
    assert p.channels["email"].method == "single" and p.routes["default"].method == "single"
    assert p.warnings == ()


def test_version_is_a_content_hash() -> None:
    a, b = parse(BASE), parse(BASE)
    assert a.version == b.version and len(a.version) >= 8
    assert parse(BASE + "\n# a comment\n").version != a.version


def test_policy_is_immutable() -> None:
    p = parse(BASE)
    with pytest.raises(Exception):
        p.model.providers["ses"].retries = 3  # type: ignore[misc]
    with pytest.raises(Exception):
        p.version = "x"  # type: ignore[misc]


def test_durations_accept_strings_compound_and_integer_ms() -> None:
    p = parse(BASE + """
[timeouts]
provider = "1m30s"
channel = 45000
message = "72h"
""")
    assert (p.model.timeouts.provider, p.model.timeouts.channel, p.model.timeouts.message) == \
        (90_000, 45_000, 72 * 3_600_000)


def test_nested_routes_requires_retries_confirm() -> None:
    p = parse(BASE.replace('type = "sandbox"', 'type = "sandbox"\nretries = 2\nconfirm = "receipt"\n'
                           'receipt_timeout = "30s"') + """
[channels.sms]
providers = ["sendgrid"]
requires = "phone_number"
method = "all"

[routes.urgent]
method = "all"
channels = ["email", { method = "single", channels = ["sms", { method = "all", channels = ["email"] }] }]
""")
    sg = p.providers["sendgrid"]
    assert (sg.retries, sg.confirm, sg.receipt_timeout) == (2, "receipt", 30_000)
    assert p.channels["sms"].requires == "phone_number" and p.channels["sms"].method == "all"
    nested = p.routes["urgent"].channels[1]
    assert nested.method == "single" and nested.channels[0] == "sms"
    assert nested.channels[1].method == "all" and nested.channels[1].channels == ["email"]


@pytest.mark.parametrize("value, expect", [
    ("false", None),
    ("true", (5, 30_000)),
    ('{ failures = 3, cooldown = "10s" }', (3, 10_000)),
    ("{ failures = 2 }", (2, 30_000)),
])
def test_breaker_forms(value: str, expect: tuple[int, int] | None) -> None:
    p = parse(BASE.replace('type = "sandbox"', f'type = "sandbox"\nbreaker = {value}'))
    br = p.providers["sendgrid"].breaker
    if expect is None:
        assert br is False
        step = resolve_plan(p, "default").items[0].providers[1]
        assert step.breaker_failures is None
    else:
        assert (br.failures, br.cooldown) == expect


def test_failover_on_entries() -> None:
    p = parse(BASE + '[failover]\non = [500, "4xx", "503", "timeout"]\n')
    assert list(p.model.failover.on) == [500, "4xx", 503, "timeout"]
    rule = resolve_plan(p, "default").failover
    assert rule.status_retryable(404) and rule.status_retryable(500) and rule.status_retryable(503)
    assert not rule.status_retryable(502) and rule.timeout and not rule.network


# --------------------------------------------------------------------------- ${VAR}


def test_env_interpolation() -> None:
    text = BASE.replace('url = "https://email.example.com/send"',
                        'url = "https://${HOST}/send"\n'
                        'headers = { Authorization = "Bearer ${SES_TOKEN}", X-Region = "${REGION:-eu-west-1}", '
                        'X-Empty = "${EMPTY:-}" }')
    p = parse(text, {"HOST": "mail.example.com", "SES_TOKEN": "s3cret"})
    ses = p.providers["ses"]
    assert ses.url == "https://mail.example.com/send"
    assert ses.headers == {"Authorization": "Bearer s3cret", "X-Region": "eu-west-1", "X-Empty": ""}
    # a set variable beats its default
    p2 = parse(text, {"HOST": "h.example.com", "SES_TOKEN": "t", "REGION": "us-east-1"})
    assert p2.providers["ses"].headers["X-Region"] == "us-east-1"


def test_env_interpolation_of_durations_and_numbers_in_strings() -> None:
    p = parse(BASE + '[timeouts]\nprovider = "${PROVIDER_TIMEOUT:-10s}"\nchannel = "${CHANNEL_TIMEOUT}"\n',
              {"CHANNEL_TIMEOUT": "2m"})
    assert (p.model.timeouts.provider, p.model.timeouts.channel) == (10_000, 120_000)


def test_missing_env_variable_is_an_error_naming_it() -> None:
    line = one_error(BASE.replace('url = "https://email.example.com/send"',
                                  'url = "https://email.example.com/send"\n'
                                  'headers = { Authorization = "Bearer ${SES_TOKEN}" }'))
    assert line.startswith("conf/routing.toml: providers.ses.headers.Authorization: ")
    assert "SES_TOKEN" in line and "not set" in line


def test_unset_api_token_variable_means_no_token() -> None:
    p = parse('[daemon]\napi_tokens = ["${ROUTINGD_TOKEN}"]\n' + BASE)
    assert p.model.daemon.api_tokens == []
    p = parse('[daemon]\napi_tokens = ["${ROUTINGD_TOKEN}"]\n' + BASE, {"ROUTINGD_TOKEN": "abc"})
    assert [t.get_secret_value() for t in p.model.daemon.api_tokens] == ["abc"]


# --------------------------------------------------------------------------- errors


def test_unknown_provider_in_a_channel() -> None:
    line = one_error(BASE + '[channels.sms]\nproviders = ["twilio"]\n')
    assert line == ("conf/routing.toml: channels.sms.providers.0: unknown provider 'twilio'; "
                    "defined providers: sendgrid, ses")


def test_unknown_channel_in_a_route() -> None:
    line = one_error(BASE.replace('channels = ["email"]', 'channels = ["email", "fax"]'))
    assert line == "conf/routing.toml: routes.default.channels.1: unknown channel 'fax'; defined channels: email"


def test_unknown_channel_in_a_nested_group() -> None:
    line = one_error(BASE.replace(
        'channels = ["email"]',
        'channels = ["email", { method = "all", channels = ["email", { channels = ["pager"] }] }]'))
    assert line.startswith("conf/routing.toml: routes.default.channels.1.channels.1.channels.0: "
                           "unknown channel 'pager'")


@pytest.mark.parametrize("where, path", [
    ('[timeouts]\nprovider = "10x"\n', "timeouts.provider"),
    ('[routes.other]\nchannels = ["email"]\ntimeouts = { message = "soon" }\n', "routes.other.timeouts.message"),
    ('[channels.sms]\nproviders = ["ses"]\ntimeout = "-1s"\n', "channels.sms.timeout"),
    ('[providers.x]\ntype = "sandbox"\nreceipt_timeout = "1y"\n', "providers.x.receipt_timeout"),
    ('[providers.x]\ntype = "sandbox"\ntimeout = -5\n', "providers.x.timeout"),
])
def test_bad_duration(where: str, path: str) -> None:
    line = one_error(BASE + where)
    assert line.startswith(f"conf/routing.toml: {path}: ")
    assert "duration" in line


@pytest.mark.parametrize("where, path", [
    ('[timeouts]\nprovder = "1s"\n', "timeouts.provder"),
    ('[providers.x]\ntype = "sandbox"\ntimout = "1s"\n', "providers.x.timout"),
    ('[providers.x]\ntype = "http"\nurl = "http://a.example"\nheader = {}\n', "providers.x.header"),
    ('[channels.sms]\nproviders = ["ses"]\nrequire = "phone_number"\n', "channels.sms.require"),
    ('[routes.x]\nchannels = ["email"]\ntimeout = { message = "1s" }\n', "routes.x.timeout"),
    ('[routes.x]\nchannels = [{ channels = ["email"], mode = "all" }]\n', "routes.x.channels.0.mode"),
    ('[daemon]\nlisten = "127.0.0.1:1"\nlistne = "x"\n', "daemon.listne"),
    ('[failover]\nof = [500]\n', "failover.of"),
])
def test_unknown_key(where: str, path: str) -> None:
    assert one_error(BASE + where).startswith(f"conf/routing.toml: {path}: unknown key")


def test_unknown_top_level_key() -> None:
    assert one_error("colour = 1\n" + BASE) == ("conf/routing.toml: colour: unknown key; valid keys: version, daemon, "
                                                "timeouts, failover, providers, channels, routes, templates")


def test_unknown_provider_type_names_the_choices() -> None:
    line = one_error(BASE + '[providers.x]\ntype = "smtpx"\n')
    assert line == ("conf/routing.toml: providers.x.type: unknown provider type 'smtpx'; "
                    "expected one of: " + ", ".join(PROVIDER_TYPES))


def test_missing_provider_type() -> None:
    line = one_error(BASE + '[providers.x]\nretries = 1\n')
    assert line.startswith("conf/routing.toml: providers.x.type: required key is missing")
    assert ", ".join(PROVIDER_TYPES) in line


def test_missing_required_keys() -> None:
    lines = errors(BASE + '[providers.x]\ntype = "http"\n[channels.empty]\nrequires = "email"\n')
    assert "conf/routing.toml: providers.x.url: required key is missing" in lines
    assert "conf/routing.toml: channels.empty.providers: required key is missing" in lines


@pytest.mark.parametrize("entries, index, fragment", [
    ('["6xx"]', 0, "bad failover outcome '6xx'"),
    ('[500, "sometimes"]', 1, "bad failover outcome 'sometimes'"),
    ("[700]", 0, "status code 700 is not between 100 and 599"),
    ("[99]", 0, "status code 99 is not between 100 and 599"),
    ("[true]", 0, "expected a status code"),
    ("[1.5]", 0, "expected a status code"),
])
def test_bad_failover_entry(entries: str, index: int, fragment: str) -> None:
    line = one_error(BASE + f"[failover]\non = {entries}\n")
    assert line.startswith(f"conf/routing.toml: failover.on.{index}: ")
    assert fragment in line


@pytest.mark.parametrize("value, fragment", [
    ('"maybe"', "expected a table like { failures = 5"),
    ("{ failures = 0 }", "greater than or equal to 1"),
    ('{ failures = 3, cooldown = "x" }', "bad duration"),
    ("{ failures = 3, open = 1 }", "unknown key"),
])
def test_bad_breaker(value: str, fragment: str) -> None:
    line = one_error(BASE.replace('type = "sandbox"', f'type = "sandbox"\nbreaker = {value}'))
    assert line.startswith("conf/routing.toml: providers.sendgrid.breaker")
    assert fragment in line


@pytest.mark.parametrize("text, path, fragment", [
    ('[routes.x]\nmethod = "any"\nchannels = ["email"]\n', "routes.x.method", "'single' or 'all'"),
    ('[routes.x]\nchannels = [{ method = "any", channels = ["email"] }]\n', "routes.x.channels.0.method",
     "'single' or 'all'"),
    ("[routes.x]\nchannels = [5]\n", "routes.x.channels.0", "expected a channel name or a { method, channels } table"),
    ("[routes.x]\nchannels = []\n", "routes.x.channels", "at least 1"),
    ('[channels.sms]\nproviders = ["ses"]\nmethod = "some"\n', "channels.sms.method", "'single' or 'all'"),
    ('[providers.x]\ntype = "sandbox"\nconfirm = "webhook"\n', "providers.x.confirm", "'response' or 'receipt'"),
    ('[providers.x]\ntype = "sandbox"\nretries = -1\n', "providers.x.retries", "greater than or equal to 0"),
    ('[providers.x]\ntype = "http"\nurl = "ftp://a"\n', "providers.x.url", "http:// or https://"),
    ('[providers.x]\ntype = "mqtt"\ntopic = "a/#"\n', "providers.x.topic", "wildcards"),
])
def test_bad_values_name_the_key(text: str, path: str, fragment: str) -> None:
    line = one_error(BASE + text)
    assert line.startswith(f"conf/routing.toml: {path}: "), line
    assert fragment in line


def test_a_nested_group_error_is_reported_once_at_its_key() -> None:
    # not also "should be a valid string" from the channel-name branch of the union
    lines = errors(BASE + '[routes.x]\nchannels = ["email", { method = "all", channels = ["email"], x = 1 }]\n')
    assert lines == ["conf/routing.toml: routes.x.channels.1.x: unknown key; valid keys: method, channels"]


def test_bad_names() -> None:
    line = one_error(BASE + '[channels."e mail"]\nproviders = ["ses"]\n')
    assert line.startswith("conf/routing.toml: channels.e mail: name may hold only")


def test_provider_listed_twice_in_a_channel() -> None:
    line = one_error(BASE + '[channels.sms]\nproviders = ["ses", "ses"]\n')
    assert line == "conf/routing.toml: channels.sms.providers: a provider is listed twice"


def test_backoff_max_below_base() -> None:
    line = one_error(BASE + '[providers.x]\ntype = "sandbox"\nbackoff = { base = "2s", max = "1s" }\n')
    assert line == "conf/routing.toml: providers.x.backoff.max: must be at least backoff.base"


def test_not_toml() -> None:
    line = one_error("[providers\n")
    assert line.startswith("conf/routing.toml: (file): not valid TOML")


def test_every_problem_is_reported_at_once() -> None:
    lines = errors(BASE + """
[timeouts]
provider = "10x"
[providers.x]
type = "sandbox"
timout = 1
""")
    assert "conf/routing.toml: timeouts.provider: " + lines[0].split(": ", 2)[2] in lines
    assert any(line.startswith("conf/routing.toml: providers.x.timout: unknown key; did you mean 'timeout'?") for line in lines)
    assert len(lines) == 2


def test_cross_references_are_reported_with_schema_errors() -> None:
    lines = errors(BASE.replace('type = "sandbox"', 'type = "smtpx"') + """
[channels.sms]
providers = ["twilio", "sendgrid"]
[routes.other]
channels = ["sms", { channels = ["fax"] }]
""")
    assert lines[0] == ("conf/routing.toml: providers.sendgrid.type: unknown provider type 'smtpx'; "
                        "expected one of: " + ", ".join(PROVIDER_TYPES))
    # sendgrid is defined (only badly), so it is not "unknown"; twilio and fax are
    assert any(line.startswith("conf/routing.toml: channels.sms.providers.0: unknown provider 'twilio'")
               for line in lines)
    assert any(line.startswith("conf/routing.toml: routes.other.channels.1.channels.0: unknown channel 'fax'")
               for line in lines)
    assert len(lines) == 3


def test_missing_variable_and_schema_errors_together() -> None:
    lines = errors(BASE.replace('url = "https://email.example.com/send"', 'url = "${SES_URL}"'))
    assert any(line.startswith("conf/routing.toml: providers.ses.url: environment variable SES_URL") for line in lines)


def test_load_policy_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(str(tmp_path / "nope.toml"))
    assert e.value.lines()[0].startswith(f"{tmp_path / 'nope.toml'}: (file): cannot read file")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"x = '\xff'\n")
    with pytest.raises(PolicyError) as e:
        load_policy(str(bad))
    assert "not UTF-8" in e.value.lines()[0]
    good = tmp_path / "routing.toml"
    good.write_text(BASE)
    assert load_policy(str(good), env={}).path == str(good)


# --------------------------------------------------------------------------- warnings


def test_channel_timeout_larger_than_message_timeout_warns_not_errors() -> None:
    p = parse(BASE.replace('providers = ["ses", "sendgrid"]', 'providers = ["ses", "sendgrid"]\ntimeout = "5m"')
              + '[timeouts]\nmessage = "2m"\n')
    assert len(p.warnings) == 1
    assert p.warnings[0].startswith("channels.email.timeout (300000 ms) is larger than the message timeout")
    # and the plan still resolves: the message deadline cuts the channel short at run time
    plan = resolve_plan(p, "default")
    assert plan.items[0].timeout_ms == 300_000 and plan.message_timeout_ms == 120_000


def test_route_level_timeout_warnings() -> None:
    p = parse(BASE.replace('channels = ["email"]', 'channels = ["email"]\n'
                           'timeouts = { channel = "3m", message = "1m" }'))
    assert p.warnings == ("routes.default.timeouts.channel (180000 ms) is larger than its message timeout (60000 ms)",)
    p = parse(BASE.replace('providers = ["ses", "sendgrid"]', 'providers = ["ses", "sendgrid"]\ntimeout = "5m"')
              .replace('channels = ["email"]', 'channels = [{ method = "all", channels = ["email"] }]\n'
                       'timeouts = { message = "1m" }'))
    assert len(p.warnings) == 1 and "routes.default: channel 'email'" in p.warnings[0]
    p = parse(BASE + '[timeouts]\nchannel = "10m"\nmessage = "5m"\n')
    assert p.warnings[0].startswith("timeouts.channel (600000 ms) is larger than the message timeout")


def test_a_breaker_slow_mark_that_can_never_come_first_warns() -> None:
    slow_ses = BASE.replace('url = "https://email.example.com/send"',
                            'url = "https://email.example.com/send"\nbreaker = { slow = "%s" }')
    # the provider's own timeout
    p = parse(slow_ses.replace('breaker = { slow = "%s" }', 'timeout = "3s"\nbreaker = { slow = "3s" }'))
    assert p.warnings == ("providers.ses.breaker.slow (3000 ms) is not shorter than providers.ses.timeout (3000 ms): "
                          "an attempt times out before it could be marked slow, so it has no effect",)
    # the file's timeouts.provider, and nothing when the mark comes first
    p = parse(slow_ses % "2s" + '[timeouts]\nprovider = "1s"\n')
    assert len(p.warnings) == 1 and "than timeouts.provider (1000 ms)" in p.warnings[0]
    assert parse(slow_ses % "500ms" + '[timeouts]\nprovider = "1s"\n').warnings == ()
    # a route's own provider timeout decides it per route: no file-level verdict
    per_route = (slow_ses % "2s").replace('channels = ["email"]', 'channels = ["email"]\ntimeouts = { provider = "5s" }')
    assert parse(per_route + '[timeouts]\nprovider = "1s"\n').warnings == ()


def test_breaker_slow_takes_a_duration_or_false() -> None:
    def breaker(v: str) -> str:
        return BASE.replace('url = "https://email.example.com/send"',
                            f'url = "https://email.example.com/send"\nbreaker = {{ slow = {v} }}')
    assert parse(breaker('"250ms"')).model.providers["ses"].breaker.slow == 250
    assert parse(breaker("false")).model.providers["ses"].breaker.slow is False
    assert parse(BASE).model.providers["ses"].breaker.slow is None       # unset: half the timeout (plan.py)
    for bad, says in (("true", "or false to turn slow-call detection off"), ("0", "must be at least 1ms"),
                      ('"soon"', "bad duration")):
        with pytest.raises(PolicyError) as e:
            parse(breaker(bad))
        assert "providers.ses.breaker.slow" in str(e.value) and says in str(e.value), str(e.value)


def test_no_default_route_warns() -> None:
    p = parse(BASE.replace("[routes.default]", "[routes.other]"))
    assert any("no [routes.default]" in w for w in p.warnings)


def test_user_names_that_look_like_pydantic_branch_names_stay_in_the_key_path() -> None:
    lines = errors("""
[providers.http]
type = "sandbox"
timout = 1
[providers.str]
type = "http"
url = 5
[channels.group]
providers = ["http", "nope"]
method = "x"
[routes.default]
channels = ["group", { method = "x", channels = ["group"] }]
""")
    # the valid keys are the sandbox model's own (SandboxProvider's fields), whatever they are today
    from routingd.daemon.core.policy import SandboxProvider
    valid = [f.alias or name for name, f in SandboxProvider.model_fields.items()]
    head = "conf/routing.toml: providers.http.timout: unknown key; did you mean 'timeout'? valid keys: "
    assert lines[0].startswith(head) and set(lines[0][len(head):].split(", ")) == set(valid), lines[0]
    assert lines[1:] == [
        "conf/routing.toml: providers.str.url: expected a string, got 5",
        "conf/routing.toml: channels.group.method: Input should be 'single' or 'all', got \"x\"",
        "conf/routing.toml: routes.default.channels.1.method: Input should be 'single' or 'all', got \"x\"",
        "conf/routing.toml: channels.group.providers.1: unknown provider 'nope'; defined providers: http, str",
    ]


def test_user_loc_drops_union_branch_names_from_request_errors() -> None:
    from pydantic import ValidationError

    from routingd.daemon.core.policy import user_loc
    from routingd.daemon.core.request import SendRequest
    with pytest.raises(ValidationError) as e:
        SendRequest.model_validate({"message": {"to": {"email": "a@x"}, "routing": {
            "channels": ["email", {"method": "x", "channels": ["sms"]}, 3]}}})
    locs = [user_loc(err["loc"]) for err in e.value.errors()]
    assert locs == [("message", "routing", "channels", 1, "method"), ("message", "routing", "channels", 2)]


# --- MQTT settings checked at `check` time, not only when `serve` connects ---------------------------

_MQTT_BASE = """
[providers.dev]
type = "mqtt"
topic = "devices/{to.user_id}/notify"
[channels.push]
providers = ["dev"]
[routes.default]
channels = ["push"]
"""


def test_mqtt_provider_without_broker_is_a_warning_not_an_error():
    from routingd.daemon.core.policy import parse_policy

    p = parse_policy(_MQTT_BASE, "r.toml", env={})
    assert any("providers.dev" in w and "[daemon.mqtt]" in w for w in p.warnings)
    p2 = parse_policy('[daemon.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n' + _MQTT_BASE, "r.toml", env={})
    assert not any("[daemon.mqtt]" in w for w in p2.warnings)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "mqtt://", "mqtt://host:99999", "mqtt://host/prefix"])
def test_bad_broker_url_is_rejected_by_check(url):
    from routingd.daemon.core.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError) as ei:
        parse_policy(f'[daemon.mqtt]\nurl = "{url}"\n' + _MQTT_BASE, "r.toml", env={})
    assert any(line.startswith("r.toml:2: daemon.mqtt.url: ") for line in ei.value.lines()), ei.value.lines()
