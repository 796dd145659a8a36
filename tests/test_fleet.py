"""The rules that span messages live once, in the core's Fleet, and both drivers obey that one object.

The Fleet (daemon/core/fleet.py) owns the shared breakers, the pending set, the breaker cut-over
worklist and the early-timer clamp. Here: its rules on a scripted scenario with a breaker opening
mid-flight, fed once the way the SimPy runner feeds it and once the way the asyncio Router does
(each with the very executor functions of the driver's shape), with the commands compared; the
real SimPy runner run on a drill where the breaker opens mid-flight, its cuts observed on its own
Fleet; and a guard that neither driver carries a rule of its own any more.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from routingd.daemon.core.engine import CancelAttempt, Command, Delivery, Event, Finish, Outcome, StartAttempt
from routingd.daemon.core.fleet import Fleet
from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.core.policy import parse_policy

REPO = Path(__file__).resolve().parent.parent

POLICY = """
[timeouts]
provider = "20s"
channel = "1m"
message = "2m"

[providers.primary]
type = "sandbox"
breaker = { failures = 2, cooldown = "10m" }
[providers.backup]
type = "sandbox"
[channels.email]
providers = ["primary", "backup"]
[routes.default]
channels = ["email"]
"""

E503 = Outcome(503)
OK = Outcome(200)


@dataclass
class Msg:
    """A driver's handle for one message (what the Fleet asks of one: `.delivery`)."""

    key: Any
    delivery: Delivery
    log: list[Command] = field(default_factory=list)


def plan():
    return resolve_plan(parse_policy(POLICY, "routing.toml", env={}), "default")


def script(fleet: Fleet[Msg], key_of: Any, execute: Any) -> dict[str, Msg]:
    """Four messages start on `primary` at t=0..3; m0 and m1 fail with a 503 at t=10 and t=11
    (the second opens the breaker: failures = 2); m3 is answered 200 first at t=5."""
    msgs: dict[str, Msg] = {}
    p = plan()
    for i in range(4):
        name = f"m{i}"
        m = Msg(key_of(i), Delivery(name, p, {}, float(i), random.Random(i), fleet.health))
        msgs[name] = m
        fleet.admit(m.key, m)
        execute(m, m.delivery.start(float(i)))

    def outcome(name: str, o: Outcome, now: float) -> None:
        m = msgs[name]
        aid = next(c.attempt_id for c in m.log if isinstance(c, StartAttempt))
        execute(m, m.delivery.on_outcome(aid, o, now))

    outcome("m3", OK, 5.0)
    outcome("m0", E503, 10.0)
    outcome("m1", E503, 11.0)
    return msgs


def runner_shaped(fleet: Fleet[Msg]) -> dict[str, Msg]:
    """As simulator/runner.py uses the Fleet: keys by arrival, executes, then cut_over if opened."""
    def execute(m: Msg, cmds: list[Command]) -> None:
        m.log += cmds
        for c in cmds:
            if isinstance(c, Finish):
                fleet.finished(m.key)
        if fleet.opened:
            fleet.cut_over(m.delivery.finished_at or max(c.at for c in cmds if isinstance(c, Event)), execute)
    return script(fleet, lambda i: i, execute)


def router_shaped(fleet: Fleet[Msg]) -> dict[str, Msg]:
    """As daemon/runtime/ uses it: keys by message id, the batch's own `now`, a failure handler."""
    failures: list[BaseException] = []

    def apply(m: Msg, cmds: list[Command], now: float) -> None:
        m.log += cmds
        for c in cmds:
            if isinstance(c, Finish):
                fleet.finished(m.key)
        if fleet.opened:
            fleet.cut_over(now, lambda lv, cs: apply(lv, cs, now), lambda lv, p, e: failures.append(e))

    def execute(m: Msg, cmds: list[Command]) -> None:
        now = max((c.at for c in cmds if isinstance(c, Event)), default=0.0)
        apply(m, cmds, now)
    msgs = script(fleet, lambda i: f"m{i}", execute)
    assert failures == []
    return msgs


def test_a_breaker_opening_mid_flight_cuts_the_other_attempts_over_at_once() -> None:
    fleet: Fleet[Msg] = Fleet()
    msgs = runner_shaped(fleet)
    # m2 was still waiting on primary when m1's failure opened its breaker at t=11: cancelled
    # then and there, and its backup started at the same instant (no 20 s wait for its timeout)
    m2 = msgs["m2"].log
    cancel = [c for c in m2 if isinstance(c, CancelAttempt)]
    assert [c.reason for c in cancel] == ["breaker opened"]
    starts = [c for c in m2 if isinstance(c, StartAttempt)]
    assert [(s.provider, s.started_at) for s in starts] == [("primary", 2.0), ("backup", 11.0)]
    # m3 had delivered and left the pending set: nothing is cut there
    assert not any(isinstance(c, CancelAttempt) for c in msgs["m3"].log)
    assert set(fleet.pending) == {0, 1, 2}          # m3 finished; the others fail over to backup
    assert fleet.opened == [] and fleet.health.blocks("primary", 11.0)


def test_both_drivers_shapes_give_the_same_commands() -> None:
    """The same inputs through the Fleet as the runner drives it and as the Router drives it:
    the same commands, message by message (the rule is the Fleet's, not the driver's)."""
    a = runner_shaped(Fleet())
    b = router_shaped(Fleet())
    assert {k: m.log for k, m in a.items()} == {k: m.log for k, m in b.items()}


def test_without_the_cut_nothing_in_flight_is_touched() -> None:
    fleet: Fleet[Msg] = Fleet(cut_inflight=False)
    msgs = runner_shaped(fleet)
    assert not any(isinstance(c, CancelAttempt) for c in msgs["m2"].log)
    assert fleet.opened == [] and fleet.health.opened is None


def test_a_cut_over_started_inside_a_cut_over_returns_at_once() -> None:
    """Executing a cut batch may call cut_over again (the drivers do, after every batch): the
    running one drains the worklist, nothing recurses."""
    fleet: Fleet[Msg] = Fleet()
    depth = [0, 0]

    def execute(m: Msg, cmds: list[Command]) -> None:
        m.log += cmds
        depth[0] += 1
        depth[1] = max(depth[1], depth[0])
        fleet.opened.append("backup")       # as if this batch had opened another breaker
        fleet.cut_over(1.0, execute)
        depth[0] -= 1

    p = plan()
    m = Msg("m", Delivery("m", p, {}, 0.0, random.Random(0), fleet.health))
    fleet.admit("m", m)
    m.log += m.delivery.start(0.0)
    fleet.opened.append("primary")
    fleet.cut_over(1.0, execute)
    assert depth[1] == 1 and fleet.opened == []


def test_the_early_timer_clamp_never_hands_the_engine_a_time_before_the_one_asked() -> None:
    assert Fleet.wake_time(9.999999, 10.0) == 10.0
    assert Fleet.wake_time(10.5, 10.0) == 10.5


def test_one_messages_failure_is_handed_to_the_failure_handler_and_the_others_go_on() -> None:
    fleet: Fleet[Msg] = Fleet()
    p = plan()
    ms = []
    for i in range(3):
        m = Msg(i, Delivery(f"m{i}", p, {}, 0.0, random.Random(i), fleet.health))
        fleet.admit(i, m)
        m.log += m.delivery.start(0.0)
        ms.append(m)
    for m in ms[:2]:        # two failures open the breaker; the third message is in flight on it
        aid = next(c.attempt_id for c in m.log if isinstance(c, StartAttempt))
        m.log += m.delivery.on_outcome(aid, E503, 1.0)
    seen: list[Any] = []

    def execute(m: Msg, cmds: list[Command]) -> None:
        if m.key == 0:
            raise RuntimeError("boom")
        m.log += cmds

    fleet.cut_over(1.0, execute, lambda m, provider, e: seen.append((m.key, provider, str(e))))
    assert seen == [(0, "primary", "boom")]
    assert any(isinstance(c, CancelAttempt) for c in ms[2].log)


# --------------------------------------------------------------------------- the real drivers

DRIVERS = (REPO / "daemon" / "runtime", REPO / "simulator" / "runner.py")   # the daemon's: a package


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: p.name)
def test_no_driver_carries_a_rule_of_its_own(path: Path) -> None:
    """A driver that fed on_provider_unhealthy itself, made its own HealthTracker or clamped its
    own wake-ups would be re-implementing a rule of the Fleet (and could drift from the other)."""
    files = sorted(path.glob("*.py")) if path.is_dir() else [path]
    assert files
    trees = [ast.parse(f.read_text()) for f in files]
    attrs = {n.attr for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names = {n.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "on_provider_unhealthy" not in attrs
    assert "HealthTracker" not in names
    assert "Fleet" in names and "cut_over" in attrs and ("wake_time" in attrs or "wake_time" in names)


def test_the_simulator_cuts_through_its_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real SimPy runner, its primary hanging and its breaker opening mid-flight: the cuts go
    through the runner's Fleet at the instant the breaker opened, and the messages cut are the
    ones the report counts as cancelled on the primary."""
    import routingd.simulator.runner as runner
    from routingd.simulator.report import build_report
    from test_simulator import simulate, write_routing, write_scenario

    cuts: list[tuple[tuple[str, ...], float, int]] = []

    class Recording(Fleet):  # type: ignore[type-arg]
        def cut_over(self, now: float, execute: Any, failed: Any = None) -> None:
            if not self.opened or self._cutting:
                super().cut_over(now, execute, failed)
                return
            n = [0]

            def counting(h: Any, cmds: list[Command]) -> None:
                n[0] += sum(1 for c in cmds if isinstance(c, CancelAttempt) and c.reason == "breaker opened")
                execute(h, cmds)
            providers = tuple(self.opened)
            super().cut_over(now, counting, failed)
            cuts.append((providers, now, n[0]))

    monkeypatch.setattr(runner, "Fleet", Recording)
    write_routing(tmp_path, '{ failures = 3, cooldown = "10s" }')
    res = simulate(write_scenario(tmp_path, rate=20))
    assert res.pending == 0
    assert cuts and cuts[0][0] == ("primary",) and cuts[0][2] >= 20
    rep = build_report(res)
    assert rep["providers"]["primary"]["cancelled"] == sum(n for _, _, n in cuts)


# --------------------------------------------------------------------------- breakers heard from other processes


def test_a_breaker_heard_open_cuts_the_attempts_in_flight_there_as_a_local_one_does() -> None:
    fleet: Fleet[Msg] = Fleet()
    p = plan()
    m = Msg(0, Delivery("m0", p, {}, 0.0, random.Random(0), fleet.health))
    fleet.admit(0, m)
    m.log += m.delivery.start(0.0)                      # an attempt in flight on primary
    breakers = {"primary": (2, 600.0), "backup": (None, 0.0)}
    assert fleet.breaker_heard("primary", True, breakers, 1.0) == "opened"
    assert fleet.opened == ["primary"]
    fleet.cut_over(1.0, lambda h, cmds: h.log.extend(cmds))
    assert any(isinstance(c, CancelAttempt) for c in m.log)
    started = [c for c in m.log if isinstance(c, StartAttempt)]
    assert [c.provider for c in started] == ["primary", "backup"]
    assert fleet.breaker_heard("primary", False, breakers, 2.0) == "closed"
    assert not fleet.health.is_open("primary") and fleet.heard_ignored == 0


def test_a_breaker_heard_for_a_provider_the_policy_lacks_is_ignored_and_counted() -> None:
    fleet: Fleet[Msg] = Fleet()
    breakers = {"primary": (2, 600.0)}
    assert fleet.breaker_heard("gone-in-this-version", True, breakers, 1.0) is None
    assert fleet.breaker_heard("", False, breakers, 1.0) is None
    assert fleet.heard_ignored == 2
    assert fleet.opened == [] and fleet.health.snapshot() == {}
    assert fleet.breaker_heard("primary", True, {"primary": (2, float("nan"))}, 1.0) == "opened"
    assert not fleet.health.blocks("primary", 1.0)       # a NaN cooldown is none, never "open forever"
