"""The commit-delay calibration of `simulate --live` (docs/simulator.md "Simulated vs live"):
a daemon with one sandbox provider of constant latency gets probe messages at the scenario's
rate, and the time from each attempt's start to the provider seeing its call is fitted as a
log-normal (`commit_delay_of`) for the simulated run's [simulation] commit_delay.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any, Sequence

from ..daemon.core.behaviour import LatencyDist

from .live_daemon import LiveError, _Daemon, _ts, read_finished
from .live_routing import to_toml
from .metrics import percentile

CALIBRATION_LATENCY_MS = 1      # the probe provider's constant latency
CALIBRATION_MESSAGES = 300      # at most this many probe messages ...
CALIBRATION_SECONDS = 2.0       # ... sent over at most this long, at the scenario's rate
# Probes sent (and waited for) first, not measured: a daemon's first sends pay one-off costs
# (imports, first-call paths) that the drill's daemon, warm by its first arrival, does not; one
# start-up stall in the first probes once made the fitted p99 298 ms where it is 2-5 ms
# (docs/simulator.md "Where they differ").
CALIBRATION_WARMUP = 20


def _calibration_routing() -> dict[str, Any]:
    return {"version": 1, "daemon": {"watch": False},
            "providers": {"probe": {"type": "sandbox", "latency": CALIBRATION_LATENCY_MS, "breaker": False}},
            "channels": {"probe": {"providers": ["probe"]}},
            "routes": {"default": {"channels": ["probe"]}}}


def commit_delay_of(spans_s: Sequence[float]) -> LatencyDist:
    """The log-normal (whole milliseconds) through the median and p99 of measured commit delays."""
    xs = sorted(max(0.0, x) for x in spans_s)
    if not xs:
        raise LiveError("the calibration run measured no attempt")
    median = max(0, int(round((percentile(xs, 50) or 0.0) * 1000)))
    p99 = max(median, int(round((percentile(xs, 99) or 0.0) * 1000)))
    return LatencyDist(median=median, p99=p99)


def calibrate(rate: float) -> tuple[LatencyDist, int]:
    """Measure the daemon's commit delay (docs/simulator.md "Simulated vs live"): a daemon with one
    sandbox provider of constant latency gets probe messages at the scenario's rate; for each
    attempt, ended_at - started_at less that latency is the time from the engine's StartAttempt to
    the provider seeing the call. Returns the fitted delay and the number of attempts measured."""
    workdir = tempfile.mkdtemp(prefix="routingd-calibrate-")
    try:
        path = os.path.join(workdir, "routing.toml")
        with open(path, "w") as f:
            f.write(to_toml(_calibration_routing()))
        daemon = _Daemon(workdir, path)
        try:
            daemon.start()
            spans = asyncio.run(_probe(daemon.url, rate))
        finally:
            daemon.stop()
        return commit_delay_of(spans), len(spans)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _probe(url: str, rate: float) -> list[float]:
    import aiohttp

    n = max(20, min(CALIBRATION_MESSAGES, int(rate * CALIBRATION_SECONDS)))
    gap = 1.0 / rate
    ids: list[str] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=64),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def send(i: int) -> None:
            body = {"message": {"to": {"email": f"probe-{i}@example.com"}, "content": {"body": "probe"}}}
            try:
                async with http.post("/v1/send", json=body) as r:
                    doc = await r.json(content_type=None)
                    if r.status == 202:
                        ids.append(doc["message_id"])
                    else:
                        errors.append(f"{r.status} {doc}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")

        loop = asyncio.get_running_loop()

        async def batch(count: int) -> list[dict[str, Any]]:
            """`count` probes at the rate; their statuses once every one is finished."""
            ids.clear()
            t0 = loop.time()
            tasks = []
            for i in range(count):
                delay = t0 + i * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(loop.create_task(send(i)))
            await asyncio.wait(tasks)
            if errors:
                raise LiveError(f"calibration: {len(errors)} of {count} sends failed; first: {errors[0]}")
            return list((await read_finished(http, list(ids), 30.0, 0.05)).values())

        await batch(CALIBRATION_WARMUP)             # warms the daemon up; not measured
        docs = await batch(n)
        spans: list[float] = []
        for doc in docs:
            for a in doc["attempts"]:
                started, ended = _ts(a["started_at"]), _ts(a["ended_at"])
                if a["outcome"] == "delivered" and started is not None and ended is not None:
                    spans.append(ended - started - CALIBRATION_LATENCY_MS / 1000.0)
    return spans
