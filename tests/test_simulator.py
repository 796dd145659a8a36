"""The simulator against first-principles answers, its determinism and its hierarchy check.

Small scenarios whose outcome can be worked out by hand: a primary that hangs for the whole
run, a provider timeout T and a backup with constant latency L.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_core_build import copy_package

from routingd.daemon.core.engine import Event, Finish, StartAttempt
from routingd.daemon.config_files import load_policy
from routingd.daemon.core.policy import PolicyError
from routingd.simulator.invariants import HierarchyChecker
from routingd.simulator.report import build_report
from routingd.simulator.runner import RunResult, run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "simulator" / "scenarios"

T = 2.0      # primary's provider timeout (s)
L = 0.3      # backup's constant latency (s)


def write_routing(tmp: Path, breaker: str) -> Path:
    """The primary's breaker as given; a table without `slow` gets `slow = false`: the first-
    principles tests derive the timeout path (the shipped default's mark at half the timeout,
    issue 20, has its own tests that set `slow` or pass `true`)."""
    if breaker.startswith("{") and "slow" not in breaker:
        breaker = breaker[:-1].rstrip() + ', slow = false }'
    path = tmp / "routing.toml"
    path.write_text(textwrap.dedent(f"""
        version = 1
        [timeouts]
        provider = "{int(T * 1000)}ms"
        channel = "1m"
        message = "5m"

        [providers.primary]
        type = "sandbox"
        latency = "50ms"
        breaker = {breaker}

        [providers.backup]
        type = "sandbox"
        latency = "{int(L * 1000)}ms"
        breaker = false

        [channels.email]
        providers = ["primary", "backup"]

        [routes.default]
        channels = ["email"]
    """))
    return path


# The first-principles answers leave out the store's commit before each call ([simulation]
# commit_delay, tested on its own below): with it every time would be that much longer.
NO_COMMIT = 'commit_delay = "0ms"\n'


def write_scenario(tmp: Path, body: str = "", duration: str = "2m", rate: float = 5, exact: bool = True) -> Path:
    body = textwrap.dedent(body)
    if exact:
        body = (body.replace("[simulation]\n", "[simulation]\n" + NO_COMMIT, 1) if "[simulation]\n" in body
                else body + "\n[simulation]\n" + NO_COMMIT)
    path = tmp / "hang.toml"
    path.write_text(textwrap.dedent(f"""
        duration = "{duration}"
        seed = 11
        routing = "routing.toml"

        [traffic]
        rate = {rate}

        [[outages]]
        provider = "primary"
        start = "0s"
        duration = "1h"
        kind = "hang"
    """) + body)
    return path


def simulate(scenario: Path, seed: int | None = None) -> RunResult:
    sc = load_scenario(str(scenario))
    return run(bind_scenario(sc, load_policy(sc.routing_path), seed=seed), trace=True)


def test_breaker_off_every_message_pays_timeout_plus_backup_latency(tmp_path: Path) -> None:
    write_routing(tmp_path, "false")
    res = simulate(write_scenario(tmp_path))
    m = res.trace
    assert m.messages > 400                       # ~5/s for 2 minutes
    assert all(s == "delivered" for s in m.status)
    for ttd in m.times_to_deliver():
        assert ttd == pytest.approx(T + L, abs=1e-9)
    assert m.attempts == [2] * m.messages
    rep = build_report(res)
    assert rep["time_to_deliver_s"]["p50"] == pytest.approx(T + L, abs=1e-6)
    assert rep["time_to_deliver_s"]["max"] == pytest.approx(T + L, abs=1e-6)
    assert rep["attempts_per_message"] == {"mean": 2.0, "max": 2}
    assert rep["failovers"] == {"provider": m.messages, "channel": 0}
    assert rep["providers"]["primary"]["timeouts"] == m.messages
    assert rep["providers"]["primary"]["skipped"] == 0
    assert rep["providers"]["backup"]["delivered"] == m.messages
    assert rep["violations"] == 0
    # nothing ever stops waiting on the hung primary
    assert rep["outages"][0]["time_to_route_around_s"] is None


NO_CUT = """
    [simulation]
    cut_inflight_on_breaker_open = false
"""


def test_breaker_on_only_the_first_burst_and_one_probe_per_cooldown_pay_the_timeout(tmp_path: Path) -> None:
    """Without the in-flight cut: every message on the primary waits out its own timeout."""
    failures, cooldown = 3, 10.0
    write_routing(tmp_path, f'{{ failures = {failures}, cooldown = "{int(cooldown)}s" }}')
    res = simulate(write_scenario(tmp_path, NO_CUT))
    m = res.trace
    acc = m.accepted_at
    # First principles: the n-th failure is the n-th message's timeout, at accept + T; the
    # breaker opens there. Every message accepted before that tried the primary. Then one
    # probe per cooldown: the first message accepted once the cooldown is over; its timeout
    # re-opens the breaker for another cooldown.
    opened_at = acc[failures - 1] + T
    paying = {i for i, a in enumerate(acc) if a < opened_at}
    burst = len(paying)
    next_probe = opened_at + cooldown
    for i, a in enumerate(acc):
        if a >= next_probe:
            paying.add(i)
            next_probe = a + T + cooldown
    probes = len(paying) - burst
    assert burst >= failures and probes >= 5      # the scenario really exercises both
    for i in range(m.messages):
        ttd = m.delivered_at[i] - acc[i]
        if i in paying:
            assert ttd == pytest.approx(T + L, abs=1e-9), i
            assert m.attempts[i] == 2, i
        else:
            assert ttd == pytest.approx(L, abs=1e-9), i
            assert m.attempts[i] == 1, i
    rep = build_report(res)
    assert rep["providers"]["primary"]["attempts"] == len(paying)
    assert rep["providers"]["primary"]["skipped"] == m.messages - len(paying)
    assert rep["providers"]["primary"]["breaker_opened"] == 1
    assert rep["violations"] == 0
    # routed around once the breaker opened (the accept after it), not before
    tra = rep["outages"][0]["time_to_route_around_s"]
    assert tra is not None and acc[failures - 1] + T - 1.0 <= tra <= opened_at + 1.0


def test_breaker_opening_cuts_the_attempts_in_flight_on_the_primary_over_at_once(tmp_path: Path) -> None:
    """With the cut (the default): the messages in flight on the primary when its breaker opens
    are delivered at (breaker-open time) + L instead of at their own start + T + L."""
    failures, cooldown = 3, 10.0
    write_routing(tmp_path, f'{{ failures = {failures}, cooldown = "{int(cooldown)}s" }}')
    res = simulate(write_scenario(tmp_path, rate=20))
    m = res.trace
    acc = m.accepted_at
    # First principles: the breaker opens at the n-th message's timeout. Messages 0..n-1 time
    # out (their own start + T; the n-th is the one that opens it); every later message accepted
    # before it opens is cut over at that instant. Then one probe per cooldown pays T.
    opened_at = acc[failures - 1] + T
    timed_out = {i for i, a in enumerate(acc) if i < failures}
    cut = {i for i, a in enumerate(acc) if i >= failures and a < opened_at}
    next_probe = opened_at + cooldown
    for i, a in enumerate(acc):
        if a >= next_probe:
            timed_out.add(i)
            next_probe = a + T + cooldown
    assert len(cut) >= 20 and len(timed_out) >= failures + 5     # the scenario really exercises both
    for i in range(m.messages):
        delivered = m.delivered_at[i]
        if i in cut:
            assert delivered == pytest.approx(opened_at + L, abs=1e-9), i
            assert delivered - acc[i] < T + L - 1e-3, i               # it did not wait out T
            assert m.attempts[i] == 2, i
        elif i in timed_out:
            assert delivered - acc[i] == pytest.approx(T + L, abs=1e-9), i
            assert m.attempts[i] == 2, i
        else:
            assert delivered - acc[i] == pytest.approx(L, abs=1e-9), i
            assert m.attempts[i] == 1, i
    rep = build_report(res)
    primary = rep["providers"]["primary"]
    assert primary["attempts"] == len(timed_out) + len(cut)
    assert primary["timeouts"] == len(timed_out)
    assert primary["cancelled"] == len(cut)
    assert primary["breaker_opened"] == 1
    assert rep["violations"] == 0
    assert res.pending == 0

    # the same traffic without the cut: exactly the cut messages pay start + T + L instead
    res_no = simulate(write_scenario(tmp_path, NO_CUT, rate=20))
    assert res_no.trace.accepted_at == acc
    for i in cut:
        assert res_no.trace.delivered_at[i] - acc[i] == pytest.approx(T + L, abs=1e-9), i
    assert build_report(res_no)["providers"]["primary"]["cancelled"] == 0


def test_slow_call_detection_opens_the_breaker_at_the_nth_mark_and_hedges_every_probe(tmp_path: Path) -> None:
    """breaker.slow = S: an attempt on the hung primary counts as a failure at its start + S. The
    breaker opens at the n-th such mark (the n-th message's accept + S), and every message in flight
    on the primary is delivered at that instant + L. Each half-open probe is cut at its own mark:
    delivered at accept + S + L. Nothing on the primary ever waits out T."""
    failures, cooldown, slow = 3, 10.0, 0.25
    write_routing(tmp_path, f'{{ failures = {failures}, cooldown = "{int(cooldown)}s", slow = "{int(slow * 1000)}ms" }}')
    res = simulate(write_scenario(tmp_path, rate=20))
    m = res.trace
    acc = m.accepted_at
    opened_at = acc[failures - 1] + slow
    burst = {i for i, a in enumerate(acc) if a < opened_at}
    probes: set[int] = set()
    next_probe = opened_at + cooldown
    for i, a in enumerate(acc):
        if a >= next_probe:
            probes.add(i)
            next_probe = a + slow + cooldown           # the probe's mark re-opens it for a cooldown
    assert len(burst) >= failures + 1 and len(probes) >= 5      # the scenario exercises both
    for i in range(m.messages):
        delivered = m.delivered_at[i]
        if i in burst:
            assert delivered == pytest.approx(opened_at + L, abs=1e-9), i
            assert m.attempts[i] == 2, i
        elif i in probes:
            assert delivered - acc[i] == pytest.approx(slow + L, abs=1e-9), i
            assert m.attempts[i] == 2, i
        else:
            assert delivered - acc[i] == pytest.approx(L, abs=1e-9), i
            assert m.attempts[i] == 1, i
    rep = build_report(res)
    primary = rep["providers"]["primary"]
    assert primary["timeouts"] == 0                              # nobody waited out T
    assert primary["cancelled"] == len(burst) + len(probes)
    assert primary["breaker_opened"] == 1
    assert rep["violations"] == 0 and res.pending == 0


def test_the_cut_is_a_scenario_option_and_a_run_override(tmp_path: Path) -> None:
    write_routing(tmp_path, '{ failures = 3, cooldown = "10s" }')
    sc = load_scenario(str(write_scenario(tmp_path, NO_CUT, duration="20s", rate=20)))
    assert sc.model.simulation.cut_inflight_on_breaker_open is False
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    off, on = run(setup), run(setup, cut_inflight=True)
    assert off.metrics.stats["primary"].cancelled == 0
    assert on.metrics.stats["primary"].cancelled > 0
    bad = tmp_path / "bad.toml"
    bad.write_text(write_scenario(tmp_path, exact=False).read_text() + "\n[simulation]\ncut_inflight = true\n")
    with pytest.raises(PolicyError) as e:
        load_scenario(str(bad))
    assert any("simulation.cut_inflight" in line for line in e.value.lines())


def test_same_seed_same_report_and_another_seed_differs() -> None:
    sc = load_scenario(str(DRILLS / "email-5xx-storm.toml"))
    policy = load_policy(sc.routing_path)

    def report(seed: int | None = None) -> dict:
        rep = build_report(run(bind_scenario(sc, policy, seed=seed)))
        rep.pop("wall_s")
        return rep

    first, again = report(), report()
    assert first == again
    other = report(seed=sc.model.seed + 1)
    assert other["messages"] != first["messages"] or other["time_to_deliver_s"] != first["time_to_deliver_s"]


@pytest.mark.parametrize("drill", ["email-primary-hang", "email-receipts-never-come", "email-throttle"])
def test_holding_back_wake_ups_changes_nothing(drill: str) -> None:
    """The runner holds back a wake-up while an earlier answer of the same message is queued (it
    is usually dropped before it comes due); scheduling every one at once gives the same run."""
    sc = load_scenario(str(DRILLS / f"{drill}.toml"))
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    held, plain = run(setup, trace=True), run(setup, hold_wakeups=False, trace=True)
    reports = [build_report(r) for r in (held, plain)]
    for rep in reports:
        rep.pop("wall_s")
    assert reports[0] == reports[1]
    rows = [(r.trace.a_start, r.trace.a_end, r.trace.a_outcome, r.trace.delivered_at,
             r.trace.finished_at, r.sim_end_s) for r in (held, plain)]
    assert rows[0] == rows[1]
    # not vacuous: wake-ups decided things here (deadlines hit, back-offs, receipt timeouts)
    assert sum(p["timeouts"] for p in reports[0]["providers"].values()) > 0 or reports[0]["failovers"]["provider"] > 0


def test_held_back_wake_ups_come_when_an_answer_does_not_replace_them(tmp_path: Path) -> None:
    """Parallel channels: the fast channel's answer is queued before the hanging primary's deadline,
    and handling it leaves that deadline wanted (the engine sends no new SetTimer), so the held
    wake-up must be scheduled then; receipts and a throttling window on top."""
    (tmp_path / "routing.toml").write_text(textwrap.dedent("""
        version = 1
        [timeouts]
        provider = "1s"
        channel = "20s"
        message = "1m"
        [failover]
        on = [429, "5xx", "timeout", "network"]
        [providers.primary]
        type = "sandbox"
        latency = { median = "50ms", p99 = "300ms" }
        confirm = "receipt"
        receipt_timeout = "2s"
        receipt_delay = { median = "500ms", p99 = "3s" }
        retries = 1
        breaker = { slow = false }          # the deadline path, without the default's slow-call mark
        [providers.backup]
        type = "sandbox"
        latency = { median = "80ms", p99 = "900ms" }
        error_rate = 0.05
        [providers.sms]
        type = "sandbox"
        latency = { median = "30ms", p99 = "200ms" }
        [channels.email]
        providers = ["primary", "backup"]
        [channels.sms]
        providers = ["sms"]
        [routes.default]
        method = "all"
        channels = ["email", "sms"]
    """))
    scenario = write_scenario(tmp_path, duration="1m", rate=20, body="""
        [[outages]]
        provider = "backup"
        start = "20s"
        duration = "20s"
        kind = "throttle"
    """)
    sc = load_scenario(str(scenario))
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    held, plain = run(setup, trace=True), run(setup, hold_wakeups=False, trace=True)
    reports = [build_report(r) for r in (held, plain)]
    for rep in reports:
        rep.pop("wall_s")
    assert reports[0] == reports[1]
    assert [r.trace.a_end for r in (held, plain)] == [plain.trace.a_end] * 2
    assert held.pending == 0 and held.checker.total == 0
    stats = reports[0]["providers"]
    assert stats["primary"]["timeouts"] > 0 and stats["sms"]["delivered"] > 0   # hangs and receipt timeouts
    assert stats["backup"]["failed"] > 0


def test_what_if_routing_files_get_the_same_traffic(tmp_path: Path) -> None:
    write_routing(tmp_path, "false")
    scenario = write_scenario(tmp_path)
    on = tmp_path / "breaker-on.toml"
    on.write_text((tmp_path / "routing.toml").read_text().replace(
        "breaker = false\n\n[providers.backup]", 'breaker = { failures = 3, cooldown = "10s" }\n\n[providers.backup]'))
    sc = load_scenario(str(scenario))
    runs = [run(bind_scenario(sc, load_policy(str(p)), str(p)), trace=True) for p in (tmp_path / "routing.toml", on)]
    assert runs[0].trace.accepted_at == runs[1].trace.accepted_at
    reps = [build_report(r) for r in runs]
    assert reps[0]["time_to_deliver_s"]["p50"] == pytest.approx(T + L)
    assert reps[1]["time_to_deliver_s"]["p50"] == pytest.approx(L)


def test_receipt_timeouts_and_late_receipts(tmp_path: Path) -> None:
    """confirm = "receipt": no receipt ever -> a timeout at 2xx + receipt_timeout, then failover."""
    (tmp_path / "routing.toml").write_text(textwrap.dedent("""
        version = 1
        [timeouts]
        provider = "2s"
        channel = "1m"
        message = "5m"
        [providers.primary]
        type = "sandbox"
        latency = "100ms"
        confirm = "receipt"
        receipt_timeout = "1s"
        breaker = false
        [providers.backup]
        type = "sandbox"
        latency = "300ms"
        breaker = false
        [channels.email]
        providers = ["primary", "backup"]
        [routes.default]
        channels = ["email"]
    """))
    path = write_scenario(tmp_path, duration="30s")
    path.write_text(path.read_text().replace('kind = "hang"', 'kind = "no-receipts"'))
    res = simulate(path)
    for ttd in res.trace.times_to_deliver():
        assert ttd == pytest.approx(0.1 + 1.0 + 0.3, abs=1e-9)
    rep = build_report(res)
    assert rep["providers"]["primary"]["timeouts"] == rep["messages"]
    assert rep["violations"] == 0


def test_hierarchy_checker_counts_an_attempt_past_its_deadline() -> None:
    """The independent check is able to fail: hand it a stream that breaks the hierarchy."""
    sc = load_scenario(str(DRILLS / "email-primary-hang.toml"))
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    chk = HierarchyChecker(setup.plans)
    # bundled routing.toml: provider 2s, channel 10s, message 1m
    chk.on_accept(0, "default", 0.0)
    chk.on_event(0, Event("channel_started", 0.0, {"channel": "email"}))
    chk.on_attempt_started(0, StartAttempt("a1", "m0", "email", "ses", 1, 1.0, 3.5, "k"))   # 3.5 > 1 + 2
    chk.on_event(0, Event("attempt_ended", 3.25, {"attempt_id": "a1", "outcome": "timeout"}))
    chk.on_attempt_stopped("a1", 3.25)
    chk.on_event(0, Event("channel_finished", 10.5, {"channel": "email"}))
    chk.on_attempt_started(0, StartAttempt("a2", "m0", "sms", "twilio", 1, 11.0, 13.0, "k"))
    chk.on_attempt_stopped("a2", 11.5)
    chk.on_finish(0, Finish("expired", 61.0, None))
    chk.finish_run(70.0)
    assert chk.counts == {
        "attempt granted a deadline beyond the hierarchy": 1,
        "attempt ran past its deadline": 1,
        "attempt kept running past its deadline": 1,
        "channel ran past its deadline": 1,
        "attempt outside a running channel": 1,
        "message ran past its deadline": 1,
    }
    clean = HierarchyChecker(setup.plans)
    clean.on_accept(0, "default", 0.0)
    clean.on_event(0, Event("channel_started", 0.0, {"channel": "email"}))
    clean.on_attempt_started(0, StartAttempt("a1", "m0", "email", "ses", 1, 1.0, 3.0, "k"))
    clean.on_event(0, Event("attempt_ended", 3.0, {"attempt_id": "a1", "outcome": "timeout"}))
    clean.on_attempt_stopped("a1", 3.0)
    clean.on_event(0, Event("channel_finished", 10.0, {"channel": "email"}))
    clean.on_finish(0, Finish("undeliverable", 10.0, None))
    clean.finish_run(70.0)
    assert clean.total == 0


def test_hierarchy_checker_counts_work_outside_a_message_and_what_never_ends() -> None:
    """The checks that hang on the driver's own inputs (accept, StartAttempt, Finish, end of run)."""
    sc = load_scenario(str(DRILLS / "email-primary-hang.toml"))
    chk = HierarchyChecker(bind_scenario(sc, load_policy(sc.routing_path)).plans)
    # message 0: an attempt that never ends in the engine's events, and work after the Finish
    chk.on_accept(0, "default", 0.0)
    chk.on_event(0, Event("channel_started", 0.0, {"channel": "email"}))
    chk.on_attempt_started(0, StartAttempt("a1", "m0", "email", "ses", 1, 0.0, 2.0, "k"))
    chk.on_attempt_stopped("a1", 1.0)
    chk.on_attempt_started(0, StartAttempt("a2", "m0", "email", "ses", 2, 11.0, 10.0, "k"))   # channel ends at 10
    chk.on_attempt_stopped("a2", 11.5)
    chk.on_finish(0, Finish("undeliverable", 12.0, None))
    chk.on_event(0, Event("channel_started", 13.0, {"channel": "sms"}))
    chk.on_attempt_started(0, StartAttempt("a3", "m0", "sms", "twilio", 1, 13.0, 15.0, "k"))
    chk.on_attempt_stopped("a3", 14.0)
    # message 1 was never accepted; message 2 never finishes and its attempt never stops
    chk.on_attempt_started(1, StartAttempt("b1", "m1", "email", "ses", 1, 5.0, 7.0, "k"))
    chk.on_attempt_stopped("b1", 6.0)
    chk.on_accept(2, "default", 20.0)
    chk.on_event(2, Event("channel_started", 20.0, {"channel": "email"}))
    chk.on_attempt_started(2, StartAttempt("c1", "m2", "email", "ses", 1, 20.0, 22.0, "k"))
    chk.finish_run(30.0)
    assert chk.counts == {
        "attempt started after its channel deadline": 1,
        "attempt kept running past its deadline": 1,        # a2, necessarily
        "attempt outlived its message": 2,                  # a1 and a2: no attempt_ended
        "work after the message finished": 2,               # the channel and the attempt
        "attempt of a message never accepted": 1,
        "attempt never stopped": 1,
        "message never finished": 1,
    }


# The tampering runs in a child process on a copy of the package without the compiled extensions
# (tests/test_core_build.py copy_package): the installed driver is compiled (setup.py), and a
# compiled module calls the engine's Delivery directly, past any monkeypatch. The compiled and
# the pure-Python driver give the same reports (test_core_build), so the catch is the same.
TAMPERED = """
import json, sys
from typing import Any
from routingd.daemon.config_files import load_policy
from routingd.daemon.core.engine import Delivery, Event, Finish, StartAttempt
from routingd.simulator import runner, simulator_build
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario

assert simulator_build() == "pure Python", simulator_build()
ALTER = {
    "longer_deadlines": lambda cmds: [c._replace(deadline=c.deadline + 1.0) if type(c) is StartAttempt else c
                                      for c in cmds],
    "no_attempt_ended": lambda cmds: [c for c in cmds if not (type(c) is Event and c.type == "attempt_ended")],
    "no_finish": lambda cmds: [c for c in cmds if type(c) is not Finish],
}


class Tampered:      # a Delivery whose commands pass through ALTER[sys.argv[2]] before the driver sees them
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._d = Delivery(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._d, name)
        if name in ("start", "on_outcome", "on_receipt", "on_timer", "on_provider_unhealthy"):
            return lambda *args: ALTER[sys.argv[2]](attr(*args))
        return attr


def simulate() -> Any:
    sc = load_scenario(sys.argv[1])
    return runner.run(bind_scenario(sc, load_policy(sc.routing_path)), trace=True)


clean = simulate().checker.total
runner.Delivery = Tampered      # type: ignore[misc]
res = simulate()
print(json.dumps({"clean": clean, "counts": dict(res.checker.counts), "messages": res.trace.messages,
                  "attempts": len(res.trace.a_msg)}))
"""


@pytest.mark.parametrize("alter, kind", [
    ("longer_deadlines", "attempt granted a deadline beyond the hierarchy"),
    ("no_attempt_ended", "attempt outlived its message"),
    ("no_finish", "message never finished"),
])
def test_the_run_catches_an_engine_that_breaks_the_hierarchy(tmp_path: Path, alter: str, kind: str) -> None:
    """The driver hands the checker what it knows from the engine's commands (StartAttempt, Finish)
    and from its own accepts: an engine that lies in them is caught in a whole run."""
    write_routing(tmp_path, "false")
    scenario = write_scenario(tmp_path, duration="10s")
    tree = copy_package(tmp_path / "pure", compiled=False)
    p = subprocess.run([sys.executable, "-c", TAMPERED, str(scenario), alter], cwd="/", capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tree)}, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    assert got["clean"] == 0
    per_message = got["messages"] if kind == "message never finished" else got["attempts"]
    assert per_message > 0
    assert got["counts"] == {kind: per_message}


def test_the_report_counts_slow_call_marks_per_provider(tmp_path: Path) -> None:
    """Each attempt_slow event is one `slow` in its provider's report row; without `slow` none."""
    write_routing(tmp_path, '{ failures = 3, cooldown = "10s", slow = "250ms" }')
    res = simulate(write_scenario(tmp_path, duration="30s", rate=20))
    rep = build_report(res)
    # first principles: the burst's first three marks open the breaker (the third cuts the rest
    # in flight), then every probe is marked once; the backup has no breaker and no marks
    acc = res.trace.accepted_at
    opened_at = acc[2] + 0.25
    probes, next_probe = 0, opened_at + 10.0
    for a in acc:
        if a >= next_probe:
            probes += 1
            next_probe = a + 0.25 + 10.0
    assert rep["providers"]["primary"]["slow"] == 3 + probes and probes >= 1
    assert rep["providers"]["backup"]["slow"] == 0
    write_routing(tmp_path, '{ failures = 3, cooldown = "10s", slow = false }')
    assert build_report(simulate(write_scenario(tmp_path, duration="30s", rate=20)))["providers"]["primary"]["slow"] == 0
    # the shipped default (slow unset): marked at half the attempt timeout
    write_routing(tmp_path, "true")
    assert build_report(simulate(write_scenario(tmp_path, duration="30s", rate=20)))["providers"]["primary"]["slow"] > 0


def test_the_commit_delay_comes_before_every_call_and_the_deadline_does_not_wait_for_it(tmp_path: Path) -> None:
    """[simulation] commit_delay: the daemon commits each attempt's row before its call goes out,
    while the attempt's deadline runs from the engine's StartAttempt. So with the primary hung and
    no breaker every message pays the primary's timeout T (not T + C), then C before the backup's
    call, then its latency L."""
    C = 0.04
    write_routing(tmp_path, "false")
    res = simulate(write_scenario(tmp_path, f'[simulation]\ncommit_delay = "{int(C * 1000)}ms"\n', exact=False))
    m = res.trace
    assert m.messages > 400 and all(s == "delivered" for s in m.status)
    for ttd in m.times_to_deliver():
        assert ttd == pytest.approx(T + C + L, abs=1e-9)
    assert build_report(res)["violations"] == 0


def test_the_commit_delay_defaults_to_the_daemons_and_a_drawn_one_is_seeded(tmp_path: Path) -> None:
    from routingd.simulator.scenario import DEFAULT_COMMIT_DELAY
    write_routing(tmp_path, '{ failures = 3, cooldown = "10s" }')
    assert load_scenario(str(write_scenario(tmp_path, exact=False))).model.simulation.commit_delay \
        == DEFAULT_COMMIT_DELAY
    assert DEFAULT_COMMIT_DELAY.median > 0
    path = write_scenario(tmp_path, '[simulation]\ncommit_delay = { median = "5ms", p99 = "30ms" }\n',
                          duration="30s", rate=20, exact=False)
    first, second = (build_report(simulate(path)) for _ in range(2))
    first.pop("wall_s"), second.pop("wall_s")
    assert first == second
    # each call waits a drawn delay (the breaker routes most messages straight to the backup)
    assert first["time_to_deliver_s"]["p95"] > first["time_to_deliver_s"]["p50"] > L
