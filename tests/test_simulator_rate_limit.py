"""The simulator drives routingd's own rate limit (daemon/core/limiter.py) through the same Fleet as
the daemon: first principles on a saturated provider, and the vendor's limit against routingd's.

A traffic rate r above the limit L: the limited provider serves L a second in steady state, and
every message whose turn would come too late spills to the backup at once, so the share that
spills is (r - L) / r (docs/simulator.md "First principles"). Equal limits on both sides get no
429 (docs/simulator.md "Why a 429 at equal limits").
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import pytest

from routingd.daemon.config_files import load_policy
from routingd.daemon.core.policy import PolicyError
from routingd.simulator.runner import run
from routingd.simulator.scenario import load_scenario, parse_scenario
from routingd.simulator.setup import bind_scenario

DRILLS = Path(__file__).resolve().parent.parent / "simulator" / "scenarios"

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


CHANNEL_S, PROVIDER_S = 5.0, 2.0
RUN_S = 300.0


def _run(tmp_path: Path, routing: str, scenario: str) -> Any:
    (tmp_path / "routing.toml").write_text(routing)
    (tmp_path / "s.toml").write_text(textwrap.dedent(scenario))
    sc = load_scenario(str(tmp_path / "s.toml"))
    return run(bind_scenario(sc, load_policy(sc.routing_path)))


@pytest.mark.parametrize("rate,limit", [(25.0, 10.0), (40.0, 30.0), (12.0, 4.0)])
def test_a_constant_rate_above_the_limit_spills_the_share_above_it(tmp_path: Path, rate: float, limit: float) -> None:
    res = _run(tmp_path, ROUTING.format(limit=int(limit)), f"""
        duration = "{int(RUN_S)}s"
        seed = 5
        routing = "routing.toml"
        [traffic]
        rate = {rate}
    """)
    m = res.metrics
    n = m.messages
    primary = m.stats["primary"]
    assert m.count("delivered") == n
    assert primary.spilled + primary.attempts == n          # each message tries primary once
    # The tolerances follow from the run (docs/simulator.md "First principles"): a bucket of
    # `burst` tokens at `limit` a second serves between limit * (T - w) and burst + limit * (T + w)
    # calls in a run of T seconds, w the longest a message may wait (channel - provider timeout:
    # the queue fills in at most w at the start and drains for at most w after the last arrival).
    burst, w = 1.0, CHANNEL_S - PROVIDER_S
    assert limit * (RUN_S - w) <= primary.attempts <= burst + limit * (RUN_S + w)
    # so the spilled share is (r - L) / r for the rate r the run drew, within (burst + L w) / n ...
    drawn = n / RUN_S
    assert abs(primary.spilled / n - (drawn - limit) / drawn) <= (burst + limit * w) / n
    # ... and for the scenario's rate within that plus the Poisson noise of n (4 standard deviations)
    noise = (limit / rate) * 4.0 * (rate * RUN_S) ** 0.5 / n
    assert abs(primary.spilled / n - (rate - limit) / rate) <= (burst + limit * w) / n + noise


VENDOR = """
[timeouts]
provider = "2s"
channel = "10s"
message = "1m"
[providers.primary]
type = "sandbox"
latency = "20ms"
rate_limit = "{limit}/s"            # the vendor's: its bucket holds one second's worth
outbound_rate_limit = "{limit}/s"   # routingd's, the same rate
{burst}
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


@pytest.mark.parametrize("rate,limit", [(20, 14), (14, 14), (30, 14)])
def test_equal_limits_without_a_commit_delay_get_no_429(tmp_path: Path, rate: int, limit: int) -> None:
    """routingd's limit equal to the vendor's (rate and depth), calls reaching the vendor the
    moment routingd takes their token: not one 429. (The simulated vendor's bucket used to
    refuse a call on time for a rounding error: docs/simulator.md "Why a 429 at equal limits".)"""
    res = _run(tmp_path, VENDOR.format(limit=limit, burst=""), f"""
        duration = "2m"
        seed = 5
        routing = "routing.toml"
        [traffic]
        rate = {rate}
        [simulation]
        commit_delay = "0ms"
    """)
    primary = res.metrics.stats["primary"]
    assert primary.queued > 0                   # the limit was at work
    assert primary.throttled == 0 and primary.failed == 0


def test_a_bucket_a_token_below_the_vendors_absorbs_the_commit_delay(tmp_path: Path) -> None:
    """With the daemon's commit between routingd's token and the vendor's count (the default
    commit_delay, log-normal), a burst one token below the vendor's depth leaves room for its
    spread (1/14 s, beyond the delay's p99 of 20 ms): no 429."""
    res = _run(tmp_path, VENDOR.format(limit=14, burst="burst = 13"), """
        duration = "3m"
        seed = 5
        routing = "routing.toml"
        [traffic]
        rate = 20
    """)
    primary = res.metrics.stats["primary"]
    assert primary.queued > 0 and primary.throttled == 0 and primary.failed == 0


# ------------------------------------------------------------------ traffic bursts


BASE = """
duration = "2m"
routing = "routing.toml"
[traffic]
rate = 10
"""


@pytest.mark.parametrize("bursts,problem", [
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "10s"\n', "either rate (arrivals per second) or factor"),
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "10s"\nrate = 5\nfactor = 2\n', "either rate (arrivals per second) or factor"),
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "0s"\nfactor = 2\n', "a burst must last longer than 0"),
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "10s"\nfactor = 0\n', "greater than 0"),
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "30s"\nfactor = 2\n'
     '[[traffic.bursts]]\nstart = "20s"\nduration = "5s"\nfactor = 3\n', "the one starting at 20s starts before the one at 10s ends"),
    ('[[traffic.bursts]]\nstart = "2m"\nduration = "10s"\nfactor = 2\n', "at or after the run's duration"),
    ('[[traffic.bursts]]\nstart = "10s"\nduration = "10s"\nfactor = 2\nshape = "ramp"\n', "shape"),
])
def test_a_bad_burst_is_one_clear_line_naming_it(bursts: str, problem: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_scenario(BASE + bursts, "s.toml")
    text = "\n".join(e.value.lines())
    assert problem in text and "s.toml" in text, text
    assert "Traceback" not in text


def test_without_bursts_the_arrivals_are_drawn_as_before_draw_for_draw() -> None:
    traffic = parse_scenario(BASE, "s.toml").model.traffic
    a, b = random.Random(3), random.Random(3)
    gap = traffic.gaps(a)
    assert [gap(float(i)) for i in range(1000)] == [b.expovariate(10.0) for _ in range(1000)]


def test_arrivals_follow_the_rate_of_the_time() -> None:
    """A Poisson process at 10/s with a window at 10x (factor) and one at 2/s (rate): the count in
    each window is its rate times its length, within four standard deviations (sqrt of the mean)."""
    sc = parse_scenario(BASE.replace('"2m"', '"20m"') + textwrap.dedent("""
        [[traffic.bursts]]
        start = "5m"
        duration = "1m"
        factor = 10
        [[traffic.bursts]]
        start = "6m"
        duration = "5m"
        rate = "120/m"
    """), "s.toml")
    traffic = sc.model.traffic
    assert traffic.segments() == [(0.0, 10.0), (300.0, 100.0), (360.0, 2.0), (660.0, 10.0)]
    gap = traffic.gaps(random.Random(7))
    t, times = 0.0, []
    while t < 1200.0:
        t += gap(t)
        times.append(t)
    for start, end, rate in ((0.0, 300.0, 10.0), (300.0, 360.0, 100.0), (360.0, 660.0, 2.0), (660.0, 1200.0, 10.0)):
        mean = rate * (end - start)
        count = sum(1 for x in times if start <= x < end)
        assert abs(count - mean) <= 4.0 * mean ** 0.5, (start, end, count, mean)


def test_the_email_burst_drill_spills_only_while_the_burst_outruns_ses_and_gets_no_429() -> None:
    sc = load_scenario(str(DRILLS / "email-burst.toml"))
    res = run(bind_scenario(sc, load_policy(sc.routing_path)), trace=True)
    m, tr = res.metrics, res.trace
    assert tr is not None
    ses, sendgrid = m.stats["ses"], m.stats["sendgrid"]
    burst = sc.model.traffic.bursts[0]
    start, end = burst.start / 1000.0, (burst.start + burst.duration) / 1000.0
    wait = 10.0 - 2.0           # routing-burst.toml: the channel timeout less ses's provider timeout
    assert ses.throttled == 0 and ses.spilled > 0
    # every spill (a sendgrid attempt: ses has no other failures to fail over from but its rare
    # 503s) happens while the burst's arrivals outrun ses, or while its queue drains after it
    spilled_at = [t for p, t in zip(tr.a_prov, tr.a_start) if tr.providers[p] == "sendgrid"]
    inside = sum(1 for t in spilled_at if start <= t <= end + wait)
    assert inside >= ses.spilled and sendgrid.attempts - inside <= ses.failed
    # ses never took more than its limit: at most its bucket plus 14/s over the whole run
    assert ses.attempts <= 13 + 14.0 * res.sim_end_s


# ------------------------------------------------------------------ a vendor's limit below routingd's

BELOW = """
[timeouts]
provider = "2s"
channel = "10s"
message = "1m"
[providers.primary]
type = "sandbox"
latency = "20ms"
rate_limit = "10/s"                 # the vendor's
{ours}
[providers.backup]
type = "sandbox"
latency = "20ms"
[channels.email]
providers = ["primary", "backup"]
[routes.default]
channels = ["email"]
"""


def test_a_vendor_limit_below_routingds_gets_429s_but_never_opens_the_breaker(tmp_path: Path) -> None:
    """issue 21: routingd's outbound limit set too high (20/s against the vendor's 10/s). The
    vendor's 429s halve routingd's rate (adaptive) and each such attempt fails over, but they are
    no breaker failures: the breaker (on, 5 failures) stays closed and primary keeps serving.
    Without routingd's own limit the same 429s are breaker failures, as before: it opens."""
    scenario = """
        duration = "1m"
        seed = 5
        routing = "routing.toml"
        [traffic]
        rate = 30
    """
    res = _run(tmp_path, BELOW.format(ours='outbound_rate_limit = "20/s"'), scenario)
    m = res.metrics
    primary = m.stats["primary"]
    assert primary.throttled > 0                    # the vendor did say "too fast"
    assert primary.breaker_opened == 0 and primary.skipped == 0
    assert m.count("delivered") == m.messages       # each 429 failed over to the backup at once
    assert primary.attempts - primary.failed > 0.5 * 10 * 60    # primary served on throughout
    (tmp_path / "without").mkdir()
    res = _run(tmp_path / "without", BELOW.format(ours=""), scenario)
    assert res.metrics.stats["primary"].breaker_opened > 0
