"""Every exception routingd raises on purpose, in one tree under `RoutingdError`
(docs/architecture.md "Errors"). The base and the configuration/plan errors live in the sans-IO
core (daemon/core/errors.py); the daemon's own are defined where they are raised and listed here.
"""

from __future__ import annotations

from .core.errors import ConfigError, PlanError, RoutingdError

__all__ = ["ConfigError", "PlanError", "RoutingdError"]
