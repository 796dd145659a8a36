"""The largest plan one send may build at the default [daemon] limits, through the engine.

Subject: an `all` route of max_plan_channels channels, each an `all` channel of
max_channel_providers providers that never answer, with retries: every engine call (start,
each timer: attempt timeouts, back-offs, retries, the message deadline cutting every live
attempt) is timed and the longest one counts, since the daemon's event loop runs each call
whole. Baseline: one simple message (one channel, one provider) routed start to delivery.
The ratio says how many simple messages' worth of work the worst single step of the worst
plan costs; it must stay small, so one hostile send cannot stall the loop (docs/security.md).

    .venv/bin/python benchmarks/bench_worst_plan.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchResult, header, ratio  # noqa: E402

from routingd.daemon.core import core_build  # noqa: E402
from routingd.daemon.core.engine import Delivery, Outcome, StartAttempt  # noqa: E402
from routingd.daemon.core.plan import resolve_plan  # noqa: E402
from routingd.daemon.core.policy import DaemonSection, parse_policy  # noqa: E402

TARGET = 100.0          # worst step <= 100 simple messages routed whole


def worst_policy() -> str:
    d = DaemonSection()
    n_ch, n_pr = d.max_plan_channels, d.max_channel_providers
    src = ["version = 1"]
    for i in range(n_pr):
        src += [f"[providers.p{i}]", "type = 'sandbox'", "timeout = '1s'", "retries = 5",
                "breaker = false", "backoff = { base = '10ms', max = '50ms' }"]
    plist = ", ".join(f"'p{i}'" for i in range(n_pr))
    for j in range(n_ch):
        src += [f"[channels.c{j}]", f"providers = [{plist}]", "method = 'all'", "timeout = '20s'"]
    src += ["[timeouts]", "message = '4s'", "[routes.default]", "method = 'all'",
            "channels = [" + ", ".join(f"'c{j}'" for j in range(n_ch)) + "]"]
    return "\n".join(src) + "\n"


def simple_message_s(repeat: int = 2000) -> float:
    pol = parse_policy("version = 1\n[providers.p]\ntype = 'sandbox'\n[channels.c]\nproviders = ['p']\n"
                       "[routes.default]\nchannels = ['c']\n", env={})
    plan = resolve_plan(pol)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for k in range(repeat):
            d = Delivery(f"m{k}", plan, {}, 0.0, random.Random(k))
            a = next(c for c in d.start(0.0) if isinstance(c, StartAttempt))
            d.on_outcome(a.attempt_id, Outcome(status=200), 0.01)
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def worst_step_s() -> tuple[float, int, int]:
    plan = resolve_plan(parse_policy(worst_policy(), env={}))
    worst, steps = 0.0, 0
    d = Delivery("worst", plan, {}, 0.0, random.Random(1))
    t0 = time.perf_counter()
    d.start(0.0)
    worst = time.perf_counter() - t0
    for _ in range(1_000_000):
        if d.terminal:
            break
        now = d.next_wakeup
        assert now is not None
        t0 = time.perf_counter()
        d.on_timer(now)
        worst = max(worst, time.perf_counter() - t0)
        steps += 1
    assert d.status == "expired", d.status
    return worst, steps, len(d.attempts)


def run() -> BenchResult:
    header("worst allowed plan: the longest engine step")
    res = BenchResult("worst_plan")
    t_start = time.monotonic()
    d = DaemonSection()
    base = simple_message_s()
    worst, steps, attempts = min(worst_step_s() for _ in range(3))
    res.say(f"engine: {core_build()}")
    res.say(f"baseline one simple message routed:  {base * 1e6:8.1f} us")
    res.say(f"worst plan ({d.max_plan_channels} channels x {d.max_channel_providers} providers, all/all): "
            f"{attempts} attempts over {steps} timer steps; longest step {worst * 1e3:.2f} ms")
    r_ = ratio(worst, base)
    res.figures.update({"baseline_us": base * 1e6, "worst_step_ms": worst * 1e3, "steps": steps,
                        "attempts": attempts, "ratio": r_, "core": core_build()})
    res.check("worst step / one simple message", r_, TARGET, at_least=False)
    res.wall_s = time.monotonic() - t_start
    return res


if __name__ == "__main__":
    raise SystemExit(0 if run().ok else 1)
