"""A sandbox provider's own `outages`: its fail mode switched on at wall-clock instants by the
daemon itself (docs/providers.md "Trying a provider", docs/configuration.md "sandbox"), the rule
the simulator's scenario outages follow in simulated time (core mode_at); and how
`simulate --live` drives a drill's outage timeline through them (docs/simulator.md)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.adapters import AdapterContext, AttemptRequest
from routingd.daemon.core.behaviour import BehaviourSpec, OutageWindow, mode_at
from routingd.daemon.core.policy import parse_policy
from routingd.daemon.providers.sandbox import SandboxAdapter
from routingd.simulator.cli import shipped_drills
from routingd.simulator.live import with_timeline
from routingd.simulator.live_routing import prepare_live, to_toml
from routingd.simulator.scenario import load_scenario
from routingd.daemon.config_files import load_policy

from test_runtime import finished, policy_text, router_for, run, send

REPO = Path(__file__).resolve().parent.parent


def _at(seconds_from_now: float) -> str:
    """A TOML offset date-time that many seconds from now (UTC)."""
    t = dt.datetime.fromtimestamp(time.time() + seconds_from_now, tz=dt.timezone.utc)
    return t.isoformat()


# ------------------------------------------------------------------ the rule (one home: core)


_window = st.tuples(st.floats(0, 100), st.floats(0.001, 50), st.sampled_from(["down", "hang", "error", "slow"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_window, max_size=6), st.floats(-1, 160))
def test_mode_at_is_the_latest_starting_outage_active_then(raw: list[tuple[float, float, str]], now: float) -> None:
    base = BehaviourSpec()
    windows = tuple(sorted((OutageWindow(s, s + d, k, BehaviourSpec(error_rate=s / 100)) for s, d, k in raw),
                           key=lambda w: w.start_s))
    active = [w for w in windows if w.start_s <= now < w.end_s]
    latest = max((w.start_s for w in active), default=None)
    fail, spec = mode_at("flaky", base, windows, now)
    if latest is None:
        assert (fail, spec) == ("flaky", base)
    else:
        # the latest start wins; among equal starts, the one listed last
        assert (fail, spec) == next((w.kind, w.spec) for w in reversed(active) if w.start_s == latest)


# ------------------------------------------------------------------ the daemon's sandbox


def _request() -> AttemptRequest:
    return AttemptRequest("m1", "a1", "email", "s1", 1, 5.0, "m1:email:s1")


def test_the_sandbox_answers_with_the_outage_in_force_now() -> None:
    text = policy_text(
        '[providers.s1]\ntype = "sandbox"\nlatency = "1ms"\n'
        f'outages = [{{ start = {_at(-7200)}, duration = "3h", kind = "error" }},\n'
        f'           {{ start = {_at(-3600)}, duration = "2h", kind = "throttle", retry_after = "7s" }},\n'
        f'           {{ start = {_at(-600)}, duration = "1m", kind = "down" }},\n'
        f'           {{ start = {_at(3600)}, duration = "1m", kind = "hang" }}]\n'
        '[providers.s2]\ntype = "sandbox"\nlatency = "1ms"\n'
        f'outages = [{{ start = {_at(-600)}, duration = "1m", kind = "down" }}]\n',
        '[channels.email]\nproviders = ["s1", "s2"]\n', 'channels = ["email"]')
    policy = parse_policy(text, "routing.toml", env={})
    # s1: the throttle started last of the two still running (the down one has ended, the hang
    # has not begun), with its own Retry-After
    delay, outcome, _ = SandboxAdapter("s1", policy.providers["s1"], AdapterContext()).timed_answer(_request())
    assert (outcome.status, outcome.retry_after_s) == (429, 7.0) and delay is not None
    # s2: its only outage is over: healthy
    delay, outcome, _ = SandboxAdapter("s2", policy.providers["s2"], AdapterContext()).timed_answer(_request())
    assert outcome.status == 200


def test_a_message_fails_over_while_the_outage_lasts(tmp_path: Path) -> None:
    text = policy_text(
        '[providers.s1]\ntype = "sandbox"\nlatency = "1ms"\nbreaker = false\n'
        f'outages = [{{ start = {_at(-1)}, duration = "1h", kind = "error" }}]\n'
        '[providers.s2]\ntype = "sandbox"\nlatency = "1ms"\n'
        f'outages = [{{ start = {_at(3600)}, duration = "1h", kind = "down" }}]\n',
        '[channels.email]\nproviders = ["s1", "s2"]\n', 'channels = ["email"]')

    async def main() -> None:
        async with router_for(tmp_path, text) as r:
            st_ = await finished(r, (await r.submit(send())).message_id)
            got = [(a["provider"], a["outcome"], a["status_code"]) for a in st_["attempts"]]
            assert st_["status"] == "delivered" and got == [("s1", "failed", 503), ("s2", "delivered", 200)]

    run(main)


def _check(tmp_path: Path, providers: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "routing.toml"
    f.write_text(policy_text(providers, '[channels.email]\nproviders = ["s1"]\n', 'channels = ["email"]'))
    return subprocess.run([sys.executable, "-m", "routingd.daemon.cli", "check", str(f)],
                          capture_output=True, text=True, timeout=60)


def test_bad_outages_are_one_line_each_naming_the_line(tmp_path: Path) -> None:
    p = _check(tmp_path, '[providers.s1]\ntype = "sandbox"\n'
                         'outages = [{ start = 2026-12-06T18:00:00, duration = "1m", kind = "error" },\n'
                         '           { start = "30s", duration = "1m", kind = "error" },\n'
                         '           { start = 2026-12-06T18:00:00Z, duration = "0s", kind = "error" },\n'
                         '           { start = 2026-12-06T18:00:00Z, duration = "1m", kind = "slow", error_rate = 0.5 },\n'
                         '           { start = 2026-12-06T18:00:00Z, duration = "1m", kind = "storm" }]\n')
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    expect = ["outages.0.start: 2026-12-06T18:00:00 has no time zone offset",
              "outages.1.start: expected a date-time with its offset, like 2026-12-06T18:00:00Z (no quotes), got '30s'",
              "outages.2.duration: an outage must last longer than 0",
              "outages.3: error_rate applies only to kind = \"flaky\", not \"slow\"",
              "outages.4.kind:"]
    assert len(lines) == len(expect), p.stderr
    for want in expect:
        assert sum(want in line and "routing.toml:" in line for line in lines) == 1, (want, p.stderr)


def test_a_well_formed_timeline_passes_check(tmp_path: Path) -> None:
    p = _check(tmp_path, '[providers.s1]\ntype = "sandbox"\n'
                         'outages = [{ start = 2026-12-06T18:00:00.250+01:00, duration = "2m", kind = "flaky", '
                         'error_rate = 0.3 }]\n')
    assert p.returncode == 0, p.stderr


def test_the_simulator_refuses_a_sandbox_timeline_rather_than_ignore_it(tmp_path: Path) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text(policy_text('[providers.s1]\ntype = "sandbox"\n'
                                   f'outages = [{{ start = {_at(60)}, duration = "1m", kind = "error" }}]\n',
                                   '[channels.email]\nproviders = ["s1"]\nrequires = "email"\n',
                                   'channels = ["email"]'))
    scenario = tmp_path / "drill.toml"
    scenario.write_text('name = "d"\nduration = "10s"\nrouting = "routing.toml"\n[traffic]\nrate = 5\n')
    p = subprocess.run([sys.executable, "-m", "routingd.simulator.cli", str(scenario)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"{routing}:" in p.stderr and "providers.s1.outages" in p.stderr
    assert "the simulator takes outages from the scenario's [[outages]]" in p.stderr


# ------------------------------------------------------------------ simulate --live


def test_live_drives_the_drills_outages_through_the_sandboxes_own_timeline(tmp_path: Path) -> None:
    sc = load_scenario(shipped_drills()["email-throttle"])
    prep = prepare_live(sc, load_policy(sc.routing_path), str(tmp_path), 10.0, None)
    t0 = 1_800_000_000.125
    doc = with_timeline(prep.routing, prep.setup, t0)
    assert "outages" not in prep.routing["providers"]["ses"]        # the simulated run's file: none
    text = to_toml(doc)
    policy = parse_policy(text, "live.toml", env={})
    want = [(o.provider, o.kind, o.start_s, o.end_s, o.update) for o in prep.setup.outages]
    assert want, "the drill has outages"
    got = []
    for name, cfg in policy.providers.items():
        for o in cfg.outages:
            start = o.start.timestamp() - t0
            got.append((name, o.kind, round(start, 6), round(start + o.duration / 1000.0, 6),
                        o.behaviour_update()))
    assert sorted(got) == sorted((p, k, round(s, 6), round(e, 6), u) for p, k, s, e, u in want)
    # to the microsecond, on the wall clock the daemon's sandbox reads
    assert tomllib.loads(text)["providers"]["ses"]["outages"][0]["start"].timestamp() == \
        t0 + prep.setup.outages[0].start_s


def test_a_daemon_with_a_timeline_serves_reloads_and_shows_it(tmp_path: Path) -> None:
    """A real `routingd serve`: a send during the outage fails over, the operator's views and
    `explain` work, and a reload that moves the outage is taken."""
    from daemon_process import DaemonProcess

    def text(start: float) -> str:
        return policy_text('[providers.s1]\ntype = "sandbox"\nlatency = "1ms"\nbreaker = false\n'
                           f'outages = [{{ start = {_at(start)}, duration = "1h", kind = "down" }}]\n'
                           '[providers.s2]\ntype = "sandbox"\nlatency = "1ms"\n',
                           '[channels.email]\nproviders = ["s1", "s2"]\n', 'channels = ["email"]',
                           daemon="watch = false")      # reloaded when told only

    d = DaemonProcess(tmp_path, text(-1))
    with d:
        st_ = d.wait_status(d.send({"to": {"email": "a@example.com"}, "content": {"title": "t", "body": "b"}}),
                            "delivered")
        assert [(a["provider"], a["outcome"]) for a in st_["attempts"]] == [("s1", "network"), ("s2", "delivered")]
        for path in ("/v1/config", "/v1/providers", "/ui", "/metrics"):
            assert d.get(path).status == 200, path
        d.write_config(text(3600))            # the outage moved an hour ahead
        r = d.post("/-/reload")
        assert r.status == 200 and r.json()["status"] == "reloaded", r.body
        st_ = d.wait_status(d.send({"to": {"email": "a@example.com"}, "content": {"title": "t", "body": "b"}}),
                            "delivered")
        assert [a["provider"] for a in st_["attempts"]] == ["s1"]
        p = subprocess.run([sys.executable, "-m", "routingd.daemon.cli", "explain", "default", "--config",
                            str(d.config_path)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert "Traceback" not in d.log_text()
        assert d.stop() == 0
