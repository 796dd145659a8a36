"""The operations endpoints: /healthz, /readyz, /metrics, /openapi.json, /-/reload, /v1/config
(docs/operations.md)."""

from __future__ import annotations

from aiohttp import web

from ..openapi import openapi_document
from .base import PROMETHEUS_CONTENT_TYPE, STATE_KEY, ApiError, json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.phase != "ready":
        return json_response({"status": state.phase, "error": f"routingd is {state.phase}", "details": []},
                             status=503)
    for check in state.extra_ready_checks:
        problem = check()
        if problem:
            return json_response({"status": "not ready", "error": problem, "details": []}, status=503)
    return json_response({"status": "ready", "version": state.router.policy.version})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def reload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    result = await state.reloader.reload("http")
    if not result.ok:
        raise ApiError(422, "invalid configuration; the previous policy stays active",
                       [{"loc": ["config"], "msg": line} for line in result.errors])
    return json_response({"status": "reloaded" if result.changed else "unchanged", "version": result.version,
                          "warnings": list(result.warnings)})


async def config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].reloader.info())
