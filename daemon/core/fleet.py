"""The rules that span messages, once, for both drivers: one `Fleet` per daemon process / simulated run.

A `Delivery` (engine.py) routes one message; what ties the messages of a process together lives
here, so that the asyncio daemon (daemon/runtime/) and the SimPy simulator (simulator/runner.py)
obey the very same rules instead of each re-implementing them (docs/architecture.md, "The fleet"):

  * the breakers: one `HealthTracker` (health.py), shared by every Delivery of the fleet;
  * the pending set: every message not finished yet, by key, with the driver's handle for it
    (`admit` when the driver begins routing it, `finished` once it has carried out its Finish);
  * the breaker cut-over: when a breaker opens (in any message's input), every other pending
    message that has tried that provider gets Delivery.on_provider_unhealthy(provider, now) at
    the same `now`, so its attempts in flight there (and its back-offs waiting for it) fail over
    at once instead of each waiting out its own timeout. Those batches may open further breakers:
    a worklist, drained in order, never recursion;
  * the breakers of the other processes on the same database: `breaker_heard(provider, opened,
    breakers, now)` applies another process's breaker transition here (HealthTracker.heard);
    one for a provider the current policy does not have (a process on another policy version)
    is ignored and counted in `heard_ignored`. A breaker it opens joins the cut-over worklist;
  * the early-timer clamp: a wake-up that fires a hair before the time it was asked for (float
    rounding, an event loop running a handle early) is handed to the engine at the time asked for;
  * the outbound rate limits (limiter.py): one `Limiter`, handed to every Delivery, which asks it
    for a slot before an attempt on a limited provider; a run that has to wait its turn is
    queued there, and `dispatch(now, execute)` hands the queued runs whose turn has come their
    slot (Delivery.on_slot), or spills them over when their turn has slipped too late.

The drivers only carry out commands. The contract, for a driver:

    fleet = Fleet(cut_inflight=True)          # fleet.health goes into every Delivery it makes
    fleet.admit(key, handle)                  # handle.delivery is the message's Delivery
    execute(handle, delivery.start(now))      # ... and any other input
        after carrying out each batch:  if fleet.opened: fleet.cut_over(now, execute)
    execute(handle, delivery.on_timer(fleet.wake_time(now, at)))    # a SetTimer(at) came due
    fleet.finished(key)                       # when carrying out its Finish
    Delivery(..., limiter=fleet.limiter)      # with the limits: fleet.limiter.configure(limits, now)
        after carrying out each batch, when a call ends (fleet.limiter.release(provider) first)
        and at fleet.limiter.next_at(now):  fleet.dispatch(now, execute)

`cut_over` calls `execute(handle, commands)` for each message it cuts; a call made while a
cut-over is already running (from inside `execute`) returns at once: the running one takes the
newly opened providers from the same worklist. Sans-IO like the rest of the core.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, Mapping, Protocol, TypeVar

from .engine import Command, Delivery
from .health import HealthTracker
from .limiter import Limiter, Waiter
from .tree import QUEUED


class Handle(Protocol):
    """A driver's object for one message: the daemon's _Live, the simulator's _Msg."""

    @property
    def delivery(self) -> Delivery: ...


H = TypeVar("H", bound=Handle)
Execute = Callable[[H, "list[Command]"], None]


class Fleet(Generic[H]):
    """The breakers, the pending messages and the cut-over worklist of one driver."""

    __slots__ = ("health", "pending", "opened", "cut_inflight", "_cutting", "limiter", "_keys", "_dispatching",
                 "heard_ignored")

    def __init__(self, health: HealthTracker | None = None, cut_inflight: bool = True) -> None:
        """cut_inflight=False: a breaker opening cuts nothing in flight (the simulator's
        [simulation] cut_inflight_on_breaker_open = false, to measure what the cut is worth)."""
        self.health = health if health is not None else HealthTracker()
        self.pending: dict[Hashable, H] = {}
        self.cut_inflight = cut_inflight
        # providers whose breaker opened, not yet handed to the pending messages (the worklist);
        # the HealthTracker appends to it as a breaker opens. Stays empty without the cut.
        self.opened: list[str] = []
        self.health.opened = self.opened if cut_inflight else None
        self._cutting = False
        self.limiter = Limiter()
        # a queued run's waiter is live while the run still waits (its channel did not end meanwhile)
        self.limiter.live = _waiting
        self._keys: dict[int, Hashable] = {}     # id(a pending message's Delivery) -> its key
        self._dispatching = False
        self.heard_ignored = 0      # breaker_heard() calls for a provider the policy does not have

    def admit(self, key: Hashable, handle: H) -> None:
        """`handle`'s message is pending from now on (before its first commands are carried out)."""
        self.pending[key] = handle
        self._keys[id(handle.delivery)] = key

    def finished(self, key: Hashable) -> None:
        """The message reached its Finish, or this driver let go of it (a takeover): it leaves the
        pending set."""
        handle = self.pending.pop(key, None)
        if handle is not None:
            self._keys.pop(id(handle.delivery), None)
            if handle.delivery.status == "pending":
                # released without a Finish (a takeover by another process): its queued runs
                # would otherwise be handed turns, refunded and queued again forever (dispatch()
                # sets aside waiters of a pending message it does not hold, as not admitted yet)
                handle.delivery.release_waits()

    def breaker_heard(self, provider: str, opened: bool, breakers: Mapping[str, tuple[int | None, float]],
                      now: float) -> str | None:
        """Another process's breaker on `provider` opened or closed (it told us at `now`): apply it
        to this fleet's breakers; return "opened"/"closed" when one changed here, else None.

        `breakers`: the current policy's providers -> (breaker failures or None when off, cooldown
        seconds). A provider not in it (the other process runs another policy version, or the
        notice is garbled) is ignored and counted in `heard_ignored`. A breaker this opens is on
        the worklist: the driver runs `cut_over(now, execute)` after it, as after a batch."""
        conf = breakers.get(provider)
        if conf is None:
            self.heard_ignored += 1
            return None
        threshold, cooldown_s = conf
        if cooldown_s != cooldown_s or cooldown_s < 0:      # NaN or negative: a bug of the caller
            cooldown_s = 0.0
        return self.health.heard(provider, opened, threshold, cooldown_s, now)

    def dispatch(self, now: float, execute: Execute[H]) -> None:
        """Hand every queued run whose turn has come its slot (or its spill), at `now`, and have
        `execute` carry out each answer. A call made from inside `execute` returns at once: the
        running one asks the limiter again until nothing more is due."""
        if self._dispatching:
            return
        self._dispatching = True
        lim = self.limiter
        # waiters of a message not admitted yet (the daemon starts a message before its insert
        # commits, and admits it after): they go back in the queue, in their place, afterwards
        later: list[tuple[str, Waiter]] = []
        try:
            for _ in range(10_000):         # each pass grants, spills or sets aside a waiter
                due = lim.due(now)
                if not due:
                    return
                for w, provider, granted, wait in due:
                    d = w.key
                    key = self._keys.get(id(d))
                    handle = self.pending.get(key) if key is not None else None
                    if handle is None or handle.delivery is not d:
                        if granted:
                            lim.refund(provider, now)
                        if d.status == "pending":
                            later.append((provider, w))
                        continue
                    execute(handle, d.on_slot(w.ref, granted, wait, now))
        finally:
            for provider, w in later:
                lim.requeue(provider, w)
            self._dispatching = False

    @staticmethod
    def wake_time(now: float, at: float) -> float:
        """The time to hand Delivery.on_timer for a wake-up asked `at` and firing at `now`: never
        before the time asked for (the engine would see its own deadline not reached yet)."""
        return now if now > at else at

    def cut_over(self, now: float, execute: Execute[H],
                 failed: Callable[[H, str, BaseException], None] | None = None) -> None:
        """Hand each newly opened breaker's provider to every pending message that has tried it,
        at `now`, and have `execute` carry out each answer, until no batch opens another breaker.

        Only a message with an attempt on the provider in its records can have something to cut
        (a run attempting or backing off there made one); the engine decides what, if anything.
        failed(handle, provider, error): one message's failure (its engine call or `execute`)
        is handed to it and the others go on; without it the error propagates."""
        opened = self.opened
        if self._cutting or not opened:
            return
        self._cutting = True
        try:
            while opened:
                provider = opened.pop(0)
                for handle in list(self.pending.values()):
                    d = handle.delivery
                    if d.status != "pending":
                        continue        # finished by an earlier cut of this pass
                    for rec in d.attempts.values():
                        if rec.provider == provider:
                            break
                    else:
                        continue
                    if failed is None:
                        execute(handle, d.on_provider_unhealthy(provider, now))
                        continue
                    try:
                        execute(handle, d.on_provider_unhealthy(provider, now))
                    except Exception as e:  # noqa: BLE001 - one message must not stall the others
                        failed(handle, provider, e)
        finally:
            opened.clear()
            self._cutting = False


def _waiting(w: Waiter) -> bool:
    """Whether a limiter waiter's run still waits for its turn (Limiter.live)."""
    return w.ref.state == QUEUED and w.key.status == "pending"
