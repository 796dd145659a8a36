"""Restarts of a real `routingd serve` (SIGTERM with grace, and SIGKILL) on the same state file,
with real HTTP provider stand-ins: what a message was waiting for, and what it already
delivered, survives the restart (docs/reliability.md "Restarts").

  * an attempt answered 202 and awaiting its receipt is waited for after the restart, under its
    original receipt deadline; its receipt then delivers the message, nothing is sent again;
  * a fan-out (`method = "all"`) route does not re-send a channel that delivered before the
    restart, and ends delivered (delivered_at set) even when it resumes past its deadline;
  * one stored request that no longer validates is finished undeliverable with a resume_failed
    event; the daemon starts and resumes the other messages.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_process import DaemonProcess, StandinLoop, ts, wait_until

RECEIPT_CONFIG = """
version = 1
[daemon]
grace = "200ms"
[timeouts]
provider = "1m"
channel = "2m"
message = "5m"
[providers.rc]
type = "http"
url = "{rc}"
confirm = "receipt"
receipt_timeout = "2m"
breaker = false
[channels.email]
providers = ["rc"]
[routes.default]
channels = ["email"]
"""

FANOUT_CONFIG = """
version = 1
[daemon]
grace = "100ms"
[timeouts]
provider = "1m"
channel = "1m"
message = "{message}"
[providers.mail]
type = "http"
url = "{mail}"
breaker = false
[providers.sms]
type = "http"
url = "{sms}"
breaker = false
[channels.email]
providers = ["mail"]
[channels.sms]
providers = ["sms"]
requires = "phone_number"
[routes.default]
method = "all"
channels = ["email", "sms"]
"""

TO = {"email": "a@example.com", "phone_number": "+15550100"}


def events(st: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [e for e in st["events"] if e["type"] == type_]


def awaiting_receipt(d: DaemonProcess, mid: str) -> dict[str, Any]:
    """The message's status once its attempt's 202 is committed: the status endpoint shows it a
    moment earlier (from memory), and a SIGKILL in between rightly leaves an attempt that never
    answered, which the next start ends `cancelled` and sends again."""
    def committed() -> bool:
        conn = sqlite3.connect(f"file:{d.state_path}?mode=ro", uri=True)
        try:
            return bool(conn.execute("SELECT 1 FROM attempts WHERE message_id = ? AND status_code = 202 "
                                     "AND ended_at IS NULL", (mid,)).fetchone())
        finally:
            conn.close()

    wait_until(committed, timeout=15, what="the 202 of the attempt committed")
    return d.status(mid)


def delivered_committed(d: DaemonProcess, mid: str) -> None:
    """Wait until an attempt of the message is stored `delivered`: the status endpoint shows the
    delivery from memory a moment before its row is committed, and a SIGKILL in between rightly
    forgets it (the channel then runs again)."""
    def committed() -> bool:
        conn = sqlite3.connect(f"file:{d.state_path}?mode=ro", uri=True)
        try:
            return bool(conn.execute("SELECT 1 FROM attempts WHERE message_id = ? AND outcome = 'delivered'",
                                     (mid,)).fetchone())
        finally:
            conn.close()

    wait_until(committed, timeout=15, what="the delivered attempt committed")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_an_attempt_awaiting_its_receipt_survives_a_restart(tmp_path: Path, standins: StandinLoop,
                                                           how: str) -> None:
    # the only provider answers 202 and then (after the restart) 503: a re-send would fail it
    rc = standins.standin([{"status": 202}, {"status": 503}])
    with DaemonProcess(tmp_path, RECEIPT_CONFIG.format(rc=rc.url)) as d:
        mid = d.send({"to": TO})
        st = awaiting_receipt(d, mid)
        (attempt,) = st["attempts"]
        receipt_deadline = events(st, "attempt_accepted")[0]["receipt_deadline"]
        if how == "sigterm":
            assert d.stop(signal.SIGTERM) == 0, d.log_tail()
        else:
            d.kill()
        d.start()
        st = d.status(mid)
        assert st["status"] == "pending", st
        (resumed,) = events(st, "attempt_resumed")
        assert resumed["attempt_id"] == attempt["attempt_id"]
        assert resumed["receipt_deadline"] == receipt_deadline     # its deadline, not a new one
        r = d.post("/v1/receipts/rc", {"attempt_id": attempt["attempt_id"], "status": "delivered"})
        assert r.status == 200, r.body
        st = d.wait_status(mid, "delivered")
        assert [a["attempt_id"] for a in st["attempts"]] == [attempt["attempt_id"]]
        assert st["attempts"][0]["outcome"] == "delivered"
        assert st["delivered_at"] is not None
        assert len(rc.requests) == 1                      # the provider was called once
        assert d.stop() == 0, d.log_tail()
    assert "Traceback" not in d.log_text(), d.log_tail()


def test_a_receipt_for_an_attempt_cut_by_a_restart_counts(tmp_path: Path, standins: StandinLoop) -> None:
    # the first call hangs and is cut by the stop; the vendor delivered it all the same
    rc = standins.standin([{"hang": True}])
    with DaemonProcess(tmp_path, RECEIPT_CONFIG.format(rc=rc.url)) as d:
        mid = d.send({"to": TO})
        (first,) = standins.call(rc.wait_for(1))
        assert d.stop() == 0, d.log_tail()
        d.start()
        standins.call(rc.wait_for(2))                    # sent again (at-least-once), hanging again
        old = d.status(mid)["attempts"][0]
        assert old["outcome"] == "cancelled"
        r = d.post("/v1/receipts/rc", {"attempt_id": old["attempt_id"], "status": "delivered"})
        assert r.status == 200, r.body
        st = d.wait_status(mid, "delivered")
        outcomes = [(a["attempt_id"], a["outcome"]) for a in st["attempts"]]
        assert outcomes[0] == (old["attempt_id"], "delivered") and len(outcomes) == 2, outcomes   # in time order
        assert d.stop() == 0, d.log_tail()


def test_a_receipt_answered_before_a_sigkill_is_kept(tmp_path: Path, standins: StandinLoop) -> None:
    rc = standins.standin([{"status": 202}])
    with DaemonProcess(tmp_path, RECEIPT_CONFIG.format(rc=rc.url)) as d:
        mids = [d.send({"to": TO}) for _ in range(4)]
        aids = [awaiting_receipt(d, m)["attempts"][0]["attempt_id"] for m in mids]
        for aid in aids:
            assert d.post("/v1/receipts/rc", {"attempt_id": aid, "status": "delivered"}).status == 200
        d.kill()                                          # at once after the last 200
        conn = sqlite3.connect(d.state_path)
        try:
            got = dict(conn.execute("SELECT id, status FROM messages"))
        finally:
            conn.close()
        assert got == {m: "delivered" for m in mids}
        d.start()
        assert all(d.status(m)["status"] == "delivered" for m in mids)
        assert len(rc.requests) == 4
        assert d.stop() == 0, d.log_tail()


def test_a_fanout_does_not_resend_a_channel_delivered_before_a_restart(tmp_path: Path,
                                                                      standins: StandinLoop) -> None:
    mail = standins.standin([{"status": 200}])
    sms = standins.standin([{"hang": True}, {"status": 200}])
    with DaemonProcess(tmp_path, FANOUT_CONFIG.format(mail=mail.url, sms=sms.url, message="5m")) as d:
        mid = d.send({"to": TO})
        wait_until(lambda: events(d.status(mid), "channel_finished"), timeout=15, what="email delivered")
        standins.call(sms.wait_for(1))
        assert d.stop() == 0, d.log_tail()
        d.start()
        st = d.wait_status(mid, "delivered")
        assert st["delivered_at"] is not None
        assert len(mail.requests) == 1                    # email was not sent again
        assert len(sms.requests) == 2                     # sms: cut by the stop, sent again
        assert d.stop() == 0, d.log_tail()


def test_a_fanout_resumed_past_its_deadline_ends_delivered(tmp_path: Path, standins: StandinLoop) -> None:
    mail = standins.standin([{"status": 200}])
    sms = standins.standin([{"hang": True}])
    with DaemonProcess(tmp_path, FANOUT_CONFIG.format(mail=mail.url, sms=sms.url, message="3s")) as d:
        mid = d.send({"to": TO})
        wait_until(lambda: events(d.status(mid), "channel_finished"), timeout=15, what="email delivered")
        delivered_committed(d, mid)
        deadline = ts(d.status(mid)["message_deadline"])
        d.kill()
        wait_until(lambda: time.time() > deadline + 0.1, timeout=15, what="the message deadline to pass")
        d.start()
        st = d.status(mid)
        assert st["status"] == "delivered", st
        assert st["delivered_at"] is not None
        assert ts(st["delivered_at"]) < deadline
        assert len(mail.requests) == 1
        assert d.stop() == 0, d.log_tail()


def test_a_stored_request_that_no_longer_validates_does_not_stop_the_start(tmp_path: Path,
                                                                          standins: StandinLoop) -> None:
    rc = standins.standin([{"hang": True}])
    with DaemonProcess(tmp_path, RECEIPT_CONFIG.format(rc=rc.url)) as d:
        bad, good = d.send({"to": TO}), d.send({"to": TO})
        standins.call(rc.wait_for(2))
        assert d.stop() == 0, d.log_tail()
        conn = sqlite3.connect(d.state_path)
        try:         # what a stricter validation after an upgrade makes of a stored request
            with conn:
                conn.execute("UPDATE messages SET request = ? WHERE id = ?",
                             ('{"message": {"to": {"email": 5}, "surprise": true}}', bad))
        finally:
            conn.close()
        d.start()
        st = d.status(bad)
        assert st["status"] == "undeliverable", st
        (failed,) = events(st, "resume_failed")
        assert "no longer validates" in failed["reason"]
        assert d.status(good)["status"] == "pending"
        standins.call(rc.wait_for(3))                     # the other one was resumed: sent again
        assert d.metric("routingd_resume_failed_total") == 1
        assert "cannot be resumed" in d.log_text()
        assert d.stop() == 0, d.log_tail()
