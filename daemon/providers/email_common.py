"""What the email provider types (smtp, ses, sendgrid) share: the recipient from `to.email`,
the sender split into name and address, and vendor text made safe for an attempt's detail."""

from __future__ import annotations

import email.utils

from ..adapters import AttemptRequest
from ..core.engine import Outcome
from .redact import MAX_RAW, redact


def recipient(req: AttemptRequest) -> str | Outcome:
    """`to.email` of the attempt, or the 400 Outcome saying why there is none to send to (a
    message without it can never be delivered by an email provider: the channel fails)."""
    value = req.to.get("email")
    if not isinstance(value, str) or not value.strip():
        return Outcome(status=400, detail="no to.email in the message: an email provider has nobody to send to")
    value = value.strip()
    _, addr = email.utils.parseaddr(value)
    if "\r" in value or "\n" in value or addr != value or "@" not in addr.strip("@"):
        return Outcome(status=400, detail=f"to.email is not one email address: {clip(value, 80)!r}")
    return value


def sender(configured: str) -> tuple[str, str]:
    """`from` as (display name or "", address); core/provider_models.py has checked it holds one address."""
    name, addr = email.utils.parseaddr(configured)
    return name, addr


def clip(text: str, limit: int = MAX_RAW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def vendor_text(text: str, limit: int = MAX_RAW) -> str:
    """A vendor's error text for an attempt's detail: redact.py's one sanitiser (one line,
    bounded at MAX_RAW -- the runtime masks the provider's secrets, then cuts to MAX_DETAIL --, any
    URL cut to its scheme and host: a path or query may carry a token)."""
    return redact(text, (), limit)
