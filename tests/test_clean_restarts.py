"""Clean restarts on real daemon processes (docs/reliability.md "Clean restarts").

  * SIGTERM's grace period starts no attempt: a failover due meanwhile is held, its message stays
    pending and the next start tries the backup (before, a never-started attempt timed out, and
    the message was stored undeliverable with the backup never called);
  * the wall clock stepped while the daemon runs: the times it stores follow the wall clock, and
    the deadlines survive the step and a restart after it.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from daemon_process import DaemonProcess, StandinLoop, ts, wait_until

GRACE_CONFIG = """
version = 1
[daemon]
grace = "5s"
[timeouts]
provider = "1s"
channel = "1m"
message = "5m"
[providers.hang]
type = "http"
url = "{hang}"
timeout = "1m"
breaker = false
[providers.p503]
type = "http"
url = "{p503}"
breaker = false
[providers.backup]
type = "http"
url = "{ok}"
[channels.c1]
providers = ["hang"]
[channels.c2]
providers = ["p503", "backup"]
[routes.slow]
channels = ["c1"]
[routes.default]
channels = ["c2"]
"""


def stored(state: Path, mid: str) -> tuple[str, list[tuple[str, str | None, str | None]]]:
    """(status, [(provider, outcome, detail)]) of a message, read from the state file itself."""
    con = sqlite3.connect(state)
    try:
        status = con.execute("SELECT status FROM messages WHERE id = ?", (mid,)).fetchone()[0]
        attempts = con.execute("SELECT provider, outcome, detail FROM attempts WHERE message_id = ? "
                               "ORDER BY started_at, attempt_id", (mid,)).fetchall()
    finally:
        con.close()
    return status, attempts


def test_a_failover_due_in_the_sigterm_grace_waits_for_the_next_start(tmp_path: Path,
                                                                      standins: StandinLoop) -> None:
    """One message hangs on its provider and keeps the 5 s grace period alive; another gets a
    503 during it, so its failover to the backup is due. The backup is not called while stopping,
    nothing times out in its place, the message is left pending -- and the next start delivers
    it through the backup."""
    hang = standins.standin([{"hang": True}])
    p503 = standins.standin([{"status": 503, "delay": 0.5}])
    ok = standins.standin([{"status": 200}])
    d = DaemonProcess(tmp_path, GRACE_CONFIG.format(hang=hang.url, p503=p503.url, ok=ok.url))
    with d:
        m1 = d.send({"to": {"email": "a@example.com"}, "route": "slow"})
        m2 = d.send({"to": {"email": "a@example.com"}})
        standins.call(hang.wait_for(1))
        standins.call(p503.wait_for(1))
        assert d.stop() == 0                   # SIGTERM: the 503 and the failover land in the grace
        assert stored(d.state_path, m1)[0] == "pending"
        status, attempts = stored(d.state_path, m2)
        assert status == "pending", attempts
        assert [a[:2] for a in attempts] == [("p503", "failed")]    # nothing in the backup's name
        assert ok.requests == []
        log = d.log_text()
        d.start()
        st = d.wait_status(m2, "delivered", timeout=20)
        assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == \
            [("p503", "failed"), ("p503", "failed"), ("backup", "delivered")]
        held = [e for e in st["events"] if e["type"] == "attempt_held"]
        assert [(e["channel"], e["provider"]) for e in held] == [("c2", "backup")]
        assert len(ok.requests) == 1
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    assert "Traceback" not in log + d.log_text()
