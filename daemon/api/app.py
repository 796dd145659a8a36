"""create_app(): the aiohttp application, its routes and its protocol logger."""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import ops_api
from .base import ApiState, STATE_KEY
from .guard import api_middleware
from .receipts import receipt
from .v1 import send, message_status
from .ops import healthz, readyz, metrics, openapi, reload, config


# --------------------------------------------------------------------------- the app


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level logger. A request the HTTP parser rejects (a header line over
    8190 bytes, more than 128 headers, a NUL in a header, bytes that are not HTTP) is the
    client's fault: aiohttp answers it 400 and closes the connection; here it is one WARNING
    line without the traceback and without the offending bytes (they may hold a credential).
    Anything else is logged as aiohttp would."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("routingd.http"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.logger.warning("rejected a malformed HTTP request (%s %s); the connection was closed",
                                exc.code, type(exc).__name__)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            kw["exc_info"] = None
        self.logger.debug(msg, *args, **kw)


def create_app(state: ApiState) -> web.Application:
    # client_max_size is a backstop; read_body() answers 413 itself with a JSON body.
    app = web.Application(middlewares=[api_middleware],
                          client_max_size=state.max_body + 1024,
                          handler_args={"logger": ProtocolLog()})
    app[STATE_KEY] = state
    app.router.add_post("/v1/send", send)
    app.router.add_get("/v1/messages/{message_id}", message_status)
    app.router.add_post("/v1/receipts/{provider}", receipt)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/v1/config", config)
    ops_api.setup(app, state)       # /v1/providers, drain/resume, the /ui status page (daemon/ops_api.py)
    from ..courier_api import add_courier_routes; add_courier_routes(app)   # noqa: E702 - Courier's paths (docs/api.md)
    return app
