"""Provider adapters, one module per provider `type`; importing this package registers them all
with routingd.daemon.adapters (see docs/providers.md)."""

from __future__ import annotations

from . import http, sandbox  # noqa: F401 - each module registers its adapter on import
from .http import HttpAdapter, make_http_session, parse_retry_after
from .sandbox import SandboxAdapter
from .unavailable import UnavailableAdapter

__all__ = ["HttpAdapter", "SandboxAdapter", "UnavailableAdapter", "make_http_session", "parse_retry_after"]
