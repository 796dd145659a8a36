"""`/metrics` with `[daemon] workers = 2` answers for the whole daemon (daemon/shared_metrics.py):
real supervisor, real worker processes, a real PostgreSQL database.

The sends are spread by the kernel over both workers (each message's owner names the process
that accepted it), so neither worker alone counted them all: a scrape that reports every one of
them, on every new connection, is the merged figure. A worker killed with -9: its counters are
still counted after its restart, its gauges drop out."""

from __future__ import annotations

import os
import re
import signal
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from daemon_process import DaemonProcess, StandinLoop, wait_until
from test_workers import CONFIG, _owner_pids, supervised  # noqa: F401 - a fixture: found by its name here

SCRAPES = 8             # new connections each: the kernel spreads them over both workers


def _samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of one /metrics answer."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _scrape(d: DaemonProcess) -> dict[str, float]:
    r = d.get("/metrics")
    assert r.status == 200
    return _samples(r.body.decode())


def _sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def _metrics_dir(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert len(found) == 1, "a worker is started without the metrics directory"
    return found[0]


def test_every_scrape_counts_every_worker_and_a_reload_reaches_the_config_series(
        supervised: Any, standins: StandinLoop, pg_url: str) -> None:  # noqa: F811 - test_workers' fixture
    fast = standins.standin([{"status": 200}])
    config = CONFIG.format(url=fast.url, message="60s")
    d, pids = supervised(config)
    path = _metrics_dir(pids[0])
    assert _metrics_dir(pids[1]) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700          # private to the daemon's user

    m = 40
    ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(m)]     # a connection each
    for mid in ids:
        d.wait_status(mid, "delivered", timeout=30)
    owners = Counter(_owner_pids(pg_url, ids).values())
    assert set(owners) == set(pids) and all(n < m for n in owners.values()), owners

    # the inflight gauge is sampled (at most 1 s old for the worker that does not answer)
    wait_until(lambda: _scrape(d).get("routingd_messages_inflight") == 0, timeout=30, what="inflight 0")
    for _ in range(SCRAPES):
        s = _scrape(d)
        assert s["routingd_messages_accepted_total"] == m, s
        assert s['routingd_messages_finished_total{status="delivered"}'] == m
        assert _sum(s, "routingd_messages_finished_total") == m
        assert s['routingd_attempts_total{channel="email",outcome="delivered",provider="fast"}'] == m
        assert _sum(s, "routingd_attempts_total") == m
        assert s["routingd_time_to_deliver_seconds_count"] == m
        assert s['routingd_time_to_deliver_seconds_bucket{le="+Inf"}'] == m
        assert s["routingd_messages_inflight"] == 0
        assert s["routingd_config_last_reload_successful"] == 1
        assert len([k for k in s if k.startswith("routingd_config_info{")]) == 1
        assert not [k for k in s if 'pid="' in k], "a per-process series leaked out of the merge"

    # a reload reaches both workers: every scrape names the new version alone
    old = _scrape(d)["routingd_config_hash"]
    d.write_config(config.replace('message = "60s"', 'message = "2m"'))
    d.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload (SIGHUP): 2 worker(s) serve policy" in d.log_text(), timeout=60,
               what="both workers' reload answers")
    new = re.search(r"reload \(SIGHUP\): 2 worker\(s\) serve policy (\S+)", d.log_text())
    assert new is not None
    for _ in range(SCRAPES):
        s = _scrape(d)
        assert s["routingd_config_hash"] != old
        assert [k for k in s if k.startswith("routingd_config_info{")] == [
            f'routingd_config_info{{version="{new.group(1)}"}}']
        assert s["routingd_messages_accepted_total"] == m

    assert d.stop(timeout=60) == 0
    assert not os.path.exists(path), "the metrics directory outlived the daemon"


def test_a_killed_worker_s_counters_stay_and_its_gauges_go(
        supervised: Any, standins: StandinLoop, pg_url: str) -> None:  # noqa: F811 - test_workers' fixture
    # a lease (and timeouts) far longer than the test: the killed worker's messages stay its own
    # (not taken over), so the inflight gauge shows exactly the survivor's
    fast = standins.standin([{"hold": True, "status": 200}])
    config = CONFIG.format(url=fast.url, message="10m").replace('lease = "2s"', 'lease = "5m"')
    d, pids = supervised(config.replace('provider = "30s"', 'provider = "8m"')
                         .replace('channel = "40s"', 'channel = "9m"'))
    m = 16
    ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(m)]
    standins.call(fast.wait_for(m))                     # every message has a call held at the provider
    owners = _owner_pids(pg_url, ids)
    victim = pids[0]
    mine = sum(1 for p in owners.values() if p == victim)
    assert 0 < mine < m, owners

    wait_until(lambda: _scrape(d).get("routingd_messages_inflight") == m, timeout=30, what=f"inflight {m}")
    for _ in range(SCRAPES):
        s = _scrape(d)
        assert s["routingd_messages_accepted_total"] == m and s["routingd_messages_inflight"] == m, s

    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "worker 0 (pid" in d.log_text() and "listening again" in d.log_text(), timeout=60,
               what="worker 0 restarted")
    wait_until(lambda: _scrape(d).get("routingd_messages_inflight") == m - mine, timeout=30,
               what="the killed worker's gauge gone")
    for _ in range(SCRAPES):
        s = _scrape(d)
        assert s["routingd_messages_accepted_total"] == m, s          # the dead worker's count stays
        assert s["routingd_messages_inflight"] == m - mine, s         # its gauge went with it

    # the survivor's held calls end: the finished counts add up across the dead and the living
    standins.call(fast.release())
    for mid, owner in owners.items():
        if owner != victim:
            d.wait_status(mid, "delivered", timeout=30)
    more = [d.send({"to": {"email": f"v{i}@example.com"}}) for i in range(4)]      # to either worker
    for mid in more:
        d.wait_status(mid, "delivered", timeout=30)
    wait_until(lambda: _scrape(d).get("routingd_messages_inflight") == 0, timeout=30, what="inflight 0")
    for _ in range(SCRAPES):
        s = _scrape(d)
        assert s["routingd_messages_accepted_total"] == m + 4, s
        assert s['routingd_messages_finished_total{status="delivered"}'] == m - mine + 4, s
        assert s["routingd_messages_inflight"] == 0, s        # the killed worker's wait for its lease
    assert d.stop(timeout=60) == 0
