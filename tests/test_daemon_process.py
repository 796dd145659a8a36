"""Integration: a real `routingd serve` process, real HTTP provider stand-ins on loopback.

One daemon (module scope) serves the failover scenarios, each on its own route, channels and
stand-ins, so the scenarios cannot disturb one another; the lifecycle tests (SIGKILL, SIGTERM,
SIGHUP, startup errors) start their own processes.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon_process import SLOW_CONFIG, DaemonProcess, StandinLoop, serving, ts, wait_until
from provider_standin import sign

TOKEN = "t0ken-for-tests"
RECEIPT_SECRET = "receipt-s3cret"

JSON = {"Content-Type": "application/json"}      # raw bodies say what they are (else 415)


def attempts_by_provider(status: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in status["attempts"]:
        out.setdefault(a["provider"], []).append(a)
    return out


# --------------------------------------------------------------------------- the shared daemon

# name -> (script, extra provider keys)
PROVIDERS: dict[str, tuple[list[dict[str, Any]], str]] = {
    "p503": ([{"status": 503}], ""),
    "p503ok": ([{"status": 200}], ""),
    "phang": ([{"hang": True}], 'timeout = "300ms"'),
    "phangok": ([{"status": 200}], ""),
    "p400": ([{"status": 400}], ""),
    "p400next": ([{"status": 200}], ""),
    "p400sms": ([{"status": 200}], ""),
    "pskipmail": ([{"status": 200}], ""),
    "pskipsms": ([{"status": 200}], ""),
    "pexp": ([{"hang": True}], 'timeout = "10s"'),
    "p429": ([{"status": 429, "retry_after": 1}, {"status": 200}], "retries = 1"),
    "p429far": ([{"status": 429, "retry_after": 60}, {"status": 200}], "retries = 1"),
    "p429farok": ([{"status": 200}], ""),
    "prcpt": ([{"status": 202, "receipt": "delivered", "receipt_delay": 0.1}],
              f'confirm = "receipt"\nreceipt_timeout = "5s"\nreceipt_secret = "{RECEIPT_SECRET}"'),
    "pnorcpt": ([{"status": 202}], f'confirm = "receipt"\nreceipt_timeout = "300ms"\n'
                                   f'receipt_secret = "{RECEIPT_SECRET}"'),
    "pnorcptok": ([{"status": 200}], ""),
    "pidem": ([{"status": 200}], ""),
}

CHANNELS = {
    "c503": ('["p503", "p503ok"]', ""),
    "chang": ('["phang", "phangok"]', ""),
    "c400": ('["p400", "p400next"]', ""),
    "c400sms": ('["p400sms"]', ""),
    "cskipmail": ('["pskipmail"]', 'requires = "email"'),
    "cskipsms": ('["pskipsms"]', 'requires = "phone_number"'),
    "cexp": ('["pexp"]', ""),
    "c429": ('["p429"]', ""),
    "c429far": ('["p429far", "p429farok"]', ""),
    "crcpt": ('["prcpt"]', ""),
    "cnorcpt": ('["pnorcpt", "pnorcptok"]', ""),
    "cidem": ('["pidem"]', ""),
}

ROUTES = {
    "default": ('["cidem"]', ""),
    "r503": ('["c503"]', ""),
    "rhang": ('["chang"]', ""),
    "r400": ('["c400", "c400sms"]', ""),
    "rskip": ('["cskipmail", "cskipsms"]', ""),
    "rexp": ('["cexp"]', 'timeouts = { message = "700ms" }'),
    "r429": ('["c429"]', ""),
    "r429far": ('["c429far"]', ""),
    "rrcpt": ('["crcpt"]', ""),
    "rnorcpt": ('["cnorcpt"]', ""),
}


def scenario_config(urls: dict[str, str]) -> str:
    lines = ['version = 1', '', '[daemon]', 'api_tokens = ["${TEST_TOKEN}", "second-token"]',
             'max_body = 2048', 'grace = "1s"', '',
             '[timeouts]', 'provider = "2s"', 'channel = "5s"', 'message = "10s"', '']
    for name, (_, extra) in PROVIDERS.items():
        lines += [f'[providers.{name}]', 'type = "http"', f'url = "{urls[name]}"', extra, '']
    for name, (providers, extra) in CHANNELS.items():
        lines += [f'[channels.{name}]', f'providers = {providers}', extra, '']
    for name, (channels, extra) in ROUTES.items():
        lines += [f'[routes.{name}]', f'channels = {channels}', extra, '']
    return "\n".join(lines)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, standins: StandinLoop) -> Iterator[tuple[DaemonProcess, dict[str, Any]]]:
    s = {name: standins.standin(script) for name, (script, _) in PROVIDERS.items()}
    d = DaemonProcess(tmp_path_factory.mktemp("scenarios"), scenario_config({n: x.url for n, x in s.items()}),
                      token=TOKEN, env={"TEST_TOKEN": TOKEN})
    with serving(d):
        for name in ("prcpt", "pnorcpt"):
            s[name].receipt_url = f"{d.url}/v1/receipts/{name}"
            s[name].receipt_secret = RECEIPT_SECRET
        yield d, s


# --------------------------------------------------------------------------- failover scenarios


def test_provider_failover_on_503(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "r503"})
    st = d.wait_status(mid, "delivered")
    by = attempts_by_provider(st)
    assert [(a["outcome"], a["status_code"]) for a in by["p503"]] == [("failed", 503)]
    assert [a["outcome"] for a in by["p503ok"]] == ["delivered"]
    assert any(e["type"] == "failover" and e["kind"] == "provider" for e in st["events"])
    got = s["p503ok"].requests[0]
    assert got.idempotency_key == f"{mid}:c503:p503ok"
    assert got.json["message_id"] == mid and got.json["to"] == {"email": "a@example.com"}


def test_hung_provider_fails_over_at_its_timeout(world: tuple[DaemonProcess, dict[str, Any]],
                                                 standins: StandinLoop) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "rhang"})
    st = d.wait_status(mid, "delivered")
    by = attempts_by_provider(st)
    (hung,) = by["phang"]
    assert hung["outcome"] == "timeout"
    # the attempt deadline is its start + the provider's own 300ms timeout, and it ended there
    assert ts(hung["deadline"]) - ts(hung["started_at"]) == pytest.approx(0.3, abs=0.002)
    assert ts(hung["ended_at"]) >= ts(hung["deadline"]) - 0.002
    assert [a["outcome"] for a in by["phangok"]] == ["delivered"]
    assert ts(by["phangok"][0]["started_at"]) >= ts(hung["deadline"]) - 0.002
    (req,) = standins.call(s["phang"].wait_for(1, finished=True))
    assert req.finished == "cancelled"          # routingd closed the hung connection


def test_channel_failover_on_400(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com", "phone_number": "+15550100"}, "route": "r400"})
    st = d.wait_status(mid, "delivered")
    by = attempts_by_provider(st)
    assert [(a["outcome"], a["status_code"]) for a in by["p400"]] == [("rejected", 400)]
    assert "p400next" not in by and s["p400next"].requests == []    # a 400 fails the channel
    assert [(a["channel"], a["outcome"]) for a in by["p400sms"]] == [("c400sms", "delivered")]
    assert any(e["type"] == "failover" and e["kind"] == "channel" for e in st["events"])


def test_channel_skipped_without_its_contact_field(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"phone_number": "+15550100"}, "route": "rskip"})
    st = d.wait_status(mid, "delivered")
    assert [a["provider"] for a in st["attempts"]] == ["pskipsms"]
    assert s["pskipmail"].requests == []
    skipped = [e for e in st["events"] if e["type"] == "channel_skipped"]
    assert [e["channel"] for e in skipped] == ["cskipmail"]


def test_message_expires_at_its_timeout_and_the_attempt_is_cancelled(
        world: tuple[DaemonProcess, dict[str, Any]], standins: StandinLoop) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "rexp"})
    st = d.wait_status(mid, "expired")
    (a,) = st["attempts"]
    deadline = ts(st["message_deadline"])
    assert deadline - ts(st["accepted_at"]) == pytest.approx(0.7, abs=0.002)
    assert a["outcome"] == "timeout"
    assert ts(a["deadline"]) == pytest.approx(deadline, abs=0.002)   # capped by the message deadline
    assert ts(st["finished_at"]) >= deadline - 0.002
    (req,) = standins.call(s["pexp"].wait_for(1, finished=True))
    assert req.finished == "cancelled"


def test_429_retry_after_is_honoured_when_it_fits(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "r429"})
    st = d.wait_status(mid, "delivered")
    first, second = attempts_by_provider(st)["p429"]
    assert (first["outcome"], first["status_code"], first["try"]) == ("failed", 429, 1)
    assert (second["outcome"], second["try"]) == ("delivered", 2)
    assert ts(second["started_at"]) - ts(first["ended_at"]) >= 1.0 - 0.01     # Retry-After: 1
    r0, r1 = s["p429"].requests[:2]
    assert r1.received_at - r0.received_at >= 1.0 - 0.01
    assert r0.idempotency_key == r1.idempotency_key == f"{mid}:c429:p429"


def test_429_retry_after_that_does_not_fit_fails_over(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "r429far"})
    st = d.wait_status(mid, "delivered")
    by = attempts_by_provider(st)
    assert [(a["outcome"], a["status_code"]) for a in by["p429far"]] == [("failed", 429)]
    assert len(s["p429far"].requests) == 1                     # a 60s wait does not fit a 5s channel
    assert [a["outcome"] for a in by["p429farok"]] == ["delivered"]


def test_receipt_confirms_delivery(world: tuple[DaemonProcess, dict[str, Any]], standins: StandinLoop) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "rrcpt"})
    st = d.wait_status(mid, "delivered")
    (a,) = st["attempts"]
    assert (a["provider"], a["outcome"]) == ("prcpt", "delivered")
    assert any(e["type"] == "attempt_accepted" for e in st["events"])   # 202 first, then the receipt
    # the stand-in records its receipt only once its POST has returned, which can be just after the
    # daemon already shows the message delivered: wait (bounded) for the record
    deadline = time.monotonic() + 5.0
    while not s["prcpt"].receipts_sent and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s["prcpt"].receipts_sent == [{"attempt_id": a["attempt_id"], "status": "delivered", "http_status": 200}]
    # a receipt with a wrong signature, and one for an unknown attempt, are refused
    raw = json.dumps({"attempt_id": a["attempt_id"], "status": "failed"}).encode()
    r = d.post("/v1/receipts/prcpt", body=raw, headers={"X-Routingd-Signature": sign("wrong", raw), **JSON}, token=False)
    assert r.status == 401 and r.json()["details"][0]["loc"] == ["header", "X-Routingd-Signature"]
    raw = json.dumps({"attempt_id": "nope.0.1", "status": "delivered"}).encode()
    r = d.post("/v1/receipts/prcpt", body=raw, headers={"X-Routingd-Signature": sign(RECEIPT_SECRET, raw), **JSON},
               token=False)
    assert r.status == 404 and r.json()["error"]


def test_receipt_timeout_fails_over(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "rnorcpt"})
    st = d.wait_status(mid, "delivered")
    by = attempts_by_provider(st)
    (waited,) = by["pnorcpt"]
    assert waited["outcome"] == "timeout" and waited["status_code"] == 202
    assert any(e["type"] == "receipt_timeout" for e in st["events"])
    assert [a["outcome"] for a in by["pnorcptok"]] == ["delivered"]


def test_idempotent_resend(world: tuple[DaemonProcess, dict[str, Any]], standins: StandinLoop) -> None:
    d, s = world
    key = "order-4711-shipped"
    r1 = d.post("/v1/send", {"message": {"to": {"email": "a@example.com"}}}, headers={"Idempotency-Key": key})
    r2 = d.post("/v1/send", {"message": {"to": {"email": "a@example.com"}}}, headers={"Idempotency-Key": key})
    assert r1.status == r2.status == 202
    mid = r1.json()["message_id"]
    assert r2.json()["message_id"] == mid and r2.header("Idempotent-Replayed") == "true"
    assert r1.header("Idempotent-Replayed") is None
    d.wait_status(mid, "delivered")
    other = d.send({"to": {"email": "a@example.com"}}, idempotency_key="another-key")
    assert other != mid
    d.wait_status(other, "delivered")
    keys = [r.idempotency_key for r in s["pidem"].requests]
    assert keys.count(f"{mid}:cidem:pidem") == 1


# --------------------------------------------------------------------------- HTTP answers


def test_http_error_answers(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, _ = world
    msg = {"message": {"to": {"email": "a@example.com"}}}
    r = d.post("/v1/send", msg, token=False)
    assert r.status == 401 and r.header("WWW-Authenticate", ) == 'Bearer realm="routingd"'
    assert r.json()["details"][0]["loc"] == ["header", "Authorization"]
    assert d.post("/v1/send", msg, token="wrong").status == 401
    assert d.post("/v1/send", msg, token="second-token").status == 202     # every token counts
    assert d.get("/v1/config", token=False).status == 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert d.get(path, token=False).status == 200, path

    r = d.post("/v1/send", body=b'{"message": ', headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json()["details"][0]["loc"] == ["body"]
    r = d.post("/v1/send", body=json.dumps({"message": {"to": {"email": "x" * 4000}}}).encode(), headers=JSON)
    assert r.status == 413 and "2048" in r.json()["error"]
    r = d.post("/v1/send", {"message": {"to": {"email": "a@example.com"}, "timeout": {"provider": "soon"}}})
    assert r.status == 422
    assert [x["loc"] for x in r.json()["details"]] == [["message", "timeout", "provider"]]
    r = d.post("/v1/send", {"message": {"to": {"email": "a@example.com"}, "route": "nope"}})
    assert r.status == 422 and r.json()["details"][0]["loc"] == ["message", "route"]
    assert "nope" in r.json()["details"][0]["msg"]
    r = d.get("/v1/messages/does-not-exist")
    assert r.status == 404 and set(r.json()) == {"error", "details"}
    r = d.request("DELETE", "/v1/send")
    assert r.status == 405 and r.json()["error"]

    metrics = d.metrics_text()
    assert "routingd_messages_accepted_total" in metrics
    assert d.metric("routingd_config_last_reload_successful") == 1.0


# --------------------------------------------------------------------------- lifecycle


def test_sigkill_with_attempts_in_flight_then_restart_delivers_every_accepted_message(
        tmp_path: Path, standins: StandinLoop) -> None:
    s = standins.standin([{"hang": True}])
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url=s.url))
    with d:
        ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(8)]
        standins.call(s.wait_for(8))                    # every message has an attempt in flight
        assert all(r.finished is None for r in s.requests)
        assert d.kill() == -signal.SIGKILL
        s.set_script([{"status": 200}])
        d.start()                                       # same state file
        for mid in ids:
            st = d.wait_status(mid, "delivered", timeout=20)
            assert any(a["outcome"] == "cancelled" for a in st["attempts"])   # the run the crash cut
        assert d.stop() == 0
    for mid in ids:                                     # at-least-once, with a stable idempotency key
        keys = {r.idempotency_key for r in s.requests if r.json["message_id"] == mid}
        assert keys == {f"{mid}:email:slow"}


def test_sigterm_drains_then_exits_0(tmp_path: Path, standins: StandinLoop) -> None:
    s = standins.standin([{"delay": 3.0}])     # well inside the 5s provider timeout and 20s grace
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="20s", url=s.url))
    with d:
        mid = d.send({"to": {"email": "a@example.com"}})
        standins.call(s.wait_for(1))
        d.send_signal(signal.SIGTERM)
        wait_until(lambda: d.get("/readyz").status == 503)
        r = d.post("/v1/send", {"message": {"to": {"email": "b@example.com"}}})
        assert r.status == 503 and r.header("Retry-After") and r.json()["error"]
        assert d.wait(20) == 0
        assert "stopped" in d.log_text()
        d.start()                                        # the in-flight attempt finished in the grace
        assert d.status(mid)["status"] == "delivered"
        assert d.stop(signal.SIGINT) == 0


def test_sigterm_keeps_unfinished_messages_for_the_next_start(tmp_path: Path, standins: StandinLoop) -> None:
    s = standins.standin([{"hang": True}])
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="200ms", url=s.url))
    with d:
        mid = d.send({"to": {"email": "a@example.com"}})
        standins.call(s.wait_for(1))
        assert d.stop() == 0                             # grace over: the attempt is cancelled
        s.set_script([{"status": 200}])
        d.start()
        st = d.wait_status(mid, "delivered")
        assert [a["outcome"] for a in st["attempts"]] == ["cancelled", "delivered"]


def test_sighup_reload_valid_swaps_invalid_keeps_the_old_policy(tmp_path: Path, standins: StandinLoop) -> None:
    s = standins.standin([{"status": 200}])
    text = SLOW_CONFIG.format(grace="1s", url=s.url)
    d = DaemonProcess(tmp_path, text)
    with d:
        v1 = d.get("/v1/config").json()["version"]
        d.write_config(text + '\n[routes.other]\nchannels = ["email"]\n')
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: d.get("/v1/config").json()["version"] != v1)
        v2 = d.get("/v1/config").json()["version"]
        assert d.send({"to": {"email": "a@example.com"}, "route": "other"})
        d.write_config(text + '\n[routes.broken]\nchannels = ["nosuch"]\n')
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: d.metric("routingd_config_last_reload_successful") == 0.0)
        assert d.get("/v1/config").json()["version"] == v2
        assert "routes.broken.channels.0: unknown channel 'nosuch'" in d.log_text()
        r = d.post("/-/reload")
        assert r.status == 422 and "nosuch" in r.json()["details"][0]["msg"]
        assert d.send({"to": {"email": "a@example.com"}, "route": "other"})   # still served
        assert d.stop() == 0


# --------------------------------------------------------------------------- startup errors


def _start_fails(d: DaemonProcess) -> str:
    d.spawn()
    assert d.wait(20) == 1
    out = d.log_text()
    assert "Traceback" not in out
    return out


def test_invalid_config_exits_1_with_one_line_per_error(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, 'version = 1\n[channels.email]\nproviders = ["ses"]\n'
                                '[routes.default]\nchannels = ["sms"]\n')
    out = _start_fails(d)
    assert f"{d.config_path}:3:14: channels.email.providers.0: unknown provider 'ses'" in out
    assert f"{d.config_path}:5:13: routes.default.channels.0: unknown channel 'sms'" in out


def test_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url="http://127.0.0.1:9/"), listen="0.0.0.0:0")
    out = _start_fails(d)
    assert "refusing to listen on 0.0.0.0:0 without API tokens" in out
    # with a token from the environment it starts (and still only answers with the token)
    d = DaemonProcess(tmp_path, None, listen="0.0.0.0:0", env={"ROUTINGD_API_TOKENS": TOKEN}, token=TOKEN)
    with d:
        assert d.get("/v1/config").status == 200
        assert d.get("/v1/config", token=False).status == 401
        assert d.stop() == 0


def test_unusable_state_file_exits_1_with_one_line(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, SLOW_CONFIG.format(grace="1s", url="http://127.0.0.1:9/"),
                      state_path=tmp_path / "missing-dir" / "state.db")
    out = _start_fails(d)
    lines = [line for line in out.splitlines() if "missing-dir" in line]
    assert len(lines) == 1 and "does not exist" in lines[0]
