"""A minimal local HTTP provider for the delivery benchmark: answers 200 and records arrivals.

    python benchmarks/sink.py [--port 0]

POST /send      any JSON body; answers 200 {"ok": true} at once and records (key, arrival time
                time.time()), key = metadata.bench_seq when the body has one, else message_id
GET  /_dump     the records as a JSON list of [key, time]; POST /_clear forgets them
Prints its port on the first stdout line; serves on 127.0.0.1 until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aiohttp import web

from bare_server import serve_app       # the same start-up, port line and signal handling


def make_app() -> web.Application:
    records: list[tuple[Any, float]] = []
    app = web.Application()

    async def send(request: web.Request) -> web.Response:
        t = time.time()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        meta = body.get("metadata") or {}
        records.append((meta.get("bench_seq", body.get("message_id")), t))
        return web.Response(text='{"ok":true}', content_type="application/json")

    async def dump(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(records), content_type="application/json")

    async def clear(request: web.Request) -> web.Response:
        records.clear()
        return web.Response(text='{"ok":true}', content_type="application/json")

    app.router.add_post("/send", send)
    app.router.add_get("/_dump", dump)
    app.router.add_post("/_clear", clear)
    return app


async def serve(port: int) -> None:
    await serve_app(make_app(), port)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    asyncio.run(serve(p.parse_args().port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
