"""Several routingd processes on one PostgreSQL database (docs/scaling.md "Leases").

`attach(router)` gives a Router on the PostgreSQL store a `Cluster` (None on SQLite: one process
per file). Its one loop, on the Router's event loop, with its own database connection
(store/lease.py `LeaseBook`, so it never waits behind the writer's backlog):

- every lease/3: **renew** this process's lease (its row in `nodes`: one UPDATE of one row,
  covering every message it owns); if the lease had run out (the process stalled, or could not
  reach the database) drop from memory every message another process took over meanwhile
  (routing it further would send it twice);
- every CLAIM_EVERY_S (or lease/3 if shorter): **claim** a bounded batch of pending messages
  whose lease expired (a process that died) or was released (a clean stop) and resume them as
  a start does (Router._resume: original absolute deadlines, the policy they were accepted
  under, the attempts the death cut marked `cancelled`);
- at each renewal: **count the live processes** (leases not expired, this one included) and
  keep 1/N of every provider's rate_limit and burst (Limiter.set_share; docs/scaling.md "Rate
  limits across processes"): the limit in routing.toml is the whole deployment's. Counted once
  more when the loop starts, before this process routes anything of its own;
- every HANDOFF_EVERY_S: **apply the handoffs**, receipts and cancels another process received
  for a message this one owns (the `handoffs` table; the receiver answered 2xx once the row was
  committed).

A dead process's messages wait at most lease + the claim interval (min(1 s, lease/3)) before
another process routes them on; a cleanly stopped one's, at most the claim interval.

Why a table and not LISTEN/NOTIFY for the handoffs: a NOTIFY is lost while the owner's
listening connection is down (a restart, a failover, a network blip), so a receipt would still
have to be stored somewhere the owner reads when it comes back, and the receiver must answer 2xx
only after that. The table is that store, it outlives the owner (the process that takes its
messages over inherits the handoffs, which follow the message's current owner), and polling it
costs one indexed query per process every HANDOFF_EVERY_S.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .store import lease

if TYPE_CHECKING:
    from .runtime import Router, _Live

log = logging.getLogger("routingd.cluster")

CLAIM_EVERY_S = 1.0             # at most: lease/3 when that is shorter
HANDOFF_EVERY_S = 0.25          # how often handoffs are looked for (a cross-process receipt's added latency)
CANCEL_WAIT_S = 5.0             # how long a cancel handed to the owner waits for its answer


def attach(router: Router) -> Cluster | None:
    """A Cluster for a Router on a store with leases (PostgreSQL), started; else None."""
    store = router.store
    if getattr(store, "node", None) is None or not hasattr(store, "side_connection"):
        return None
    c = Cluster(router)
    c.count_now()
    c.start()
    return c


class Cluster:
    def __init__(self, router: Router) -> None:
        self.router = router
        store: Any = router.store
        self.store = store
        self.node: str = store.node
        self.lease_s: float = store.lease_s
        # how often expired (or released) leases are looked for: a dead process's messages wait
        # at most lease + this; a released one (a clean stop) at most this
        self.claim_every_s = min(CLAIM_EVERY_S, self.lease_s / 3)
        self.book = lease.LeaseBook(store.side_connection, store._explain_error)
        self._task: asyncio.Task[None] | None = None
        self._failing: str | None = None
        self.taken_over = 0         # messages this process claimed after start (tests, logs)
        self.lost = 0               # messages dropped because another process took them over
        self.processes = 1          # live processes at the last count (this one's share: 1/processes)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="routingd cluster")

    def count_now(self) -> None:
        """The first count of the live processes, before this one routes anything: one short
        query, blocking (Router.start runs it once)."""
        try:
            self._share(self.book._run(lease.live_nodes, "count the live processes"))
        except Exception as e:  # noqa: BLE001 - the loop counts again at its first renewal
            log.error("counting the live processes failed (counted again at the next renewal): %s", e)

    def _share(self, live: int) -> None:
        """Keep 1/live of each rate limit (at least this process is live: it just renewed)."""
        n = max(1, live)
        if n != self.processes:
            log.info("%d routingd process(es) share the database: each keeps 1/%d of every rate limit", n, n)
            self.processes = n
        self.router._ratelimits.set_share(1.0 / n)

    async def stop(self) -> None:
        """Stop the loop (the store releases this process's leases when it closes:
        PgStore.close)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self.book.close)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = claim_at = loop.time() + self.claim_every_s   # start() has just claimed, with fresh leases
        while True:
            try:
                if loop.time() >= renew_at:
                    renew_at = loop.time() + self.lease_s / 3
                    await self.renew()
                if loop.time() >= claim_at:
                    claim_at = loop.time() + self.claim_every_s
                    await self.claim()
                await self.apply_handoffs()
                if self._failing is not None:
                    log.info("the cluster loop reaches the database again")
                    self._failing = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the database may be away: try again, log once
                text = str(e)
                if text != self._failing:
                    log.error("renewing leases or applying handoffs failed (retried): %s", text)
                    self._failing = text
            await asyncio.sleep(HANDOFF_EVERY_S)

    async def renew(self) -> None:
        router = self.router
        version = router.policy.version
        late, processes = await self.book.run(
            lambda c: (lease.renew(c, self.node, self.lease_s, version), lease.live_nodes(c)), "renew the lease")
        if not router._halted:
            self._share(processes)
        if not late:
            return                  # renewed in time: nobody could take anything over
        log.warning("this process's lease ran out before it was renewed (a stall, or the database was "
                    "unreachable); renewed now")
        # What was taken is read after the renewal committed: from then on nobody takes a message of
        # this process, and every message in _live is committed (it enters _live once its insert
        # committed). The messages held *before* the renewal would miss one accepted while it ran
        # (it waits for a claim holding this node's row) and taken by that claim: it would be
        # routed here and by its new owner to the end. And a list of what this node owns, read
        # inside the renewal, would not hold one committed after it, which must not be dropped.
        held = [str(mid) for mid in router._live]
        taken = await self.book.run(lambda c: lease.taken_from(c, self.node, held), "read what was taken over")
        for mid in taken:
            live = router._live.get(mid)
            if live is not None:
                self._abandon(live)

    async def claim(self) -> int:
        """Take over a batch of messages whose lease expired; the number resumed."""
        router = self.router
        if router._stopping or not router._started:
            return 0
        d = router.limits if router.limits is not None else router.policy.model.daemon
        room = min(lease_claim_batch(), d.max_inflight - router.inflight)
        if room <= 0:
            return 0
        got = await self.book.run(lambda c: lease.claim(c, self.node, self.lease_s, room), "claim messages")
        if not got:
            return 0
        resumed = [await router._resume.resume(sm) for sm in got]
        await router.store.flush()      # the new run numbers, before any attempt of them goes out
        n = 0
        for live in resumed:
            if live is not None and not router._stopping and live.row.id not in router._live:
                router._begin(live)
                n += 1
        self.taken_over += len(got)
        log.warning("took over %d pending message(s) whose owner's lease expired", len(got))
        return n

    def _abandon(self, live: _Live) -> None:
        """Forget a message another process took over: no write, no event, no call of it any more
        (its attempts in flight are cancelled; their answers are dropped)."""
        log.warning("message %s was taken over by another process (this one renewed its lease too late); "
                    "no longer routed here", live.row.id)
        self.router._release(live)
        self.lost += 1

    # ------------------------------------------------------------------ handoffs

    async def apply_handoffs(self) -> None:
        router = self.router
        if router._halted:
            return
        rows = await self.book.run(lambda c: lease.handoffs(c, self.node, self.lease_s * 2), "read the handoffs")
        done: list[int] = []
        for seq, mid, kind, provider, attempt_id, status, mstatus in rows:
            if mstatus == "pending" and mid not in router._live:
                continue            # claimed here but not begun yet, or being dropped: next round
            if kind == "receipt" and provider and attempt_id and status in ("delivered", "failed"):
                await router.receipt(provider, attempt_id, status)
            elif kind == "cancel":
                await router.cancel(mid)
            done.append(seq)
        if done:
            await self.book.run(lambda c: lease.drop_handoffs(c, done), "delete applied handoffs")

    async def hand_off_receipt(self, provider: str, attempt_id: str, status: str) -> bool:
        """A receipt for an attempt of a pending message this process does not route: stored for
        its owner (True, once committed); False when it is not such a receipt (the caller
        goes on: unknown attempt, another provider's, a finished message)."""
        store = self.store
        row = store.get_attempt(attempt_id)
        if row is None or row.provider != provider:
            return False
        if not self._pending(row.message_id):
            return False
        store.write(lambda c: c.execute(lease.SQL_HAND_OFF, (row.message_id, "receipt", provider, attempt_id, status)))
        await self._committed(f"a receipt for {attempt_id}")
        return True

    async def cancel(self, message_id: str) -> tuple[bool, str] | None:
        """A cancel for a pending message this process does not route: stored for its owner,
        then its answer waited for (at most CANCEL_WAIT_S: then 503, the cancel stays stored and
        is applied). None when the message is not pending (the caller answers)."""
        if not self._pending(message_id):
            return None
        self.store.write(lambda c: c.execute(lease.SQL_HAND_OFF, (message_id, "cancel", None, None, None)))
        await self._committed(f"the cancel of {message_id}")
        from .runtime import Overloaded
        loop = asyncio.get_running_loop()
        until = loop.time() + CANCEL_WAIT_S
        while loop.time() < until:
            await asyncio.sleep(0.05)
            r = self.store.read_one("SELECT status FROM messages WHERE id = ?", (message_id,), "read a message")
            if r is None:
                return None
            if r[0] != "pending":
                return r[0] == "cancelled", str(r[0])
        raise Overloaded(1.0, "the cancel is stored and handed to the routingd process that routes the message; "
                         "it has not answered yet (ask for the message's status)")

    def _pending(self, message_id: str) -> bool:
        r = self.store.read_one("SELECT status FROM messages WHERE id = ?", (message_id,), "read a message")
        return r is not None and r[0] == "pending"

    async def _committed(self, what: str) -> None:
        from .runtime import Overloaded
        try:
            await self.store.committed()
        except Exception as e:  # noqa: BLE001 - the store logged it; the sender retries
            log.error("%s could not be stored: %s", what, e)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None


def lease_claim_batch() -> int:
    from .store.postgres import CLAIM_BATCH
    return CLAIM_BATCH
