"""daemon/shared_metrics.py: each gauge merged over the workers by its mode, counters summed over
the living and the dead, the series prometheus_client's multiprocess mode cannot remove left out.

Each "worker" is a real process (prometheus_client picks its multiprocess values when it is
imported, from PROMETHEUS_MULTIPROC_DIR); /metrics is rendered by another one, as a scraped
worker does. The directory and mark_process_dead are the supervisor's (MetricsDir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from routingd.daemon.metrics import Metrics, version_as_int
from routingd.daemon.shared_metrics import MetricsDir, make_metrics

WORKER = r"""
import json, os, sys
from routingd.daemon.shared_metrics import SharedMetrics
spec = json.loads(sys.argv[1])
m = SharedMetrics(os.environ["PROMETHEUS_MULTIPROC_DIR"], spec["versions"][0])
for v in spec["versions"][1:]:
    m.config_loaded(v)
if spec.get("reload_failed"):
    m.config_reload_failed()
for _ in range(spec.get("accepted", 0)):
    m.message_accepted()
for status in spec.get("finished", []):
    m.message_finished(status)
for c, p, o in spec.get("attempts", []):
    m.attempt_ended(c, p, o)
for s in spec.get("delivered_after", []):
    m.delivered_after(s)
for p, v in spec.get("breakers", {}).items():
    m.breaker_open.labels(provider=p).set(v)
m.sampled(m.inflight, lambda: spec.get("inflight", 0))
for snap in spec.get("limits", []):
    m.limits = lambda snap=snap: snap
    m.refresh()
m.refresh()
print(os.getpid())
if spec.get("render"):
    sys.stdout.write(m.render().decode())
"""


def _snap(queue: int, spilled: int, rate: float | None = 5.0) -> dict[str, Any]:
    return {"queue": queue, "inflight": 1, "rate_now": rate, "spilled": spilled, "throttled": 0, "waited_s": 0.5}


def _run(path: str, spec: dict[str, Any]) -> tuple[int, dict[str, float]]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    pid, _, text = out.partition("\n")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return int(pid), samples


def test_gauges_merge_by_mode_counters_sum_over_the_living_and_the_dead() -> None:
    d = MetricsDir.create()
    try:
        assert os.stat(d.path).st_mode & 0o777 == 0o700 and os.listdir(d.path) == []
        a, _ = _run(d.path, {"versions": ["aaaa01", "bbbb02"], "accepted": 3, "finished": ["delivered"] * 2,
                             "attempts": [["email", "fast", "delivered"]] * 2, "delivered_after": [0.07, 2.0],
                             "breakers": {"fast": 1}, "inflight": 5,
                             # the limiter made anew by a reload: its totals start again at 0
                             "limits": [{"slow": _snap(2, 3)}, {"slow": _snap(2, 1)}]})
        b, _ = _run(d.path, {"versions": ["bbbb02"], "reload_failed": True, "accepted": 2, "finished": ["expired"],
                             "breakers": {"fast": 0}, "inflight": 2, "limits": [{"slow": _snap(1, 2)}]})
        _, s = _run(d.path, {"versions": ["bbbb02"], "render": True})
        assert s["routingd_messages_accepted_total"] == 5
        assert s['routingd_messages_finished_total{status="delivered"}'] == 2
        assert s['routingd_messages_finished_total{status="expired"}'] == 1
        assert s['routingd_messages_finished_total{status="cancelled"}'] == 0
        assert s['routingd_attempts_total{channel="email",outcome="delivered",provider="fast"}'] == 2
        assert s['routingd_time_to_deliver_seconds_bucket{le="0.1"}'] == 1
        assert s['routingd_time_to_deliver_seconds_bucket{le="+Inf"}'] == 2
        assert s["routingd_time_to_deliver_seconds_count"] == 2
        assert s["routingd_messages_inflight"] == 7                            # livesum
        assert s['routingd_breaker_open{provider="fast"}'] == 1                # livemax: open in one
        assert s["routingd_config_last_reload_successful"] == 0                # livemin: one refused
        assert s["routingd_config_hash"] == version_as_int("bbbb02")           # the most recent load
        assert [k for k in s if k.startswith("routingd_config_info")] == ['routingd_config_info{version="bbbb02"}']
        assert s['routingd_provider_queue_depth{provider="slow"}'] == 3
        assert s['routingd_provider_rate_limit{provider="slow"}'] == 10        # the shares summed
        assert s['routingd_provider_spilled_total{provider="slow"}'] == 3 + 1 + 2
        assert not [k for k in s if "pid=" in k]

        d.worker_died(a)
        _, s = _run(d.path, {"versions": ["bbbb02"], "render": True})
        assert s["routingd_messages_accepted_total"] == 5                      # a's counts stay
        assert s['routingd_provider_spilled_total{provider="slow"}'] == 6
        assert s["routingd_time_to_deliver_seconds_count"] == 2
        assert s["routingd_messages_inflight"] == 2                            # a's gauges went
        assert s['routingd_breaker_open{provider="fast"}'] == 0
        assert s['routingd_provider_queue_depth{provider="slow"}'] == 1

        d.worker_died(b)
        # a provider no longer rate-limited (a reload) leaves the gauges, not the counters
        _, s = _run(d.path, {"versions": ["bbbb02"], "limits": [{"slow": _snap(4, 0)}, {}], "render": True})
        assert not [k for k in s if k.startswith(("routingd_provider_queue_depth", "routingd_provider_rate_limit"))]
        assert s['routingd_provider_spilled_total{provider="slow"}'] == 6
        # a limited provider without a bucket (max_inflight only) has no rate gauge
        _, s = _run(d.path, {"versions": ["bbbb02"], "limits": [{"slow": _snap(0, 0, rate=None)}], "render": True})
        assert 'routingd_provider_rate_limit{provider="slow"}' not in s
    finally:
        d.remove()
    assert not os.path.exists(d.path)


def test_one_process_keeps_the_plain_metrics_whatever_its_environment() -> None:
    """`workers = 1` (no supervisor): today's Metrics, its own registry, no directory."""
    m = make_metrics(False, "aaaa01")
    assert type(m) is Metrics
    m.message_accepted()
    assert b"routingd_messages_accepted_total 1.0" in m.render()
