"""Operating routingd (docs/operations.md "Logs", "Provider controls"): outage log lines from a
real daemon process with a sandbox provider in outage, the JSON and journald line formats,
`routingd check` refusing what `serve` refuses, GET /v1/providers and drain / resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemon_process import DaemonProcess, routingd_command, serving, wait_until

TOKEN = "ops-test-token"

CONFIG = """
version = 1
[daemon]
grace = "200ms"
{daemon_extra}
[providers.primary]
type = "sandbox"
latency = "1ms"
fail = "{fail}"
breaker = {{ failures = 2, cooldown = "300ms" }}
[providers.backup]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["primary", "backup"]
requires = "email"
[routes.default]
channels = ["email"]
"""


def config(fail: str = "error", daemon_extra: str = "") -> str:
    return CONFIG.format(fail=fail, daemon_extra=daemon_extra)


def lines(d: DaemonProcess, pattern: str) -> list[str]:
    return [ln for ln in d.log_text().splitlines() if re.search(pattern, ln)]


def send_until(d: DaemonProcess, pattern: str, what: str, timeout: float = 20.0) -> None:
    """Send a message per poll until a log line matches (each send moves the breakers on)."""
    def check() -> bool:
        mid = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(mid, "delivered")
        return bool(lines(d, pattern))
    wait_until(check, timeout=timeout, what=what)


def test_an_outage_is_visible_in_the_log_with_its_levels(tmp_path: Path) -> None:
    with serving(DaemonProcess(tmp_path, config("error"))) as d:
        send_until(d, r"breaker OPEN", "the breaker-open line")
        opened = lines(d, r"breaker OPEN")
        assert len(opened) == 1, opened
        assert " WARNING routingd.providers: provider primary: breaker OPEN after 2 consecutive failures, " \
               "last: failed 503" in opened[0]
        assert "skip it for 0.3s" in opened[0]
        # the cooldown passes: a probe goes out and fails (still "error"): INFO lines
        send_until(d, r"probe .* failed", "a failed probe")
        assert all(" INFO " in ln for ln in lines(d, r"half-open")), lines(d, r"half-open")
        # the outage ends: a reload says what changed, the next probe closes the breaker
        d.write_config(config("none"))
        wait_until(lambda: lines(d, r"now serving policy"), what="the reload line")
        reload_line = lines(d, r"now serving policy")[0]
        assert " INFO " in reload_line and "providers changed: primary" in reload_line, reload_line
        send_until(d, r"breaker closed", "the breaker-closed line")
        closed = lines(d, r"breaker closed")
        assert len(closed) == 1 and " INFO routingd.providers: provider primary: breaker closed after " in closed[0]
        assert not lines(d, r" (WARNING|ERROR) ") or all("breaker OPEN" in ln for ln in lines(d, r" (WARNING|ERROR) "))


def test_a_message_that_ends_undeliverable_is_one_warning_line_with_its_last_failure(tmp_path: Path) -> None:
    text = CONFIG.format(fail="error", daemon_extra="").replace(
        '[providers.backup]\ntype = "sandbox"\nlatency = "1ms"\n',
        '[providers.backup]\ntype = "sandbox"\nlatency = "1ms"\nfail = "error"\nbreaker = false\n')
    assert 'fail = "error"\nbreaker = false' in text
    with serving(DaemonProcess(tmp_path, text)) as d:
        mid = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(mid, "undeliverable")
        wait_until(lambda: lines(d, rf"message {mid} ended"), what="the message's end line")
        (line,) = lines(d, rf"message {mid} ended")
        assert " WARNING routingd.messages: " in line, line
        assert f"message {mid} ended undeliverable: every option was tried; last failure: backup: failed 5" in line, line
        ok = d.send({"to": {"email": "a@example.com"}})
        d.write_config(config("none"))
        wait_until(lambda: lines(d, r"now serving policy"), what="the reload line")
        ok = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(ok, "delivered")
        assert not lines(d, rf"message {ok} ended"), "a delivered message has no end line"


def test_under_load_the_end_lines_are_summarised_not_one_each(caplog: pytest.LogCaptureFixture) -> None:
    """Past `end_lines` failed ends in a window, the rest are counted and summed up in one line
    when the window closes (a real OutageLog fed the engine's events on a real loop)."""
    import asyncio
    import logging

    from routingd.daemon.core.engine import Event
    from routingd.daemon.oplog import OutageLog

    async def main() -> None:
        ended = asyncio.Event()
        listen = OutageLog(router=None, end_lines=3, end_window_s=0.2)
        for i in range(8):
            listen(f"m{i}", Event("finished", 1.0, {"status": "undeliverable" if i % 2 else "expired"}))
        listen("ok", Event("finished", 1.0, {"status": "delivered"}))
        asyncio.get_running_loop().call_later(0.3, ended.set)
        await asyncio.wait_for(ended.wait(), 5)

    with caplog.at_level(logging.WARNING, logger="routingd.messages"):
        asyncio.run(main())
    got = [r.getMessage() for r in caplog.records if r.name == "routingd.messages"]
    assert [g.split(" ended ")[0] for g in got[:3]] == ["message m0", "message m1", "message m2"], got
    assert len(got) == 4, got
    assert got[3].startswith("5 more message(s) ended without a delivery in the last 0.2s (2 expired, "
                             "3 undeliverable)"), got[3]


def test_log_format_json_is_one_object_per_line(tmp_path: Path) -> None:
    with serving(DaemonProcess(tmp_path, config("error", 'log_format = "json"'))) as d:
        send_until(d, r"breaker OPEN", "the breaker-open line")
        objs = [json.loads(ln) for ln in d.log_text().splitlines() if ln.strip()]
    warn = [o for o in objs if "breaker OPEN" in o["message"]]
    assert warn and warn[0]["level"] == "warning" and warn[0]["logger"] == "routingd.providers"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"]) for o in objs)
    assert any(o["message"].startswith("listening on ") for o in objs)


def test_under_journald_no_timestamp_of_ours_and_a_priority_prefix(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config("error"))
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it gave as stderr: here the
    # log file DaemonProcess opens ("wb" truncates, the inode stays)
    log_file = tmp_path / "routingd-1.log"
    log_file.write_bytes(b"")
    st = os.stat(log_file)
    d.env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with serving(d):
        send_until(d, r"breaker OPEN", "the breaker-open line")
        text = d.log_text()
    assert "<4>WARNING routingd.providers: provider primary: breaker OPEN" in text
    listening = [ln for ln in text.splitlines() if "listening on" in ln][0]
    assert listening.startswith("<6>INFO routingd: listening on "), listening


# --------------------------------------------------------------------------- check = serve


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
    e.update(env or {})
    return subprocess.run([*routingd_command(), *args], env=e, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("daemon_extra,expect", [
    ('listen = "localhost"', "listen address 'localhost' must be HOST:PORT"),
    ('listen = "127.0.0.1:99999"', "port must be a number from 0 to 65535"),
    ('listen = "0.0.0.0:8080"\napi_tokens = ["${OPS_TEST_UNSET_TOKEN}"]', "without API tokens"),
    ('mqtt = { url = "http://broker:1883" }', "daemon.mqtt.url: expected mqtt://host[:port]"),
])
def test_check_refuses_what_serve_refuses(tmp_path: Path, daemon_extra: str, expect: str) -> None:
    path = tmp_path / "routing.toml"
    path.write_text(config("none", daemon_extra))
    check = run("check", str(path))
    assert check.returncode == 1, check
    assert expect in check.stderr and re.match(re.escape(str(path)) + r"(:\d+(:\d+)?)?: ", check.stderr), check.stderr
    serve = run("serve", "--config", str(path), "--state", str(tmp_path / "s.db"))
    assert serve.returncode == 1 and expect in serve.stderr, serve.stderr


def test_check_passes_with_the_token_set(tmp_path: Path) -> None:
    path = tmp_path / "routing.toml"
    path.write_text(config("none", 'listen = "0.0.0.0:8080"\napi_tokens = ["${OPS_TEST_TOKEN}"]'))
    p = run("check", str(path), env={"OPS_TEST_TOKEN": "x"})
    assert p.returncode == 0 and ": ok (version " in p.stdout, p


# --------------------------------------------------------------------------- providers API


def test_providers_drain_and_resume(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config("none", f'api_tokens = ["{TOKEN}"]'), token=TOKEN)
    with serving(d):
        mid = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(mid, "delivered")
        def view() -> dict[str, Any]:
            return {p["name"]: p for p in d.get("/v1/providers").json()["providers"]}
        # listeners hear an event once its row is committed, a moment after the status shows it
        wait_until(lambda: view()["primary"]["recent"]["attempts"] == 1, what="the attempt in /v1/providers")
        by_name = view()
        assert set(by_name) == {"primary", "backup"}
        p = by_name["primary"]
        assert p["breaker"]["state"] == "closed" and p["drained"] is False
        assert p["recent"]["outcomes"] == {"delivered": 1} and p["recent"]["latency_ms"]["p50"] is not None
        # auth like /-/reload
        assert d.request("POST", "/v1/providers/primary/drain", token=None).status == 401
        assert d.get("/v1/providers", token=None).status == 401
        wrong = d.get("/v1/providers", token="not-the-token")       # well formed, wrong: say so
        assert wrong.status == 401 and wrong.json()["details"][0]["msg"] == "token not accepted"
        assert d.get("/v1/providers", token=None).json()["details"][0]["msg"] == "expected 'Bearer <token>'"
        assert d.post("/v1/providers/nope/drain").status == 404
        r = d.post("/v1/providers/primary/drain")
        assert r.status == 200 and r.json()["drained"] is True and r.json()["changed"] is True
        assert lines(d, r"WARNING .*provider primary: drained by hand")
        assert b'routingd_provider_drained{provider="primary"} 1.0' in d.get("/metrics").body
        # kept across a reload
        d.write_config(config("none", f'api_tokens = ["{TOKEN}"]\nmax_body = 300000'))
        assert d.post("/-/reload").status == 200
        mid = d.send({"to": {"email": "a@example.com"}})
        st = d.wait_status(mid, "delivered")
        assert [a["provider"] for a in st["attempts"]] == ["backup"]
        skipped = [e for e in st["events"] if e["type"] == "provider_skipped"]
        assert skipped and skipped[0]["provider"] == "primary" and skipped[0]["reason"] == "drained"
        wait_until(lambda: view()["primary"]["recent"]["skipped"] == 1, what="the skip in /v1/providers")
        assert view()["primary"]["drained"] is True
        r = d.post("/v1/providers/primary/resume")
        assert r.status == 200 and r.json()["drained"] is False
        assert b'routingd_provider_drained{provider="primary"} 0.0' in d.get("/metrics").body
        mid = d.send({"to": {"email": "a@example.com"}})
        assert [a["provider"] for a in d.wait_status(mid, "delivered")["attempts"]] == ["primary"]


LIMITED = """
version = 1
[daemon]
api_tokens = ["{token}"]
[providers.primary]
type = "sandbox"
latency = "1ms"
outbound_rate_limit = "1/m"
[providers.backup]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["primary", "backup"]
requires = "email"
timeout = "1h"
[routes.default]
channels = ["email"]
"""


def test_providers_show_the_live_limiter_state(tmp_path: Path) -> None:
    """GET /v1/providers carries each limited provider's Limiter.snapshot (docs/api.md "Providers"):
    at one call a minute, one message goes and the next two wait their turn in its queue."""
    d = DaemonProcess(tmp_path, LIMITED.format(token=TOKEN), token=TOKEN)
    with serving(d):
        first = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(first, "delivered")
        queued = [d.send({"to": {"email": "a@example.com"}}) for _ in range(2)]

        def view() -> dict[str, Any]:
            return {p["name"]: p for p in d.get("/v1/providers").json()["providers"]}
        wait_until(lambda: view()["primary"]["limit"]["queue_depth"] == 2, what="two messages in the queue")
        by_name = view()
        assert by_name["backup"]["limit"] is None               # no limit configured: none shown
        lim = by_name["primary"]["limit"]
        assert lim["rate_limit"] == pytest.approx(1 / 60) and lim["rate_in_force"] == pytest.approx(1 / 60)
        assert lim["burst"] == 1 and lim["max_inflight"] is None
        assert lim["in_flight"] == 0 and lim["granted"] == 1
        assert lim["spilled"] == 0 and lim["throttled"] == 0
        for mid in queued:                                      # they wait; not failed over to backup
            assert d.status(mid)["attempts"] == []


# --------------------------------------------------------------------------- explain / 422

TWO_CHANNELS = """
version = 1
[providers.mail]
type = "sandbox"
[providers.text]
type = "sandbox"
[channels.email]
providers = ["mail"]
requires = "email"
[channels.sms]
providers = ["text"]
requires = "phone_number"
[routes.default]
channels = ["email", "sms"]
"""


def test_explain_json_lists_the_skipped_channels(tmp_path: Path) -> None:
    (tmp_path / "routing.toml").write_text(TWO_CHANNELS)
    (tmp_path / "m.json").write_text(json.dumps({"message": {"to": {"email": "a@example.com"}}}))
    p = run("explain", "default", "--config", str(tmp_path / "routing.toml"), "--message", str(tmp_path / "m.json"),
            "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["skipped"] == [
        {"channel": "sms", "requires": "phone_number", "reason": "the recipient has no phone_number"}]
    text = run("explain", "default", "--config", str(tmp_path / "routing.toml"), "--message", str(tmp_path / "m.json"))
    assert "SKIPPED: the recipient has no phone_number" in text.stdout


@pytest.mark.parametrize("to", [{"slack": "x"}, {"email": None}, {"email": ""}])
def test_a_send_no_channel_can_reach_is_refused_422(tmp_path: Path, to: dict[str, Any]) -> None:
    with serving(DaemonProcess(tmp_path, TWO_CHANNELS)) as d:
        r = d.post("/v1/send", {"message": {"to": to}})
        assert r.status == 422, r.body
        detail = r.json()["details"][0]
        assert detail["loc"] == ["message", "to"]
        assert detail["msg"].startswith("no channel of route 'default' can reach this recipient: "
                                        "email needs to.email, sms needs to.phone_number; the recipient has ")
        d.wait_status(d.send({"to": {"phone_number": "+15550100"}}), "delivered")
