"""The PostgreSQL store's writer alone: CPU per message of its writer thread and of the server
for the rows of the ingress path, vs the SQLite store's writer in the same run.

Per message, as the daemon writes them (runtime/accept.py, events.py, router.py): the insert
with its first attempt's row and a profile assumption (daemon/profiles.py), awaited in batches
of --batch messages (group commit); then the attempt's end, two event groups and the final
status, and a committed() mark. CPU from /proc: the writer thread (utime + stime of its task),
the event loop thread, and the PostgreSQL server's processes (a throwaway cluster,
tests/pg_cluster.py: fsync off). Baseline: the SQLite store (synchronous NORMAL, so that its
fsync does not count) fed the same way; its writer thread's CPU. What it measures is what
daemon/store/pg_writes.py and postgres.py choose (docs/performance.md "Figures behind code
choices").

    .venv/bin/python benchmarks/bench_pg_writer.py [--messages 20000] [--batch 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import ROOT, BenchResult, header

sys.path.insert(0, str(ROOT / "tests"))

REQUEST = ('{"message":{"to":{"user_id":"u1","email":"a@example.com"},"content":{"title":"Hi",'
           '"body":"Hello there, this is a benchmark message"}}}')


def _task_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _feed(store: Any, messages: int, batch: int, server_cpu: Any) -> dict[str, float]:
    from routingd.daemon.store import MessageRow

    await store.open()
    seen = ("u1", None) if store.profiles_versioned else None
    count = 0

    async def turn() -> None:
        nonlocal count
        now = time.time()
        ids, futs = [], []
        for _ in range(batch):
            count += 1
            mid = f"m{count:09d}"
            aid = f"{mid}.0.1"
            ids.append(mid)
            futs.append(store.insert_message(MessageRow(mid, REQUEST, "default", "v1", "pending", now, now + 60),
                                             86400.0, now, [(aid, mid, "email", "fast", 1, now, now + 5, None, None,
                                                             None, None)], seen))
        await asyncio.gather(*futs)
        for mid in ids:
            aid = f"{mid}.0.1"
            store.put_attempt_values((aid, mid, "email", "fast", 1, now, now + 5, now + 0.001, "delivered", 200, None))
            store.put_events(mid, [SimpleNamespace(type="accepted", at=now, data={"route": "default", "policy": "v1"}),
                                   SimpleNamespace(type="attempt_started", at=now, data={
                                       "attempt_id": aid, "provider": "fast", "channel": "email", "try": 1,
                                       "deadline": now + 5})])
            store.put_events(mid, [SimpleNamespace(type="attempt_ended", at=now, data={
                "attempt_id": aid, "provider": "fast", "outcome": "delivered", "status_code": 200,
                "latency_ms": 1.234}), SimpleNamespace(type="delivered", at=now, data={
                    "channel": "email", "provider": "fast", "attempt_id": aid})])
            store.finish(mid, "delivered", now, now)
        await store.committed()

    try:
        for _ in range(20):                  # warm up (psycopg prepares a statement at its 5th use)
            await turn()
        assert store._thread is not None
        writer, loop = store._thread.native_id, threading.get_native_id()
        w0, l0, s0, c0 = _task_cpu_s(writer), _task_cpu_s(loop), server_cpu(), store.commits
        t0 = time.monotonic()
        turns = max(1, messages // batch)
        for _ in range(turns):
            await turn()
        wall = time.monotonic() - t0
        n = turns * batch
        return {"writer_us": (_task_cpu_s(writer) - w0) / n * 1e6, "loop_us": (_task_cpu_s(loop) - l0) / n * 1e6,
                "server_us": (server_cpu() - s0) / n * 1e6, "msg_per_s": n / wall,
                "commits": store.commits - c0}
    finally:
        await store.close()


def run(messages: int, batches: list[int]) -> BenchResult:
    import bench_ingress_pg as pgb
    from pg_cluster import PgCluster
    from routingd.daemon.store import Store
    from routingd.daemon.store.postgres import PgStore

    header(f"the PostgreSQL store's writer vs SQLite's: {messages} messages, batches of {batches}")
    res = BenchResult("pg_writer")
    t0 = time.monotonic()
    load = os.getloadavg()
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="routingd-bench-writer-") as tmp:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])

        def server_cpu() -> float:
            return pgb._cpu_s(pgb._tree(postmaster))

        for batch in batches:
            lite = asyncio.run(_feed(Store(str(Path(tmp) / f"state-{batch}.db"), synchronous="NORMAL"),
                                     messages, batch, lambda: 0.0))
            pgs = asyncio.run(_feed(PgStore(pg.new_database()), messages, batch, server_cpu))
            res.say(f"batch {batch:3d}: SQLite writer {lite['writer_us']:6.1f} us/msg (loop {lite['loop_us']:.1f}); "
                    f"PostgreSQL writer {pgs['writer_us']:6.1f} us/msg + server {pgs['server_us']:6.1f} us/msg "
                    f"(loop {pgs['loop_us']:.1f}); {pgs['commits']} commits, {pgs['msg_per_s']:.0f} msg/s")
            both = pgs["writer_us"] + pgs["server_us"]
            res.figures.update({f"batch{batch}_sqlite_writer_us": round(lite["writer_us"], 1),
                                f"batch{batch}_pg_writer_us": round(pgs["writer_us"], 1),
                                f"batch{batch}_pg_server_us": round(pgs["server_us"], 1)})
            res.check(f"batch {batch}: PostgreSQL writer + server / SQLite writer (CPU per message)",
                      both / lite["writer_us"] if lite["writer_us"] else None, None)
    load = tuple(max(a, b) for a, b in zip(load, os.getloadavg()))
    res.say(f"load average (max of start and end): {' '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} cores")
    res.figures["loadavg_1_5_15"] = [round(x, 2) for x in load]
    res.wall_s = time.monotonic() - t0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    a = p.parse_args()
    return 0 if run(a.messages, a.batch).ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
