"""What the vendor adapters (twilio, fcm, slack, ...) share: one bounded request on the process's
aiohttp session, answered as a `VendorAnswer` or as an `Outcome(network=True)`, and details that
never carry a secret.

A vendor's answer is mapped onto an Outcome by its own module (docs/providers.md has the tables);
what every module does the same way lives here:

- no answer: the runtime cancels the attempt at its deadline; a generous safety timeout on the
  request backs that up (as for `http`), and then it is a network failure;
- a refused or reset connection, a malformed answer or a truncated body: Outcome(network=True);
- details go through redact.py (the one sanitiser): bounded, masked of the adapter's secrets
  (tokens, webhook URLs and their paths), a URL named by its origin only (scheme://host[:port]):
  a webhook URL's path is a credential.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ..core.engine import Outcome
from .http import bounded_request, parse_retry_after
from .redact import MAX_RAW, config_secrets, redact


@dataclass(frozen=True)
class VendorAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def retry_after_s(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def text(self, limit: int = MAX_RAW) -> str:
        # not cut short: the runtime masks the provider's secrets before it cuts (redact.MAX_RAW)
        return " ".join(self.body[:limit].decode("utf-8", "replace").split())


def accepted(answer: VendorAnswer, vendor: str, message_id: Any, what: str) -> Outcome:
    """A 2xx answer carrying the vendor's id for the message (`what` names it) as sent; a 2xx
    without one is not the vendor's answer (a proxy's?): a 502, not sent."""
    if not isinstance(message_id, str) or not message_id:
        return Outcome(status=502, detail=f"{vendor} HTTP {answer.status} without {what}: {answer.text()}")
    return Outcome(status=answer.status, provider_message_id=message_id)

def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a detail or a log line may say about where it went."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    return f"{parts.scheme}://{host}{port}"


def secret_parts(url: str) -> list[str]:
    """The parts of a URL that may hold a credential: the whole URL, its path and query, and
    the pieces redact.config_secrets() finds in it (user info, path segments, query values)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    out = [url, parts.path, parts.query, *config_secrets(url)]
    return [p for p in dict.fromkeys(out) if p and p != "/"]


async def vendor_request(session: Any, method: str, url: str, *, deadline_s: float, secrets: Iterable[str] = (),
                         **kwargs: Any) -> VendorAnswer | Outcome:
    """One request with no redirects, its body read up to a bound; a failure to get an answer is
    Outcome(network=True) with a scrubbed description (never the URL's path)."""

    def describe(e: BaseException) -> str:
        text = " ".join(str(e).split())
        # aiohttp names the whole URL in some errors (InvalidURL): never let a path through
        return redact(f"{origin(url)}: {type(e).__name__}: {text}" if text else f"{origin(url)}: {type(e).__name__}",
                      [*secret_parts(url), *secrets])

    answer = await bounded_request(session, method, url, deadline_s=deadline_s, describe=describe,
                                   no_answer=f"no answer from {origin(url)} within the safety timeout", **kwargs)
    if isinstance(answer, Outcome):
        return answer
    return VendorAnswer(*answer)
