"""Provider adapters, one module per provider `type`; importing this package registers them all
with routingd.daemon.adapters (see docs/providers.md). `mqtt` registers when routingd.daemon.mqtt
(the broker connection it publishes over) is imported."""

from __future__ import annotations

from . import http, sandbox  # noqa: F401 - each module registers its adapter on import
from . import sendgrid, ses, smtp  # noqa: F401 - the email types (docs/providers.md)
from . import apprise, fcm, slack, twilio  # noqa: F401 - the sms, push and chat types (docs/providers.md)
from .http import HttpAdapter, make_http_session, parse_retry_after
from .sandbox import SandboxAdapter
from .unavailable import UnavailableAdapter

__all__ = ["HttpAdapter", "SandboxAdapter", "UnavailableAdapter", "make_http_session", "parse_retry_after"]
