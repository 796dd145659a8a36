"""Memory: the daemon's RSS with N pending messages (default 100k) vs the idle daemon's RSS.

`routingd serve` with one sandbox provider that hangs (fail = "hang") and long timeouts
(attempt 10m, channel 10m, message 1h), [daemon] max_inflight raised above N: every accepted
message stays in flight with its live attempt (an asyncio task), its timer and its engine state.
wrk posts /v1/send until routingd_messages_inflight reaches N (bounded by --timeout), then the
RSS (/proc/PID/status VmRSS, and the peak VmHWM) is compared with the RSS of the same daemon
idle after start-up: per-message bytes = (RSS loaded - RSS idle) / messages pending.
No target: informational (the design names none).
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from common import (BenchResult, WrkSettings, header, mib, proc_status_kib, send_body, start_daemon, start_wrk)

CONFIG = """\
# benchmarks/bench_memory.py: a provider that never answers, so every message stays pending
version = 1

[daemon]
max_inflight = {limit}

[timeouts]
provider = "10m"
channel = "10m"
message = "1h"

[providers.stuck]
type = "sandbox"
fail = "hang"
breaker = false

[channels.email]
providers = ["stuck"]
requires = "email"

[routes.default]
channels = ["email"]
"""


def run(messages: int = 100_000, timeout_s: float = 240.0, workdir: Path | None = None) -> BenchResult:
    header(f"memory: RSS with {messages} pending messages (hanging sandbox provider) vs idle")
    res = BenchResult("memory")
    t0 = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="routingd-bench-memory-"))
    d = start_daemon(work / "daemon", CONFIG.format(limit=messages * 2))
    try:
        time.sleep(0.5)
        idle_kib = proc_status_kib(d.pid, "VmRSS")
        wrk = start_wrk(d.url + "/v1/send", WrkSettings(1, 32, int(timeout_s) + 5, 30), send_body(),
                        work / "wrk-memory.txt")
        pending = 0.0
        t_load = time.monotonic()
        try:
            while time.monotonic() - t_load < timeout_s:
                pending = d.metric("routingd_messages_inflight") or 0.0
                if pending >= messages or wrk.poll() is not None:
                    break
                time.sleep(0.25)
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)
            try:
                wrk.wait(30)
            except Exception:  # noqa: BLE001 - never leave it running
                wrk.kill()
                wrk.wait(10)
        load_s = time.monotonic() - t_load
        time.sleep(1.0)                   # let the last commits and attempt starts settle
        pending = d.metric("routingd_messages_inflight") or 0.0
        loaded_kib = proc_status_kib(d.pid, "VmRSS")
        hwm_kib = proc_status_kib(d.pid, "VmHWM")
        ready = d.get("/readyz", timeout=10).status
    finally:
        d.close()                         # SIGKILL: the pending messages are not needed any more
    per_msg = None
    if idle_kib is not None and loaded_kib is not None and pending:
        per_msg = (loaded_kib - idle_kib) * 1024 / pending
    res.say(f"idle daemon:      RSS {mib(idle_kib)}")
    res.say(f"{pending:7.0f} pending: RSS {mib(loaded_kib)} (peak {mib(hwm_kib)}), loaded in {load_s:.1f}s "
            f"({pending / load_s if load_s else 0:.0f} msg/s); /readyz {ready}")
    res.say(f"per pending message: {per_msg:.0f} bytes" if per_msg is not None else "per pending message: -")
    if pending < messages:
        res.say(f"(only {pending:.0f} of {messages} messages were pending within {timeout_s:.0f}s)")
    res.figures.update({"messages_wanted": messages, "pending": pending, "rss_idle_kib": idle_kib,
                        "rss_loaded_kib": loaded_kib, "rss_peak_kib": hwm_kib,
                        "bytes_per_pending_message": None if per_msg is None else round(per_msg),
                        "load_s": round(load_s, 1)})
    res.check("RSS loaded / idle", loaded_kib / idle_kib if idle_kib and loaded_kib else None, None)
    res.wall_s = time.monotonic() - t0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=100_000, help="pending messages to reach (default 100000)")
    p.add_argument("--timeout", type=float, default=240.0, help="give up loading after this many seconds")
    a = p.parse_args()
    return 0 if run(a.messages, a.timeout).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
