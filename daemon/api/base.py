"""What every part of the HTTP API shares: its state (ApiState), the error answer (ApiError)
and the JSON answer shape (docs/api.md "Errors")."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

from aiohttp import web
from pydantic import ValidationError

from ..errors import RoutingdError
from ..core.policy import problems_from_validation
from ..metrics import Metrics
from ..runtime import Overloaded, Router


Phase = Literal["starting", "ready", "draining"]
SIGNATURE_HEADER = "X-Routingd-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")      # what a message or attempt id can look like
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON_CONTENT_TYPE = "application/json; charset=utf-8"     # what json_response() sends


# --------------------------------------------------------------------------- collaborators


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    version: str                      # the active version after the attempt
    changed: bool = False
    errors: tuple[str, ...] = ()      # "PATH: key.path: reason" lines when not ok
    warnings: tuple[str, ...] = ()


class Reloader(Protocol):
    """Re-reads routing.toml, validates it and swaps it in (daemon/service.py)."""

    async def reload(self, trigger: str) -> ReloadResult: ...

    def info(self) -> dict[str, Any]: ...


@dataclass
class ApiState:
    """What the handlers share; `phase` and `tokens` change while the process runs."""

    router: Router
    metrics: Metrics
    reloader: Reloader
    tokens: Sequence[bytes] = ()
    max_body: int = 256 * 1024
    body_timeout_s: float = 30.0      # [daemon] body_timeout: a request's body within this of its headers
    phase: Phase = "starting"
    extra_ready_checks: list[Callable[[], str | None]] = field(default_factory=list)


STATE_KEY: web.AppKey[ApiState] = web.AppKey("routingd_state", ApiState)


# --------------------------------------------------------------------------- errors


class ApiError(RoutingdError):
    """An error answer: status, one-line message, optional field details and headers.
    close: the connection is closed once the answer is written (its client is not trusted to
    send anything more, e.g. a body that did not arrive in time)."""

    close = False

    def __init__(self, status: int, error: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response({"error": self.error, "details": self.details}, status=self.status,
                             headers=self.headers)


_encode = json.JSONEncoder(separators=(",", ":")).encode    # json.dumps(..., separators=) builds one per call


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=_encode(body), status=status, content_type="application/json", headers=headers)


def validation_details(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """A request's validation errors as the body's `details`, worded as routing.toml's are (one
    formatter: daemon/core/wording.py problems_from_validation; an inline routing error points at
    message.routing.channels.1.channels.0, as a user writes it)."""
    return [{"loc": list(p.loc), "msg": p.msg} for p in problems_from_validation(err, prefix)]


def _unavailable(e: Overloaded) -> ApiError:
    retry = max(1, int(round(e.retry_after_s or 1)))
    return ApiError(503, f"{e.reason}; retry later", headers={"Retry-After": str(retry)})
