"""Provider adapter of type `ses`: Amazon SES v2 SendEmail (docs/providers.md "ses").

One `POST {endpoint_url}/v2/email/outbound-emails` per attempt (SES v2's REST-JSON API), signed
with botocore's SigV4 signer and sent on the process's shared aiohttp session: one HTTP stack and
one connection pool for every vendor, no retries hidden inside an SDK (the engine owns retries
and failover), and the same network-error handling as the `http` type. Credentials are
access_key_id / secret_access_key from the config, or else botocore's credential chain
(environment, shared files, container or instance role), resolved once off the event loop and
refreshed off it when temporary credentials near their expiry.

SES's answers keep their HTTP status, with the code from `x-amzn-ErrorType` (or the body)
deciding where the status alone would not: TooManyRequestsException / ThrottlingException /
Throttling / LimitExceededException are 429 (SES sends the common ThrottlingException as a 400);
MessageRejected, MailFromDomainNotVerifiedException, BadRequestException,
AccountSuspendedException, SendingPausedException stay 400; a signature or key SES refuses is
its 403; 5xx stay transient. The MessageId of a 200 becomes provider_message_id.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .email_common import clip, recipient, sender, vendor_text
from .http import bounded_request, parse_retry_after
from .redact import MAX_RAW, describe_error

log = logging.getLogger("routingd.providers.ses")

THROTTLING = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"})


class SesAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.ctx = ctx
        self.region: str = config.region
        base = config.endpoint_url or f"https://email.{self.region}.amazonaws.com"
        self.url = f"{base}/v2/email/outbound-emails"
        from_name, from_addr = sender(config.from_)
        # SES wants a display name with non-ASCII characters MIME-encoded; formataddr does that
        self.from_ = email.utils.formataddr((from_name, from_addr)) if from_name else from_addr
        self.configuration_set: str | None = config.configuration_set
        self._creds: Any = None
        if config.access_key_id is not None:
            self._creds = Credentials(config.access_key_id, config.secret_access_key.get_secret_value())
        self._resolving: asyncio.Lock | None = None

    def body(self, req: AttemptRequest, to: str) -> dict[str, Any]:
        content = req.body()
        mail_body: dict[str, Any] = {"Text": {"Data": content.text, "Charset": "UTF-8"}}
        if content.html is not None:
            mail_body["Html"] = {"Data": content.html, "Charset": "UTF-8"}
        doc: dict[str, Any] = {
            "FromEmailAddress": self.from_,
            "Destination": {"ToAddresses": [to]},
            "Content": {"Simple": {"Subject": {"Data": content.title, "Charset": "UTF-8"}, "Body": mail_body}},
        }
        if self.configuration_set:
            doc["ConfigurationSetName"] = self.configuration_set
        return doc

    async def _credentials(self) -> Any:
        """Frozen credentials for one signature, or None when the chain has none."""
        if self._creds is None:
            if self._resolving is None:
                self._resolving = asyncio.Lock()
            async with self._resolving:
                if self._creds is None:
                    # the chain may ask the instance metadata service: never on the event loop
                    self._creds = await asyncio.to_thread(_chain_credentials)
            if self._creds is None:
                return None
        creds = self._creds
        refresh_needed = getattr(creds, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await asyncio.to_thread(creds.get_frozen_credentials)
        return creds.get_frozen_credentials()

    async def send(self, req: AttemptRequest) -> Outcome:
        to = recipient(req)
        if isinstance(to, Outcome):
            return to
        session = self.ctx.http_session
        if session is None:
            return Outcome(network=True, detail="no HTTP client session (the runtime has not started)")
        try:
            creds = await self._credentials()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a credential provider's failure is this attempt's answer
            return Outcome(status=401, detail=f"AWS credentials could not be loaded: {vendor_text(describe_error(e))}")
        if creds is None:
            return Outcome(status=401, detail="no AWS credentials: set access_key_id and secret_access_key, "
                                              "or provide them through the AWS credential chain")
        data = json.dumps(self.body(req, to), ensure_ascii=False).encode()
        signed = AWSRequest(method="POST", url=self.url, data=data, headers={"Content-Type": "application/json"})
        SigV4Auth(creds, "ses", self.region).add_auth(signed)
        answer = await bounded_request(session, "POST", self.url, deadline_s=req.deadline_s, data=data,
                                       headers=dict(signed.headers.items()))
        if isinstance(answer, Outcome):
            return answer
        status, headers, raw = answer
        error_type = headers.get("x-amzn-ErrorType")
        retry_after = parse_retry_after(headers.get("Retry-After"))
        doc = _json(raw)
        if 200 <= status < 300:
            message_id = doc.get("MessageId") if isinstance(doc, dict) else None
            return Outcome(status=status, provider_message_id=str(message_id) if message_id else None)
        code, message = _error(error_type, doc, raw)
        if code in THROTTLING:
            status = 429
        return Outcome(status=status, retry_after_s=retry_after if status == 429 else None,
                       detail=vendor_text(f"SES {code or status}: {message}"))


def _chain_credentials() -> Any:
    import botocore.session

    return botocore.session.Session().get_credentials()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _error(error_type: str | None, doc: Any, raw: bytes) -> tuple[str, str]:
    """(code, message) of an SES v2 error answer: the code from x-amzn-ErrorType
    ("MessageRejected:http://…"), else the body's __type / code; the message from the body."""
    code = ""
    if error_type:
        code = error_type.split(":", 1)[0].strip()
    body = doc if isinstance(doc, dict) else {}
    if not code:
        code = str(body.get("__type") or body.get("code") or body.get("Code") or "")
        code = code.rsplit("#", 1)[-1]
    message = body.get("message") or body.get("Message")
    if message is None:
        message = clip(raw[:MAX_RAW].decode("utf-8", "replace")) or "(no error text)"
    return code, str(message)


register_adapter("ses", SesAdapter)
