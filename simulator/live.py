"""`routingd simulate SCENARIO --live [--speed N]`: the scenario simulated and against a real daemon.

docs/simulator.md "Simulated vs live" describes what this does and what the two runs differ in.

1. **Scale** (`scaled`): every duration of the scenario and of its routing file is divided by
   `--speed` (whole milliseconds, at least 1 ms), rates are multiplied by it.
2. **One routing file for both runs** (`live_routing`): the scenario's routing file with every
   provider replaced by a `sandbox` provider carrying the behaviour the scenario gives it (so the
   simulated run, which reads sandbox behaviour from the routing file, and the daemon's sandbox
   adapters draw from the very same model and numbers), keeping its timeout, retries, confirm,
   breaker and back-off.
3. **The simulated run** is the ordinary runner on that file.
4. **The live run** starts `routingd serve` on a free loopback port with its own temporary state
   directory, sends the scenario's traffic (the same seeded arrivals, route mix and recipients
   as the simulator's traffic stream) over HTTP, switches each outage on and off at its time by
   rewriting the file's sandbox `fail` mode and POSTing /-/reload, then reads every message's
   final status and attempts back from GET /v1/messages/{id} into the simulator's Metrics, so
   that report.py builds the same report.
5. **Compare** (simulator/live_compare.py, which also holds the `--live` command): each figure
   side by side with its difference; `--check` fails on a ratio more than 5% apart, or a time
   more than max(5%, 50 ms) apart.

This module drives the daemon; the comparison and the command are in live_compare.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections import Counter
from datetime import datetime
from itertools import accumulate
from typing import Any, Callable, Sequence, TextIO

from ..daemon.core.behaviour import BehaviourSpec, LatencyDist
from ..daemon.core.engine import Event
from ..daemon.config_files import load_policy
from ..daemon.core.policy import Policy, PolicyError, Problem
from ..daemon.secrets import read_secret

from .metrics import OUTCOME_CODE, Metrics, percentile
from .runner import STANDARD_FIELDS, RunResult, outage_windows
from .scenario import Scenario
from .setup import RunSetup, bind_scenario

STARTUP_RE = re.compile(r"listening on (http://\S+)")
TERMINAL = ("delivered", "undeliverable", "expired")
LATE_SLACK_S = 0.010            # an attempt that ended this much past its deadline: a late timer

# a hook for tests: a function(routing_dict) -> routing_dict applied to the live side only, to
# prove that the comparison fails when the two runs really differ
LiveRoutingHook = Callable[[dict[str, Any]], dict[str, Any]]


class LiveError(Exception):
    """The live run could not be made (the daemon did not start, a send was refused, ...)."""


# ------------------------------------------------------------------------------ scaling


def _ms(v: int | None, speed: float) -> int | None:
    if v is None:
        return None
    return 0 if v == 0 else max(1, int(round(v / speed)))


def scaled_scenario(sc: Scenario, speed: float, routing_path: str) -> Scenario:
    """The scenario with its durations divided and its rate multiplied by `speed`; its provider
    behaviour moves into the generated routing file (see live_routing), so none is left here."""
    m = sc.model
    outages = [o.model_copy(update={"start": _ms(o.start, speed), "duration": _ms(o.duration, speed),
                                    "retry_after": _ms(o.retry_after, speed)}) for o in m.outages]
    ex = m.expect
    expect = ex.model_copy(update={k: _ms(getattr(ex, k), speed) for k in
                                   ("p50_time_to_deliver", "p95_time_to_deliver", "p99_time_to_deliver",
                                    "max_time_to_deliver", "time_to_route_around")})
    model = m.model_copy(update={"duration": _ms(m.duration, speed), "outages": outages, "expect": expect,
                                 "traffic": m.traffic.model_copy(update={"rate": float(m.traffic.rate) * speed, "bursts": [
                                     b.model_copy(update={"start": _ms(b.start, speed), "duration": _ms(b.duration, speed),
                                                          "rate": None if b.rate is None else float(b.rate) * speed})
                                     for b in m.traffic.bursts]}),
                                 "providers": {}, "routing": routing_path})
    return dataclasses.replace(sc, model=model, routing_path=routing_path, provider_overrides={})


def _timeouts(t: Any, speed: float) -> dict[str, Any]:
    return {k: _ms(getattr(t, k), speed) for k in ("provider", "channel", "message") if getattr(t, k) is not None}


def _behaviour(spec: BehaviourSpec, speed: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "latency": {"median": _ms(spec.latency.median, speed), "p99": _ms(spec.latency.p99, speed)},
        "error_rate": spec.error_rate,
        "receipt_delay": {"median": _ms(spec.receipt_delay.median, speed), "p99": _ms(spec.receipt_delay.p99, speed)},
        "slow_factor": spec.slow_factor,
        "flaky_error_rate": spec.flaky_error_rate,
        "throttle_retry_after": _ms(spec.throttle_retry_after, speed),
    }
    if spec.rate_limit is not None:
        out["rate_limit"] = spec.rate_limit * speed
    return out


def _route_items(items: Sequence[Any]) -> list[Any]:
    return [i if isinstance(i, str) else {"method": i.method, "channels": _route_items(i.channels)} for i in items]


def live_routing(policy: Policy, setup: RunSetup, speed: float) -> dict[str, Any]:
    """The routing file both runs use, as a dict: `policy` scaled by `speed`, every provider a
    sandbox with the behaviour `setup` gives it (scenario over routing file) and its base fail mode."""
    pm = policy.model
    doc: dict[str, Any] = {"version": 1, "daemon": {"watch": False}}
    doc["timeouts"] = _timeouts(pm.timeouts, speed)
    doc["failover"] = {"on": list(pm.failover.on)}
    providers: dict[str, Any] = {}
    for name, cfg in pm.providers.items():
        p: dict[str, Any] = {"type": "sandbox", "retries": cfg.retries, "confirm": cfg.confirm,
                             "receipt_timeout": _ms(cfg.receipt_timeout, speed)}
        if cfg.timeout is not None:
            p["timeout"] = _ms(cfg.timeout, speed)
        if cfg.breaker is False:
            p["breaker"] = False
        else:
            b: dict[str, Any] = {"failures": cfg.breaker.failures, "cooldown": _ms(cfg.breaker.cooldown, speed)}
            if cfg.breaker.slow is False:
                b["slow"] = False           # off stays off (unset: half the scaled timeout, as the daemon computes)
            elif cfg.breaker.slow is not None:
                b["slow"] = _ms(cfg.breaker.slow, speed)
            p["breaker"] = b
        p["backoff"] = {"base": _ms(cfg.backoff.base, speed), "max": _ms(cfg.backoff.max, speed)}
        p.update(_behaviour(setup.specs[name], speed))
        p["fail"] = setup.base_fail.get(name, "none")
        providers[name] = p
    doc["providers"] = providers
    channels: dict[str, Any] = {}
    for name, ch in pm.channels.items():
        c: dict[str, Any] = {"providers": list(ch.providers), "method": ch.method}
        if ch.timeout is not None:
            c["timeout"] = _ms(ch.timeout, speed)
        if ch.requires is not None:
            c["requires"] = ch.requires
        channels[name] = c
    doc["channels"] = channels
    doc["routes"] = {name: {"method": r.method, "channels": _route_items(r.channels),
                            "timeouts": _timeouts(r.timeouts, speed)} for name, r in pm.routes.items()}
    return doc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """A routing dict as TOML: top-level scalars, then one table per section (per name for
    providers, channels, routes), values inline."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, body in doc.items():
        if not isinstance(body, dict):
            continue
        if section in ("providers", "channels", "routes"):
            for name, table in body.items():
                lines.append(f"\n[{section}.{_toml_key(name)}]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
        else:
            lines.append(f"\n[{section}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Prepared:
    """A scenario made ready for both runs."""

    setup: RunSetup                 # the simulated run's (scaled, on the generated routing file)
    routing: dict[str, Any]         # the generated routing file, as a dict
    routing_path: str
    speed: float


def prepare_live(sc: Scenario, policy: Policy, workdir: str, speed: float, seed: int | None) -> Prepared:
    """Bind the scenario to its routing file, generate the scaled sandbox routing file in
    `workdir`, and bind the scaled scenario to that (raises PolicyError naming the scenario)."""
    if not speed > 0:
        raise PolicyError(sc.path, [Problem(("--speed",), f"must be greater than 0, got {speed}")])
    if sc.model.traffic.cancel:     # refused rather than run without the cancels the file asks for
        raise PolicyError(sc.path, [Problem(("traffic", "cancel"), "--live does not send cancels yet; "
                                            "simulate this scenario without --live, or set cancel = 0")])
    first = bind_scenario(sc, policy, policy.path, seed)
    doc = live_routing(policy, first, speed)
    path = os.path.join(workdir, "routing.toml")
    with open(path, "w") as f:
        f.write(to_toml(doc))
    scaled = scaled_scenario(sc, speed, path)
    setup = bind_scenario(scaled, load_policy(path, secrets=read_secret), path, seed)
    return Prepared(setup, doc, path, speed)


# ------------------------------------------------------------------------------ the live run


def _ts(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _modes_at(setup: RunSetup, t: float) -> dict[str, tuple[str, BehaviourSpec]]:
    """Per provider with an outage: the fail mode and behaviour in force at scenario time `t`
    (the latest-starting active outage wins, as in simulator/providers.py)."""
    providers = setup.providers()
    return {o.provider: providers[o.provider].mode_at(t) for o in setup.outages}


class _Daemon:
    """`routingd serve` on a free loopback port with its own state directory."""

    def __init__(self, workdir: str, config: str) -> None:
        self.workdir = workdir
        self.config = config
        self.log_path = os.path.join(workdir, "routingd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "routingd.daemon.cli", "serve", "--config", self.config,
               "--listen", "127.0.0.1:0", "--state", os.path.join(self.workdir, "state.db"), "--log-level", "WARNING"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.url:
            m = STARTUP_RE.search(self.log())
            if m:
                self.url = m.group(1).rstrip("/")
            elif self.proc.poll() is not None:
                raise LiveError(f"routingd exited with {self.proc.returncode} before listening:\n{self.log()[-2000:]}")
            elif time.monotonic() > deadline:
                raise LiveError(f"routingd printed no startup line within {timeout:g}s:\n{self.log()[-2000:]}")
            else:
                time.sleep(0.02)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5.0)


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

    boundaries = sorted({x for o in setup.outages for x in (o.start_s, o.end_s) if x < duration})
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

        async def switch(at: float) -> None:
            doc = json.loads(json.dumps(routing))
            for provider, (fail, spec) in _modes_at(setup, at).items():
                doc["providers"][provider].update(_behaviour(spec, 1.0))   # already scaled
                doc["providers"][provider]["fail"] = fail
            tmp = live_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(to_toml(doc))
            os.replace(tmp, live_path)
            async with http.post("/-/reload") as r:
                if r.status != 200:
                    raise LiveError(f"POST /-/reload answered {r.status}: {await r.text()}")

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        t0_loop = loop.time()
        t0 = time.time()
        events: list[tuple[float, int, Any]] = [(a[0], 1, i) for i, a in enumerate(arrivals)]
        events += [(b, 0, -1) for b in boundaries]       # a switch before an arrival at the same time
        events.sort()
        for at, kind, i in events:
            delay = t0_loop + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == 0:
                await switch(at)
            else:
                _, route, to = arrivals[i]
                tasks.append(loop.create_task(send(i, route, to)))
        if tasks:
            await asyncio.wait(tasks)
        if send_errors:
            raise LiveError(f"{len(send_errors)} of {len(arrivals)} sends failed; first: {send_errors[0]}")

        # every message's final status: poll until all are terminal, bounded by the longest
        # message timeout after the last accept
        longest = max(p.message_timeout_ms for p in setup.plans.values()) / 1000.0 if setup.plans else 60.0
        deadline = loop.time() + longest + 30.0
        docs: dict[int, dict[str, Any]] = {}
        sem = asyncio.Semaphore(32)

        async def fetch(i: int, mid: str) -> None:
            async with sem:
                async with http.get(f"/v1/messages/{mid}") as r:
                    if r.status == 200:
                        doc = await r.json()
                        if doc["status"] in TERMINAL:
                            docs[i] = doc

        while True:
            todo = [(i, mid) for i, mid in enumerate(ids) if mid is not None and i not in docs]
            if not todo:
                break
            await asyncio.gather(*(fetch(i, mid) for i, mid in todo))
            if len(docs) == len(ids):
                break
            if loop.time() > deadline:
                break
            await asyncio.sleep(min(0.2, max(0.01, duration / 100)))
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
            code = OUTCOME_CODE.get(a["outcome"] or "", 0)
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


# ------------------------------------------------------------------------------ the calibration

CALIBRATION_LATENCY_MS = 1      # the probe provider's constant latency
CALIBRATION_MESSAGES = 300      # at most this many probe messages ...
CALIBRATION_SECONDS = 2.0       # ... sent over at most this long, at the scenario's rate


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
        t0 = loop.time()
        tasks = []
        for i in range(n):
            delay = t0 + i * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(send(i)))
        await asyncio.wait(tasks)
        if errors:
            raise LiveError(f"calibration: {len(errors)} of {n} sends failed; first: {errors[0]}")
        spans: list[float] = []
        deadline = loop.time() + 30.0
        todo = list(ids)
        while todo and loop.time() < deadline:
            left = []
            for mid in todo:
                async with http.get(f"/v1/messages/{mid}") as r:
                    doc = await r.json()
                if doc.get("status") not in TERMINAL:
                    left.append(mid)
                    continue
                for a in doc["attempts"]:
                    started, ended = _ts(a["started_at"]), _ts(a["ended_at"])
                    if a["outcome"] == "delivered" and started is not None and ended is not None:
                        spans.append(ended - started - CALIBRATION_LATENCY_MS / 1000.0)
            todo = left
            if todo:
                await asyncio.sleep(0.05)
    return spans
