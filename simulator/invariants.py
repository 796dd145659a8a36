"""An independent check of the timeout hierarchy (docs/configuration.md "Timeout precedence").

It does not ask the engine what its deadlines are. From the resolved plan (the configured
timeouts), what the driver knows itself (when it accepted each message) and what the engine
tells the driver (its StartAttempt and Finish commands; the events for when a channel started
and ended and when an attempt ended or got its 2xx) it recomputes every deadline itself:

    message deadline = accept + message timeout
    channel deadline = min(channel start + channel timeout, message deadline)
    attempt deadline = min(attempt start + provider timeout, channel deadline)
    receipt deadline = min(2xx + receipt timeout, channel deadline)

and counts everything that ran past one of them. The driver's inputs: on_accept (a message
arrived), on_attempt_started (a StartAttempt: the deadline the engine granted is checked against
the recomputed one), on_attempt_stopped (its answer handed in, or a CancelAttempt), on_finish (a
Finish), finish_run (the end); the engine's events through `handlers` (on_event). It also watches
the driver's side: an attempt that the simulator was still running after its deadline, or at the
end of the run, counts too, as does a message that never finished.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..daemon.core.engine import (ATTEMPT_ACCEPTED, ATTEMPT_ENDED, CHANNEL_FINISHED, CHANNEL_STARTED, Event, Finish,
                                  StartAttempt)
from ..daemon.core.plan import ChannelStep, GroupStep, Plan, Step

EPS = 1e-6     # seconds; float noise, far below any configurable timeout (1 ms)


@dataclass(frozen=True)
class Timeouts:
    """The configured timeouts of one route, in seconds, read off the resolved plan."""

    message: float
    channel: dict[str, float]
    provider: dict[str, float]
    receipt: dict[str, float]

    @classmethod
    def of(cls, plan: Plan) -> "Timeouts":
        ch: dict[str, float] = {}
        pr: dict[str, float] = {}
        rc: dict[str, float] = {}

        def walk(steps: tuple[Step, ...]) -> None:
            for s in steps:
                if isinstance(s, GroupStep):
                    walk(s.items)
                elif isinstance(s, ChannelStep):
                    ch[s.channel] = s.timeout_ms / 1000.0
                    for p in s.providers:
                        pr[p.provider] = p.timeout_ms / 1000.0
                        if p.confirm == "receipt":
                            rc[p.provider] = p.receipt_timeout_ms / 1000.0
        walk(plan.items)
        return cls(plan.message_timeout_ms / 1000.0, ch, pr, rc)


class _Attempt:
    __slots__ = ("provider", "deadline", "channel_deadline", "receipt_deadline", "ended")

    def __init__(self, provider: str, deadline: float, channel_deadline: float) -> None:
        self.provider = provider
        self.deadline = deadline                    # recomputed attempt deadline
        self.channel_deadline = channel_deadline
        self.receipt_deadline: float | None = None
        self.ended = False


class _Message:
    __slots__ = ("timeouts", "deadline", "channels", "attempts")

    def __init__(self, timeouts: Timeouts, deadline: float) -> None:
        self.timeouts = timeouts
        self.deadline = deadline
        self.channels: dict[str, list[float]] = {}     # open instances' deadlines
        self.attempts: dict[str, _Attempt] = {}


@dataclass
class Violation:
    kind: str
    message: int
    at: float
    detail: str


class HierarchyChecker:
    def __init__(self, plans: dict[str, Plan], keep: int = 20) -> None:
        self.timeouts = {route: Timeouts.of(plan) for route, plan in plans.items()}
        self.counts: Counter[str] = Counter()
        self.examples: list[Violation] = []
        self.keep = keep
        self._msgs: dict[int, _Message] = {}     # messages in flight (dropped when they finish)
        # accepted messages are numbered 0, 1, 2, ... (the driver's order): one not in flight
        # below `_accepted` finished, unless it is one of the few skipped numbers in `_gaps`;
        # so nothing per finished message is kept (memory does not grow with the run)
        self._accepted = 0
        self._gaps: set[int] = set()
        self._running: dict[str, tuple[int, float]] = {}   # driver: attempt id -> (message, deadline)
        # the event types the check reads, and what reads each; every other type is ignored (the
        # engine's started/attempt_started/finished events tell nothing the driver's inputs do not)
        self.handlers: dict[str, Callable[[int, Event], None]] = {
            CHANNEL_STARTED: self._channel_started,
            CHANNEL_FINISHED: self._channel_finished,
            ATTEMPT_ACCEPTED: self._attempt_accepted,
            ATTEMPT_ENDED: self._attempt_ended,
        }

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _flag(self, kind: str, i: int, at: float, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append(Violation(kind, i, at, detail))

    # ---------------------------------------------------------------- the engine's events

    def on_event(self, i: int, ev: Event) -> None:
        handler = self.handlers.get(ev.type)
        if handler is not None:
            handler(i, ev)

    def _channel_started(self, i: int, ev: Event) -> None:
        m = self._msgs.get(i)
        if m is None:
            if self._was_accepted(i):
                self._flag("work after the message finished", i, ev.at, ev.type)
            return
        ch = ev.data["channel"]
        at = ev.at
        dl = at + m.timeouts.channel[ch]
        if dl > m.deadline:
            dl = m.deadline
        if at > m.deadline + EPS:
            self._flag("channel started after the message deadline", i, at, ch)
        stack = m.channels.get(ch)
        if stack is None:
            m.channels[ch] = [dl]
        else:
            stack.append(dl)

    def _channel_finished(self, i: int, ev: Event) -> None:
        m = self._msgs.get(i)
        if m is None:
            return
        ch = ev.data["channel"]
        stack = m.channels.get(ch)
        if not stack:
            self._flag("channel finished without starting", i, ev.at, ch)
            return
        dl = stack.pop()
        if ev.at > dl + EPS:
            self._flag("channel ran past its deadline", i, ev.at, f"{ch}: ended {ev.at - dl:.6f}s late")

    def _attempt_accepted(self, i: int, ev: Event) -> None:
        m = self._msgs.get(i)
        if m is None:
            return
        a = m.attempts.get(ev.data["attempt_id"])
        if a is None:
            return
        if ev.at > a.deadline + EPS:
            self._flag("attempt ran past its deadline", i, ev.at, ev.data["attempt_id"])
        rt = m.timeouts.receipt.get(a.provider)
        if rt is not None:
            a.receipt_deadline = min(ev.at + rt, a.channel_deadline)

    def _attempt_ended(self, i: int, ev: Event) -> None:
        m = self._msgs.get(i)
        if m is None:
            return
        aid = ev.data["attempt_id"]
        a = m.attempts.get(aid)
        if a is None or a.ended:
            return
        a.ended = True
        limit = a.receipt_deadline if a.receipt_deadline is not None else a.deadline
        if ev.at > limit + EPS:
            what = "receipt wait" if a.receipt_deadline is not None else "attempt"
            self._flag(f"{what} ran past its deadline", i, ev.at, f"{aid}: ended {ev.at - limit:.6f}s late")

    # ---------------------------------------------------------------- the driver's side

    def on_accept(self, i: int, route: str, at: float) -> None:
        """The driver accepted message `i` on `route` at `at` (and starts its delivery then)."""
        to = self.timeouts[route]
        self._msgs[i] = _Message(to, at + to.message)
        if i >= self._accepted:
            self._gaps.update(range(self._accepted, i))
            self._accepted = i + 1
        else:
            self._gaps.discard(i)

    def _was_accepted(self, i: int) -> bool:
        return 0 <= i < self._accepted and i not in self._gaps

    def on_attempt_started(self, i: int, cmd: StartAttempt) -> None:
        """The engine asked for an attempt: recompute its deadline from its channel's and check
        the one the engine granted against it; the driver then runs it until on_attempt_stopped."""
        aid = cmd.attempt_id
        at = cmd.started_at
        m = self._msgs.get(i)
        if m is None:
            if self._was_accepted(i):
                self._flag("work after the message finished", i, at, "attempt_started")
            else:
                self._flag("attempt of a message never accepted", i, at, aid)
            self._running[aid] = (i, cmd.deadline)
            return
        stack = m.channels.get(cmd.channel)
        if not stack:
            self._flag("attempt outside a running channel", i, at, aid)
            self._running[aid] = (i, cmd.deadline)
            return
        ch_dl = stack[-1]
        if at > ch_dl + EPS:
            self._flag("attempt started after its channel deadline", i, at, aid)
        provider = cmd.provider
        dl = at + m.timeouts.provider[provider]
        if dl > ch_dl:
            dl = ch_dl
        m.attempts[aid] = _Attempt(provider, dl, ch_dl)
        if cmd.deadline > dl + EPS:
            self._flag("attempt granted a deadline beyond the hierarchy", i, at,
                       f"{aid}: {cmd.deadline - dl:.6f}s too long")
        self._running[aid] = (i, dl)

    def on_attempt_stopped(self, attempt_id: str, now: float) -> None:
        """The driver handed the attempt's answer to the engine, or cancelled it."""
        entry = self._running.pop(attempt_id, None)
        if entry is not None and now > entry[1] + EPS:
            self._flag("attempt kept running past its deadline", entry[0], now,
                       f"{attempt_id}: stopped {now - entry[1]:.6f}s late")

    def on_finish(self, i: int, cmd: Finish) -> None:
        """The engine finished message `i` (its Finish command)."""
        m = self._msgs.pop(i, None)
        if m is None:
            return
        at = cmd.at
        if at > m.deadline + EPS:
            self._flag("message ran past its deadline", i, at, f"{at - m.deadline:.6f}s late")
        for aid, a in m.attempts.items():
            if not a.ended:
                self._flag("attempt outlived its message", i, at, aid)

    def finish_run(self, now: float) -> None:
        """End of the run: whatever still runs or never finished is a violation."""
        for aid, (i, _) in self._running.items():
            self._flag("attempt never stopped", i, now, aid)
        self._running.clear()
        for i in list(self._msgs):
            self._flag("message never finished", i, now, "")
        self._msgs.clear()

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "kinds": dict(self.counts),
                "examples": [asdict(v) for v in self.examples]}
