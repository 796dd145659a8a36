"""Provider controls for operators (docs/api.md "Providers"):

    GET  /v1/providers                 per provider: breaker state, drained or not, and the
                                       outcomes and latency percentiles of its recent attempts
    POST /v1/providers/{name}/drain    take it out of rotation by hand (a vendor's maintenance
                                       window): new attempts skip it like an open breaker
                                       (provider_skipped, reason "drained"); kept across reloads
    POST /v1/providers/{name}/resume   back into rotation

Auth is the API's (api.py's middleware: a bearer token when tokens are configured). `setup(app,
state)` registers the routes and the `ProviderStats` event listener that the status page
(daemon/ui.py) reads too.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from aiohttp import web

from .clock import rfc3339

log = logging.getLogger("routingd.providers")

WINDOW_S = 300.0            # "recent": the last five minutes of attempts
_MAX_PER_PROVIDER = 10_000  # at most this many recent attempts kept per provider (memory bound)
_MAX_STARTED = 100_000      # attempts in flight whose start time is kept (for their latency)
_FAILOVERS = 50             # recent failovers kept for the status page


class ProviderStats:
    """Router event listener: each provider's recent attempts (when, outcome, latency) and the
    recent failovers, bounded in time (WINDOW_S) and in count."""

    def __init__(self) -> None:
        self.attempts: dict[str, deque[tuple[float, str, float | None]]] = {}
        self._started: dict[str, float] = {}
        self.failovers: deque[dict[str, Any]] = deque(maxlen=_FAILOVERS)
        self.skips: dict[str, deque[float]] = {}

    def __call__(self, message_id: str, event: Any) -> None:
        type_ = event.type
        data = event.data
        if type_ == "attempt_started":
            if len(self._started) >= _MAX_STARTED:       # lost ends (never expected): forget the oldest
                self._started.pop(next(iter(self._started)))
            self._started[str(data.get("attempt_id"))] = event.at
        elif type_ == "attempt_ended":
            provider = str(data.get("provider", ""))
            started = self._started.pop(str(data.get("attempt_id")), None)
            q = self.attempts.get(provider)
            if q is None:
                q = self.attempts[provider] = deque(maxlen=_MAX_PER_PROVIDER)
            q.append((event.at, str(data.get("outcome", "")), event.at - started if started is not None else None))
        elif type_ == "provider_skipped":
            s = self.skips.get(str(data.get("provider", "")))
            if s is None:
                s = self.skips[str(data.get("provider", ""))] = deque(maxlen=_MAX_PER_PROVIDER)
            s.append(event.at)
        elif type_ == "failover":
            self.failovers.append({"message_id": message_id, "at": event.at, **data})

    def recent(self, provider: str, now: float) -> dict[str, Any]:
        since = now - WINDOW_S
        q = self.attempts.get(provider, ())
        outcomes: dict[str, int] = {}
        latencies: list[float] = []
        for at, outcome, latency in q:
            if at < since:
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if latency is not None:
                latencies.append(latency)
        total = sum(outcomes.values())
        latencies.sort()
        skipped = sum(1 for at in self.skips.get(provider, ()) if at >= since)
        return {"window_s": WINDOW_S, "attempts": total, "outcomes": outcomes, "skipped": skipped,
                "success_rate": round(outcomes.get("delivered", 0) / total, 4) if total else None,
                "latency_ms": {f"p{p}": _pct(latencies, p) for p in (50, 90, 99)}}


def _pct(values: list[float], p: int) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, -(-p * len(values) // 100) - 1))
    return round(values[k] * 1000.0, 1)


STATS_KEY: web.AppKey[ProviderStats] = web.AppKey("routingd_provider_stats", ProviderStats)


def _router(request: web.Request) -> Any:
    from .api import STATE_KEY
    return request.app[STATE_KEY].router


def provider_names(router: Any) -> list[str]:
    """The current policy's providers, then any other the breakers or a drain still know."""
    names = list(router.policy.model.providers)
    extra = sorted((set(router.health.snapshot()) | router.health.drained) - set(names))
    return names + extra


def provider_view(router: Any, stats: ProviderStats, name: str) -> dict[str, Any]:
    health = router.health
    b = health.snapshot().get(name)
    now = router.clock.now()
    if b is None or not b["open"]:
        state, until = "closed", None
    else:
        until = b["open_until"]
        state = "half-open" if b["half_open"] or (until is not None and now >= until) else "open"
    prov = router.policy.model.providers.get(name)
    return {"name": name, "type": getattr(prov, "type", None), "in_policy": prov is not None,
            "breaker": {"state": state, "failures": b["failures"] if b else 0,
                        "open_until": rfc3339(until) if isinstance(until, float) else None},
            "drained": name in health.drained,
            "recent": stats.recent(name, now),
            "limit": limit_view(router, name, now)}


def limit_view(router: Any, name: str, now: float) -> dict[str, Any] | None:
    """The provider's live outbound limiter state (daemon/core/limiter.py Limiter.snapshot), or
    None when routing.toml gives it no rate_limit / max_inflight (docs/api.md)."""
    fleet = getattr(router, "fleet", None)
    if fleet is None or not fleet.limiter.limited(name):
        return None
    s = fleet.limiter.snapshot(now).get(name)
    if s is None:
        return None
    return {"rate_limit": s["rate_limit"], "burst": s["burst"], "max_inflight": s["max_inflight"],
            "rate_in_force": s["rate_now"],
            "burst_in_force": s["burst_now"], "share": s["share"], "queue_depth": s["queue"], "in_flight": s["inflight"],
            "spilled": s["spilled"], "throttled": s["throttled"], "granted": s["granted"]}


async def list_providers(request: web.Request) -> web.Response:
    from .api import json_response
    router = _router(request)
    stats = request.app[STATS_KEY]
    return json_response({"at": rfc3339(router.clock.now()),
                          "providers": [provider_view(router, stats, n) for n in provider_names(router)]})


async def _drain_or_resume(request: web.Request, drain: bool) -> web.Response:
    from .api import ApiError, json_response
    router = _router(request)
    name = request.match_info["name"]
    if name not in router.policy.model.providers and name not in router.health.drained:
        raise ApiError(404, f"no provider {name!r} in the active policy",
                       [{"loc": ["path", "name"], "msg": "known: " + ", ".join(router.policy.model.providers)}])
    drained = router.health.drained
    changed = (name not in drained) if drain else (name in drained)
    if drain:
        drained.add(name)
    else:
        drained.discard(name)
    router.metrics.provider_drained.labels(provider=name).set(1 if drain else 0)
    if changed:
        if drain:
            log.warning("provider %s: drained by hand (POST /v1/providers/%s/drain): new attempts skip it "
                        "until /resume", name, name)
        else:
            log.info("provider %s: resumed by hand: back in rotation", name)
    body = provider_view(router, request.app[STATS_KEY], name)
    body["changed"] = changed
    return json_response(body)


async def drain(request: web.Request) -> web.Response:
    return await _drain_or_resume(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _drain_or_resume(request, False)


def setup(app: web.Application, state: Any) -> None:
    """Register the routes (and the status page, daemon/ui.py) and the stats listener."""
    stats = ProviderStats()
    app[STATS_KEY] = stats
    if hasattr(state.router, "add_event_listener"):
        state.router.add_event_listener(stats)
    app.router.add_get("/v1/providers", list_providers)
    app.router.add_post("/v1/providers/{name}/drain", drain)
    app.router.add_post("/v1/providers/{name}/resume", resume)
    from . import ui
    ui.setup(app)



def openapi_paths(json_ok: Any, error: Any) -> dict[str, Any]:
    """These routes in /openapi.json (daemon/openapi.py merges them in)."""
    html = {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
            "401": error("missing or wrong bearer token")}
    provider = {"type": "object", "properties": {
        "name": {"type": "string"}, "type": {"type": ["string", "null"]}, "in_policy": {"type": "boolean"},
        "breaker": {"type": "object", "properties": {
            "state": {"type": "string", "enum": ["closed", "open", "half-open"]},
            "failures": {"type": "integer"}, "open_until": {"type": ["string", "null"]}}},
        "drained": {"type": "boolean"}, "recent": {"type": "object"},
        "limit": {"type": ["object", "null"], "properties": {
            "rate_limit": {"type": ["number", "null"]}, "burst": {"type": ["number", "null"]},
            "max_inflight": {"type": ["integer", "null"]}, "rate_in_force": {"type": ["number", "null"]},
            "queue_depth": {"type": "integer"}, "in_flight": {"type": "integer"},
            "spilled": {"type": "integer"}, "throttled": {"type": "integer"}, "granted": {"type": "integer"}}}}}
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

    def control(op: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": op, "summary": summary, "parameters": name, "responses": {
            "200": json_ok("the provider after the change", provider),
            "401": error("missing or wrong bearer token"),
            "404": error("no such provider in the active policy")}}}
    return {
        "/v1/providers": {"get": {"operationId": "providers", "summary": "Breaker state, drained, recent "
                                  "outcomes and latency of every provider", "responses": {
                                      "200": json_ok("providers", {"type": "object", "properties": {
                                          "at": {"type": "string"},
                                          "providers": {"type": "array", "items": provider}}}),
                                      "401": error("missing or wrong bearer token")}}},
        "/v1/providers/{name}/drain": control("drainProvider", "Take a provider out of rotation by hand"),
        "/v1/providers/{name}/resume": control("resumeProvider", "Put a drained provider back into rotation"),
        "/ui": {"get": {"operationId": "statusPage", "summary": "The status page", "responses": html}},
        "/ui/messages": {"get": {"operationId": "statusLookup", "summary": "Redirects ?id=ID to /ui/messages/ID",
                                 "parameters": [{"name": "id", "in": "query", "schema": {"type": "string"}}],
                                 "responses": {"302": {"description": "to the message page"},
                                               "401": error("missing or wrong bearer token")}}},
        "/ui/messages/{message_id}": {"get": {
            "operationId": "statusMessage", "summary": "One message's attempt timeline",
            "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": dict(html, **{"404": {"description": "unknown message (HTML)"}})}},
    }
