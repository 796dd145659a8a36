"""Vendors' own delivery webhooks, parsed and verified (docs/api.md "Receipts", docs/providers.md).

One module per vendor type: `ses` (SES events through SNS), `sendgrid` (Event Webhook batches),
`twilio` (status callbacks). Each verifies the vendor's signature over the raw request and turns
the body into VendorStates; the HTTP handler (daemon/api/receipts.py `receipt`) dispatches by the
provider's type, records every state as a `vendor_status` event on its message and hands the
final ones to Router.receipt. Nothing here touches the router or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

VENDOR_TYPES = frozenset({"ses", "sendgrid", "twilio"})


@dataclass(frozen=True)
class VendorState:
    """One state a vendor reported for one of its messages."""

    vendor_id: str | None                       # the vendor's id for the message (attempt's provider_message_id)
    attempt_id: str | None                      # routingd's attempt id, where the vendor echoes it
    state: str                                  # the vendor's own name for the state
    final: Literal["delivered", "failed"] | None  # the receipt it makes; None: an event only
    detail: dict[str, Any] = field(default_factory=dict)   # what the vendor said about it (error codes)


class BadSignature(Exception):
    """The request is not the vendor's (bad or missing signature, stale timestamp, unknown
    signature version, a certificate from a host not allowed): 401, nothing changes."""

    def __init__(self, reason: str, where: str = "header") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


class BadReceipt(Exception):
    """A verified request whose body is not what the vendor sends (400), or one routingd could
    not act on now (`status` 503: the vendor retries)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def clip(value: Any, limit: int = 300) -> str:
    """A vendor's text for an event's detail: one line, bounded."""
    return " ".join(str(value).split())[:limit]
