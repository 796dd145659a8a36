"""Provider adapter of type `fcm`: a push notification through Firebase Cloud Messaging HTTP v1.

POST {base_url}/v1/projects/{project_id}/messages:send
     {"message": {"token": to.firebaseToken, "notification": {"title", "body"}}}
with "Authorization: Bearer <access token>". The access token comes from the service account's
OAuth2 flow (google-auth: a JWT signed with the account's private key, exchanged at the key's
`token_uri`, which is honoured, so a test or a proxy can stand in for Google). It is cached and
refreshed before it expires (google-auth's threshold, minutes ahead); the refresh is google-auth's
synchronous call, run in a worker thread so the event loop never waits on it, and shared by every
attempt that needs it. A send answered 401 UNAUTHENTICATED (a token revoked early) drops the cached
token and is tried once more with a fresh one.

FCM answers 200 {"name": "projects/<id>/messages/<message id>"} (the name becomes
provider_message_id) or {"error": {"code", "message", "status", "details": [{"@type":
"...FcmError", "errorCode"}]}}; the FCM error code (else the status) decides the outcome, see
FCM_CODES and docs/providers.md "fcm". A service account that cannot be read or refreshed for good
(invalid_grant: a deleted key) fails every attempt of this provider: network (unreadable key, so
another provider can deliver) or 401 (rejected credentials).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Any

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .redact import MAX_RAW, redact
from .vendor import VendorAnswer, accepted, vendor_request

log = logging.getLogger("routingd.providers.fcm")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_TOKEN_TIMEOUT_S = 30.0      # bounds google-auth's own (120 s) per token request

# FCM ErrorCode (else google.rpc status) -> the status routingd classifies (failover.on).
FCM_CODES: dict[str, int] = {
    "UNREGISTERED": 404,            # the app instance is gone: the token is dead
    "INVALID_ARGUMENT": 400,        # a malformed token or message
    "SENDER_ID_MISMATCH": 403,      # the token belongs to another project
    "THIRD_PARTY_AUTH_ERROR": 401,  # the APNs certificate / web push key was rejected
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "QUOTA_EXCEEDED": 429,          # per-project, per-device or per-topic quota
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,             # FCM overloaded: retry with backoff
    "INTERNAL": 500,
}


def load_service_account(value: str) -> dict[str, Any]:
    """The service-account key: `value` is its JSON text, or a path to it. ValueError if unusable."""
    text = value.strip()
    if not text.startswith("{"):
        path = os.path.expanduser(text)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"service_account: cannot read {path!r}: {e.strerror or type(e).__name__}") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("service_account: not valid JSON") from None
    missing = [k for k in ("client_email", "private_key", "token_uri") if not isinstance(info, dict) or not info.get(k)]
    if missing:
        raise ValueError(f"service_account: not a service-account key (missing {', '.join(missing)})")
    return info


class FcmAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.ctx = ctx
        self.url = f"{config.base_url.rstrip('/')}/v1/projects/{config.project_id}/messages:send"
        self.broken: str | None = None
        self.credentials: Any = None
        self._refreshing: asyncio.Future[None] | None = None
        try:
            info = load_service_account(config.service_account.get_secret_value())
            from google.oauth2 import service_account

            self.credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        except ValueError as e:          # google-auth raises ValueError for a key it cannot load too
            self.broken = redact(str(e), (), MAX_RAW)
            log.warning("provider %s: %s; every attempt fails until the configuration is fixed", name, self.broken)

    async def _access_token(self) -> str | Outcome:
        """A valid access token (refreshed first when it is missing or about to expire)."""
        creds = self.credentials
        if creds.valid:
            return str(creds.token)
        if self._refreshing is None:
            # one refresh at a time, shared; shielded so a cancelled attempt does not cancel it
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(_refresh, creds))
            self._refreshing.add_done_callback(self._refreshed)
        try:
            await asyncio.shield(self._refreshing)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - google-auth's errors, mapped below
            return _refresh_outcome(e)
        return str(creds.token)

    def _refreshed(self, fut: asyncio.Future[None]) -> None:
        self._refreshing = None
        if not fut.cancelled():
            fut.exception()         # retrieved here: an attempt reports it (no "never retrieved")

    async def send(self, req: AttemptRequest) -> Outcome:
        if self.broken is not None:
            return Outcome(network=True, detail=self.broken)
        token = req.to.get("firebaseToken")
        if not isinstance(token, str) or not token:
            return Outcome(status=400, detail="to.firebaseToken is missing (fcm sends to a registration token)")
        content = req.body()
        if not content.title and not content.text:
            return Outcome(status=400, detail="nothing to send: the rendered title and text are empty")
        notification = {k: v for k, v in (("title", content.title), ("body", content.text)) if v}
        payload = {"message": {"token": token, "notification": notification}}
        first = True
        while True:
            access = await self._access_token()
            if isinstance(access, Outcome):
                return access
            answer = await vendor_request(self.ctx.http_session, "POST", self.url, deadline_s=req.deadline_s,
                                          secrets=(access,), json=payload,
                                          headers={"Authorization": f"Bearer {access}"})
            if isinstance(answer, Outcome):
                return answer
            if answer.status != 401 or not first:
                # the access token is a credential too (an error may quote the request's header)
                result = outcome(answer)
                return dataclasses.replace(result, detail=redact(result.detail, (access,))) if result.detail else result
            self.credentials.token = None      # revoked or expired early: fetch a new one, once
            first = False


def _refresh(creds: Any) -> None:
    import google.auth.transport.requests as gtr

    class BoundedRequest(gtr.Request):
        def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                     timeout: Any = None, **kwargs: Any) -> Any:
            return super().__call__(url, method, body, headers, timeout=_TOKEN_TIMEOUT_S, **kwargs)

    creds.refresh(BoundedRequest())


def _refresh_outcome(e: BaseException) -> Outcome:
    from google.auth import exceptions as gexc

    text = redact(str(e), (), MAX_RAW)
    if isinstance(e, gexc.RefreshError):
        # the token endpoint refused: retryable (its 5xx, after google-auth's own retries) or not
        # (invalid_grant, a deleted or wrong key: bad credentials)
        if getattr(e, "retryable", False):
            return Outcome(status=503, detail=f"fcm token refresh: {text}")
        return Outcome(status=401, detail=f"fcm token refresh: {text}")
    return Outcome(network=True, detail=f"fcm token refresh: {type(e).__name__}: {text}")


def outcome(answer: VendorAnswer) -> Outcome:
    """FCM's answer as an Outcome (docs/providers.md "fcm")."""
    body = answer.json()
    body = body if isinstance(body, dict) else {}
    if 200 <= answer.status < 300:
        return accepted(answer, "fcm", body.get("name"), "a message name")
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
    code = None
    for d in error.get("details") or ():
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("FcmError") and isinstance(d.get("errorCode"), str):
            code = d["errorCode"]
            break
    rpc = error.get("status") if isinstance(error.get("status"), str) else None
    status = FCM_CODES.get(code or "", FCM_CODES.get(rpc or "", answer.status))
    message = error.get("message") if isinstance(error.get("message"), str) else answer.text()
    what = " ".join(x for x in (code, rpc) if x) or f"HTTP {answer.status}"
    return Outcome(status=status, retry_after_s=answer.retry_after_s, detail=f"fcm {what}: {message}"[:MAX_RAW])


register_adapter("fcm", FcmAdapter)
