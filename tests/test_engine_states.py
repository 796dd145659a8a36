"""The provider-run state machine has one table (daemon/core/tree.py RUN_TRANSITIONS), and the engine
makes no transition the table does not list -- nor does the table list one the engine never makes.

The engine sets a run's state by plain attribute assignment (no check at run time: it is the hot
path). Here a pure-Python copy of the core (the compiled one cannot be instrumented) runs with a
_Run whose `state` checks every assignment against the table, through the random policies and
outcomes of tests/test_engine_properties.py and scripted drains and restarts.
"""

from __future__ import annotations

import importlib
import random
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

import test_engine_properties as props
from routingd.daemon.core import tree as compiled_tree

CORE = Path(__file__).resolve().parent.parent / "daemon" / "core"


@pytest.fixture(scope="module")
def pure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    """daemon/core/*.py loaded as the package `purecore` (sources only: never an extension)."""
    root = tmp_path_factory.mktemp("purecore")
    shutil.copytree(CORE, root / "purecore", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    sys.path.insert(0, str(root))
    try:
        mods = {n: importlib.import_module(f"purecore.{n}")
                for n in ("engine", "walk", "tree", "health", "plan", "policy")}
        assert importlib.import_module("purecore").core_build() == "pure Python"
        yield mods
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "purecore" or m.startswith("purecore.")]:
            del sys.modules[name]


def checked_run(tree: ModuleType, seen: set[tuple[int, int]]) -> type:
    table = tree.RUN_TRANSITIONS

    class CheckedRun(tree._Run):  # type: ignore[misc, name-defined]
        __slots__ = ("_st",)

        @property
        def state(self) -> int:
            return self._st

        @state.setter
        def state(self, new: int) -> None:
            old = getattr(self, "_st", None)
            if old is None:
                assert new == tree.IDLE, f"a run starts {tree.RUN_STATE_NAMES[new]}"
            else:
                assert new in table[old], \
                    f"{tree.RUN_STATE_NAMES[old]} -> {tree.RUN_STATE_NAMES[new]} is not in RUN_TRANSITIONS"
                seen.add((old, new))
            self._st = new
    return CheckedRun


def test_the_compiled_and_the_pure_core_name_the_same_states(pure: dict[str, ModuleType]) -> None:
    t = pure["tree"]
    assert t.RUN_TRANSITIONS == compiled_tree.RUN_TRANSITIONS
    assert t.RUN_STATE_NAMES == compiled_tree.RUN_STATE_NAMES
    assert set(t.RUN_TRANSITIONS) == set(range(len(t.RUN_STATE_NAMES)))


def test_every_run_state_transition_is_in_the_table_and_every_listed_one_happens(
        pure: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, tree = pure["engine"], pure["tree"]
    seen: set[tuple[int, int]] = set()
    monkeypatch.setattr(pure["walk"], "_Run", checked_run(tree, seen))     # where a channel makes its runs
    # the random-policy driver of the property tests, on the pure copy
    for name in ("Delivery", "CancelAttempt", "Command", "Finish", "Outcome", "RecordEvent", "SetTimer",
                 "StartAttempt"):
        monkeypatch.setattr(props, name, getattr(engine, name))
    monkeypatch.setattr(props, "HealthTracker", pure["health"].HealthTracker)
    for name in ("ChannelStep", "GroupStep", "Plan", "resolve_plan"):
        monkeypatch.setattr(props, name, getattr(pure["plan"], name))
    monkeypatch.setattr(props, "parse_policy", pure["policy"].parse_policy)

    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(doc=props.policies(), msgs=props.messages, seed=props.st.integers(0, 2**32 - 1))
    def random_routing(doc: dict[str, Any], msgs: list[tuple[dict[str, Any], float]], seed: int) -> None:
        res = props.simulate(doc, msgs, seed)
        props.check(res)
        # every event type the engine emits is one of the names it declares
        assert {c.type for _, c in res.commands if isinstance(c, engine.Event)} <= engine.EVENT_TYPES

    random_routing()
    drains_and_restarts(pure)
    rate_limited(pure)
    names = tree.RUN_STATE_NAMES
    listed = {(a, b) for a, bs in tree.RUN_TRANSITIONS.items() for b in bs if a != tree.DONE}
    never = sorted(f"{names[a]} -> {names[b]}" for a, b in listed - seen)
    assert never == [], "listed in RUN_TRANSITIONS but never made by the engine"


def drains_and_restarts(pure: dict[str, ModuleType]) -> None:
    """What the random driver never does: drain (held runs) and adopt (an awaited receipt)."""
    engine, policy, plan_mod = pure["engine"], pure["policy"], pure["plan"]
    text = """
[timeouts]
provider = "2s"
channel = "30s"
message = "1m"
[providers.a]
type = "sandbox"
confirm = "receipt"
receipt_timeout = "5s"
retries = 2
[providers.b]
type = "sandbox"
[channels.email]
providers = ["a", "b"]
[routes.default]
channels = ["email"]
"""
    plan = plan_mod.resolve_plan(policy.parse_policy(text, "routing.toml", env={}), "default")
    # idle -> held (a first try while draining); backoff -> held (its retry while draining)
    d = engine.Delivery("h", plan, {}, 0.0, random.Random(1))
    d.drain()
    d.start(0.0)
    d.on_timer(60.0)                # held -> done: the message deadline cuts it
    assert d.status == "expired"
    d = engine.Delivery("r", plan, {}, 0.0, random.Random(1))
    cmds = d.start(0.0)
    aid = next(c.attempt_id for c in cmds if isinstance(c, engine.StartAttempt))
    d.on_outcome(aid, engine.Outcome(503), 0.1)
    d.drain()
    d.on_timer(10.0)
    # idle -> awaiting (adopted after a restart), awaiting -> backoff (its receipt failed)
    d = engine.Delivery("x", plan, {}, 0.0, random.Random(1), run=1)
    d.adopt([engine.AttemptRecord("x.0.1", "email", "a", 1, 0.0, 2.0, None, None, 202, 5.0)])
    d.start(1.0)
    d.on_receipt("x.0.1", "failed", 1.5)


def rate_limited(pure: dict[str, ModuleType]) -> None:
    """The queued state (daemon/core/limiter.py): a run waiting for its turn on a limited provider."""
    engine, policy, plan_mod = pure["engine"], pure["policy"], pure["plan"]
    limiter = importlib.import_module("purecore.limiter")
    fleet_mod = importlib.import_module("purecore.fleet")
    text = """
[timeouts]
provider = "2s"
channel = "30s"
message = "1m"
[providers.a]
type = "sandbox"
retries = 1
backoff = { base = "1ms", max = "1ms" }
[channels.email]
providers = ["a"]
[routes.default]
channels = ["email"]
"""
    plan = plan_mod.resolve_plan(policy.parse_policy(text, "routing.toml", env={}), "default")
    lim = limiter.Limiter({"a": limiter.Limit(rate=1.0, burst=1.0)})
    lim.live = fleet_mod._waiting

    def new(name: str, now: float) -> tuple[Any, list[Any]]:
        d = engine.Delivery(name, plan, {}, now, random.Random(1), limiter=lim)
        return d, d.start(now)

    d1, cmds = new("q1", 0.0)                     # idle -> attempting (the one token)
    d2, _ = new("q2", 0.0)                        # idle -> queued
    aid = next(c.attempt_id for c in cmds if isinstance(c, engine.StartAttempt))
    d1.on_outcome(aid, engine.Outcome(503), 0.0005)
    d1.on_timer(0.0015)                           # backoff -> queued (its retry waits its turn)
    (w, _p, granted, wait), = lim.due(1.0)        # q2's turn
    d2.on_slot(w.ref, granted, wait, 1.0)         # queued -> attempting
    d1.drain()
    (w, _p, granted, wait), = lim.due(2.0)        # q1's turn, but it is draining
    d1.on_slot(w.ref, granted, wait, 2.0)         # queued -> held
    new("q3", 2.0)                                # (q1's refunded token)
    d3, _ = new("q4", 2.0)
    d3.on_timer(32.0)                             # queued -> done (its channel deadline)
    assert d3.status == "undeliverable"
