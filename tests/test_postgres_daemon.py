"""A real `routingd serve` on the PostgreSQL store ([daemon] store, here ROUTINGD_STORE): a fresh
database of the session's throwaway cluster (tests/pg_cluster.py), real HTTP stand-ins.

Send and deliver, an Idempotency-Key replayed, SIGKILL with attempts in flight and a restart that
resumes every accepted message with its original deadlines (once the killed process's leases
ran out: [daemon] lease, here 2 s), nothing written to the SQLite state file. Several daemons on
one database: tests/test_postgres_cluster.py."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg

from daemon_process import SLOW_CONFIG, DaemonProcess, StandinLoop, ts

def test_send_deliver_idempotency_kill_and_resume_with_original_deadlines(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    s = standins.standin([{"status": 200}])
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url=s.url),
                      env={"ROUTINGD_STORE": pg_url, "ROUTINGD_LEASE": "2s"})
    with d:
        listening = next(line for line in d.log_text().splitlines() if "listening on" in line)
        assert f"store {pg_url}," in listening and "state " not in listening   # not the unused SQLite path
        first = d.send({"to": {"email": "a@example.com"}}, idempotency_key="order-1")
        d.wait_status(first, "delivered")
        assert d.send({"to": {"email": "a@example.com"}}, idempotency_key="order-1") == first
        s.set_script([{"hang": True}])
        ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(5)]
        standins.call(s.wait_for(6))                    # every message has an attempt in flight
        before = {mid: d.status(mid) for mid in ids}
        assert d.kill() == -signal.SIGKILL
        s.set_script([{"status": 200}])
        d.start()                                       # the same database
        for mid in ids:
            st = d.wait_status(mid, "delivered", timeout=20)
            assert [a["outcome"] for a in st["attempts"]] == ["cancelled", "delivered"]
            assert ts(st["message_deadline"]) == ts(before[mid]["message_deadline"])   # not restarted
            assert st["accepted_at"] == before[mid]["accepted_at"]
        assert d.send({"to": {"email": "a@example.com"}}, idempotency_key="order-1") == first
        assert d.stop() == 0
    assert not (tmp_path / "state.db").exists()         # the PostgreSQL store, not the SQLite file
    with psycopg.connect(pg_url) as c:
        row = c.execute("SELECT count(*), count(*) FILTER (WHERE status = 'delivered') FROM messages").fetchone()
        assert row == (6, 6)
        assert c.execute("SELECT max(version) FROM routingd_schema").fetchone() is not None

