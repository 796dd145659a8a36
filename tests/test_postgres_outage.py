"""A database outage under a real daemon (docs/scaling.md "What each failure does"): a trickle of
sends to `routingd serve` on a PostgreSQL store of its own throwaway cluster, the cluster stopped
and started again under it.

While the database is down: /readyz answers 503 naming the database, sends answer 503 with
Retry-After (never a 202 without a commit). When it is back: /readyz 200 again with no restart,
sends 202 again, and every message that got a 202 (before, between, after) is delivered and in
the database."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from daemon_process import SLOW_CONFIG, DaemonProcess, StandinLoop, wait_until
from pg_cluster import PgCluster


class Trickle:
    """Sends one message every `every_s` on a thread until stopped; keeps every answer."""

    def __init__(self, d: DaemonProcess, every_s: float = 0.05) -> None:
        self.d = d
        self.every_s = every_s
        self.answers: list[tuple[float, int, Any, str | None]] = []   # (time, status, body, Retry-After)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            r = self.d.post("/v1/send", {"message": {"to": {"email": f"u{i}@example.com"}}}, timeout=30)
            body = r.json() if r.body else None
            self.answers.append((time.monotonic(), r.status, body, r.header("Retry-After")))
            self._stop.wait(self.every_s)

    def count(self, status: int) -> int:
        return sum(1 for a in list(self.answers) if a[1] == status)

    def __enter__(self) -> "Trickle":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_readyz_says_not_ready_and_sends_503_while_the_database_is_down_and_nothing_accepted_is_lost(
        tmp_path: Path, standins: StandinLoop) -> None:
    s = standins.standin([{"status": 200}])
    with PgCluster() as pg:
        url = pg.new_database()
        d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url=s.url), env={"ROUTINGD_STORE": url})
        with d:
            with Trickle(d) as t:
                wait_until(lambda: t.count(202) >= 5, 30, "202s before the outage")
                pg.stop("fast")
                # at the next send's insert, or the probe's next try: within a second or so
                wait_until(lambda: d.get("/readyz").status == 503, 30, "readyz 503 while the database is down")
                down = d.get("/readyz")
                refused_before = t.count(503)
                wait_until(lambda: t.count(503) >= refused_before + 3, 30, "sends refused while it is down")
                pg.start()
                wait_until(lambda: d.get("/readyz").status == 200, 30, "readyz 200 once the database is back")
                accepted_before = t.count(202)
                wait_until(lambda: t.count(202) >= accepted_before + 5, 30, "202s after the outage")
            _check(d, t, down, url)


def _check(d: DaemonProcess, t: Trickle, down: Any, url: str) -> None:
    """What the outage left: the answers, the log, the database (the daemon still runs)."""
    assert down.status == 503
    reason = down.json()["error"]
    assert "database cannot be written" in reason and "sends answer 503" in reason, reason
    assert {status for _, status, _, _ in t.answers} == {202, 503}
    refused = [a for a in t.answers if a[1] == 503]
    assert all(retry is not None and int(retry) >= 1 for _, _, _, retry in refused)
    assert all("state store" in body["error"] for _, _, body, _ in refused)
    # every 202 is delivered, and in the database: none was lost to the outage
    accepted = [body["message_id"] for _, status, body, _ in t.answers if status == 202]
    for mid in accepted:
        d.wait_status(mid, "delivered", timeout=30)
    assert "Traceback" not in d.log_text()
    assert d.stop() == 0
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT id, status FROM messages").fetchall()
    assert {mid: "delivered" for mid in accepted} == dict(rows)


def test_an_idle_daemon_notices_the_outage_and_the_return_without_any_send(
        tmp_path: Path, standins: StandinLoop) -> None:
    """No traffic at all: the probe (a transaction after 5 s without a commit, then every 0.5 s
    while down) is what finds the database gone and back."""
    s = standins.standin([{"status": 200}])
    with PgCluster() as pg:
        url = pg.new_database()
        with DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url=s.url), env={"ROUTINGD_STORE": url}) as d:
            pg.stop("fast")
            wait_until(lambda: d.get("/readyz").status == 503, 30, "readyz 503 with no send")
            pg.start()
            wait_until(lambda: d.get("/readyz").status == 200, 30, "readyz 200 again with no send")
            assert d.send({"to": {"email": "a@example.com"}})
            assert d.stop() == 0
            assert "Traceback" not in d.log_text()
