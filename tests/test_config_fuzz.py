"""Hypothesis-generated routing.toml files never crash the policy loader, `routingd check`, a plan
or a reload: parse_policy() returns a Policy or raises PolicyError (nothing else), every route
of a valid file resolves to a plan or a PlanError, `routingd check` exits 0 or 1 with one line
per problem, and a reload of the file is accepted or rejected with the old policy kept.

Three generators: structured files built from the real keys with good and bad values of every
kind (so that many are valid and the rest fail deep inside validation), random mutations of the
shipped files, and arbitrary text. Two shapes that once crashed the loader (TOML nested thousands
deep, a duration too large for a float) have their own tests below.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routingd.daemon import cli
from routingd.daemon.api import ApiState
from routingd.daemon.core.plan import PlanError, resolve_plan
from routingd.daemon.core.policy import Policy, PolicyError, parse_policy
from routingd.daemon.metrics import Metrics
from routingd.daemon.runtime import Router
from routingd.daemon.service import ConfigReloader
from routingd.daemon.settings import load_settings
from routingd.daemon.store import Store

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "routing.toml", ROOT / "deploy" / "routing.example.toml"]
# every ${VAR} the shipped files and the generators use, set (so that those files are valid)
ENV = {v: "https://hooks.example.com/t" if v.endswith("_URL") else "t"      # a webhook URL must be one
       for v in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", "".join(f.read_text() for f in SHIPPED))}
ENV.update({"SES_TOKEN": "t", "ROUTINGD_TOKEN": "t", "TOKEN": "t"})
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.filter_too_much])

# --------------------------------------------------------------------------- strategies

NAMES = ["ses", "sendgrid", "twilio", "fcm", "email", "sms", "push", "default", "urgent", "x", "ünï", "a.b", ""]
name = st.sampled_from(NAMES) | st.text(min_size=0, max_size=8)

big_int = st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
number_text = st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,5})?\Z")
duration = st.one_of(
    st.sampled_from(["250ms", "10s", "1m30s", "5m", "72h", "2d", "0s", "1.5s", "", "10", "ten seconds",
                     "-5s", "10 s", "1h1h1h", "9999999999999999999h", "1e3s", "inf", "nan"]),
    st.builds(lambda n, u: f"{n}{u}", number_text, st.sampled_from(["ms", "s", "m", "h", "d", "x", ""])),
    big_int, st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
)
scalar = st.one_of(st.text(max_size=12), big_int, st.floats(), st.booleans())
junk = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(name, inner, max_size=3),
                    max_leaves=6)


def maybe(strategy: Any) -> Any:
    """A value from `strategy` most of the time, junk sometimes."""
    return st.one_of(strategy, strategy, strategy, junk)


def table(required: dict[str, Any], optional: dict[str, Any]) -> Any:
    """A TOML table: the required keys, any subset of the optional ones, sometimes an unknown key."""
    return st.fixed_dictionaries(required, optional=optional).flatmap(
        lambda d: st.one_of(st.just(d), st.builds(lambda k, v: {**d, k: v}, name, junk)))


breaker = st.one_of(st.booleans(), table({}, {"failures": maybe(st.integers(-3, 20)), "cooldown": duration}), junk)
latency = st.one_of(duration, table({"median": duration}, {"p99": duration}))
provider = st.one_of(
    table({"type": st.just("http"), "url": maybe(st.sampled_from(
        ["https://email.example.com/send", "http://127.0.0.1:9/x", "ftp://x", "not a url", "http://", ""]))},
          {"headers": maybe(st.dictionaries(st.sampled_from(["Authorization", "X-Key", ""]),
                                            st.sampled_from(["Bearer ${SES_TOKEN}", "${NOPE}", "${TOKEN:-x}", "v"]),
                                            max_size=2)),
           "timeout": duration, "retries": maybe(st.integers(-2, 10)), "breaker": breaker,
           "confirm": maybe(st.sampled_from(["response", "receipt", "maybe"])), "receipt_timeout": duration,
           "receipt_secret": maybe(st.text(max_size=8))}),
    table({"type": st.just("sandbox")},
          {"latency": latency, "error_rate": maybe(st.floats()), "fail": maybe(st.sampled_from(
              ["none", "down", "hang", "error", "throttle", "slow", "flaky", "no-receipts", "boom"])),
           "rate_limit": maybe(st.sampled_from(["200/s", "5/m", "0/s", "x/s", "1e999/s"])), "timeout": duration,
           "retries": maybe(st.integers(-2, 10)), "confirm": maybe(st.sampled_from(["response", "receipt"])),
           "receipt_delay": latency, "breaker": breaker}),
    table({"type": maybe(st.sampled_from(["mqtt", "smtp", "carrier-pigeon"]))},
          {"topic": maybe(st.sampled_from(["devices/{to.user_id}/notify", "a/{message_id}", "a/{nope}", "#", ""]))}),
    junk,
)
channel = st.one_of(
    table({"providers": maybe(st.lists(name, max_size=4))},
          {"method": maybe(st.sampled_from(["single", "all", "some"])), "timeout": duration,
           "requires": maybe(st.sampled_from(["email", "phone_number", "user_id", ""]))}),
    junk,
)
route_items = st.recursive(
    st.lists(name, min_size=0, max_size=3),
    lambda inner: st.lists(st.one_of(name, table({"channels": inner}, {"method": st.sampled_from(["single", "all", "x"])})),
                           max_size=3),
    max_leaves=8,
)
timeouts = table({}, {"provider": duration, "channel": duration, "message": duration})
route = st.one_of(
    table({"channels": maybe(route_items)}, {"method": maybe(st.sampled_from(["single", "all", "x"])),
                                             "timeouts": maybe(timeouts)}),
    junk,
)
daemon_section = table({}, {
    "listen": maybe(st.sampled_from(["127.0.0.1:8080", "0.0.0.0:8080", "[::1]:0", "localhost:1", "nope", ":80"])),
    "state": maybe(st.sampled_from(["routingd.db", "/proc/x.db", ""])),
    "api_tokens": maybe(st.lists(st.sampled_from(["${ROUTINGD_TOKEN}", "${UNSET_VAR}", "", "tok"]), max_size=3)),
    "max_body": maybe(st.integers(-1, 10 ** 7)), "max_inflight": maybe(st.integers(-1, 10 ** 6)),
    "grace": duration, "retention": duration, "idempotency_ttl": duration,
    "mqtt": maybe(table({}, {"url": maybe(st.sampled_from(["mqtt://127.0.0.1:1883", "mqtt://:99999", "http://x"])),
                             "topic_prefix": st.text(max_size=5), "qos": maybe(st.integers(-1, 3))})),
})
policy_tree = table(
    {"version": st.one_of(st.just(1), st.just(1), junk)},
    {"daemon": maybe(daemon_section), "timeouts": maybe(timeouts),
     "failover": maybe(table({}, {"on": maybe(st.lists(st.one_of(
         st.sampled_from([408, 429, "5xx", "4xx", "timeout", "network", "receipt"]), st.integers(0, 999)), max_size=5))})),
     "providers": maybe(st.dictionaries(name, provider, max_size=4)),
     "channels": maybe(st.dictionaries(name, channel, max_size=4)),
     "routes": maybe(st.dictionaries(name, route, max_size=3))},
)


def to_toml(tree: dict[str, Any]) -> str | None:
    try:
        return tomli_w.dumps(tree)
    except (TypeError, ValueError):          # e.g. a NaN tomli-w will not write, a non-str key
        return None


@st.composite
def structured_file(draw: st.DrawFn) -> str:
    text = to_toml(draw(policy_tree))
    return text if text is not None else 'version = "unwritable"\n'


@st.composite
def mutated_file(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SHIPPED)).read_text()
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        chunk = draw(st.text(alphabet=st.sampled_from(list('[]{}="\'#,.:\n \\$0129amsh-_') + ["\x00", "é"]),
                             min_size=1, max_size=6))
        if op == "delete":
            text = text[:pos] + text[pos + len(chunk):]
        elif op == "insert":
            text = text[:pos] + chunk + text[pos:]
        elif op == "replace":
            text = text[:pos] + chunk + text[pos + len(chunk):]
        else:
            end = min(len(text), pos + draw(st.integers(1, 200)))
            text = text[:end] + text[pos:end] + text[end:]
    return text


# --------------------------------------------------------------------------- the properties


def load_or_problems(text: str, path: str = "routing.toml") -> Policy | PolicyError:
    try:
        return parse_policy(text, path, env=ENV)
    except PolicyError as e:
        lines = e.lines()
        assert lines and all(line.startswith(f"{path}:") for line in lines), lines
        return e


def plans_never_crash(policy: Policy) -> None:
    for r in policy.routes:
        try:
            plan = resolve_plan(policy, route=r)
        except PlanError:
            continue
        assert plan.to_json()["route"] == r
        assert plan.message_timeout_ms >= 0 and math.isfinite(plan.message_timeout_ms)


def serve_would_start(policy: Policy, path: Path) -> bool:
    from routingd.daemon.service import StartupError, startup_settings
    try:
        startup_settings(policy, str(path), None, None)
    except StartupError:
        return False
    return True


def check_cli(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["check", str(path)])
    text = out.getvalue() + err.getvalue()
    assert code in (0, 1), (code, text)
    assert "Traceback" not in text and "internal error" not in text, text
    # one line per problem (or warning), each naming the file. (A key holding a control character
    # such as \r or \x0b is printed raw inside its line; see the report: core's key_path could
    # quote such keys the TOML way.)
    located = re.compile(re.escape(str(path)) + r"(:\d+(:\d+)?)?: ")   # PATH[:LINE[:COL]]: ...
    assert all(located.match(line) for line in err.getvalue().split("\n") if line), err.getvalue()
    return code, err.getvalue()


@contextmanager
def fuzz_env() -> Iterator[None]:
    """ENV set in os.environ for the block (the reloader and the CLI read it), then restored."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        yield


class Reloads:
    """A real Router (not started: a reload does not need the network) behind a ConfigReloader."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "routing.toml"
        self.base = SHIPPED[0].read_text()
        self.path.write_text(self.base)
        policy = parse_policy(self.base, str(self.path), env=ENV)
        self.router = Router(policy, Store(str(tmp / "state.db")), Metrics())
        settings_ = load_settings(policy, config=str(self.path))
        self.state = ApiState(router=self.router, metrics=self.router.metrics, reloader=None,  # type: ignore[arg-type]
                              tokens=settings_.token_values())
        self.reloader = ConfigReloader(str(self.path), self.router, self.router.metrics, self.state, None, None,
                                       settings=settings_)

    def reload(self, text: str) -> None:
        before = self.router.policy.version
        self.path.write_text(text)
        with fuzz_env():
            result = asyncio.run(self.reloader.reload("fuzz"))
        assert not any("internal error" in e for e in result.errors), result.errors
        if result.ok:
            assert self.router.policy.version == result.version
        else:
            assert result.errors and self.router.policy.version == before
        self.path.write_text(self.base)          # back to a known policy for the next example
        assert asyncio.run(self.reloader.reload("fuzz-reset")).ok


@pytest.fixture(scope="module")
def reloads(tmp_path_factory: pytest.TempPathFactory) -> Reloads:
    return Reloads(tmp_path_factory.mktemp("reloads"))


def exercise(text: str, tmp: Path, reloads: Reloads) -> None:
    result = load_or_problems(text)
    if isinstance(result, Policy):
        plans_never_crash(result)
    path = tmp / "fuzz.toml"
    path.write_text(text, errors="surrogateescape")
    with fuzz_env():
        code, _ = check_cli(path)
        # check applies serve's start-up checks too (listen address, tokens on a public address,
        # the MQTT URL): a policy that parses may still be one serve refuses
        starts = isinstance(result, Policy) and serve_would_start(result, path)
    assert code == (0 if starts else 1)
    reloads.reload(text)


def test_the_shipped_files_load(tmp_path: Path, reloads: Reloads) -> None:
    for f in SHIPPED:
        assert isinstance(load_or_problems(f.read_text()), Policy)
        exercise(f.read_text(), tmp_path, reloads)


@FUZZ
@given(text=structured_file())
def test_structured_files_never_crash_check_plan_or_reload(text: str, reloads: Reloads) -> None:
    exercise(text, reloads.path.parent, reloads)


@FUZZ
@given(text=mutated_file())
def test_mutated_shipped_files_never_crash_check_plan_or_reload(text: str, reloads: Reloads) -> None:
    exercise(text, reloads.path.parent, reloads)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_a_policy_error_or_a_policy(text: str) -> None:
    load_or_problems(text)


def test_the_generators_reach_valid_files_too() -> None:
    """The structured generator is not just noise: a good share of its files are valid."""
    valid = 0

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(text=structured_file())
    def count(text: str) -> None:
        nonlocal valid
        valid += isinstance(load_or_problems(text), Policy)

    count()
    assert valid >= 5, valid


# --------------------------------------------------------------------------- shapes that once crashed the loader


def test_deeply_nested_toml_is_a_policy_error(reloads: Reloads) -> None:
    for text in ("x = " + "[" * 5000 + "]" * 5000, "x = " + "{a = " * 3000 + "1" + "}" * 3000):
        assert isinstance(load_or_problems(text), PolicyError)
        exercise(text, reloads.path.parent, reloads)


def test_a_duration_too_large_for_a_float_is_a_policy_error(reloads: Reloads) -> None:
    for value in ("9" * 400 + "s", "1" + "0" * 320 + "ms"):
        text = f'version = 1\n[timeouts]\nmessage = "{value}"\n'
        assert isinstance(load_or_problems(text), PolicyError)
        exercise(text, reloads.path.parent, reloads)
