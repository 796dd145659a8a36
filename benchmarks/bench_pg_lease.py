"""The cost of the PostgreSQL leases (daemon/store/lease.py), per number of pending messages.

For each size N: a fresh database of a throwaway cluster (tests/pg_cluster.py), N pending
messages owned by one process (inserted with generate_series), then the median of 7 renewals
(one UPDATE of the node row) and of 7 claims that find nothing (every owner live), one claim
of a batch of 500 once the owner's lease ran out, and the late renewal that then reads which
of its N messages were taken over (daemon/cluster.py Cluster.renew: lease.renew, then
lease.taken_from over the messages it routes). Prints one line per size; docs/performance.md "Figures behind code choices".

    .venv/bin/python benchmarks/bench_pg_lease.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import psycopg  # noqa: E402

from pg_cluster import PgCluster  # noqa: E402
from routingd.daemon.store import lease  # noqa: E402
from routingd.daemon.store.postgres import PgStore  # noqa: E402


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


async def measure(url: str, n: int) -> str:
    s = PgStore(url)
    await s.open()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO messages (id, request, route, policy_version, accepted_at, message_deadline, owner) "
                  "SELECT 'm' || g, '{}', 'r', 'v', g, g + 60, %s FROM generate_series(1, %s) g", (s.node, n))
        c.execute("ANALYZE messages")
    book = lease.LeaseBook(s.side_connection, s._explain_error)
    renews, empty = [], []
    for _ in range(7):
        t = time.perf_counter()
        assert await book.run(lambda c: lease.renew(c, s.node, 10.0), "renew") is False
        renews.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert await book.run(lambda c: lease.claim(c, "other", 10.0, 500), "claim") == []
        empty.append(time.perf_counter() - t)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE nodes SET lease_until = now() - interval '1s'")
    t = time.perf_counter()
    got = await book.run(lambda c: lease.claim(c, "other", 10.0, 500), "claim")
    claimed = time.perf_counter() - t
    t = time.perf_counter()
    was_late = await book.run(lambda c: lease.renew(c, s.node, 10.0), "renew")
    ids = [f"m{g}" for g in range(1, n + 1)]
    taken = await book.run(lambda c: lease.taken_from(c, s.node, ids), "read what was taken over")
    late = time.perf_counter() - t
    assert len(got) == min(500, n) and was_late is True and len(taken) == len(got)
    book.close()
    await s.close()
    return (f"pending={n}: renewal {_median(renews) * 1000:.2f} ms, empty claim {_median(empty) * 1000:.2f} ms, "
            f"claim of {len(got)} {claimed * 1000:.1f} ms, late renewal {late * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    args = ap.parse_args()
    with PgCluster() as pg:
        for n in (int(x) for x in args.sizes.split(",")):
            print(asyncio.run(measure(pg.new_database(), n)), flush=True)


if __name__ == "__main__":
    main()
