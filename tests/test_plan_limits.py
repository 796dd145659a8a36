"""Limits that hold against any request (docs/security.md "Limits"): the plan one send may
build is bounded by [daemon] limits, refused with a 422 that names the limit, and the engine's
work per message grows linearly with its plan, not with the square of its attempts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from routingd.daemon.core.plan import PlanError, resolve_plan
from routingd.daemon.core.policy import PolicyError, parse_policy
from routingd.daemon.core.request import SendRequest

from daemon_process import DaemonProcess, serving
from test_core_build import copy_package

ROOT = Path(__file__).resolve().parent.parent


def policy_text(n_channels: int = 3, providers_per_channel: int = 1, daemon: str = "") -> str:
    out = ["version = 1", "[daemon]", daemon]
    out += [f'[providers.p{i}]\ntype = "sandbox"' for i in range(providers_per_channel)]
    plist = ", ".join(f'"p{i}"' for i in range(providers_per_channel))
    out += [f"[channels.c{j}]\nproviders = [{plist}]" for j in range(n_channels)]
    out += ['[routes.default]\nchannels = ["c0"]']
    return "\n".join(out) + "\n"


def send(routing: Any = None, **message: Any) -> SendRequest:
    body: dict[str, Any] = {"to": {"email": "a@example.com"}, **message}
    if routing is not None:
        body["routing"] = routing
    return SendRequest.model_validate({"message": body})


def problems(policy_src: str, req: SendRequest) -> list[tuple[tuple, str]]:
    with pytest.raises(PlanError) as e:
        resolve_plan(parse_policy(policy_src, env={}), request=req.message)
    return [(p.loc, p.msg) for p in e.value.problems]


def test_too_many_channels_in_inline_routing_is_refused_naming_the_limit() -> None:
    pol = policy_text(5, daemon="max_plan_channels = 4")
    ok = send({"method": "all", "channels": ["c0", "c1", "c2", "c3"]})
    assert len(resolve_plan(parse_policy(pol, env={}), request=ok.message).items) == 4
    [(loc, msg)] = problems(pol, send({"method": "all", "channels": ["c0", "c1", "c2", "c3", "c4"]}))
    assert loc == ("message", "routing", "channels", 4)
    assert "max_plan_channels" in msg and "4" in msg


def test_the_same_channel_twice_is_refused_before_anything_is_built() -> None:
    # the finding: ["email"] x 28000 in one send gave 28000 deliveries to one recipient
    [(loc, msg)] = problems(policy_text(), send({"method": "all", "channels": ["c0"] * 28_000}))
    assert loc == ("message", "routing", "channels", 1)
    assert "twice" in msg
    nested = {"method": "all", "channels": ["c0", {"method": "single", "channels": ["c1", "c0"]}]}
    [(loc, msg)] = problems(policy_text(), send(nested))
    assert loc == ("message", "routing", "channels", 1, "channels", 1) and "twice" in msg


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    pol = policy_text(daemon="max_plan_depth = 2")
    two = {"channels": [{"channels": [{"channels": ["c0"]}]}]}       # two groups inside the routing
    resolve_plan(parse_policy(pol, env={}), request=send(two).message)
    [(loc, msg)] = problems(pol, send({"channels": [{"channels": [{"channels": [{"channels": ["c0"]}]}]}]}))
    assert loc == ("message", "routing", "channels", 0, "channels", 0, "channels", 0)
    assert "max_plan_depth" in msg


def test_too_many_overrides_are_refused() -> None:
    pol = policy_text(daemon="max_overrides = 2")
    resolve_plan(parse_policy(pol, env={}), request=send(channels={"c0": {"timeout": "1s"}},
                                                         providers={"p0": {"timeout": "1s"}}).message)
    [(loc, msg)] = problems(pol, send(channels={"c0": {}, "c1": {}}, providers={"p0": {}}))
    assert loc == ("message",) and "max_overrides" in msg


def test_the_file_obeys_the_same_limits() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(policy_text(1, 3, daemon="max_channel_providers = 2"), env={})
    assert "channels.c0.providers: more than 2 providers in one channel" in str(e.value)
    # a route of the file may list a channel twice on purpose (the operator's choice)
    parse_policy(policy_text(2).replace('channels = ["c0"]', 'channels = ["c0", "c1", "c0"]'), env={})
    with pytest.raises(PolicyError) as e:
        parse_policy(policy_text(3, daemon="max_plan_channels = 2").replace(
            'channels = ["c0"]', 'method = "all"\nchannels = ["c0", "c1", "c2"]'), env={})
    assert "max_plan_channels" in str(e.value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = 'version = 1\n[providers.mail]\ntype = "sandbox"\n[channels.email]\nproviders = ["mail"]\n' \
          '[routes.default]\nchannels = ["email"]\n'
    with serving(DaemonProcess(tmp_path_factory.mktemp("limits"), cfg)) as d:
        yield d


def test_a_daemon_answers_422_naming_the_limit(daemon: DaemonProcess) -> None:
    body = {"message": {"to": {"email": "a@example.com"},
                        "routing": {"method": "all", "channels": ["email"] * 2_000}}}
    r = daemon.post("/v1/send", body)
    assert r.status == 422, r.body
    assert any("twice" in d["msg"] for d in r.json()["details"])
    many = {"message": {"to": {"email": "a@example.com"},
                        "channels": {f"c{i}": {} for i in range(1_000)}}}
    r = daemon.post("/v1/send", many)
    assert r.status == 422 and b"max_overrides" in r.body


# Engine work per message: lines of the engine's modules (daemon/core/engine.py and the modules of
# its functions) executed (pure Python, counted by a
# tracer: deterministic, no clock) for an `all` plan of n channels whose providers never answer.
COUNT_LINES = r"""
import json, random, sys
from routingd.daemon.core.engine import Delivery
from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.core.policy import parse_policy
n = int(sys.argv[1])
src = ["version = 1", "[daemon]", "max_plan_channels = 1000",
       "[providers.a]", "type = 'sandbox'", "retries = 2", "timeout = '1s'",
       "backoff = { base = '10ms', max = '10ms' }", "breaker = false",
       "[providers.b]", "type = 'sandbox'", "timeout = '1s'", "breaker = false"]
for j in range(n):
    src += [f"[channels.c{j}]", "providers = ['a', 'b']", "timeout = '30s'"]
src += ["[routes.default]", "method = 'all'", "channels = [" + ", ".join(f"'c{j}'" for j in range(n)) + "]"]
plan = resolve_plan(parse_policy("\n".join(src) + "\n", env={}))
import os, routingd.daemon.core.engine as eng
assert eng.__file__.endswith(".py"), eng.__file__
core = os.path.dirname(eng.__file__)
files = {os.path.join(core, m + ".py") for m in ("engine", "walk", "outcomes", "deadlines", "resume")}
lines = 0
def tracer(frame, event, arg):
    global lines
    if frame.f_code.co_filename not in files:
        return None
    def local(frame, event, arg):
        global lines
        if event == "line":
            lines += 1
        return local
    return local
sys.settrace(tracer)
d = Delivery("m", plan, {}, 0.0, random.Random(7))
d.start(0.0)
for _ in range(100_000):
    if d.terminal:
        break
    d.on_timer(d.next_wakeup)
sys.settrace(None)
print(json.dumps({"lines": lines, "status": d.status, "attempts": len(d.attempts)}))
"""


def _engine_lines(n: int, tree: Path) -> dict[str, Any]:
    """Lines of the engine's modules run for a plan of n channels, in the pure-Python core: a copy of the
    package without the compiled extensions (tests/test_core_build.py copy_package) is first on
    PYTHONPATH, since a tracer sees no lines of compiled code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", COUNT_LINES, str(n)], env=env, cwd=tree,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_engine_work_grows_linearly_with_the_plan(tmp_path: Path) -> None:
    tree = copy_package(tmp_path, compiled=False)
    small, big = _engine_lines(40, tree), _engine_lines(160, tree)
    assert small["status"] == big["status"] == "undeliverable"
    assert big["attempts"] == 4 * small["attempts"] == 4 * 40 * 4
    # linear: about 4x the lines for 4x the channels (a heap adds a log factor); the scan of
    # every attempt at every step made it about 16x
    assert big["lines"] < 6 * small["lines"], (small, big)


# --------------------------------------------------------------------------- secret masking


@pytest.mark.parametrize("secret", ["pk\\Live-9f8e", "pk\tLive-9f8e", "pk'Live\"9f8e", "pk\\\t'\"x-9f8e"])
def test_a_misplaced_secret_is_masked_in_every_rendering(secret: str) -> None:
    src = 'version = 1\n[providers.p]\ntype = "sandbox"\ntimeout = "${PROV_KEY}"\n'
    with pytest.raises(PolicyError) as e:
        parse_policy(src, env={"PROV_KEY": secret})
    text = str(e.value)
    assert "${PROV_KEY}" in text, text
    for form in (secret, repr(secret)[1:-1], repr(repr(secret))[1:-1], "Live"):
        assert form not in text, (form, text)
