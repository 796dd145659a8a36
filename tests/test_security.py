"""Security properties of a live `routingd serve` (see docs/security.md for the threat model).

  * Secrets -- API tokens, a provider's Authorization header, a receipt secret, an MQTT
    password -- never appear in the daemon's log (at DEBUG), in any HTTP answer (headers and
    bodies: errors, status, /metrics, /v1/config, /openapi.json, reload results) of a session
    that exercises every endpoint, right and wrong credentials, a failing provider and a
    rejected reload. The provider does receive its own header (that is the point of it).
  * Receipts from a provider with a receipt_secret are authenticated by HMAC-SHA256 of the raw
    body: missing, malformed, wrong-key, other-body and tampered signatures are 401 and change
    nothing; the bearer token does not stand in for the signature; the right one is accepted.
    Every comparison of a secret goes through hmac.compare_digest (a spy shows it is called
    with the full values, once per configured token, with no early exit).
  * No tokens -> loopback only: a public, wildcard or unspecified listen address without a
    token is refused at start (exit 1) and a reload that would drop the last token from a
    public listener is rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon_process import DaemonProcess, Response, StandinLoop, free_port, routingd_command
from provider_standin import sign

from routingd.daemon import api as api_module
from routingd.daemon.api import ApiState, signature_ok, token_ok
from routingd.daemon.core.policy import parse_policy
from routingd.daemon.metrics import Metrics
from routingd.daemon.service import ConfigReloader, StartupError, check_auth
from routingd.daemon.settings import load_settings

API_TOKEN = "tok-Zq81vX0pLw3mN7"
SECOND_TOKEN = "tok-second-Hh42kR"
PROVIDER_KEY = "pk-live-9f8e7d6c5b4a"
RECEIPT_SECRET = "rs-3c0ffee5eed"
MQTT_PASSWORD = "mqtt-pw-77aa11"
SECRETS = (API_TOKEN, SECOND_TOKEN, PROVIDER_KEY, RECEIPT_SECRET, MQTT_PASSWORD)

CONFIG = """
version = 1
[daemon]
api_tokens = ["${{API_TOKEN}}", "${{SECOND_TOKEN}}"]
grace = "200ms"
[daemon.mqtt]
url = "mqtt://routingd:${{MQTT_PASSWORD}}@127.0.0.1:{mqtt_port}"
[timeouts]
provider = "1s"
channel = "30s"
message = "60s"
[providers.mail]
type = "http"
url = "{mail}"
headers = {{ Authorization = "Bearer ${{PROVIDER_KEY}}" }}
confirm = "receipt"
receipt_timeout = "30s"
receipt_secret = "${{RECEIPT_SECRET}}"
[providers.broken]
type = "http"
url = "{broken}"
headers = {{ Authorization = "Bearer ${{PROVIDER_KEY}}" }}
[channels.email]
providers = ["mail"]
[channels.other]
providers = ["broken"]
[routes.default]
channels = ["email"]
[routes.broken]
channels = ["other"]
"""

ENV = {"API_TOKEN": API_TOKEN, "SECOND_TOKEN": SECOND_TOKEN, "PROVIDER_KEY": PROVIDER_KEY,
       "RECEIPT_SECRET": RECEIPT_SECRET, "MQTT_PASSWORD": MQTT_PASSWORD, "ROUTINGD_LOG_LEVEL": "DEBUG"}


class Recorder:
    """Every answer the test saw, for the final scan."""

    def __init__(self) -> None:
        self.answers: list[Response] = []

    def __call__(self, r: Response) -> Response:
        self.answers.append(r)
        return r

    def text(self) -> str:
        return "\n".join(json.dumps(r.headers) + "\n" + r.body.decode("utf-8", "replace") for r in self.answers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, standins: StandinLoop) -> Iterator[tuple[DaemonProcess, Any, Recorder]]:
    mail = standins.standin([{"status": 202}])                         # confirms by receipt only
    broken = standins.standin(lambda n, body: {"status": 500, "body": {"echo": "internal error"}})
    text = CONFIG.format(mqtt_port=free_port(), mail=mail.url, broken=broken.url)
    d = DaemonProcess(tmp_path_factory.mktemp("security"), text, token=API_TOKEN, env=ENV)
    rec = Recorder()
    with d:
        yield d, mail, rec
        assert d.stop() == 0
    log = d.log_text()
    assert "DEBUG" in log                                               # the most talkative level
    for secret in SECRETS:
        assert secret not in log, f"a secret ({secret[:6]}...) is in the daemon log"


def test_receipt_signatures_are_required_and_checked(world: tuple[DaemonProcess, Any, Recorder],
                                                     standins: StandinLoop) -> None:
    d, mail, rec = world
    mid = d.send({"to": {"email": "a@example.com"}})
    (req,) = standins.call(mail.wait_for(1))
    assert req.headers.get("Authorization") == f"Bearer {PROVIDER_KEY}"  # the provider gets its key
    attempt = req.json["attempt_id"]
    body = json.dumps({"attempt_id": attempt, "status": "delivered"}).encode()
    other = json.dumps({"attempt_id": attempt, "status": "failed"}).encode()
    bad = {
        "missing": {},
        "empty": {"X-Routingd-Signature": ""},
        "no scheme": {"X-Routingd-Signature": hmac.new(RECEIPT_SECRET.encode(), body, hashlib.sha256).hexdigest()},
        "other scheme": {"X-Routingd-Signature": "sha1=" + hmac.new(RECEIPT_SECRET.encode(), body, "sha1").hexdigest()},
        "wrong key": {"X-Routingd-Signature": sign("not-the-secret", body)},
        "the API token as key": {"X-Routingd-Signature": sign(API_TOKEN, body)},
        "another body's": {"X-Routingd-Signature": sign(RECEIPT_SECRET, other)},
        "truncated": {"X-Routingd-Signature": sign(RECEIPT_SECRET, body)[:-2]},
        "not hex": {"X-Routingd-Signature": "sha256=" + "z" * 64},
        "bearer token instead": {"Authorization": f"Bearer {API_TOKEN}"},
    }
    for name, headers in bad.items():
        r = rec(d.request("POST", "/v1/receipts/mail", body=body, token=False,
                          headers={"Content-Type": "application/json", **headers}))
        assert r.status == 401, (name, r.body)
        assert r.json()["details"][0]["loc"] == ["header", "X-Routingd-Signature"]
    # the right signature over a tampered body
    tampered = body.replace(b"delivered", b"failed\x20\x20")
    r = rec(d.request("POST", "/v1/receipts/mail", body=tampered, token=False,
                      headers={"Content-Type": "application/json", "X-Routingd-Signature": sign(RECEIPT_SECRET, body)}))
    assert r.status == 401
    assert rec(d.get(f"/v1/messages/{mid}")).json()["status"] == "pending"      # nothing changed
    # the right one (hex case does not matter) confirms the delivery
    good = "sha256=" + hmac.new(RECEIPT_SECRET.encode(), body, hashlib.sha256).hexdigest().upper()
    r = rec(d.request("POST", "/v1/receipts/mail", body=body, token=False,
                      headers={"Content-Type": "application/json", "X-Routingd-Signature": good}))
    assert r.status == 200, r.body
    assert d.wait_status(mid, "delivered")["status"] == "delivered"


def test_bearer_tokens_guard_everything_but_the_probes(world: tuple[DaemonProcess, Any, Recorder]) -> None:
    d, _, rec = world
    guarded = [("GET", "/v1/config"), ("POST", "/-/reload"), ("GET", "/v1/messages/0123"), ("POST", "/v1/send")]
    wrong = [False, "", API_TOKEN + "x", API_TOKEN[:-1], API_TOKEN.upper(), f"{API_TOKEN} {SECOND_TOKEN}",
             "Basic " + API_TOKEN]
    for method, path in guarded:
        for tok in wrong:
            headers = {"Authorization": tok} if isinstance(tok, str) and tok.startswith("Basic") else {}
            r = rec(d.request(method, path, json_body={} if method == "POST" else None, headers=headers,
                              token=False if headers else tok))
            assert r.status == 401, (method, path, tok, r.body)
            assert r.header("WWW-Authenticate") == 'Bearer realm="routingd"'
        assert rec(d.request(method, path, token=SECOND_TOKEN,
                             json_body={"message": {"to": {"email": "b@example.com"}}} if path == "/v1/send"
                             else None)).status != 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert rec(d.get(path, token=False)).status == 200


def test_no_secret_in_any_answer_or_metric(world: tuple[DaemonProcess, Any, Recorder]) -> None:
    d, _, rec = world
    mid = d.send({"to": {"email": "c@example.com"}, "route": "broken"})      # a provider that fails
    rec(d.get(f"/v1/messages/{mid}"))
    st = d.wait_status(mid, "undeliverable")
    assert st["attempts"][0]["status_code"] == 500
    # a reload the daemon must reject, with errors in the sections that hold the secrets
    good = d.config_path.read_text()
    d.write_config(good.replace('receipt_timeout = "30s"', 'receipt_timeout = "soon"')
                   .replace('providers = ["broken"]', 'providers = ["broken", "ghost"]')
                   .replace('api_tokens = [', 'api_tokens = [5, '))
    r = rec(d.post("/-/reload"))
    assert r.status == 422 and len(r.json()["details"]) == 3, r.body
    d.write_config(good)
    assert rec(d.post("/-/reload")).status == 200
    d.send_signal(signal.SIGHUP)
    for path in ("/metrics", "/v1/config", "/openapi.json", "/readyz", "/healthz", f"/v1/messages/{mid}"):
        rec(d.get(path))
    rec(d.post("/v1/send", {"message": {"to": {}}}))
    rec(d.post("/v1/send", body=b"{not json", token=False))
    everything = rec.text()
    assert len(rec.answers) > 50
    for secret in SECRETS:
        assert secret not in everything, f"a secret ({secret[:6]}...) is in an HTTP answer"


def test_a_secret_misplaced_in_the_file_is_not_echoed_by_a_rejected_reload(tmp_path: Path) -> None:
    text = OPEN.replace("version = 1", 'version = 1\n[daemon]\napi_tokens = ["${API_TOKEN}"]')
    with DaemonProcess(tmp_path, text, token=API_TOKEN, env=ENV) as d:
        d.write_config(text.replace('[daemon]', '[daemon]\ngrace = "${API_TOKEN}"'))
        r = d.post("/-/reload")
        assert r.status == 422
        assert d.stop() == 0
    assert API_TOKEN not in r.body.decode() + d.log_text()


# --------------------------------------------------------------------------- constant-time comparisons


def test_every_secret_comparison_is_hmac_compare_digest_over_all_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", spy)
    tokens = [API_TOKEN.encode(), SECOND_TOKEN.encode(), b"third"]
    # a match on the first token still compares against every token (no early exit)
    assert token_ok(f"Bearer {API_TOKEN}", tokens)
    assert calls == [(API_TOKEN.encode(), t) for t in tokens]
    calls.clear()
    assert not token_ok("Bearer nope", tokens) and len(calls) == 3
    calls.clear()
    # the signature is compared whole against the full expected digest
    raw = b'{"attempt_id": "m.1.1", "status": "delivered"}'
    expected = hmac.new(RECEIPT_SECRET.encode(), raw, hashlib.sha256).hexdigest().encode()
    assert signature_ok(RECEIPT_SECRET, raw, "sha256=" + expected.decode())
    assert not signature_ok(RECEIPT_SECRET, raw, "sha256=" + "0" * 64)
    assert not signature_ok(RECEIPT_SECRET, raw, "sha256=00")            # a short one too: no length shortcut
    assert calls == [(expected, expected), (b"0" * 64, expected), (b"00", expected)]


# --------------------------------------------------------------------------- no token -> loopback only

OPEN = """
version = 1
[providers.fast]
type = "sandbox"
[channels.email]
providers = ["fast"]
[routes.default]
channels = ["email"]
"""


@pytest.mark.parametrize("listen,env", [
    ("0.0.0.0:0", {}),
    ("[::]:0", {}),
    ("192.0.2.10:0", {}),                                       # a specific public address
    ("0.0.0.0:0", {"ROUTINGD_API_TOKENS": " , "}),              # tokens that are only blanks
    ("0.0.0.0:0", {"ROUTINGD_API_TOKENS": "[]"}),
])
def test_a_public_listen_address_without_a_token_is_refused(tmp_path: Path, listen: str, env: dict[str, str]) -> None:
    import os

    cfg = tmp_path / "routing.toml"
    cfg.write_text(OPEN)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
    full_env.update(env)
    proc = subprocess.run([*routingd_command(), "serve", "--config", str(cfg), "--listen", listen,
                           "--state", str(tmp_path / "state.db")], capture_output=True, text=True, timeout=30,
                          env=full_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"refusing to listen on {listen} without API tokens" in proc.stderr
    assert "Traceback" not in proc.stderr and "listening on" not in proc.stderr
    assert not (tmp_path / "state.db").exists()                 # refused before touching anything


def test_loopback_addresses_need_no_token(tmp_path: Path) -> None:
    for listen in ("127.0.0.1:8080", "127.0.0.2:8080", "localhost:8080", "[::1]:8080"):
        check_auth(load_settings(parse_policy(OPEN, "r.toml", env={}), config="r.toml", listen=listen))
    with DaemonProcess(tmp_path, OPEN, listen="127.0.0.2:0") as d:     # the whole 127/8 is loopback
        assert d.url.startswith("http://127.0.0.2:")
        assert d.get("/v1/config", token=False).status == 200
        assert d.stop() == 0


def test_a_reload_cannot_drop_the_last_token_of_a_public_listener(tmp_path: Path) -> None:
    with_token = OPEN.replace("version = 1", f'version = 1\n[daemon]\napi_tokens = ["{API_TOKEN}"]')
    cfg = tmp_path / "routing.toml"
    cfg.write_text(with_token)

    class Router:                       # only what the reloader touches
        policy = parse_policy(with_token, str(cfg), env={})
        limits: Any = None

        def swap_policy(self, p: Any) -> None:
            self.policy = p

    async def main() -> None:
        router, metrics = Router(), Metrics()
        settings = load_settings(router.policy, config=str(cfg), listen="0.0.0.0:8080")
        check_auth(settings)
        state = ApiState(router=router, metrics=metrics, reloader=None,  # type: ignore[arg-type]
                         tokens=settings.token_values())
        reloader = ConfigReloader(str(cfg), router, metrics, state, "0.0.0.0:8080", None, settings=settings)
        cfg.write_text(OPEN + "\n[routes.other]\nchannels = [\"email\"]\n")
        result = await reloader.reload("test")
        assert not result.ok and "refusing to listen on 0.0.0.0:8080 without API tokens" in result.errors[0]
        assert state.tokens == [API_TOKEN.encode()]                   # the old token stays in force
        assert router.policy.version == parse_policy(with_token, str(cfg), env={}).version

    asyncio.run(main())
    with pytest.raises(StartupError):
        check_auth(load_settings(parse_policy(OPEN, "r.toml", env={}), config="r.toml", listen="0.0.0.0:8080"))
