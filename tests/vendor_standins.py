"""Loopback stand-ins for Twilio, FCM (token and send endpoints), Slack (incoming webhooks and the
Web API) and a plain receiver for Apprise's json:// and form:// URLs, for tests and benchmarks.

Each checks what its vendor checks (auth scheme, form vs JSON encoding, required fields) and
answers with the vendor's documented success and error bodies:

- Twilio: Messages resource (POST .../Accounts/{sid}/Messages.json): basic auth, form-encoded,
  To/Body/From|MessagingServiceSid required; errors {"code", "message", "more_info", "status"}.
  Twilio's magic test numbers decide the answer for a number: +15005550001 -> 21211 (invalid),
  +15005550009 -> 21614 (not a mobile number), +15005550004 -> 21610 (unsubscribed).
- FCM HTTP v1: the OAuth2 token endpoint verifies the RS256 JWT assertion with the service
  account's public key (iss, aud, scope, iat/exp) and issues access tokens; messages:send
  checks the Bearer token and answers {"name": ...} or google.rpc errors with an FcmError detail.
- Slack: an incoming webhook answers "ok" or a short code with its HTTP status; chat.postMessage
  answers HTTP 200 {"ok": true, "ts", ...} or {"ok": false, "error"}, and HTTP 429 + Retry-After
  when rate limited.

`script`: a list of answer names used one per request (the last one repeats), or None (the
vendor's own checks alone decide). "hang" never answers (until the stand-in closes).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

TWILIO_MORE_INFO = "https://www.twilio.com/docs/errors/{code}"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


async def serve_loopback(app: web.Application, **runner_kw: Any) -> tuple[web.AppRunner, str]:
    """`app` served on 127.0.0.1 at a free port: its runner (to clean up) and its base URL."""
    runner = web.AppRunner(app, access_log=None, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Rec:
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] | None = None
    json: Any = None


class Standin:
    """An aiohttp app on 127.0.0.1 (port 0) recording requests and answering per `script`."""

    def __init__(self, script: list[str] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[Rec] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._n = itertools.count()

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def next_action(self) -> str | None:
        n = next(self._n)
        if not self.script:
            return None
        return self.script[min(n, len(self.script) - 1)]

    async def record(self, request: web.Request) -> Rec:
        body = await request.read()
        rec = Rec(request.path_qs, dict(request.headers), body)
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            from urllib.parse import parse_qsl

            rec.form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        elif ctype.startswith("application/json"):
            try:
                rec.json = json.loads(body)
            except ValueError:
                rec.json = None
        self.requests.append(rec)
        return rec

    async def hang(self) -> web.Response:
        await asyncio.wait_for(self._release.wait(), 60)
        return web.Response(status=599)

    async def start(self) -> Standin:
        app = web.Application()
        self.routes(app)
        self._runner, self.url = await serve_loopback(app, shutdown_timeout=1.0)
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Standin:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- Twilio


class TwilioStandin(Standin):
    def __init__(self, account_sid: str, auth_token: str, script: list[str] | None = None) -> None:
        super().__init__(script)
        self.account_sid, self.auth_token = account_sid, auth_token

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.messages)

    @staticmethod
    def error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"code": code, "message": message, "more_info": TWILIO_MORE_INFO.format(code=code),
                                  "status": status}, status=status, headers=headers)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["sid"] != self.account_sid:
            return self.error(401, 20003, "Authenticate")
        action = self.next_action()
        if action == "hang":
            return await self.hang()
        if action == "throttle":
            return self.error(429, 20429, "Too Many Requests", headers={"Retry-After": "7"})
        if action == "error":
            return self.error(500, 20500, "Internal Server Error")
        if action == "unavailable":
            return self.error(503, 20503, "Service unavailable")
        form = rec.form or {}           # a JSON body is not read: Twilio sees no parameters at all
        to, body = form.get("To", ""), form.get("Body", "")
        if not to:
            return self.error(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self.error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return self.error(400, 21602, "Message body is required.")
        if not E164.match(to) or to == "+15005550001":
            return self.error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to == "+15005550009":
            return self.error(400, 21614, f"'To' number {to} is not a valid mobile number")
        if to == "+15005550004":
            return self.error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = "SM" + secrets.token_hex(16)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        return web.json_response({
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": body,
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0", "num_segments": "1",
            "price": None, "price_unit": "USD", "sid": sid,
            "status": "accepted" if form.get("MessagingServiceSid") else "queued", "to": to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
        }, status=201)


# --------------------------------------------------------------------------- FCM


def make_service_account(token_uri: str, project_id: str = "routingd-test") -> tuple[dict[str, Any], Any]:
    """A service-account key (the JSON Google's console downloads) with a fresh RSA key, and the
    key's public half for the token endpoint to verify assertions with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account", "project_id": project_id, "private_key_id": secrets.token_hex(20),
        "private_key": pem, "client_email": f"routingd@{project_id}.iam.gserviceaccount.com",
        "client_id": "1" + "0" * 20, "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, key.public_key()


def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class FcmStandin(Standin):
    """Token endpoint (POST /token) and FCM's send endpoint on one loopback server."""

    def __init__(self, project_id: str = "routingd-test", script: list[str] | None = None,
                 expires_in: int = 3600) -> None:
        super().__init__(script)
        self.project_id = project_id
        self.expires_in = expires_in
        self.public_keys: dict[str, Any] = {}         # client_email -> RSA public key
        self.tokens: dict[str, float] = {}            # access token -> expiry (monotonic)
        self.token_requests = 0

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account(self) -> dict[str, Any]:
        info, public = make_service_account(self.token_uri, self.project_id)
        self.public_keys[info["client_email"]] = public
        return info

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.send)

    async def token(self, request: web.Request) -> web.Response:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self.token_requests += 1
        form = await request.post()

        def refuse(desc: str) -> web.Response:
            return web.json_response({"error": "invalid_grant", "error_description": desc}, status=400)

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"},
                                     status=400)
        parts = str(form.get("assertion", "")).split(".")
        if len(parts) != 3:
            return refuse("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
        try:
            header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
        except ValueError:
            return refuse("Invalid JWT Signature.")
        public = self.public_keys.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or public is None:
            return refuse("Invalid JWT Signature.")
        try:
            public.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return refuse("Invalid JWT Signature.")
        now = time.time()
        # google-auth addresses the assertion to Google's token endpoint whatever token_uri says
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE or not (claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)):
            return refuse("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
        if "https://www.googleapis.com/auth/firebase.messaging" not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope", "error_description": "Invalid OAuth scope."}, status=400)
        token = "ya29." + secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.expires_in
        return web.json_response({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    @staticmethod
    def error(code: int, status: str, message: str, fcm_code: str | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
        err: dict[str, Any] = {"code": code, "message": message, "status": status}
        if fcm_code is not None:
            err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}]
        return web.json_response({"error": err}, status=code, headers=headers)

    async def send(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if self.tokens.get(token, 0.0) <= time.monotonic():
            return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                              "OAuth 2 access token, login cookie or other valid authentication credential.")
        if request.match_info["project"] != self.project_id:
            return self.error(403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied on "
                              f"resource '//cloudresourcemanager.googleapis.com/projects/{request.match_info['project']}'")
        message = rec.json.get("message") if isinstance(rec.json, dict) else None
        if not isinstance(message, dict):
            return self.error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not message.get("token"):
            return self.error(400, "INVALID_ARGUMENT", "Recipient of the message is not set.", "INVALID_ARGUMENT")
        action = self.next_action()
        if action == "hang":
            return await self.hang()
        if action == "unregistered":
            return self.error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if action == "invalid_token":
            return self.error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                              "INVALID_ARGUMENT")
        if action == "sender_mismatch":
            return self.error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
        if action == "quota":
            return self.error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Messages sent'.",
                              "QUOTA_EXCEEDED", headers={"Retry-After": "11"})
        if action == "unavailable":
            return self.error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
        if action == "internal":
            return self.error(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
        if action == "revoke":            # forget every token issued so far, then answer as Google would
            self.tokens.clear()
            return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        return web.json_response({"name": f"projects/{self.project_id}/messages/0:{secrets.token_hex(8)}"})


# --------------------------------------------------------------------------- Slack


class SlackStandin(Standin):
    """An incoming webhook at WEBHOOK_PATH and the Web API's chat.postMessage at /api."""

    WEBHOOK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"

    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("C123ABC456", "#general"),
                 script: list[str] | None = None) -> None:
        super().__init__(script)
        self.token, self.channels = token, channels

    @property
    def webhook_url(self) -> str:
        return self.url + self.WEBHOOK_PATH

    def routes(self, app: web.Application) -> None:
        app.router.add_post(self.WEBHOOK_PATH, self.webhook)
        app.router.add_post("/services/{rest:.*}", self.no_service)
        app.router.add_post("/api/chat.postMessage", self.post_message)

    async def no_service(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=404, text="no_service")

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        if not request.headers.get("Content-Type", "").startswith("application/json") or not isinstance(rec.json, dict):
            return web.Response(status=400, text="invalid_payload")
        if not rec.json.get("text") and not rec.json.get("blocks"):
            return web.Response(status=400, text="no_text")
        action = self.next_action()
        codes = {"channel_not_found": 404, "channel_is_archived": 410, "action_prohibited": 403,
                 "invalid_token": 403, "rollup_error": 500}
        if action == "hang":
            return await self.hang()
        if action == "rate_limited":
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": "30"})
        if action in codes:
            return web.Response(status=codes[action], text=action)
        return web.Response(text="ok")

    async def post_message(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        auth = request.headers.get("Authorization", "")
        if not auth:
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if not request.headers.get("Content-Type", "").startswith("application/json") or not isinstance(rec.json, dict):
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        action = self.next_action()
        if action == "hang":
            return await self.hang()
        if action == "ratelimited":
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "30"})
        if action in ("internal_error", "fatal_error", "not_in_channel", "is_archived"):
            return web.json_response({"ok": False, "error": action})
        channel = rec.json.get("channel")
        if not channel or channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not rec.json.get("text") and not rec.json.get("blocks"):
            return web.json_response({"ok": False, "error": "no_text"})
        ts = f"{time.time():.6f}"
        return web.json_response({"ok": True, "channel": "C123ABC456", "ts": ts,
                                  "message": {"text": rec.json["text"], "type": "message", "subtype": "bot_message",
                                              "ts": ts}})


# --------------------------------------------------------------------------- Apprise receiver


class Receiver(Standin):
    """Any POST: recorded; answered 200 "OK", or the status the script names ("500", "hang")."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{rest:.*}", self.receive)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        action = self.next_action()
        if action == "hang":
            return await self.hang()
        return web.Response(status=int(action) if action else 200, text="OK")

