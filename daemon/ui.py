"""The status page (docs/operations.md "Status page"): server-rendered HTML, no script, no
external asset, the same auth as the API (daemon/api/guard.py's middleware guards /ui like /v1/...).

    GET /ui                       providers (breaker state, drained, recent rates and latency),
                                  recent failovers, a form to look a message up; refreshes every 5 s
    GET /ui/messages?id=ID        redirects to /ui/messages/ID
    GET /ui/messages/{id}         one message: status, its attempts as a timeline, its events

The data is what GET /v1/providers and GET /v1/messages/{id} answer (daemon/ops_api.py,
Router.status), rendered with Jinja2's autoescaping environment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from .clock import rfc3339

_ENV = jinja2.Environment(autoescape=True)   # a key a message lacks (detail, finished_at) renders empty

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>{{ title }} - routingd</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.sub{color:#666;margin-bottom:1em} a{color:#0b5cad}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;padding:.1em .5em;border-radius:3px;white-space:nowrap}
.closed,.delivered{background:#dff3e0;color:#1b5e20} .open,.failed,.undeliverable,.expired,.timeout,.network,.rejected{background:#fde0dc;color:#a01b10}
.half-open,.drained,.pending,.cancelled{background:#fff3cd;color:#7a5a00}
.bar{position:relative;height:1.1em;background:#eee;min-width:24em}
.bar span{position:absolute;top:0;bottom:0;min-width:2px}
.bar .delivered{background:#4caf50} .bar .running{background:#90a4ae}
.bar .failed,.bar .timeout,.bar .network,.bar .rejected{background:#e53935} .bar .cancelled{background:#ffb300}
.empty{color:#888;font-style:italic}
</style></head><body>
<h1><a href="/ui">routingd</a> &middot; {{ title }}</h1>
<div class="sub">{{ subtitle }}</div>
{{ body | safe }}
</body></html>"""

_INDEX = """
<h2>Providers</h2>
<table id="providers"><thead><tr><th>provider</th><th>type</th><th>breaker</th><th>rotation</th>
<th>attempts (last {{ window }})</th><th>delivered</th><th>outcomes</th><th>skipped</th>
<th>p50</th><th>p99</th></tr></thead><tbody>
{% for p in providers %}<tr data-provider="{{ p.name }}">
<td>{{ p.name }}</td><td>{{ p.type or "-" }}</td>
<td><span class="state {{ p.breaker.state }}" data-breaker="{{ p.breaker.state }}">{{ p.breaker.state }}</span>
{% if p.breaker.open_until %}<br><small>until {{ p.breaker.open_until }}</small>{% endif %}</td>
<td>{% if p.drained %}<span class="state drained">drained</span>{% else %}in rotation{% endif %}</td>
<td class="num">{{ p.recent.attempts }}</td>
<td class="num">{% if p.recent.success_rate is not none %}{{ "%.1f" % (p.recent.success_rate * 100) }}%{% else %}-{% endif %}</td>
<td>{% for k, v in p.recent.outcomes.items() %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% else %}-{% endfor %}</td>
<td class="num">{{ p.recent.skipped }}</td>
<td class="num">{{ ms(p.recent.latency_ms.p50) }}</td><td class="num">{{ ms(p.recent.latency_ms.p99) }}</td>
</tr>{% endfor %}
</tbody></table>

<h2>Recent failovers</h2>
{% if failovers %}<table id="failovers"><thead><tr><th>at</th><th>message</th><th>kind</th><th>from</th><th>to</th></tr></thead><tbody>
{% for f in failovers %}<tr><td>{{ f.at }}</td><td><a href="/ui/messages/{{ f.message_id | urlencode }}">{{ f.message_id }}</a></td>
<td>{{ f.kind }}</td><td>{{ f["from"] }}</td><td>{{ f.to }}</td></tr>{% endfor %}
</tbody></table>{% else %}<p class="empty" id="failovers">no failover since the daemon started</p>{% endif %}

<h2>Look up a message</h2>
<form method="get" action="/ui/messages"><input name="id" size="44" placeholder="message id" required>
<button type="submit">show</button></form>
"""

_MESSAGE = """
<p>status <span class="state {{ m.status }}" id="status">{{ m.status }}</span> &middot; route {{ m.route }}
&middot; accepted {{ m.accepted_at }}{% if m.finished_at %} &middot; finished {{ m.finished_at }}{% endif %}</p>
<h2>Attempts</h2>
{% if rows %}<table id="attempts"><thead><tr><th>attempt</th><th>channel</th><th>provider</th><th>try</th>
<th>start</th><th>took</th><th>outcome</th><th>timeline (0 &ndash; {{ "%.0f" % span_ms }} ms)</th></tr></thead><tbody>
{% for a in rows %}<tr data-attempt="{{ a.attempt_id }}"><td><code>{{ a.attempt_id }}</code></td><td>{{ a.channel }}</td>
<td>{{ a.provider }}</td><td class="num">{{ a.try }}</td><td class="num">+{{ "%.0f" % a.start_ms }} ms</td>
<td class="num">{% if a.took_ms is not none %}{{ "%.0f" % a.took_ms }} ms{% else %}running{% endif %}</td>
<td><span class="state {{ a.outcome or 'pending' }}">{{ a.outcome or "running" }}</span>
{% if a.detail %}<br><small>{{ a.detail }}</small>{% endif %}</td>
<td><div class="bar"><span class="{{ a.outcome or 'running' }}" style="left:{{ "%.2f" % a.left }}%;width:{{ "%.2f" % a.width }}%"></span></div></td>
</tr>{% endfor %}</tbody></table>{% else %}<p class="empty">no attempt</p>{% endif %}
<h2>Events</h2>
<table id="events"><thead><tr><th>at</th><th>type</th><th>details</th></tr></thead><tbody>
{% for e in m.events %}<tr><td>{{ e.at }}</td><td>{{ e.type }}</td>
<td>{% for k, v in e.items() if k not in ("at", "type") %}{{ k }}={{ v }}{% if not loop.last %} {% endif %}{% endfor %}</td></tr>{% endfor %}
</tbody></table>
"""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _page(title: str, subtitle: str, body: str, refresh: int | None = None) -> web.Response:
    html = _ENV.from_string(_BASE).render(title=title, subtitle=subtitle, body=body, refresh=refresh)
    return web.Response(text=html, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "form-action 'self'"})


def _ts(value: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def index(request: web.Request) -> web.Response:
    from .api import STATE_KEY
    from .ops_api import STATS_KEY, WINDOW_S, provider_names, provider_view
    router = request.app[STATE_KEY].router
    stats = request.app[STATS_KEY]
    providers = [provider_view(router, stats, n) for n in provider_names(router)]
    failovers = [dict(f, at=rfc3339(f["at"])) for f in reversed(stats.failovers)]
    body = _ENV.from_string(_INDEX).render(providers=providers, failovers=failovers, ms=_ms,
                                           window=f"{WINDOW_S / 60:g} min")
    return _page("status", f"policy {router.policy.version} · {router.inflight} message(s) in flight · "
                 f"{rfc3339(router.clock.now())}", body, refresh=5)


async def lookup(request: web.Request) -> web.StreamResponse:
    mid = request.query.get("id", "").strip()
    if not mid:
        raise web.HTTPFound("/ui")
    raise web.HTTPFound("/ui/messages/" + quote(mid, safe=""))


async def message(request: web.Request) -> web.Response:
    from .api import STATE_KEY
    router = request.app[STATE_KEY].router
    mid = request.match_info["message_id"]
    m = router.status(mid)
    if m is None:
        body = _ENV.from_string('<p class="empty" id="status">no message {{ mid }} (unknown, or purged after '
                                'the retention period)</p>').render(mid=mid)
        resp = _page("message", mid, body)
        resp.set_status(404)
        return resp
    t0 = _ts(m["accepted_at"])
    end = _ts(m["finished_at"]) if m.get("finished_at") else router.clock.now()
    rows: list[dict[str, Any]] = []
    for a in m["attempts"]:
        start = _ts(a["started_at"])
        stop = _ts(a["ended_at"]) if a.get("ended_at") else None
        end = max(end, stop or start)
        rows.append(dict(a, start_ms=(start - t0) * 1000.0, took_ms=(stop - start) * 1000.0 if stop else None,
                         _start=start, _stop=stop))
    span = max(end - t0, 0.001)
    for r in rows:
        r["left"] = 100.0 * (r["_start"] - t0) / span
        r["width"] = max(0.5, 100.0 * ((r["_stop"] or end) - r["_start"]) / span)
    body = _ENV.from_string(_MESSAGE).render(m=m, rows=rows, span_ms=span * 1000.0)
    return _page("message", mid, body, refresh=None if m["status"] != "pending" else 2)


def setup(app: web.Application) -> None:
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/messages", lookup)
    app.router.add_get("/ui/messages/{message_id}", message)
