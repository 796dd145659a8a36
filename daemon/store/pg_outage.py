"""Whether the PostgreSQL store can write now: the database outage that readyz reports.

The writer thread (daemon/store/postgres.py) marks the database `down` when a connection or a
statement fails with a connection error (psycopg.OperationalError: the server stopped, restarts,
is unreachable) and `up` at its next commit. While it is down, readyz answers 503 with the
reason (daemon/service.py adds `problem` to its checks) and sends answer 503 with Retry-After
(their insert fails: never a 202 without a commit).

Something must write for the store to notice the database is back: a backlog is retried by the
writer itself every 0.5 s, but with no backlog (every send refused, nothing else to write) nothing
would, and a load balancer that trusts readyz would send nothing more: `probe()` queues a
`SELECT 1` transaction through the writer every `interval_s` while the database is down, and
one every `idle_s` while nothing was committed for that long, so an outage of an idle daemon is
seen too (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from ..clock import rfc3339
from .interface import StoreError

log = logging.getLogger("routingd.store")


class Outage:
    """The database's state as the writer last saw it. Set from the writer thread, read on the
    event loop (single attribute assignments: no lock needed)."""

    def __init__(self) -> None:
        self.since: float | None = None     # wall-clock time the outage began; None: up
        self.error: StoreError | None = None
        self.last_ok = time.monotonic()     # the last commit (monotonic), for the idle probe
        self.outages = 0                    # how many began since the start (a metric could read it)

    def down(self, error: StoreError) -> None:
        self.error = error
        if self.since is None:
            self.since = time.time()
            self.outages += 1
            log.error("state store: the database cannot be written (%s); readyz answers 503 and sends are "
                      "refused until it can", error.problem)

    def up(self) -> None:
        self.last_ok = time.monotonic()
        if self.since is not None:
            log.info("state store: the database answers again after %.1fs; ready", time.time() - self.since)
            self.since = None

    def problem(self) -> str | None:
        """readyz's reason while the database is down, else None."""
        if self.since is None:
            return None
        why = self.error.problem if self.error is not None else "no answer"
        return (f"the state store's database cannot be written since {rfc3339(self.since)} ({why}); "
                "sends answer 503 until it can (the writer retries every 0.5 s)")


async def probe(outage: Outage, call: Callable[[Callable[[Any], Any]], Awaitable[Any]],
                backlog: Callable[[], int], interval_s: float = 0.5, idle_s: float = 5.0) -> None:
    """Run until cancelled: try a transaction through the writer (`call`) while the database is
    down and nothing else retries (no backlog), or after `idle_s` without a commit."""
    while True:
        await asyncio.sleep(interval_s)
        if outage.since is not None:
            if backlog():
                continue                    # the writer retries its backlog on its own
        elif time.monotonic() - outage.last_ok < idle_s:
            continue
        try:
            await call(_select_one)
        except StoreError:
            pass                            # the writer marked the outage (Outage.down)
        except Exception:  # noqa: BLE001 - the probe must outlive any surprise
            log.exception("state store probe failed")


def _select_one(conn: Any) -> None:
    conn.execute("SELECT 1")
