"""The Infobip flow (issue 15) end to end in a real `routingd serve` process, with the real
provider types on loopback: an SMS through the Twilio stand-in with `confirm = "receipt"`, its
status callbacks signed the Twilio way and posted to the daemon's own /v1/receipts/<name> (the
StatusCallback URL the daemon sent Twilio), and the email channel behind it through the `smtp`
type to an aiosmtpd relay.

  a. no callback within receipt_timeout -> the message fails over to email, delivered there;
  b. an `undelivered` callback -> failover at once (the attempt ends `failed`, not `timeout`);
  c. a `delivered` callback after failover moved on -> a late receipt: the email attempt still
     running is cancelled and the message delivered; the same callback again changes nothing
     (routingd_receipts_repeated_total); and one for a message email already delivered is
     recorded as a `duplicate`, its status staying delivered (docs/api.md "Receipts");
  and all of it reads the same from the state store after a restart.

Every wait is on state, bounded; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiosmtpd.controller import Controller  # noqa: E402
from daemon_process import DaemonProcess, StandinLoop, free_port, serving, wait_until  # noqa: E402
from vendor_standins import TwilioStandin  # noqa: E402

from routingd.daemon.receipts.twilio import signature as twilio_signature  # noqa: E402

SID, TW_TOKEN = "AC" + "e" * 32, "twilio-token-end-to-end"
HELD = "slow@example.org"         # the relay holds this recipient's RCPT until the test ends

CONFIG = """
version = 1
[timeouts]
provider = "30s"
channel = "60s"
message = "120s"

# receipt_timeout short: (a) waits it out
[providers.twilio_quick]
type = "twilio"
account_sid = "{sid}"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
from = "+15017122661"
base_url = "{twilio}"
status_callback = "{daemon}/v1/receipts/twilio_quick"
confirm = "receipt"
receipt_timeout = "1s"
breaker = false

# receipt_timeout far beyond the test: only a callback can end its attempts (b)
[providers.twilio]
type = "twilio"
account_sid = "{sid}"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
from = "+15017122661"
base_url = "{twilio}"
status_callback = "{daemon}/v1/receipts/twilio"
confirm = "receipt"
receipt_timeout = "50s"
breaker = false

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "alerts@example.com"
breaker = false

[channels.sms]
providers = ["twilio"]
requires = "phone_number"

[channels.sms_quick]
providers = ["twilio_quick"]
requires = "phone_number"

[channels.email]
providers = ["relay"]
requires = "email"

[routes.default]
channels = ["sms", "email"]

[routes.quick]
channels = ["sms_quick", "email"]
"""


class Relay:
    """aiosmtpd handler: records each message; RCPT TO for HELD waits (bounded) until `release`
    is set, so an attempt to it stays in flight, then refuses it."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.held: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == HELD:
            with self.lock:
                self.held.append(address)
            for _ in range(3000):                 # at most 60 s
                if self.release.is_set():
                    break
                await asyncio.sleep(0.02)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 2.0.0 Ok: queued"

    def subjects_to(self, address: str) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for rcpt, m in self.messages if address in rcpt]


def callback(d: DaemonProcess, url: str, params: dict[str, str], token: str = TW_TOKEN) -> Any:
    """What Twilio does: POST the form to the StatusCallback URL, signed over that URL."""
    sig = twilio_signature(token, url, list(params.items()))
    return d.request("POST", urlsplit(url).path, body=urlencode(params).encode(), token=False,
                     headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig})


def events(st: dict[str, Any], type_: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in st["events"] if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]


def index(st: dict[str, Any], type_: str, **match: Any) -> int:
    for i, e in enumerate(st["events"]):
        if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {type_} event {match} in {st['events']}")


def accepted_sms(d: DaemonProcess, mid: str) -> dict[str, Any]:
    """The message's SMS attempt once Twilio answered it (awaiting its receipt, the sid recorded)."""
    def ready() -> bool:
        st = d.status(mid)
        return bool(events(st, "attempt_accepted")) and bool(st["attempts"][0].get("provider_message_id"))
    wait_until(ready, timeout=20, what=f"the SMS of {mid} accepted by Twilio")
    return dict(d.status(mid)["attempts"][0])


def outcomes(st: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(a["channel"], a["provider"], a["outcome"]) for a in st["attempts"]]


def test_sms_receipts_decide_the_failover_to_email_in_a_real_daemon(tmp_path: Path, standins: StandinLoop) -> None:
    tw = standins.call(TwilioStandin(SID, TW_TOKEN).start())
    standins.standins.append(tw)
    relay = Relay()
    smtp = Controller(relay, hostname="127.0.0.1", port=free_port())
    smtp.start()
    fill = dict(sid=SID, twilio=tw.url, smtp_port=smtp.port)
    # The daemon's port is the kernel's pick (listen 127.0.0.1:0): the status_callback URLs name it
    # once it is known, through a reload, before anything is sent.
    d = DaemonProcess(tmp_path, CONFIG.format(daemon="http://127.0.0.1:9", **fill),
                      env={"TWILIO_AUTH_TOKEN": TW_TOKEN})
    try:
        with serving(d):
            d.write_config(CONFIG.format(daemon=d.url, **fill))
            r = d.post("/-/reload")
            assert r.status == 200 and r.json()["status"] == "reloaded", r.body
            quick_url, slow_url = f"{d.url}/v1/receipts/twilio_quick", f"{d.url}/v1/receipts/twilio"

            # (a) no callback within receipt_timeout: failover to email, delivered there
            a = d.send({"route": "quick", "to": {"phone_number": "+15558675310", "email": "bob@example.org"},
                        "content": {"title": "disk full (a)", "body": "db1 at 91%"}})
            st = d.wait_status(a, "delivered", timeout=30)
            assert outcomes(st) == [("sms_quick", "twilio_quick", "timeout"), ("email", "relay", "delivered")]
            sms_a = st["attempts"][0]
            assert index(st, "attempt_accepted", attempt_id=sms_a["attempt_id"]) \
                < index(st, "receipt_timeout", attempt_id=sms_a["attempt_id"]) \
                < index(st, "failover", **{"from": "sms_quick", "to": "email"})
            assert tw.requests[0].form["StatusCallback"] == quick_url
            wait_until(lambda: relay.subjects_to("bob@example.org") == ["disk full (a)"], timeout=10,
                       what="the mail of (a) at the relay")

            # (b) an `undelivered` callback: failover at once, long before the 50 s receipt_timeout
            b = d.send({"to": {"phone_number": "+15558675311", "email": "carol@example.org"},
                        "content": {"title": "disk full (b)", "body": "db2 at 92%"}})
            sms_b = accepted_sms(d, b)
            assert tw.requests[-1].form["StatusCallback"] == slow_url
            sid_b = sms_b["provider_message_id"]
            r = callback(d, slow_url, {"MessageSid": sid_b, "MessageStatus": "sent", "AccountSid": SID})
            assert r.status == 200 and r.json()["matched"] == 1, r.body
            assert d.status(b)["status"] == "pending"            # `sent` is an event only
            r = callback(d, slow_url, {"MessageSid": sid_b, "MessageStatus": "undelivered", "ErrorCode": "30003",
                                       "AccountSid": SID})
            assert r.status == 200 and r.json()["matched"] == 1, r.body
            st = d.wait_status(b, "delivered", timeout=30)
            assert outcomes(st) == [("sms", "twilio", "failed"), ("email", "relay", "delivered")]
            aid_b = sms_b["attempt_id"]
            assert [(e["vendor_status"], e.get("error_code")) for e in events(st, "vendor_status")] == \
                [("sent", None), ("undelivered", "30003")]
            assert index(st, "vendor_status", vendor_status="undelivered") \
                < index(st, "attempt_ended", attempt_id=aid_b, outcome="failed") \
                < index(st, "failover", **{"from": "sms", "to": "email"})
            assert not events(st, "receipt_timeout")             # the callback, not the clock, ended it
            wait_until(lambda: relay.subjects_to("carol@example.org") == ["disk full (b)"], timeout=10,
                       what="the mail of (b) at the relay")

            # (c) `delivered` after failover moved on, while the email attempt is still in flight
            c = d.send({"route": "quick", "to": {"phone_number": "+15558675312", "email": HELD},
                        "content": {"title": "disk full (c)", "body": "db3 at 93%"}})
            sms_c = accepted_sms(d, c)

            def email_running() -> bool:
                st = d.status(c)
                return [x[:2] for x in outcomes(st)] == [("sms_quick", "twilio_quick"), ("email", "relay")] \
                    and st["attempts"][1]["outcome"] is None and relay.held == [HELD]
            wait_until(email_running, timeout=30, what="(c) failed over to email, held at the relay")
            delivered_c = {"MessageSid": sms_c["provider_message_id"], "MessageStatus": "delivered",
                           "AccountSid": SID}
            r = callback(d, quick_url, delivered_c)
            assert r.status == 200 and r.json()["matched"] == 1, r.body
            st = d.wait_status(c, "delivered", timeout=10)
            email_c = st["attempts"][1]
            assert outcomes(st)[0] == ("sms_quick", "twilio_quick", "delivered")   # the vendor delivered it
            assert email_c["outcome"] == "cancelled"
            assert events(st, "late_receipt", attempt_id=sms_c["attempt_id"], status="delivered")
            assert events(st, "delivered", attempt_id=sms_c["attempt_id"], late=True)
            assert index(st, "late_receipt", attempt_id=sms_c["attempt_id"]) \
                < index(st, "attempt_ended", attempt_id=email_c["attempt_id"], outcome="cancelled") \
                < index(st, "finished", status="delivered")
            assert not events(st, "duplicate")                  # the email never went out
            assert relay.subjects_to(HELD) == []
            st_c = st

            # the same callback again (Twilio retries): answered 200, changes nothing, counted
            repeated = d.metric("routingd_receipts_repeated_total") or 0.0
            r = callback(d, quick_url, delivered_c)
            assert r.status == 200, r.body
            assert d.status(c)["events"] == st["events"]
            assert d.metric("routingd_receipts_repeated_total") == repeated + 1

            # `delivered` for (a)'s SMS, whose message email already delivered: a duplicate
            before = d.status(a)
            r = callback(d, quick_url, {"MessageSid": sms_a["provider_message_id"], "MessageStatus": "delivered",
                                        "AccountSid": SID})
            assert r.status == 200 and r.json()["matched"] == 1, r.body
            st = d.status(a)
            assert st["status"] == "delivered" and st["finished_at"] == before["finished_at"]
            assert events(st, "late_receipt", attempt_id=sms_a["attempt_id"], status="delivered")
            assert events(st, "duplicate", attempt_id=sms_a["attempt_id"])
            assert len(events(st, "finished")) == 1
            # a forged one changes nothing
            r = callback(d, quick_url, {**delivered_c, "MessageStatus": "failed"}, token="not-the-token")
            assert r.status == 401
            assert d.status(c)["events"] == st_c["events"]
            relay.release.set()

            # what the receipts changed is stored: after a restart the store answers the same
            def summary(mid: str) -> Any:
                st = d.status(mid)
                return (st["status"], st["finished_at"], st["delivered_at"],
                        [(x["attempt_id"], x["outcome"], x["ended_at"], x.get("provider_message_id")) for x in st["attempts"]],
                        [(e["type"], e.get("attempt_id")) for e in st["events"]])
            before_restart = [summary(m) for m in (a, b, c)]
            assert d.stop() == 0, d.log_tail()
            d.start()
            assert [summary(m) for m in (a, b, c)] == before_restart
    finally:
        relay.release.set()
        smtp.stop()
