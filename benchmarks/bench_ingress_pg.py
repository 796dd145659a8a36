"""Ingress / end-to-end on the PostgreSQL store: `workers = 1` and `workers = 2` vs a bare
aiohttp handler, same wrk, same run.

Subject: `routingd serve` on a fresh database of a throwaway PostgreSQL cluster
(tests/pg_cluster.py: fsync off, like a battery-backed disk; a 202 is still only sent after the
message's INSERT committed), one fast sandbox provider (latency 1ms). With workers = 2 the
supervisor (daemon/workers.py) starts two full processes sharing the port (SO_REUSEPORT).
Counted are only messages that were accepted (202) AND finished: after wrk stops, the
benchmark waits (bounded) until the database holds no pending message; the sustained rate is
finished messages / (wrk's duration + that drain time), counted in the database (the one
record every worker commits to).
Baseline: benchmarks/bare_server.py (parses the same JSON, answers 202).
Baseline and subjects alternate for --rounds rounds; the best round of each side counts.
Target (issue 17): workers = 2 sustained >= 0.5 x the bare handler's rate.

    .venv/bin/python benchmarks/bench_ingress_pg.py [--duration 8] [--rounds 2] [--without-user-id]

The body is the other ingress benchmarks' (send_body(): to.user_id "u1", no profile stored):
since 081bf4d no query per send reads it (daemon/profiles.py: the insert checks what the
process assumed); --without-user-id measures the same without it.

CPU per message: routingd's processes and PostgreSQL's (/proc, utime + stime) during the load,
and wrk's; the bare handler's and wrk's per request in its round. cores x max(handler, wrk) /
(routingd + PostgreSQL + wrk) is the ratio the CPU alone allows on an otherwise idle machine:
the bare handler is one process, so one core; the subject's processes share every core
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_ingress
from common import (BENCH, ROOT, BenchResult, Helper, WrkResult, WrkSettings, header, ms, ratio, run_wrk,
                    send_body, start_daemon, wrk_arguments, wrk_settings)

sys.path.insert(0, str(ROOT / "tests"))

TARGET_2 = 0.5
DRAIN_TIMEOUT_S = 90.0

# bench_ingress.py's policy (one fast in-process provider, so the daemon itself is measured)
# with the number of workers
CONFIG = bench_ingress.CONFIG.replace("max_inflight = 1000000\n", "max_inflight = 1000000\nworkers = {workers}\n")
assert "workers = {workers}" in CONFIG


def _db_counts(url: str) -> tuple[int, int]:
    """(all messages, finished ones) in the database."""
    import psycopg
    with psycopg.connect(url) as c:
        row = c.execute("SELECT count(*), count(*) FILTER (WHERE status <> 'pending') FROM messages").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes, seconds (each one's own threads included)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    """utime + stime of this process's waited-for children (wrk, once run_wrk returns)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _bare_round(settings: WrkSettings, work: Path, body: str, i: int) -> tuple[WrkResult, float, float]:
    """The bare handler's wrk result and its CPU and wrk's per request (us): what the subject's
    CPU per message is compared with (docs/performance.md)."""
    with Helper([str(BENCH / "bare_server.py")], work, f"bare-server-{i}") as bare:
        cpu0, wrk0 = _cpu_s([bare.proc.pid]), _children_cpu_s()
        r = run_wrk(bare.url + "/v1/send", settings, body, work / f"wrk-bare-{i}.txt")
        cpu, wrk = _cpu_s([bare.proc.pid]) - cpu0, _children_cpu_s() - wrk0
    n = max(1, r.accepted)
    return r, cpu / n * 1e6, wrk / n * 1e6


def _daemon_round(settings: WrkSettings, work: Path, body: str, url: str, workers: int,
                  postmaster: int) -> dict[str, Any]:
    d = start_daemon(work, CONFIG.format(workers=workers),
                     env={"ROUTINGD_LOG_LEVEL": "WARNING", "ROUTINGD_STORE": url}, start_timeout=90)
    try:
        if workers > 1:         # readyz answered from one worker: wait for the supervisor's line (all listen)
            deadline = time.monotonic() + 90
            while not re.search(rf"with {workers} workers", d.log_text()):
                if time.monotonic() > deadline or not d.running:
                    raise RuntimeError(f"the workers did not all listen:\n{d.log_tail()}")
                time.sleep(0.05)
        # CPU per message: routingd's processes and PostgreSQL's (both on this machine's 2 cores)
        ours, theirs = _tree(d.pid), _tree(postmaster)
        cpu0 = (_cpu_s(ours), _cpu_s(theirs), _children_cpu_s())
        sub = run_wrk(d.url + "/v1/send", settings, body, work / "wrk-routingd.txt")
        cpu = (_cpu_s(ours) - cpu0[0], _cpu_s(_tree(postmaster)) - cpu0[1], _children_cpu_s() - cpu0[2])
        t0 = time.monotonic()
        while True:
            total, finished = _db_counts(url)
            drained = finished >= total
            if drained or time.monotonic() - t0 > DRAIN_TIMEOUT_S:
                break
            time.sleep(0.05)
        drain_s = time.monotonic() - t0
    finally:
        rc = d.stop(timeout=60) if d.running else None
        d.close()
    counted = min(sub.accepted, finished)
    elapsed = sub.duration_s + drain_s
    return {"wrk": sub, "drained": drained, "drain_s": drain_s, "total": total, "counted": counted,
            "sustained": counted / elapsed if elapsed else 0.0, "rc": rc,
            "routingd_cpu_us": cpu[0] / sub.accepted * 1e6 if sub.accepted else None,
            "postgres_cpu_us": cpu[1] / sub.accepted * 1e6 if sub.accepted else None,
            "wrk_cpu_us": cpu[2] / sub.accepted * 1e6 if sub.accepted else None}


def run(settings: WrkSettings, rounds: int = 2, workdir: Path | None = None, user_id: bool = True) -> BenchResult:
    from pg_cluster import PgCluster

    header(f"ingress/end-to-end on PostgreSQL, workers 1 and 2: POST /v1/send, {settings.describe()}, "
           f"best of {rounds} alternating rounds{'' if user_id else ', sends without to.user_id'}")
    res = BenchResult("ingress_pg")
    t0 = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="routingd-bench-ingress-pg-"))
    body = send_body()
    if not user_id:         # no to.user_id: no profile read per send (docs/performance.md)
        doc = json.loads(body)
        del doc["message"]["to"]["user_id"]
        body = json.dumps(doc, separators=(",", ":"))
    bases: list[WrkResult] = []
    bare_cpu: list[tuple[float, float]] = []      # (bare handler, wrk) CPU per request, us
    subs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    load = os.getloadavg()
    with PgCluster() as pg:
        for i in range(max(1, rounds)):
            b, b_us, b_wrk_us = _bare_round(settings, work, body, i)
            bases.append(b)
            bare_cpu.append((b_us, b_wrk_us))
            line = f"round {i + 1}: bare {bases[-1].accepted_per_s:.0f} req/s"
            for n in (1, 2):
                s = _daemon_round(settings, work / f"daemon-{n}w-{i}", body, pg.new_database(), n,
                                  int((pg.data / "postmaster.pid").read_text().split()[0]))
                subs[n].append(s)
                line += f", workers={n} end-to-end {s['sustained']:.0f} msg/s"
                if not s["drained"]:
                    line += " (NOT drained)"
            res.say(line)
    load = tuple(max(a, b) for a, b in zip(load, os.getloadavg()))
    base = max(bases, key=lambda b: b.accepted_per_s)
    b_us, b_wrk_us = bare_cpu[bases.index(base)]
    res.say(f"baseline bare aiohttp: {base.accepted_per_s:8.0f} req/s  202s {base.accepted}, other {base.other}, "
            f"errors {base.errors}; latency p50 {ms(base.p50_s)} p99 {ms(base.p99_s)}; CPU per request: "
            f"the handler {b_us:.0f} us, wrk {b_wrk_us:.0f} us")
    res.figures.update({"baseline_cpu_us_per_req": round(b_us), "baseline_wrk_cpu_us_per_req": round(b_wrk_us)})
    res.figures.update({"wrk": settings.describe(), "rounds": rounds,
                        "baseline_req_per_s": round(base.accepted_per_s, 1),
                        "loadavg_1_5_15": [round(x, 2) for x in load]})
    for n in (1, 2):
        best = max(subs[n], key=lambda s: s["sustained"] if s["drained"] else -1.0)
        sub: WrkResult = best["wrk"]
        res.say(f"workers={n}: ingress {sub.accepted_per_s:8.0f} req/s (202s {sub.accepted}, other {sub.other}, "
                f"errors {sub.errors}; accept p50 {ms(sub.p50_s)} p99 {ms(sub.p99_s)}); end-to-end "
                f"{best['sustained']:.0f} msg/s ({best['counted']} finished in {sub.duration_s:.1f}s load + "
                f"{best['drain_s']:.2f}s drain{'' if best['drained'] else ', NOT drained'}); exit {best['rc']}; CPU per "
                f"202 during the load: routingd {best['routingd_cpu_us']:.0f} us, PostgreSQL "
                f"{best['postgres_cpu_us']:.0f} us, wrk {best['wrk_cpu_us']:.0f} us")
        # What the CPU per message allows on this machine with nothing else running: the bare
        # handler is one process (at most one core, wrk on the other), routingd's processes,
        # PostgreSQL's and wrk share all the cores (docs/performance.md)
        cores = os.cpu_count() or 1
        total = (best["routingd_cpu_us"] or 0) + (best["postgres_cpu_us"] or 0) + (best["wrk_cpu_us"] or 0)
        bound = cores * max(b_us, b_wrk_us) / total if total else 0.0
        res.say(f"workers={n}: ratio the CPU per message allows, {cores} cores x max(handler, wrk) / (routingd "
                f"+ PostgreSQL + wrk): {bound:.3f}")
        r = ratio(best["sustained"], base.accepted_per_s)
        res.figures.update({
            f"workers{n}_ingress_req_per_s": round(sub.accepted_per_s, 1),
            f"workers{n}_end_to_end_msg_per_s": round(best["sustained"], 1),
            f"workers{n}_accept_p50_ms": round(sub.p50_s * 1000, 3),
            f"workers{n}_accept_p99_ms": round(sub.p99_s * 1000, 3),
            f"workers{n}_ratio": r, f"workers{n}_drained": best["drained"],
            f"workers{n}_routingd_cpu_us_per_msg": round(best["routingd_cpu_us"] or 0),
            f"workers{n}_postgres_cpu_us_per_msg": round(best["postgres_cpu_us"] or 0),
            f"workers{n}_wrk_cpu_us_per_msg": round(best["wrk_cpu_us"] or 0),
            f"workers{n}_cpu_bound_ratio": round(bound, 3),
        })
        if n == 2:
            res.check("workers=2 end-to-end / bare handler", r if best["drained"] else 0.0, TARGET_2)
        else:
            res.say(f"workers=1 end-to-end / bare handler: {r}")
    res.say(f"load average during the run (max of start and end, 1/5/15 min): "
            f"{' '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} cores")
    res.wall_s = time.monotonic() - t0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    wrk_arguments(p)
    p.add_argument("--without-user-id", action="store_true",
                   help="send without to.user_id, so no recipient profile is read per send")
    a = p.parse_args()
    return 0 if run(wrk_settings(a), a.rounds,
                    user_id=not a.without_user_id).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
