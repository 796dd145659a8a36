"""The simulator's client cancels ([traffic] cancel, cancel_after; docs/simulator.md): worked out
by hand. Every provider takes at least L to answer, so a cancel at C < L comes before any
delivery: each message picked for a cancel ends cancelled, with no delivered attempt, and the
picks are a Bernoulli(share) draw per message."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from routingd.daemon.config_files import load_policy
from routingd.daemon.core.policy import PolicyError
from routingd.simulator.metrics import CANCELLED, DELIVERED
from routingd.simulator.report import build_report
from routingd.simulator.runner import RunResult, run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario

L = 1.0     # every provider's constant latency (s)

ROUTING = """
version = 1
[timeouts]
provider = "5s"
channel = "1m"
message = "5m"
[providers.primary]
type = "sandbox"
latency = "1s"
breaker = false
[providers.backup]
type = "sandbox"
latency = "1s"
breaker = false
[channels.email]
providers = ["primary", "backup"]
[routes.default]
channels = ["email"]
"""


def simulate(tmp: Path, traffic: str) -> RunResult:
    (tmp / "routing.toml").write_text(ROUTING)
    path = tmp / "cancel.toml"
    path.write_text(textwrap.dedent("""
        duration = "1m"
        seed = 7
        routing = "routing.toml"
        [providers.primary]
        error_rate = 0.3        # some messages fail over to the backup, so some cancels cut a second attempt
        [traffic]
        rate = 50
    """) + textwrap.dedent(traffic))
    sc = load_scenario(str(path))
    return run(bind_scenario(sc, load_policy(sc.routing_path)), trace=True)


def test_a_cancel_before_any_delivery_ends_the_share_of_messages_cancelled(tmp_path: Path) -> None:
    res = simulate(tmp_path, 'cancel = 0.1\ncancel_after = "300ms"\n')
    m = res.trace
    assert m is not None
    n = m.messages
    k = len(m.cancel_at)
    assert res.metrics.cancel_requests == k
    assert n > 2000
    # ~10% picked: within 4 standard deviations of Binomial(n, 0.1)
    assert abs(k - 0.1 * n) <= 4 * math.sqrt(n * 0.1 * 0.9), (k, n)
    # each pick came before any delivery, so each one, and no other message, ends cancelled
    assert {i for i, s in enumerate(m.status) if s == "cancelled"} == set(m.cancel_at)
    assert all(s == "delivered" for i, s in enumerate(m.status) if i not in m.cancel_at)
    stopped = 0
    for msg, end, out in zip(m.a_msg, m.a_end, m.a_outcome):
        if msg in m.cancel_at:
            assert out != DELIVERED
            assert end is not None and end <= m.cancel_at[msg] + 1e-9    # nothing ran on after the cancel
            stopped += out == CANCELLED
    assert res.metrics.cancelled_attempts == stopped >= k        # each had an attempt in flight (L > 300ms)
    rep = build_report(res)
    assert rep["cancelled"] == k and rep["cancelled_attempts"] == stopped
    assert rep["delivered_ratio"] == 1.0               # of the messages not cancelled
    assert rep["violations"] == 0 and rep["pending"] == 0 and rep["ok"]


def test_a_cancel_after_the_delivery_changes_nothing_and_the_arrivals_are_the_same(tmp_path: Path) -> None:
    late = simulate(tmp_path, 'cancel = 0.1\ncancel_after = { median = "20s", p99 = "40s" }\n')
    plain = simulate(tmp_path, "")
    assert late.trace is not None and plain.trace is not None
    assert late.trace.cancel_at and late.metrics.count("cancelled") == 0
    assert late.metrics.cancelled_attempts == 0
    assert late.trace.accepted_at == plain.trace.accepted_at    # cancels draw from their own stream
    assert late.trace.status == plain.trace.status
    assert build_report(late)["violations"] == 0


@pytest.mark.parametrize("traffic,msg", [
    ("cancel = 0.1\n", "cancel needs cancel_after"),
    ('cancel_after = "2s"\n', "cancel_after without cancel"),
    ('cancel = 1.5\ncancel_after = "2s"\n', "less than or equal to 1"),
])
def test_cancel_keys_are_checked(tmp_path: Path, traffic: str, msg: str) -> None:
    with pytest.raises(PolicyError) as e:
        simulate(tmp_path, traffic)
    assert "traffic" in str(e.value) and msg in str(e.value)


def test_live_refuses_a_scenario_with_cancels_rather_than_running_without_them(tmp_path: Path) -> None:
    from routingd.simulator.live import prepare_live
    simulate(tmp_path, "")          # writes the files
    text = (tmp_path / "cancel.toml").read_text() + 'cancel = 0.1\ncancel_after = "1s"\n'
    (tmp_path / "cancel.toml").write_text(text)
    sc = load_scenario(str(tmp_path / "cancel.toml"))
    with pytest.raises(PolicyError) as e:
        prepare_live(sc, load_policy(sc.routing_path), str(tmp_path), 1.0, None)
    assert "traffic.cancel" in str(e.value) and "--live" in str(e.value)
