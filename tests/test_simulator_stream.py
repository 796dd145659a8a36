"""The simulator's report in bounded memory (issue 20).

* the quantile sketch's percentiles are within its stated relative error of the exact ones;
* the streaming report (counts, sketch, route-around trackers) says what the whole per-message
  trace says: route-around times and counts exactly, percentiles within the sketch's error;
* the peak memory of a run does not grow with its message count.
"""

from __future__ import annotations

import textwrap
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routingd.daemon.config_files import load_policy
from routingd.simulator.metrics import (ROUTE_AROUND_BLOCK, ROUTE_AROUND_SHARE, WAITED, RouteAround, Trace,
                                        percentile)
from routingd.simulator.report import build_report
from routingd.simulator.runner import outage_windows, run
from routingd.simulator.scenario import load_scenario
from routingd.simulator.setup import bind_scenario
from routingd.simulator.sketch import RELATIVE_ACCURACY, TINY, QuantileSketch

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "simulator" / "scenarios"

values = st.lists(st.floats(min_value=1e-4, max_value=1e5, allow_nan=False, allow_infinity=False),
                  min_size=1, max_size=400)


@settings(max_examples=300, deadline=None)
@given(values, st.floats(min_value=0.0, max_value=100.0))
def test_sketch_quantiles_are_within_the_stated_relative_error_of_the_exact_ones(xs: list[float], q: float) -> None:
    sk = QuantileSketch()
    for x in xs:
        sk.add(x)
    exact = percentile(sorted(xs), q)
    got = sk.quantile(q)
    assert exact is not None and got is not None
    assert abs(got - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (got, exact)
    assert (sk.count, sk.min, sk.max) == (len(xs), min(xs), max(xs))
    assert sk.quantile(100) == max(xs) and sk.quantile(0) == min(xs)     # the ends are exact


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=10.0)), min_size=1, max_size=200),
       st.floats(min_value=0.0, max_value=100.0))
def test_sketch_counts_zeros_exactly(xs: list[float], q: float) -> None:
    sk = QuantileSketch()
    for x in xs:
        sk.add(x)
    exact = percentile(sorted(xs), q)
    assert exact is not None
    assert abs(sk.quantile(q) - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9) + TINY  # type: ignore[operator]


def test_sketch_memory_is_bounded_by_the_range_not_the_count() -> None:
    sk = QuantileSketch()
    for k in range(200_000):
        sk.add(0.001 + (k % 9973) * 0.0005)         # 1 ms .. 5 s, over and over
    assert sk.count == 200_000
    assert len(sk.buckets) < 1_000                  # ln(5000) / ln(1.01) ~ 850
    assert QuantileSketch().quantile(50) is None


def route_around_reference(m: Trace, provider: str, start: float, end: float) -> float | None:
    """The report's route-around time computed the way it was before it streamed: from every
    attempt and skip of the run, sorted."""
    p = m.providers.index(provider)
    waited_of: dict[int, bool] = {}
    for msg, prov, t0, out in zip(m.a_msg, m.a_prov, m.a_start, m.a_outcome):
        if prov == p and start <= m.accepted_at[msg] < end:
            waited_of[msg] = waited_of.get(msg, False) or (start <= t0 < end and out in WAITED)
    for msg, prov in zip(m.s_msg, m.s_prov):
        if prov == p and start <= m.accepted_at[msg] < end:
            waited_of.setdefault(msg, False)
    order = sorted(waited_of)
    n = len(order)
    if n == 0:
        return 0.0
    block = min(ROUTE_AROUND_BLOCK, n)
    allowed = int((1.0 - ROUTE_AROUND_SHARE) * block + 1e-9)
    prefix = [0]
    for msg in order:
        prefix.append(prefix[-1] + waited_of[msg])
    last_bad = -1
    for j in range(n - block + 1):
        if prefix[j + block] - prefix[j] > allowed:
            last_bad = j
    k = last_bad + 1
    if k == 0:
        return 0.0
    if k > n - block:
        return None
    return max(0.0, m.accepted_at[order[k]] - start)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), max_size=80))
def test_route_around_tracker_matches_the_whole_list_computation(waited: list[bool]) -> None:
    tr = Trace(["p"])
    ra = RouteAround("p", 0.0, 1e9)
    for i, w in enumerate(waited):
        tr.accept(i, float(i), "r")
        tr.a_msg.append(i)
        tr.a_prov.append(0)
        tr.a_start.append(float(i))
        tr.a_end.append(float(i))
        tr.a_outcome.append(3 if w else 1)        # TIMEOUT or DELIVERED
        ra.add(w, float(i))
    assert ra.seconds() == route_around_reference(tr, "p", 0.0, 1e9)


@pytest.mark.parametrize("drill", sorted(p.stem for p in DRILLS.glob("*.toml") if not p.stem.startswith("routing")))
def test_streaming_report_says_what_the_whole_trace_says(drill: str) -> None:
    sc = load_scenario(str(DRILLS / f"{drill}.toml"))
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    res = run(setup, trace=True)
    rep = build_report(res)
    tr = res.trace
    assert tr is not None
    assert rep["messages"] == tr.messages
    for status in ("delivered", "undeliverable", "expired", "cancelled"):
        assert rep[status] == tr.count(status)
    assert rep["attempts_per_message"] == {"mean": round(sum(tr.attempts) / tr.messages, 4),
                                           "max": max(tr.attempts)}
    exact = sorted(tr.times_to_deliver())
    for q, v in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
        e = percentile(exact, v)
        assert e is not None
        assert abs(rep["time_to_deliver_s"][q] - e) <= RELATIVE_ACCURACY * e + 1e-6, (q, rep["time_to_deliver_s"], e)
    assert rep["time_to_deliver_s"]["max"] == round(exact[-1], 6)
    for o, (provider, start, end) in zip(rep["outages"], outage_windows(setup)):
        ref = route_around_reference(tr, provider, start, end)
        assert o["time_to_route_around_s"] == (None if ref is None else round(ref, 6))
    # the trace changes nothing: the same run without it gives the same report
    plain = build_report(run(setup))
    assert {k: v for k, v in plain.items() if k != "wall_s"} == {k: v for k, v in rep.items() if k != "wall_s"}


def _peak_bytes(tmp: Path, duration_s: int) -> tuple[int, int]:
    """tracemalloc's peak during one run (and the run's message count) of a scenario with a
    hang that trips the breaker, at 40 msg/s for `duration_s`."""
    (tmp / "s.toml").write_text(textwrap.dedent(f"""
        duration = "{duration_s}s"
        seed = 3
        routing = "{DRILLS / 'routing.toml'}"
        [traffic]
        rate = 40
        [[outages]]
        provider = "ses"
        start = "10s"
        duration = "20s"
        kind = "hang"
    """))
    sc = load_scenario(str(tmp / "s.toml"))
    setup = bind_scenario(sc, load_policy(sc.routing_path))
    run(bind_scenario(sc, load_policy(sc.routing_path), seed=4))    # warm caches and imports
    tracemalloc.start()
    try:
        res = run(setup)
        rep = build_report(res)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep["violations"] == 0 and rep["outages"][0]["time_to_route_around_s"] is not None
    return peak, rep["messages"]


def test_peak_memory_of_a_run_does_not_grow_with_its_message_count(tmp_path: Path) -> None:
    small, n = _peak_bytes(tmp_path, 60)
    large, n4 = _peak_bytes(tmp_path, 240)
    assert n4 > 3.5 * n
    # what used to be kept per message (~560 bytes, docs/performance.md) would add ~3 MB here,
    # more than twice the small run's whole peak
    assert large < 1.3 * small, (small, large, n, n4)
