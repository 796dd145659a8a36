"""`routingd simulate SCENARIO --live [--speed N]`: the scenario simulated and against a real daemon.

docs/simulator.md "Simulated vs live" describes what this does and what the two runs differ in.

1. **Scale** (`scaled_scenario`): every duration of the scenario and of its routing file is divided by
   `--speed` (whole milliseconds, at least 1 ms), rates are multiplied by it.
2. **One routing file for both runs** (`live_routing`): the scenario's routing file with every
   provider replaced by a `sandbox` provider carrying the behaviour the scenario gives it (so the
   simulated run, which reads sandbox behaviour from the routing file, and the daemon's sandbox
   adapters draw from the very same model and numbers), keeping its timeout, retries, confirm,
   breaker and back-off.
3. **The simulated run** is the ordinary runner on that file.
4. **The live run** starts `routingd serve` on a free loopback port with its own temporary state
   directory, sends the scenario's traffic (the same seeded arrivals, route mix and recipients
   as the simulator's traffic stream) over HTTP; the scenario's outages are the sandboxes' own
   `outages` (loaded once before the traffic, `with_timeline`), which the daemon switches on and
   off at their wall-clock instants itself; then it reads every message's
   final status and attempts back from GET /v1/messages/{id} into the simulator's Metrics, so
   that report.py builds the same report.
5. **Compare** (simulator/live_compare.py, which also holds the `--live` command): each figure
   side by side with its difference; `--check` fails on a ratio more than 5% apart, or a time
   more than max(5%, 50 ms) apart.

This module is the live run (4.); the scaling and the routing file (1., 2.) are live_routing.py's,
starting and stopping the daemon live_daemon.py's, the commit-delay calibration
live_calibrate.py's, the comparison and the command (5.) live_compare.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import tempfile
import time
from bisect import bisect_right
from collections import Counter
from itertools import accumulate
from typing import Any, Callable, TextIO

from ..daemon.core.behaviour import OUTAGE_PARAMS
from ..daemon.core.engine import Event

from .live_calibrate import calibrate, commit_delay_of
from .live_daemon import LiveError, _Daemon, _ts, read_finished
from .live_routing import Prepared, live_routing, prepare_live, scaled_scenario, to_toml
from .metrics import OUTCOME_CODE, RUNNING, Metrics
from .trace import attempt_code
from .runner import STANDARD_FIELDS, RunResult, outage_windows
from .setup import RunSetup

# the routing file, the daemon and the calibration are modules of their own; their names stay
# importable from here (live_compare.py, the tests)
__all__ = ["LiveError", "LiveRoutingHook", "Prepared", "calibrate", "commit_delay_of", "live_routing",
           "prepare_live", "run_live", "scaled_scenario", "to_toml"]

LATE_SLACK_S = 0.010            # an attempt that ended this much past its deadline: a late timer
ARM_LEAD_S = 1.0                # the outage timeline is loaded this long before scenario time 0

# a hook for tests: a function(routing_dict) -> routing_dict applied to the live side only, to
# prove that the comparison fails when the two runs really differ
LiveRoutingHook = Callable[[dict[str, Any]], dict[str, Any]]


# ------------------------------------------------------------------------------ the live run


def with_timeline(routing: dict[str, Any], setup: RunSetup, t0: float) -> dict[str, Any]:
    """The routing file with the scenario's outages as its sandboxes' own `outages`, scenario
    time 0 at wall-clock `t0`: the daemon switches each at its instant itself, with no reload at
    the switch (one would block its event loop then, hold back the sends and reach only messages
    accepted after it; docs/simulator.md "Where they differ")."""
    doc = json.loads(json.dumps(routing))
    fields = {f: p for p, (_, f) in OUTAGE_PARAMS.items()}
    for o in setup.outages:
        entry: dict[str, Any] = {"start": dt.datetime.fromtimestamp(t0 + o.start_s, tz=dt.timezone.utc),
                                 "duration": int(round((o.end_s - o.start_s) * 1000.0)), "kind": o.kind}
        entry.update({fields[k]: v for k, v in o.update.items()})
        doc["providers"][o.provider].setdefault("outages", []).append(entry)
    return doc


async def _arm(http: Any, setup: RunSetup, routing: dict[str, Any], live_path: str) -> float:
    """Load the outage timeline into the daemon ahead of the traffic (one reload while nothing
    is in flight); returns the wall-clock instant of scenario time 0, ARM_LEAD_S ahead."""
    for _ in range(3):
        t0 = time.time() + ARM_LEAD_S
        tmp = live_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(to_toml(with_timeline(routing, setup, t0)))
        os.replace(tmp, live_path)
        async with http.post("/-/reload") as r:
            if r.status != 200:
                raise LiveError(f"POST /-/reload answered {r.status}: {await r.text()}")
        if time.time() < t0 - 0.05:
            return t0
    raise LiveError(f"the daemon took more than {ARM_LEAD_S:g}s to load the outage timeline, three times")


@dataclasses.dataclass
class _LiveChecker:
    """The live run's stand-in for the simulator's hierarchy checker: from the status endpoint
    alone it can see one kind of violation, an attempt that ended after its own deadline (a
    timer that fired late), beyond LATE_SLACK_S plus the timestamps' millisecond rounding."""

    counts: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def _live_run(prep: Prepared, daemon: _Daemon, routing: dict[str, Any], live_path: str) -> RunResult:
    import aiohttp

    setup = prep.setup
    sc = setup.scenario.model
    seed = setup.seed
    duration = sc.duration / 1000.0
    traffic = random.Random(f"{seed}:traffic")           # the simulator's traffic stream, drawn alike
    next_gap = sc.traffic.gaps(traffic)
    routes = [r for r, _ in setup.route_mix]
    cum = list(accumulate(w for _, w in setup.route_mix))
    shares = sorted((f, s) for f, s in sc.traffic.recipients.items() if s < 1.0)
    fields = tuple(dict.fromkeys((*STANDARD_FIELDS, *sorted(sc.traffic.recipients))))
    arrivals: list[tuple[float, str, dict[str, str]]] = []
    t = next_gap(0.0)
    while t < duration:
        k = 0 if len(cum) == 1 else min(bisect_right(cum, traffic.random()), len(cum) - 1)
        absent = {f for f, s in shares if traffic.random() >= s} if shares else set()
        to = {f: (f"sim-{len(arrivals)}@example.com" if f == "email" else f"sim-{f}") for f in fields if f not in absent}
        arrivals.append((t, routes[k], to))
        t += next_gap(t)

    ids: list[str | None] = [None] * len(arrivals)
    send_errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(daemon.url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def send(i: int, route: str, to: dict[str, str]) -> None:
            body = {"message": {"to": to, "route": route, "content": {"title": "drill", "body": "drill"}}}
            try:
                async with http.post("/v1/send", json=body) as r:
                    doc = await r.json(content_type=None)
                    if r.status == 202:
                        ids[i] = doc["message_id"]
                    else:
                        send_errors.append(f"POST /v1/send: {r.status} {doc}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                send_errors.append(f"POST /v1/send: {type(e).__name__}: {e}")

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        t0 = await _arm(http, setup, routing, live_path)
        t0_loop = loop.time() + (t0 - time.time())
        for i, (at, route, to) in enumerate(arrivals):
            delay = t0_loop + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(send(i, route, to)))
        if tasks:
            await asyncio.wait(tasks)
        if send_errors:
            raise LiveError(f"{len(send_errors)} of {len(arrivals)} sends failed; first: {send_errors[0]}")

        # every message's final status: poll until all are terminal, bounded by the longest
        # message timeout after the last accept
        longest = max(p.message_timeout_ms for p in setup.plans.values()) / 1000.0 if setup.plans else 60.0
        found = await read_finished(http, [mid for mid in ids if mid is not None], longest + 30.0,
                                    min(0.2, max(0.01, duration / 100)))
        docs = {i: found[mid] for i, mid in enumerate(ids) if mid is not None and mid in found}
    return _result(prep, arrivals, ids, docs, t0, time.time() - t0)


def _result(prep: Prepared, arrivals: list[tuple[float, str, dict[str, str]]], ids: list[str | None],
            docs: dict[int, dict[str, Any]], t0: float, wall_s: float) -> RunResult:
    """The live run's messages, read back from the status endpoint, as the simulator's Metrics."""
    setup = prep.setup
    metrics = Metrics(list(setup.specs), outage_windows(setup))
    checker = _LiveChecker()
    end = 0.0
    pending = 0
    for i, (at, route, _) in enumerate(arrivals):
        doc = docs.get(i)
        accepted = _ts(doc["accepted_at"]) - t0 if doc else at      # type: ignore[operator]
        metrics.accept(i, accepted, route)
        if doc is None:
            pending += 1
            continue
        for a in doc["attempts"]:
            started = _ts(a["started_at"])
            ended = _ts(a["ended_at"])
            deadline = _ts(a["deadline"])
            code = attempt_code(a["outcome"], a.get("detail")) if a["outcome"] in OUTCOME_CODE else RUNNING
            metrics.record_attempt(i, a["provider"], (started or t0) - t0, code)
            st = metrics.stats[a["provider"]]
            st.attempts += 1
            outcome = a["outcome"]
            if outcome == "delivered":
                st.delivered += 1
            elif outcome == "timeout":
                st.timeouts += 1
            elif outcome == "cancelled":
                st.cancelled += 1
            elif outcome is not None:
                st.failed += 1
                st.throttled += a.get("status_code") == 429
            if ended is not None and deadline is not None and ended > deadline + LATE_SLACK_S + 0.002:
                checker.counts["attempt_ended_late"] += 1
        for e in doc["events"]:
            if e["type"] in ("attempt_ended",):
                continue        # read off the attempts above
            data = {k: v for k, v in e.items() if k not in ("type", "at")}
            metrics.event(i, Event(e["type"], (_ts(e["at"]) or t0) - t0, data))
        finished = _ts(doc["finished_at"])
        delivered = _ts(doc["delivered_at"])
        metrics.finish_message(i, doc["status"], None if delivered is None else delivered - t0)
        if finished is not None:
            end = max(end, finished - t0)
    metrics.close()
    live_setup = dataclasses.replace(setup, routing_path=f"live: {os.path.basename(setup.routing_path)}")
    return RunResult(live_setup, metrics, checker, pending, end, wall_s)  # type: ignore[arg-type]


def run_live(prep: Prepared, stderr: TextIO | None = None, live_hook: LiveRoutingHook | None = None,
             keep: str | None = None) -> RunResult:
    """The live run of a prepared scenario (a daemon started and stopped here)."""
    workdir = tempfile.mkdtemp(prefix="routingd-live-")
    try:
        routing = prep.routing if live_hook is None else live_hook(json.loads(json.dumps(prep.routing)))
        live_path = os.path.join(workdir, "routing.toml")
        with open(live_path, "w") as f:
            f.write(to_toml(routing))
        daemon = _Daemon(workdir, live_path)
        try:
            daemon.start()
            return asyncio.run(_live_run(prep, daemon, routing, live_path))
        finally:
            daemon.stop()
            if keep:
                shutil.copy(daemon.log_path, keep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

