"""Timeout resolution (docs/configuration.md "Timeout precedence") and the resolved plan (`explain --json`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.core.plan import ChannelStep, GroupStep, Plan, PlanError, ProviderStep, resolve_plan
from routingd.daemon.core.policy import Policy, parse_policy
from routingd.daemon.core.request import MessageRequest, SendRequest
from pydantic import ValidationError

BUILTIN = {"provider": 5 * 60_000, "channel": 30 * 60_000, "message": 72 * 3_600_000}

# The three chains, most specific first. Level names:
#   req_target   request providers.P.timeout / channels.C.timeout (Courier also: .timeouts)
#   file_target  [providers.P] timeout / [channels.C] timeout
#   req_global   request timeout.provider|channel|message (Courier also: timeouts.*)
#   route        [routes.R] timeouts.*
#   file_global  [timeouts] *
CHAINS = {
    "provider": ["req_target", "file_target", "req_global", "route", "file_global"],
    "channel": ["req_target", "file_target", "req_global", "route", "file_global"],
    "message": ["req_global", "route", "file_global"],
}


def build(kind: str, levels: dict[str, int], courier_spelling: bool = False) -> tuple[Policy, MessageRequest]:
    """A policy and a request where exactly `levels` of `kind`'s chain are set (values in ms).

    A second provider (`other`) and channel (`sms`) sit beside the targets, so target-specific
    levels can be seen not to leak.
    """
    target = {"provider": "ses", "channel": "email"}.get(kind)
    file_global = f'[timeouts]\n{kind} = {levels["file_global"]}\n' if "file_global" in levels else ""
    route_t = f'timeouts = {{ {kind} = {levels["route"]} }}\n' if "route" in levels else ""
    ses_t = f'timeout = {levels["file_target"]}\n' if kind == "provider" and "file_target" in levels else ""
    email_t = f'timeout = {levels["file_target"]}\n' if kind == "channel" and "file_target" in levels else ""
    text = f"""
{file_global}
[providers.ses]
type = "sandbox"
{ses_t}
[providers.other]
type = "sandbox"

[channels.email]
providers = ["ses", "other"]
{email_t}
[channels.sms]
providers = ["other"]

[routes.r]
channels = ["email", "sms"]
{route_t}
"""
    policy = parse_policy(text, "t.toml", env={})
    message: dict[str, Any] = {"to": {"email": "a@example.com"}, "route": "r"}
    if "req_global" in levels:
        message["timeouts" if courier_spelling else "timeout"] = {kind: levels["req_global"]}
    if "req_target" in levels and target is not None:
        key = "timeouts" if courier_spelling else "timeout"
        message["providers" if kind == "provider" else "channels"] = {target: {key: levels["req_target"]}}
    return policy, SendRequest.model_validate({"message": message}).message


def resolved(kind: str, plan: Plan) -> int:
    email = plan.items[0]
    assert isinstance(email, ChannelStep)
    if kind == "provider":
        return email.providers[0].timeout_ms
    if kind == "channel":
        return email.timeout_ms
    return plan.message_timeout_ms


def general(kind: str, plan: Plan) -> int:
    """The same kind of timeout for the non-target provider/channel."""
    email, sms = plan.items
    assert isinstance(email, ChannelStep) and isinstance(sms, ChannelStep)
    return email.providers[1].timeout_ms if kind == "provider" else sms.timeout_ms


def expected(kind: str, levels: dict[str, int]) -> int:
    for level in CHAINS[kind]:
        if level in levels:
            return levels[level]
    return BUILTIN[kind]


def expected_general(kind: str, levels: dict[str, int]) -> int:
    return expected(kind, {k: v for k, v in levels.items() if k not in ("req_target", "file_target")})


# every level wins over all the levels after it: set level i and every less specific one
CASES = [(kind, i, courier) for kind, chain in CHAINS.items() for i in range(len(chain) + 1)
         for courier in (False, True)]


@pytest.mark.parametrize("kind, i, courier", CASES,
                         ids=[f"{k}-{(CHAINS[k] + ['builtin'])[i]}{'-courier' if c else ''}" for k, i, c in CASES])
def test_each_level_beats_every_less_specific_one(kind: str, i: int, courier: bool) -> None:
    chain = CHAINS[kind]
    # distinct values, so the winner is unambiguous: level j gets 1000 * (j + 1)
    levels = {level: 1000 * (j + 1) for j, level in enumerate(chain) if j >= i}
    policy, request = build(kind, levels, courier)
    plan = resolve_plan(policy, request=request)
    assert resolved(kind, plan) == expected(kind, levels) == (1000 * (i + 1) if i < len(chain) else BUILTIN[kind])
    if kind != "message":
        assert general(kind, plan) == expected_general(kind, levels)


@pytest.mark.parametrize("kind", list(CHAINS))
def test_request_beats_route_beats_file_at_equal_specificity(kind: str) -> None:
    policy, request = build(kind, {"req_global": 1111, "route": 2222, "file_global": 3333})
    assert resolved(kind, resolve_plan(policy, request=request)) == 1111
    policy, request = build(kind, {"route": 2222, "file_global": 3333})
    assert resolved(kind, resolve_plan(policy, request=request)) == 2222
    assert resolved(kind, resolve_plan(policy, "r")) == 2222          # no request at all


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(sorted(CHAINS)), data=st.data(), courier=st.booleans())
def test_most_specific_level_present_wins(kind: str, data: st.DataObject, courier: bool) -> None:
    chain = CHAINS[kind]
    present = data.draw(st.sets(st.sampled_from(chain)), label="levels")
    # distinct values: a wrong winner can never hide behind an equal value
    values = data.draw(st.lists(st.integers(min_value=0, max_value=10 * 86_400_000), unique=True,
                                min_size=len(chain), max_size=len(chain)), label="values")
    levels = {level: v for level, v in zip(chain, values) if level in present}
    policy, request = build(kind, levels, courier)
    plan = resolve_plan(policy, request=request)
    assert resolved(kind, plan) == expected(kind, levels)
    if kind != "message":
        assert general(kind, plan) == expected_general(kind, levels)


def test_request_timeouts_accept_duration_strings() -> None:
    policy, _ = build("provider", {})
    req = MessageRequest.model_validate({"to": {"email": "a@x"}, "route": "r",
                                         "timeout": {"provider": "1m30s", "channel": "2m", "message": "1h"},
                                         "channels": {"sms": {"timeouts": "45s"}}})
    plan = resolve_plan(policy, request=req)
    assert plan.message_timeout_ms == 3_600_000
    assert [c.timeout_ms for c in plan.items] == [120_000, 45_000]
    assert {p.timeout_ms for c in plan.items for p in c.providers} == {90_000}


def test_target_timeout_beats_its_courier_twin() -> None:
    req = MessageRequest.model_validate({"to": {"email": "a@x"},
                                         "providers": {"ses": {"timeout": 1000, "timeouts": 2000}}})
    assert req.providers["ses"].effective_timeout == 1000


def test_courier_target_keys_routingd_does_not_do_are_refused_by_name() -> None:
    # they were accepted and ignored before (issue 16): now each is a 422 naming it
    with pytest.raises(ValidationError) as e:
        MessageRequest.model_validate({"to": {"email": "a@x"},
                                       "channels": {"email": {"timeouts": 3000, "override": {}, "if": "x"}}})
    assert {tuple(err["loc"]) for err in e.value.errors()} == {("channels", "email", "override"),
                                                               ("channels", "email", "if")}


# --------------------------------------------------------------------------- the plan

POLICY = """
[timeouts]
provider = "10s"
channel = "1m"
message = "2m"

[failover]
on = [429, "5xx", "timeout"]

[providers.ses]
type = "http"
url = "https://email.example.com/send"
timeout = "20s"
retries = 1
confirm = "receipt"
receipt_timeout = "2m"
breaker = { failures = 3, cooldown = "10s" }
backoff = { base = "100ms", max = "1s" }

[providers.sendgrid]
type = "sandbox"
breaker = false

[providers.twilio]
type = "sandbox"

[channels.email]
providers = ["ses", "sendgrid"]
timeout = "50s"
requires = "email"

[channels.sms]
providers = ["twilio"]
method = "all"
requires = "phone_number"

[channels.push]
providers = ["twilio"]

[routes.default]
channels = ["email", { method = "all", channels = ["sms", { channels = ["push"] }] }]

[routes.urgent-alert]
method = "all"
channels = ["email", "sms"]
timeouts = { provider = "5s", channel = "30s", message = "90s" }
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, "routing.toml", env={})


def test_plan_carries_every_setting(policy: Policy) -> None:
    plan = resolve_plan(policy)
    assert (plan.route, plan.method, plan.message_timeout_ms) == ("default", "single", 120_000)
    assert plan.policy_version == policy.version
    email, group = plan.items
    assert email == ChannelStep("email", 50_000, (
        # breaker.slow unset: the slow-call mark at half the attempt timeout (the default since issue 20)
        ProviderStep("ses", 20_000, 1, "receipt", 120_000, 100, 1_000, 3, 10_000, 10_000),
        ProviderStep("sendgrid", 10_000, 0, "response", 120_000, 500, 30_000, None, 0),
    ), "single", "email")
    assert isinstance(group, GroupStep) and group.method == "all"
    sms, inner = group.items
    assert isinstance(sms, ChannelStep) and sms.method == "all" and sms.requires == "phone_number"
    assert isinstance(inner, GroupStep) and inner.method == "single"
    assert [c.channel for c in inner.items if isinstance(c, ChannelStep)] == ["push"]
    rule = plan.failover
    assert rule.status_retryable(429) and rule.status_retryable(503) and not rule.status_retryable(408)
    assert rule.timeout and not rule.network


def test_explain_json_shape(policy: Policy) -> None:
    j = resolve_plan(policy, "urgent-alert").to_json()
    assert (j["route"], j["method"], j["message_timeout_ms"]) == ("urgent-alert", "all", 90_000)
    email = j["items"][0]
    assert {k: email[k] for k in ("channel", "method", "timeout_ms", "requires")} == \
        {"channel": "email", "method": "single", "timeout_ms": 50_000, "requires": "email"}
    ses = email["providers"][0]
    assert {k: ses[k] for k in ("provider", "timeout_ms", "retries")} == \
        {"provider": "ses", "timeout_ms": 20_000, "retries": 1}
    assert ses["receipt_timeout_ms"] == 120_000 and ses["breaker"] == {"failures": 3, "cooldown_ms": 10_000,
                                                                       "slow_ms": 10_000}
    assert email["providers"][1]["timeout_ms"] == 5_000 and email["providers"][1]["breaker"] is None
    assert j["items"][1]["timeout_ms"] == 30_000
    nested = resolve_plan(policy).to_json()["items"][1]
    assert nested["method"] == "all" and "channel" not in nested and nested["items"][1]["method"] == "single"


def test_explain_json_reflects_request_overrides(policy: Policy) -> None:
    req = SendRequest.model_validate({"message": {
        "to": {"email": "a@x"}, "route": "urgent-alert",
        "timeout": {"provider": 7000, "message": 60000},
        "channels": {"sms": {"timeout": 11000}},
        "providers": {"ses": {"timeouts": 3000}}}}).message
    j = resolve_plan(policy, request=req).to_json()
    assert j["message_timeout_ms"] == 60_000
    assert [p["timeout_ms"] for p in j["items"][0]["providers"]] == [3_000, 7_000]
    assert j["items"][0]["timeout_ms"] == 50_000 and j["items"][1]["timeout_ms"] == 11_000


def test_the_slow_call_mark_defaults_to_half_the_effective_attempt_timeout(policy: Policy) -> None:
    """breaker.slow unset: half of the timeout this very attempt runs with, wherever that timeout
    comes from (a request override included); set: as written; false: no mark; breaker off: none."""
    def slow_marks(p: Policy, req: MessageRequest | None = None) -> dict[str, int | None]:
        email = resolve_plan(p, "urgent-alert", request=req).items[0]
        assert isinstance(email, ChannelStep)
        return {s.provider: s.breaker_slow_ms for s in email.providers}

    assert slow_marks(policy) == {"ses": 10_000, "sendgrid": None}
    req = MessageRequest.model_validate({"to": {"email": "a@x"}, "route": "urgent-alert",
                                         "providers": {"ses": {"timeout": 3000}}})
    assert slow_marks(policy, req) == {"ses": 1_500, "sendgrid": None}
    explicit = parse_policy(POLICY.replace('breaker = { failures = 3, cooldown = "10s" }',
                                           'breaker = { failures = 3, cooldown = "10s", slow = "700ms" }'),
                            "routing.toml", env={})
    assert slow_marks(explicit, req) == {"ses": 700, "sendgrid": None}
    off = parse_policy(POLICY.replace('breaker = { failures = 3, cooldown = "10s" }',
                                      'breaker = { failures = 3, cooldown = "10s", slow = false }'),
                       "routing.toml", env={})
    assert slow_marks(off, req) == {"ses": None, "sendgrid": None}
    assert resolve_plan(off, "urgent-alert").to_json()["items"][0]["providers"][0]["breaker"] == \
        {"failures": 3, "cooldown_ms": 10_000}


def test_inline_routing_replaces_the_route_channels(policy: Policy) -> None:
    req = MessageRequest.model_validate({"to": {"email": "a@x"}, "route": "urgent-alert",
                                         "routing": {"method": "all",
                                                     "channels": ["sms", {"channels": ["email", "push"]}]}})
    plan = resolve_plan(policy, request=req)
    assert plan.route == "urgent-alert" and plan.method == "all" and plan.message_timeout_ms == 90_000
    sms, group = plan.items
    assert isinstance(sms, ChannelStep) and sms.timeout_ms == 30_000
    assert isinstance(group, GroupStep) and [c.channel for c in group.items] == ["email", "push"]


def test_no_route_named_uses_default(policy: Policy) -> None:
    req = MessageRequest.model_validate({"to": {"email": "a@x"}})
    assert resolve_plan(policy, request=req).route == "default"


@pytest.mark.parametrize("route, message, locs", [
    ("nope", None, [("message", "route")]),
    (None, {"route": "nope"}, [("message", "route")]),
    (None, {"channels": {"fax": {"timeout": 1}}, "providers": {"ses": {"timeout": 1}, "x": {"timeout": 1}}},
     [("message", "channels", "fax"), ("message", "providers", "x")]),
    (None, {"routing": {"channels": ["email", {"channels": ["fax"]}]}},
     [("message", "routing", "channels", 1, "channels", 0)]),
])
def test_plan_errors_name_what_is_unknown(policy: Policy, route: str | None, message: dict | None,
                                          locs: list[tuple]) -> None:
    req = MessageRequest.model_validate({"to": {"email": "a@x"}, **(message or {})}) if message is not None else None
    with pytest.raises(PlanError) as e:
        resolve_plan(policy, route, req)
    assert [p.loc for p in e.value.problems] == locs
    assert all("unknown" in p.msg for p in e.value.problems)


def test_request_validation_rejects_bad_timeouts_and_shapes() -> None:
    from pydantic import ValidationError
    for bad in ({"to": {}}, {"to": {"email": "a"}, "timeout": {"provider": "10x"}},
                {"to": {"email": "a"}, "timeout": {"retries": 1}},
                {"to": {"email": "a"}, "routing": {"method": "some", "channels": ["email"]}},
                {"to": {"email": "a"}, "channels": {"email": {"timeout": -1}}}):
        with pytest.raises(ValidationError):
            MessageRequest.model_validate(bad)


def test_inline_routing_works_without_a_default_route() -> None:
    policy = parse_policy(POLICY.replace("[routes.default]", "[routes.other]"), "routing.toml", env={})
    req = MessageRequest.model_validate({"to": {"email": "a@x"}, "routing": {"channels": ["email"]}})
    plan = resolve_plan(policy, request=req)
    assert plan.route == "(inline)" and plan.method == "single" and plan.message_timeout_ms == 120_000
    assert [c.channel for c in plan.items] == ["email"] and plan.items[0].timeout_ms == 50_000
    # naming a missing route is still an error, inline routing or not
    for message in ({"to": {"email": "a@x"}}, {"to": {"email": "a@x"}, "route": "default",
                                               "routing": {"channels": ["email"]}}):
        with pytest.raises(PlanError):
            resolve_plan(policy, request=MessageRequest.model_validate(message))
