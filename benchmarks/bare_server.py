"""The baseline of the ingress and delivery benchmarks: a bare aiohttp handler, no routing.

    python benchmarks/bare_server.py [--port 0] [--forward URL]

POST /v1/send reads the body, parses the same JSON the daemon parses (a JSON object with a
"message" object) and answers 202 {"message_id": ...} -- what the daemon's handler does minus
validation, durability and routing. With --forward URL it is a bare relay instead: it POSTs the
message to URL on one shared aiohttp ClientSession (the daemon's http provider does the same)
and answers 202 once the provider answered 2xx, else 502. Prints its port on the first stdout
line; serves on 127.0.0.1 until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def make_app(forward: str | None) -> web.Application:
    ids = itertools.count(1)
    app = web.Application()
    state: dict[str, ClientSession] = {}

    async def send(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": "request body is not valid JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            return web.json_response({"error": "expected {\"message\": {...}}"}, status=422)
        mid = f"m{next(ids)}"
        if forward is not None:
            msg = body["message"]
            payload = {"message_id": mid, "attempt_id": f"{mid}.0.1", "channel": "email", "to": msg.get("to"),
                       "content": msg.get("content", {}), "metadata": msg.get("metadata", {})}
            async with state["session"].post(forward, json=payload,
                                             headers={"Idempotency-Key": f"{mid}:email:sink"}) as resp:
                await resp.read()
                if not 200 <= resp.status < 300:
                    return web.json_response({"error": f"provider answered {resp.status}"}, status=502)
        return web.Response(text=json.dumps({"message_id": mid}), status=202, content_type="application/json")

    async def on_startup(app: web.Application) -> None:
        if forward is not None:
            state["session"] = ClientSession(connector=TCPConnector(limit=1000, limit_per_host=0),
                                             timeout=ClientTimeout(total=30))

    async def on_cleanup(app: web.Application) -> None:
        if "session" in state:
            await state["session"].close()

    app.router.add_post("/v1/send", send)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve_app(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (0: any free port), print the bound port on stdout for the
    benchmark that started this process, and run until SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def serve(port: int, forward: str | None) -> None:
    await serve_app(make_app(forward), port)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--forward", metavar="URL", help="relay each message to this provider URL before the 202")
    a = p.parse_args()
    asyncio.run(serve(a.port, a.forward))
    return 0


if __name__ == "__main__":
    sys.exit(main())
