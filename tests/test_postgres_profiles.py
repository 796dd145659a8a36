"""Profiles at accept with several real `routingd serve` processes on ONE PostgreSQL database
(daemon/profiles.py, docs/scaling.md "Profiles at accept").

A process does not read the recipient's profile per send: it answers from what it knows and the
insert's transaction checks it. These tests make a daemon know something, change it through the
other daemon, and require the next send to see the change: a profile PUT, replaced, merged and
deleted at daemon A is what a send accepted afterwards at daemon B is routed with."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from daemon_process import DaemonProcess, StandinLoop

CONFIG = """
version = 1
[daemon]
grace = "1s"
lease = "2s"
[timeouts]
provider = "30s"
channel = "40s"
message = "60s"
[providers.mail]
type = "http"
url = "{mail}"
breaker = false
[providers.text]
type = "http"
url = "{text}"
breaker = false
[channels.email]
providers = ["mail"]
requires = "email"
[channels.sms]
providers = ["text"]
requires = "phone_number"
[routes.default]
channels = ["email", "sms"]
"""


def _put(d: DaemonProcess, user_id: str, profile: dict[str, Any], method: str = "PUT") -> None:
    r = d.request(method, f"/profiles/{user_id}", {"profile": profile})
    assert r.status == 200, r.body


def _delivered_to(d: DaemonProcess, standin: Any, mid: str, standins: StandinLoop) -> dict[str, Any]:
    """The `to` the provider was called with for message `mid` (delivered first)."""
    d.wait_status(mid, "delivered", timeout=30)
    got = [r.json["to"] for r in standin.requests if isinstance(r.json, dict) and r.json.get("message_id") == mid]
    assert len(got) == 1, got
    return dict(got[0])


def test_a_profile_written_at_one_daemon_is_seen_by_the_next_send_at_another(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    mail = standins.standin([{"status": 200}])
    text = standins.standin([{"status": 200}])
    config = CONFIG.format(mail=mail.url, text=text.url)
    with ExitStack() as stack:
        a, b = (stack.enter_context(DaemonProcess(tmp_path / n, config, env={"ROUTINGD_STORE": pg_url},
                                                  start_timeout=40)) for n in ("a", "b"))
        # b learns that no profile is stored (its first send with a user_id looks once)
        first = b.send({"to": {"user_id": "u1", "email": "own@example.com"}})
        assert _delivered_to(b, mail, first, standins) == {"user_id": "u1", "email": "own@example.com"}

        # stored through a while b assumes there is none: b's next send for u1 gets its fields
        # (b's insert is refused by the check and the send accepted again with the profile)
        _put(a, "u1", {"email": "u1@example.com", "phone_number": "+15550100"})
        mid = b.send({"to": {"user_id": "u1", "email": "own@example.com"}})
        assert _delivered_to(b, mail, mid, standins) == {"user_id": "u1", "email": "own@example.com",
                                                         "phone_number": "+15550100"}
        with psycopg.connect(pg_url) as c:      # and the message is stored with them
            row = c.execute("SELECT request FROM messages WHERE id = %s", (mid,)).fetchone()
        assert row is not None and json.loads(row[0])["message"]["to"]["phone_number"] == "+15550100"
        # b knows that profile now; replaced through a: the next send at b sees the new one
        mid = b.send({"to": {"user_id": "u1"}})
        assert _delivered_to(b, mail, mid, standins)["email"] == "u1@example.com"
        _put(a, "u1", {"email": "new@example.com"})
        mid = b.send({"to": {"user_id": "u1"}})
        assert _delivered_to(b, mail, mid, standins) == {"user_id": "u1", "email": "new@example.com"}
        # merged through b (POST), seen at a; the request's own fields still win
        _put(b, "u1", {"phone_number": "+15550101"}, method="POST")
        mid = a.send({"to": {"user_id": "u1", "email": "mine@example.com"}})
        assert _delivered_to(a, mail, mid, standins) == {"user_id": "u1", "email": "mine@example.com",
                                                         "phone_number": "+15550101"}
        # b knows the merged profile; deleted through a: b's next send finds none (nothing can
        # reach u1 then: a 422, never a message routed with the deleted profile)
        mid = b.send({"to": {"user_id": "u1"}})
        assert _delivered_to(b, mail, mid, standins)["email"] == "new@example.com"
        assert a.request("DELETE", "/profiles/u1").status == 204
        r = b.post("/v1/send", {"message": {"to": {"user_id": "u1"}}})
        assert r.status == 422, r.body
        assert r.json()["details"][0]["msg"].endswith("(no profile is stored for this user_id: PUT /profiles/{user_id})")

        # a 422 answered at b, then a profile for that user stored through a: b's next send is routed
        assert b.post("/v1/send", {"message": {"to": {"user_id": "u2"}}}).status == 422
        _put(a, "u2", {"phone_number": "+15550111"})
        mid = b.send({"to": {"user_id": "u2"}})
        b.wait_status(mid, "delivered", timeout=30)
        assert [r.json["to"] for r in text.requests if r.json.get("message_id") == mid] == [
            {"user_id": "u2", "phone_number": "+15550111"}]
        for d in (a, b):
            assert d.stop() == 0
            assert "Traceback" not in d.log_text()


def test_a_profile_written_straight_into_the_database_is_seen_too(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    """The version is the table's (a trigger), not the daemon's: an operator's own UPDATE counts."""
    mail = standins.standin([{"status": 200}])
    text = standins.standin([{"status": 200}])
    config = CONFIG.format(mail=mail.url, text=text.url)
    with DaemonProcess(tmp_path / "a", config, env={"ROUTINGD_STORE": pg_url}, start_timeout=40) as a:
        _put(a, "u1", {"email": "u1@example.com"})
        mid = a.send({"to": {"user_id": "u1"}})
        assert _delivered_to(a, mail, mid, standins)["email"] == "u1@example.com"       # a knows it now
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("""UPDATE profiles SET profile = '{"email": "sql@example.com"}' WHERE user_id = 'u1'""")
        mid = a.send({"to": {"user_id": "u1"}})
        assert _delivered_to(a, mail, mid, standins)["email"] == "sql@example.com"
        assert a.stop() == 0
