"""A provider's rate_limit is the whole deployment's (issue 21; docs/scaling.md "Rate limits across
processes"): two real `routingd serve` processes on one PostgreSQL database each keep half of it,
counted at each lease renewal (daemon/cluster.py), and the one left after the other stops
cleanly goes back to the whole limit."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from daemon_process import DaemonProcess, StandinLoop, wait_until

LEASE_S = 2.0           # renewal (and so the count) every lease/3
CONFIG = """
version = 1
[daemon]
grace = "1s"
lease = "2s"
[providers.ses]
type = "http"
url = "{url}"
rate_limit = "14/s"
burst = 14
[channels.email]
providers = ["ses"]
[routes.default]
channels = ["email"]
"""


def _limit(d: DaemonProcess) -> dict[str, Any]:
    r = d.get("/v1/providers")
    assert r.status == 200, r.status
    return next(p for p in r.json()["providers"] if p["name"] == "ses")["limit"]


def test_two_daemons_split_the_rate_limit_and_the_survivor_takes_it_whole(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    ses = standins.standin([{"status": 200}])
    config = CONFIG.format(url=ses.url)
    with ExitStack() as stack:
        a = stack.enter_context(DaemonProcess(tmp_path / "a", config, env={"ROUTINGD_STORE": pg_url},
                                              start_timeout=40))
        wait_until(lambda: _limit(a)["rate_in_force"] == 14.0, timeout=20, what="a alone: the whole limit")
        b = stack.enter_context(DaemonProcess(tmp_path / "b", config, env={"ROUTINGD_STORE": pg_url},
                                              start_timeout=40))
        # b counts two live processes as it starts (before it routes anything); a at its next renewal
        wait_until(lambda: _limit(b)["share"] == 0.5, timeout=20, what="b: half the limit")
        lim_b = _limit(b)
        assert (lim_b["rate_limit"], lim_b["burst"]) == (14.0, 14.0)       # as configured: the deployment's
        assert (lim_b["rate_in_force"], lim_b["burst_in_force"], lim_b["share"]) == (7.0, 7.0, 0.5)
        wait_until(lambda: _limit(a)["rate_in_force"] == 7.0, timeout=LEASE_S + 20, what="a: half the limit")
        lim_a = _limit(a)
        assert (lim_a["rate_limit"], lim_a["burst_in_force"], lim_a["share"]) == (14.0, 7.0, 0.5)
        # both route under their half: a message each is delivered
        for d in (a, b):
            d.wait_status(d.send({"to": {"email": "u@example.com"}}), "delivered", timeout=30)
        assert b.stop() == 0                # a clean stop releases b's lease at once
        wait_until(lambda: _limit(a)["rate_in_force"] == 14.0, timeout=LEASE_S + 20, what="a: the whole limit again")
        lim_a = _limit(a)
        assert (lim_a["burst_in_force"], lim_a["share"]) == (14.0, 1.0)
        assert "Traceback" not in a.log_text() + b.log_text()
        assert a.stop() == 0
