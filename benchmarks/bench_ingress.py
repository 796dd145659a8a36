"""Ingress / end-to-end: POST /v1/send on `routingd serve` vs a bare aiohttp handler, same wrk.

Subject: `routingd serve` with one fast sandbox provider (latency 1ms, error_rate 0). Counted
are only messages that were accepted (202, durably stored) AND finished: after wrk stops, the
benchmark waits (bounded) for routingd_messages_inflight to reach 0, and the sustained rate is
finished messages / (wrk's duration + that drain time).
Baseline: benchmarks/bare_server.py (parses the same JSON, answers 202), same wrk settings.
Baseline and subject alternate for --rounds rounds (a fresh daemon each); the best round of each
side counts, so a burst of load from elsewhere on the machine hurts neither verdict.
Target: sustained rate >= 0.25 x the bare handler's rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (BENCH, BenchResult, Helper, WrkResult, WrkSettings, finished_counts, header, mib, ms,
                    proc_status_kib, ratio, run_wrk, send_body, start_daemon, wait_drained, wrk_arguments, wrk_settings)

TARGET = 0.25
DRAIN_TIMEOUT_S = 60.0

CONFIG = """\
# benchmarks/bench_ingress.py: one fast in-process provider, so the daemon itself is measured
version = 1

[daemon]
max_inflight = 1000000

[timeouts]
provider = "5s"
channel = "10s"
message = "1m"

[providers.fast]
type = "sandbox"
latency = "1ms"
error_rate = 0

[channels.email]
providers = ["fast"]
requires = "email"

[routes.default]
channels = ["email"]
"""


def _daemon_round(settings: WrkSettings, work: Path, body: str) -> dict[str, Any]:
    d = start_daemon(work, CONFIG)
    try:
        idle_kib = proc_status_kib(d.pid, "VmRSS")
        sub = run_wrk(d.url + "/v1/send", settings, body, work / "wrk-routingd.txt")
        drained, drain_s = wait_drained(d, DRAIN_TIMEOUT_S)
        counts = finished_counts(d)
        hwm_kib = proc_status_kib(d.pid, "VmHWM")
        rss_kib = proc_status_kib(d.pid, "VmRSS")
    finally:
        rc = d.stop(timeout=30) if d.running else None
        d.close()
    finished = counts["delivered"] + counts["undeliverable"] + counts["expired"]
    counted = min(sub.accepted, counts["accepted"], finished)
    elapsed = sub.duration_s + drain_s
    return {"wrk": sub, "drained": drained, "drain_s": drain_s, "counts": counts, "counted": counted,
            "sustained": counted / elapsed if elapsed else 0.0, "idle_kib": idle_kib, "hwm_kib": hwm_kib,
            "rss_kib": rss_kib, "rc": rc}


def run(settings: WrkSettings, rounds: int = 2, workdir: Path | None = None) -> BenchResult:
    header(f"ingress/end-to-end: POST /v1/send, {settings.describe()}, best of {rounds} alternating rounds")
    res = BenchResult("ingress")
    t0 = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="routingd-bench-ingress-"))
    body = send_body()
    bases: list[WrkResult] = []
    subs: list[dict[str, Any]] = []
    for i in range(max(1, rounds)):
        with Helper([str(BENCH / "bare_server.py")], work, f"bare-server-{i}") as bare:
            bases.append(run_wrk(bare.url + "/v1/send", settings, body, work / f"wrk-bare-{i}.txt"))
        subs.append(_daemon_round(settings, work / f"daemon-{i}", body))
        b, s = bases[-1], subs[-1]
        res.say(f"round {i + 1}: bare {b.accepted_per_s:.0f} req/s, routingd end-to-end {s['sustained']:.0f} msg/s")
    base = max(bases, key=lambda b: b.accepted_per_s)
    best = max(subs, key=lambda s: s["sustained"] if s["drained"] else -1.0)
    sub: WrkResult = best["wrk"]
    counts, drain_s, drained, sustained = best["counts"], best["drain_s"], best["drained"], best["sustained"]
    hwm_kib = max((s["hwm_kib"] or 0) for s in subs) or None
    res.say(f"baseline bare aiohttp: {base.accepted_per_s:8.0f} req/s  202s {base.accepted}, other {base.other}, "
            f"errors {base.errors}; latency p50 {ms(base.p50_s)} p99 {ms(base.p99_s)}")
    res.say(f"routingd ingress:      {sub.accepted_per_s:8.0f} req/s  202s {sub.accepted}, other {sub.other}, "
            f"errors {sub.errors}; accept latency p50 {ms(sub.p50_s)} p99 {ms(sub.p99_s)} "
            f"(max {ms(sub.max_s)})")
    res.say(f"routingd end-to-end:   {sustained:8.0f} msg/s  accepted+finished {best['counted']:.0f} "
            f"(delivered {counts['delivered']:.0f}, undeliverable {counts['undeliverable']:.0f}, expired "
            f"{counts['expired']:.0f}) in {sub.duration_s:.1f}s load + {drain_s:.2f}s drain"
            + ("" if drained else f" -- NOT drained within {DRAIN_TIMEOUT_S:.0f}s"))
    res.say(f"routingd RSS: idle {mib(best['idle_kib'])}, after the run {mib(best['rss_kib'])}, peak (VmHWM, "
            f"all rounds) {mib(hwm_kib)}; exit code {best['rc']}")
    r = ratio(sustained, base.accepted_per_s)
    res.figures.update({
        "wrk": settings.describe(), "rounds": rounds,
        "baseline_req_per_s": round(base.accepted_per_s, 1),
        "baseline_p50_ms": round(base.p50_s * 1000, 3), "baseline_p99_ms": round(base.p99_s * 1000, 3),
        "routingd_ingress_req_per_s": round(sub.accepted_per_s, 1),
        "routingd_end_to_end_msg_per_s": round(sustained, 1),
        "routingd_accept_p50_ms": round(sub.p50_s * 1000, 3), "routingd_accept_p99_ms": round(sub.p99_s * 1000, 3),
        "drain_s": round(drain_s, 3), "drained": drained, "counted": best["counted"],
        "non_202": sub.other, "wrk_errors": sub.errors,
        "rss_idle_kib": best["idle_kib"], "rss_peak_kib": hwm_kib, "ratio": r,
    })
    res.check("end-to-end / bare handler", r if drained else 0.0, TARGET)
    res.wall_s = time.monotonic() - t0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    wrk_arguments(p)
    a = p.parse_args()
    return 0 if run(wrk_settings(a), a.rounds).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
