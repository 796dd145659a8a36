"""Several real `routingd serve` processes on ONE PostgreSQL database (docs/scaling.md "Leases").

Three daemons share the sends, each message is called once and answered by any daemon; a daemon
killed with -9 while its messages hang is taken over by the others within lease + claim
interval, none lost; one Idempotency-Key sent to two daemons at once is one message; a receipt
and a cancel posted to a daemon that does not route the message are applied by the one that
does. `[daemon] lease` is refused without the PostgreSQL store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from daemon_process import DaemonProcess, StandinLoop, free_port, routingd_command, ts, wait_until
from provider_standin import sign

LEASE_S = 2.0
SECRET = "cluster-receipt-secret"
CONFIG = """
version = 1
[daemon]
grace = "1s"
lease = "2s"
[timeouts]
provider = "30s"
channel = "40s"
message = "60s"
[providers.fast]
type = "http"
url = "{url}"
breaker = false
[providers.rcpt]
type = "http"
url = "{rcpt}"
confirm = "receipt"
receipt_timeout = "30s"
receipt_secret = "{secret}"
breaker = false
[channels.email]
providers = ["fast"]
[channels.sms]
providers = ["rcpt"]
[routes.default]
channels = ["email"]
[routes.receipted]
channels = ["sms"]
"""


def _daemons(stack: ExitStack, tmp_path: Path, n: int, config: str, pg_url: str) -> list[DaemonProcess]:
    out = []
    for i in range(n):
        d = DaemonProcess(tmp_path / f"d{i}", config, env={"ROUTINGD_STORE": pg_url}, start_timeout=40)
        stack.enter_context(d)
        out.append(d)
    return out


def _config(standins: StandinLoop, fast: Any, rcpt_script: Any = None) -> tuple[str, Any]:
    rcpt = standins.standin(rcpt_script or [{"status": 202}])
    return CONFIG.format(url=fast.url, rcpt=rcpt.url, secret=SECRET), rcpt


def _owners(pg_url: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(pg_url) as c:
        return {r[0]: r[1] for r in c.execute("SELECT id, owner FROM messages WHERE id = ANY(%s)", (ids,))}


def _post_receipt(d: DaemonProcess, attempt_id: str, status: str) -> int:
    raw = json.dumps({"attempt_id": attempt_id, "status": status}).encode()
    return d.request("POST", "/v1/receipts/rcpt", body=raw, token=False,
                     headers={"Content-Type": "application/json", "X-Routingd-Signature": sign(SECRET, raw)}).status


def test_three_daemons_share_the_sends_each_message_called_once_status_from_any(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"status": 200}])
    config, _ = _config(standins, fast)
    with ExitStack() as stack:
        ds = _daemons(stack, tmp_path, 3, config, pg_url)
        sent: dict[str, int] = {}
        for i in range(30):
            sent[ds[i % 3].send({"to": {"email": f"u{i}@example.com"}})] = i % 3
        for mid, i in sent.items():
            st = ds[(i + 1) % 3].wait_status(mid, "delivered", timeout=30)     # asked of another daemon
            assert [a["outcome"] for a in st["attempts"]] == ["delivered"]
            assert {d.status(mid)["status"] for d in ds} == {"delivered"}
        standins.call(fast.wait_for(30, finished=True))
        # exactly one provider call per message, whichever daemon accepted it
        calls = Counter(r.json["message_id"] if isinstance(r.json, dict) and "message_id" in r.json else
                        r.idempotency_key for r in fast.requests)
        assert len(fast.requests) == 30 and len(calls) == 30
        # each message is owned by the daemon that accepted it: three owners, ten messages each
        owners = _owners(pg_url, list(sent))
        by_daemon: dict[int, set[str]] = {}
        for mid, i in sent.items():
            by_daemon.setdefault(i, set()).add(owners[mid])
        assert all(len(o) == 1 for o in by_daemon.values())
        assert len({next(iter(o)) for o in by_daemon.values()}) == 3
        for d in ds:
            assert d.stop() == 0
            assert "Traceback" not in d.log_text()


def test_a_daemon_killed_with_messages_pending_is_taken_over_within_the_lease(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"hang": True}])
    config, _ = _config(standins, fast)
    with ExitStack() as stack:
        a, b, c = _daemons(stack, tmp_path, 3, config, pg_url)
        ids = [a.send({"to": {"email": f"u{i}@example.com"}}) for i in range(8)]
        standins.call(fast.wait_for(8))                 # every message has a call in flight at a
        before = {mid: b.status(mid) for mid in ids}    # (b answers for a)
        assert all(st["status"] == "pending" for st in before.values())
        owner_a = set(_owners(pg_url, ids).values())
        assert len(owner_a) == 1
        fast.set_script([{"status": 200}])
        with psycopg.connect(pg_url) as conn:       # a's lease, renewed until the kill
            row = conn.execute("SELECT extract(epoch FROM lease_until) FROM nodes WHERE node = %s",
                               (next(iter(owner_a)),)).fetchone()
            assert row is not None and row[0] is not None
            leased_until = float(row[0])
        assert a.kill() == -signal.SIGKILL
        killed_at = time.monotonic()
        for mid in ids:
            # within lease + claim interval (lease/3), with room for a loaded machine
            st = b.wait_status(mid, "delivered", timeout=LEASE_S + LEASE_S / 3 + 20)
            assert [x["outcome"] for x in st["attempts"]] == ["cancelled", "delivered"]
            assert ts(st["message_deadline"]) == ts(before[mid]["message_deadline"])    # the original deadline
            assert st["accepted_at"] == before[mid]["accepted_at"]
            c.wait_status(mid, "delivered", timeout=20)     # c reads the store: once b committed it
            # never taken over while a's lease ran: the new call started after it expired
            assert ts(st["attempts"][1]["started_at"]) >= leased_until - 0.002
        took = time.monotonic() - killed_at
        new_owners = set(_owners(pg_url, ids).values())
        assert not (new_owners & owner_a) and new_owners      # b and/or c own them now
        assert "took over" in b.log_text() + c.log_text()
        # 8 hung calls at a, then one delivering call per message: none lost, none sent twice
        standins.call(fast.wait_for(16, finished=True))
        assert len(fast.requests) == 16, took
        for d in (b, c):
            assert d.stop() == 0


def test_one_idempotency_key_sent_to_two_daemons_at_once_is_one_message(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"status": 200}])
    config, _ = _config(standins, fast)
    with ExitStack() as stack:
        ds = _daemons(stack, tmp_path, 2, config, pg_url)
        for k in range(10):
            key = f"order-{k}"
            got: list[str] = []
            start = threading.Barrier(2)

            def send(d: DaemonProcess) -> None:
                start.wait(10)
                got.append(d.send({"to": {"email": "a@example.com"}}, idempotency_key=key))
            threads = [threading.Thread(target=send, args=(d,)) for d in ds]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(got) == 2 and got[0] == got[1], (key, got)
        with psycopg.connect(pg_url) as c:
            assert c.execute("SELECT count(*) FROM messages").fetchone() == (10,)
        wait_until(lambda: len(fast.requests) >= 10, timeout=30, what="ten provider calls")
        for d in ds:
            assert d.stop() == 0
        assert len(fast.requests) == 10


def test_a_receipt_and_a_cancel_posted_to_a_daemon_that_does_not_route_the_message_are_applied(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"hang": True}])
    config, rcpt = _config(standins, fast)
    with ExitStack() as stack:
        a, b = _daemons(stack, tmp_path, 2, config, pg_url)
        mid = a.send({"to": {"phone_number": "+15550100"}, "route": "receipted"})
        standins.call(rcpt.wait_for(1, finished=True))
        wait_until(lambda: any(e["type"] == "attempt_accepted" for e in a.status(mid)["events"]),
                   timeout=20, what="the attempt accepted, awaiting its receipt")
        attempt_id = a.status(mid)["attempts"][0]["attempt_id"]
        assert _post_receipt(b, attempt_id, "delivered") == 200        # b does not route it
        st = a.wait_status(mid, "delivered", timeout=20)               # a, its owner, applied it
        assert [x["outcome"] for x in st["attempts"]] == ["delivered"]
        assert not any(e["type"] == "late_receipt" for e in st["events"])
        b.wait_status(mid, "delivered", timeout=20)     # b reads the store: once a committed it
        assert _post_receipt(b, attempt_id, "delivered") == 200        # a repeat changes nothing
        # a cancel posted to b for a message a routes (its call hangs)
        other = a.send({"to": {"email": "c@example.com"}})
        standins.call(fast.wait_for(1))
        r = b.post(f"/v1/messages/{other}/cancel")
        assert r.status == 200, r.body
        assert r.json()["status"] == "cancelled"
        assert a.status(other)["status"] == "cancelled"
        assert b.post(f"/v1/messages/{other}/cancel").status == 409   # finished: nothing to cancel
        with psycopg.connect(pg_url) as c:
            assert c.execute("SELECT count(*) FROM handoffs").fetchone() == (0,)    # all applied
        for d in (a, b):
            assert d.stop() == 0
            assert "Traceback" not in d.log_text()


def test_a_clean_stop_hands_its_pending_messages_over_at_once(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"hang": True}])
    config, _ = _config(standins, fast)
    slow_lease = config.replace('lease = "2s"', 'lease = "10m"')    # expiry alone would take 10 minutes
    with ExitStack() as stack:
        a, b = _daemons(stack, tmp_path, 2, slow_lease, pg_url)
        ids = [a.send({"to": {"email": f"u{i}@example.com"}}) for i in range(3)]
        standins.call(fast.wait_for(3))
        fast.set_script([{"status": 200}])
        assert a.stop() == 0                            # releases its leases
        for mid in ids:
            st = b.wait_status(mid, "delivered", timeout=30)
            assert [x["outcome"] for x in st["attempts"]] == ["cancelled", "delivered"]
        assert b.stop() == 0


def test_a_process_that_lost_its_lease_stops_routing_the_message(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    """A process that renewed too late (stalled, or cut from the database) and whose message
    another process took over drops it: its call is cancelled, nothing more is written."""
    fast = standins.standin([{"hang": True}])
    config, _ = _config(standins, fast)
    with ExitStack() as stack:
        (a,) = _daemons(stack, tmp_path, 1, config, pg_url)
        mid = a.send({"to": {"email": "a@example.com"}})
        standins.call(fast.wait_for(1))
        with psycopg.connect(pg_url) as conn:       # a's lease ran out and another process took mid over
            conn.execute("UPDATE nodes SET lease_until = now() - interval '1 second' "
                         "WHERE node = (SELECT owner FROM messages WHERE id = %s)", (mid,))
            conn.execute("UPDATE messages SET owner = 'elsewhere/1/x' WHERE id = %s", (mid,))
        standins.call(fast.wait_for(1, finished=True))          # a cancelled its call
        assert fast.requests[0].finished == "cancelled"
        wait_until(lambda: "taken over by another process" in a.log_text(), timeout=20, what="the drop logged")
        assert a.stop() == 0
        with psycopg.connect(pg_url) as conn:       # a wrote no final status: the new owner's to write
            assert conn.execute("SELECT status, owner FROM messages WHERE id = %s", (mid,)).fetchone() == \
                ("pending", "elsewhere/1/x")


def test_lease_is_refused_without_the_postgresql_store(tmp_path: Path) -> None:
    """A key accepted and ignored would be a defect: [daemon] lease with the SQLite file is
    refused by `serve` and by `check`, in one line; with ROUTINGD_STORE it is accepted."""
    d = DaemonProcess(tmp_path, CONFIG.format(url="http://127.0.0.1:9/x", rcpt="http://127.0.0.1:9/y",
                                              secret=SECRET), listen=f"127.0.0.1:{free_port()}")
    d.spawn()
    assert d.wait(30) != 0
    text = d.log_text()
    assert "lease applies to the PostgreSQL store only" in text and "Traceback" not in text
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
    check = subprocess.run([*routingd_command(), "check", str(d.config_path)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode != 0
    lines = [x for x in check.stderr.splitlines() if "lease applies to the PostgreSQL store only" in x]
    assert len(lines) == 1 and "Traceback" not in check.stderr
    env["ROUTINGD_STORE"] = "postgresql://routingd@127.0.0.1:9/x"      # checked, not connected to
    ok = subprocess.run([*routingd_command(), "check", str(d.config_path)], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr

