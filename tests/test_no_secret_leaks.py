"""No secret of any provider type reaches the log (at DEBUG), an API answer, /v1/config,
/metrics, the UI, the state file or the MQTT events (docs/security.md, issue 14).

One real daemon with one provider of every type that takes a credential -- smtp (password),
ses (access key id, secret access key), sendgrid (api_key), twilio (auth_token), fcm (the
service account's private key, and the access tokens it buys), slack (a webhook URL's path, a
bot token), apprise (a URL with a password and a token), http (a header, the URL's path and
query) and mqtt (the broker password) -- each secret a distinctive random string given through
${VAR}, ${credential:NAME} or ${file:PATH}. Every provider talks to a loopback peer that refuses
the request in the worst way a vendor can: its error quotes the request back (the path, the
Authorization header -- decoded when it is Basic --, the body), or, for SMTP, the AUTH reply
quotes the password. Then every secret, and its base64, percent-encoded, repr- and JSON-escaped
renderings, is looked for everywhere the daemon writes or answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402
from daemon_process import DaemonProcess, StandinLoop, free_port, wait_until  # noqa: E402
from mqtt_broker import start_broker  # noqa: E402
from vendor_standins import Standin, make_service_account  # noqa: E402


def secret(kind: str) -> str:
    # characters that encode differently in base64, percent-encoding and repr: each rendering
    # is a different string to look for
    return f"{kind}-{secrets.token_hex(10)}"


class EchoVendors(Standin):
    """Every vendor's endpoint on one loopback server, each refusing the request with an error in
    that vendor's shape whose text quotes the request (the worst case: `echo()`). The FCM token
    endpoint issues real-looking access tokens (they are credentials too: `issued`)."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{rest:.*}", self.answer)

    def echo(self, request: web.Request, body: bytes) -> str:
        auth = request.headers.get("Authorization", "")
        decoded = ""
        if auth.startswith("Basic "):
            decoded = base64.b64decode(auth[6:]).decode(errors="replace")
        return (f"request {request.method} {request.path_qs} raw={request.raw_path} Authorization: {auth} "
                f"basic={decoded} url={request.url} body={body[:4000].decode(errors='replace')}")

    async def answer(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        path = request.path
        text = self.echo(request, rec.body)
        if path.startswith("/2010-04-01/"):                         # twilio
            return web.json_response({"code": 20003, "message": text, "more_info": "https://www.twilio.com/docs",
                                      "status": 401}, status=401)
        if path == "/v3/mail/send":                                 # sendgrid
            return web.json_response({"errors": [{"message": text, "field": "Authorization", "help": text}]},
                                     status=401)
        if path == "/v2/email/outbound-emails":                     # ses
            return web.json_response({"message": text}, status=403,
                                     headers={"x-amzn-ErrorType": "SignatureDoesNotMatch:http://internal.amazon.com/"})
        if path == "/token":                                        # fcm's OAuth2 token endpoint
            token = "ya29." + secrets.token_urlsafe(24)
            self.issued.append(token)
            return web.json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
        if path == "/token-refused":                                # a token endpoint that refuses, echoing
            return web.json_response({"error": "invalid_grant", "error_description": text}, status=400)
        if path.startswith("/v1/projects/"):                        # fcm send
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": text}},
                                     status=401)
        if path.startswith("/services/"):                           # slack incoming webhook
            return web.Response(status=403, text="invalid_token " + text)
        if path == "/api/chat.postMessage":                         # slack Web API
            return web.json_response({"ok": False, "error": text})
        return web.Response(status=400, text=text)                  # http, apprise's json://


class EchoingRelay:
    """aiosmtpd handler: AUTH is refused with a reply quoting the login and password."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def refuse_quoting(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    if isinstance(data, LoginPassword):
        quoted = f"{data.login.decode(errors='replace')}:{data.password.decode(errors='replace')}"
    else:
        quoted = repr(data)
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 no such user/password {quoted}")


CONFIG = """
version = 1
[daemon.mqtt]
url = "{mqtt_url}"
username = "routingd"
password = "${{MQTT_PASSWORD}}"

[timeouts]
provider = "5s"
channel = "20s"
message = "60s"

[providers.smtp]
type = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "relay-user"
password = "${{SMTP_PASSWORD}}"
from = "alerts@example.com"

[providers.ses]
type = "ses"
region = "eu-west-1"
from = "alerts@example.com"
endpoint_url = "{echo}"
access_key_id = "${{AWS_KEY_ID}}"
secret_access_key = "${{AWS_SECRET}}"

[providers.sendgrid]
type = "sendgrid"
api_key = "${{credential:sendgrid-key}}"
from = "alerts@example.com"
base_url = "{echo}"

[providers.twilio]
type = "twilio"
account_sid = "{sid}"
auth_token = "${{TWILIO_TOKEN}}"
from = "+15017122661"
base_url = "{echo}"

[providers.fcm]
type = "fcm"
project_id = "routingd-test"
service_account = "${{file:{fcm_file}}}"
base_url = "{echo}"

[providers.fcm_refused]
type = "fcm"
project_id = "routingd-test"
service_account = "${{FCM_REFUSED_ACCOUNT}}"
base_url = "{echo}"

[providers.slack_hook]
type = "slack"
webhook_url = "${{SLACK_WEBHOOK}}"

[providers.slack_bot]
type = "slack"
token = "${{SLACK_TOKEN}}"
channel = "#ops"
base_url = "{echo}/api"

[providers.apprise]
type = "apprise"
urls = ["${{APPRISE_URL}}"]

[providers.hook]
type = "http"
url = "${{HOOK_URL}}"
headers = {{ Authorization = "Bearer ${{HOOK_TOKEN}}", X-Api-Key = "${{HOOK_KEY}}" }}

[providers.devices]
type = "mqtt"
topic = "devices/notify"

{channels}

[routes.default]
method = "all"
channels = [{channel_names}]
"""

PROVIDERS = ["smtp", "ses", "sendgrid", "twilio", "fcm", "fcm_refused", "slack_hook", "slack_bot", "apprise",
             "hook", "devices"]


def renderings(value: str) -> set[str]:
    """A secret as it could appear in text: as is, base64 (standard and URL-safe, unpadded
    too), percent-encoded, repr- and JSON-escaped."""
    b = value.encode()
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), repr(value)[1:-1],
             json.dumps(value)[1:-1], base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode()}
    forms |= {f.rstrip("=") for f in forms}
    return {f for f in forms if len(f) >= 8}


def leaks(where: str, text: str, named: dict[str, Iterable[str]]) -> list[str]:
    return [f"{name} ({form!r}) in {where}" for name, forms in named.items() for form in forms if form in text]


@pytest.fixture
def relay() -> Any:
    controller = Controller(EchoingRelay(), hostname="127.0.0.1", port=free_port(), authenticator=refuse_quoting,
                            auth_require_tls=False)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def test_no_secret_of_any_provider_type_leaks_anywhere(tmp_path: Path, standins: StandinLoop, relay: Any) -> None:
    echo = standins.call(EchoVendors().start())
    standins.standins.append(echo)
    values = {name: secret(name) for name in
              ("smtp-password", "aws-secret", "sendgrid-key", "twilio-token", "slack-hook-path", "slack-token",
               "apprise-password", "apprise-token", "hook-token", "hook-key", "hook-path", "hook-query",
               "mqtt-password")}
    values["aws-key-id"] = "AKIA" + secrets.token_hex(8).upper()
    sid = "AC" + secrets.token_hex(16)
    broker = start_broker(tmp_path / "broker", users={"routingd": values["mqtt-password"],
                                                       "watcher": "watcher-password"})
    try:
        fcm_account, _ = make_service_account(echo.url + "/token")
        refused_account, _ = make_service_account(echo.url + "/token-refused")
        fcm_file = tmp_path / "fcm.json"
        fcm_file.write_text(json.dumps(fcm_account))
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "sendgrid-key").write_text(values["sendgrid-key"] + "\n")
        port = echo.url.rsplit(":", 1)[1]
        env = {
            "CREDENTIALS_DIRECTORY": str(creds),
            "SMTP_PASSWORD": values["smtp-password"], "AWS_KEY_ID": values["aws-key-id"],
            "AWS_SECRET": values["aws-secret"], "TWILIO_TOKEN": values["twilio-token"],
            "FCM_REFUSED_ACCOUNT": json.dumps(refused_account),
            "SLACK_WEBHOOK": f"{echo.url}/services/T0000/B0000/{values['slack-hook-path']}",
            "SLACK_TOKEN": "xoxb-" + values["slack-token"],
            "APPRISE_URL": f"json://apprise:{values['apprise-password']}@127.0.0.1:{port}/apprise/"
                           f"{values['apprise-token']}",
            "HOOK_URL": f"{echo.url}/hook/{values['hook-path']}?key={values['hook-query']}",
            "HOOK_TOKEN": values["hook-token"], "HOOK_KEY": values["hook-key"],
            "MQTT_PASSWORD": values["mqtt-password"],
        }
        requires = {"smtp": "email", "ses": "email", "sendgrid": "email", "twilio": "phone_number",
                    "fcm": "firebaseToken", "fcm_refused": "firebaseToken"}
        channels = "\n".join(f'[channels.c_{p}]\nproviders = ["{p}"]\n'
                             + (f'requires = "{requires[p]}"\n' if p in requires else "") for p in PROVIDERS)
        text = CONFIG.format(mqtt_url=broker.url, smtp_port=relay.port, echo=echo.url, sid=sid,
                             fcm_file=fcm_file, channels=channels,
                             channel_names=", ".join(f'"c_{p}"' for p in PROVIDERS))
        events: list[bytes] = []
        watching = standins.call(_watch(broker, events))
        d = DaemonProcess(tmp_path / "d", text, env=env, args=["--log-level", "DEBUG"])
        with d, _stopping(standins, watching):
            # the mqtt provider answers "network" until the daemon's link to the broker is up (slow
            # on a busy machine): the sends wait for it, so that its publish is the delivered attempt
            wait_until(lambda: "routingd_mqtt_connected 1.0" in d.metrics_text(), timeout=30,
                       what="the daemon's MQTT link")
            to = {"email": "bob@example.org", "phone_number": "+15558675310", "firebaseToken": "device-1"}
            ids = [d.send({"to": to, "content": {"title": "disk full", "body": f"message {i}"}}) for i in range(2)]
            answers = {}
            for mid in ids:
                st = d.wait_status(mid, timeout=60)
                # every provider was tried and got its answer (a delivered mqtt publish aside):
                # the refusals really went through each adapter's error path
                tried = {a["provider"]: a for a in st["attempts"]}
                assert set(tried) == set(PROVIDERS), st
                for p in PROVIDERS:
                    assert tried[p]["outcome"] == ("delivered" if p == "devices" else tried[p]["outcome"])
                assert all(tried[p]["outcome"] != "delivered" for p in PROVIDERS if p != "devices"), st
                answers[f"GET /v1/messages/{mid}"] = d.get(f"/v1/messages/{mid}").body.decode()
                answers[f"GET /messages/{mid}"] = d.get(f"/messages/{mid}").body.decode()
                answers[f"GET /messages/{mid}/history"] = d.get(f"/messages/{mid}/history").body.decode()
                answers[f"GET /ui/messages/{mid}"] = d.get(f"/ui/messages/{mid}").body.decode()
            # each peer saw the secret (else nothing was proven about it)
            seen = " ".join(f"{r.path} {r.headers} {r.body!r}" for r in echo.requests)
            assert values["sendgrid-key"] in seen and values["slack-hook-path"] in seen and values["hook-key"] in seen
            assert echo.issued, "the fcm provider got no access token"
            for path in ("/v1/config", "/metrics", "/v1/providers", "/ui", "/messages",
                         "/openapi.json", "/healthz", "/readyz"):
                r = d.get(path)
                assert r.status == 200, (path, r.status)
                answers[f"GET {path}"] = r.body.decode()
            # every attempt's end was published (the details are in those events)
            wait_until(lambda: sum(_event_type(e) == "attempt_ended" for e in events) >= len(ids) * len(PROVIDERS),
                       timeout=20, what="the attempt_ended events on MQTT")
            assert d.stop() == 0, d.log_tail()
        log = d.log_text()
        assert "DEBUG" in log, "the daemon did not log at DEBUG"
        assert "Traceback" not in log, d.log_tail()
        db = _dump_sqlite(d.state_path)
    finally:
        broker.stop(hard=True)

    named = {name: renderings(v) for name, v in values.items()}
    pem_lines = [ln for account in (fcm_account, refused_account)
                 for ln in account["private_key"].splitlines() if len(ln) > 40]
    named["fcm private key"] = pem_lines
    named["fcm access tokens"] = {f for t in echo.issued for f in renderings(t)}
    named["twilio basic auth"] = renderings(base64.b64encode(f"{sid}:{values['twilio-token']}".encode()).decode())
    found: list[str] = []
    found += leaks("the log", log, named)
    for where, body in answers.items():
        found += leaks(where, body, named)
    found += leaks("the state file", db, named)
    found += leaks("the MQTT events", "\n".join(e.decode(errors="replace") for e in events), named)
    assert not found, "\n".join(found)
    assert events, "no MQTT event was seen: the events were not checked"


async def _watch(broker: Any, into: list[bytes]) -> asyncio.Task[None]:
    import aiomqtt

    ready = asyncio.Event()

    async def run() -> None:
        async with aiomqtt.Client(broker.host, broker.port, username="watcher", password="watcher-password") as c:
            await c.subscribe("#", qos=1)
            ready.set()
            async for m in c.messages:
                into.append(bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else str(m.payload).encode())

    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    return task


@contextmanager
def _stopping(standins: StandinLoop, task: asyncio.Task[None]) -> Iterator[None]:
    try:
        yield
    finally:
        standins.call(_stop(task))


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the watcher's end is not under test
        pass


def _event_type(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc.get("type") if isinstance(doc, dict) else None


def _dump_sqlite(path: Path) -> str:
    """Every table's every row, as text (the state file and its WAL, read through SQLite)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = []
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in con.execute(f'SELECT * FROM "{table}"'):
                out.append(" ".join(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in row))
        return "\n".join(out)
    finally:
        con.close()
