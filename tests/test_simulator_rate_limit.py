"""The simulator drives routingd's own rate limit (daemon/core/limiter.py) through the same Fleet as
the daemon: first principles on a saturated provider, and the shipped email-burst drill.

A traffic rate r above the limit L: the limited provider serves L a second in steady state, and
every message whose turn would come too late spills to the backup at once, so the share that
spills is (r - L) / r (docs/simulator.md "Rate limits").
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from routingd.daemon.config_files import load_policy
from routingd.simulator.runner import run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario

ROUTING = """
[timeouts]
provider = "2s"
channel = "5s"
message = "1m"
[providers.primary]
type = "sandbox"
latency = "20ms"
outbound_rate_limit = "{limit}/s"
burst = 1
breaker = false
[providers.backup]
type = "sandbox"
latency = "20ms"
breaker = false
[channels.email]
providers = ["primary", "backup"]
[routes.default]
channels = ["email"]
"""


@pytest.mark.parametrize("rate,limit", [(25.0, 10.0), (40.0, 30.0), (12.0, 4.0)])
def test_a_constant_rate_above_the_limit_spills_the_share_above_it(tmp_path: Path, rate: float, limit: float) -> None:
    (tmp_path / "routing.toml").write_text(ROUTING.format(limit=int(limit)))
    (tmp_path / "s.toml").write_text(textwrap.dedent(f"""
        duration = "10m"
        seed = 5
        routing = "routing.toml"
        [traffic]
        rate = {rate}
    """))
    sc = load_scenario(str(tmp_path / "s.toml"))
    res = run(bind_scenario(sc, load_policy(sc.routing_path)))
    m = res.metrics
    n = m.messages
    spilled = m.stats["primary"].spilled
    assert m.count("delivered") == n
    assert m.stats["primary"].spilled + m.stats["primary"].attempts == n
    # steady state: the primary serves `limit` a second, the rest spills (the first seconds,
    # while the queue fills, are a vanishing share of ten minutes)
    assert spilled / n == pytest.approx((rate - limit) / rate, abs=0.02)
    assert m.stats["primary"].attempts / 600.0 == pytest.approx(limit, rel=0.02)
