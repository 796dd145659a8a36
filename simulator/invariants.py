"""An independent check of the timeout hierarchy (DESIGN.md "Timeout hierarchy").

It does not ask the engine what its deadlines are. From the resolved plan (the configured
timeouts) and the engine's event stream (when a message, channel and attempt started, when
each ended) it recomputes every deadline itself:

    message deadline = accept + message timeout
    channel deadline = min(channel start + channel timeout, message deadline)
    attempt deadline = min(attempt start + provider timeout, channel deadline)
    receipt deadline = min(2xx + receipt timeout, channel deadline)

and counts everything that ran past one of them. It also watches the driver's side: an attempt
that the simulator was still running (no answer handed in, no CancelAttempt) after its deadline,
or after its message finished, counts too, as does a message that never finished.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from daemon.core.engine import Event, StartAttempt
from daemon.core.plan import ChannelStep, GroupStep, Plan, Step

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


@dataclass
class _Attempt:
    provider: str
    deadline: float                 # recomputed attempt deadline
    channel_deadline: float
    receipt_deadline: float | None = None
    ended: bool = False


@dataclass
class _Message:
    timeouts: Timeouts
    deadline: float
    channels: dict[str, list[float]] = field(default_factory=dict)   # open instances' deadlines
    attempts: dict[str, _Attempt] = field(default_factory=dict)


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
        self._msgs: dict[int, _Message] = {}
        self._finished: set[int] = set()
        self._running: dict[str, tuple[int, float]] = {}   # driver: attempt id -> (message, deadline)
        self._deadline_of: dict[str, float] = {}             # attempt id -> recomputed deadline

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _flag(self, kind: str, i: int, at: float, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append(Violation(kind, i, at, detail))

    # ---------------------------------------------------------------- the engine's events

    def on_event(self, i: int, ev: Event) -> None:
        t, d = ev.type, ev.data
        if t == "started":
            to = self.timeouts[d["route"]]
            self._msgs[i] = _Message(to, ev.at + to.message)
            return
        m = self._msgs.get(i)
        if m is None:
            if i in self._finished and t in ("attempt_started", "channel_started"):
                self._flag("work after the message finished", i, ev.at, t)
            return
        if t == "channel_started":
            dl = min(ev.at + m.timeouts.channel[d["channel"]], m.deadline)
            if ev.at > m.deadline + EPS:
                self._flag("channel started after the message deadline", i, ev.at, d["channel"])
            m.channels.setdefault(d["channel"], []).append(dl)
        elif t == "channel_finished":
            stack = m.channels.get(d["channel"])
            if not stack:
                self._flag("channel finished without starting", i, ev.at, d["channel"])
                return
            dl = stack.pop()
            if ev.at > dl + EPS:
                self._flag("channel ran past its deadline", i, ev.at,
                           f"{d['channel']}: ended {ev.at - dl:.6f}s late")
        elif t == "attempt_started":
            stack = m.channels.get(d["channel"])
            if not stack:
                self._flag("attempt outside a running channel", i, ev.at, d["attempt_id"])
                return
            ch_dl = stack[-1]
            if ev.at > ch_dl + EPS:
                self._flag("attempt started after its channel deadline", i, ev.at, d["attempt_id"])
            dl = min(ev.at + m.timeouts.provider[d["provider"]], ch_dl)
            m.attempts[d["attempt_id"]] = _Attempt(d["provider"], dl, ch_dl)
            self._deadline_of[d["attempt_id"]] = dl
        elif t == "attempt_accepted":
            a = m.attempts.get(d["attempt_id"])
            if a is None:
                return
            if ev.at > a.deadline + EPS:
                self._flag("attempt ran past its deadline", i, ev.at, d["attempt_id"])
            rt = m.timeouts.receipt.get(a.provider)
            if rt is not None:
                a.receipt_deadline = min(ev.at + rt, a.channel_deadline)
        elif t == "attempt_ended":
            a = m.attempts.get(d["attempt_id"])
            if a is None or a.ended:
                return
            a.ended = True
            limit = a.receipt_deadline if a.receipt_deadline is not None else a.deadline
            if ev.at > limit + EPS:
                what = "receipt wait" if a.receipt_deadline is not None else "attempt"
                self._flag(f"{what} ran past its deadline", i, ev.at,
                           f"{d['attempt_id']}: ended {ev.at - limit:.6f}s late")
        elif t == "finished":
            if ev.at > m.deadline + EPS:
                self._flag("message ran past its deadline", i, ev.at, f"{ev.at - m.deadline:.6f}s late")
            for aid, a in m.attempts.items():
                if not a.ended:
                    self._flag("attempt outlived its message", i, ev.at, aid)
            del self._msgs[i]
            self._finished.add(i)

    # ---------------------------------------------------------------- the driver's side

    def on_attempt_started(self, i: int, cmd: StartAttempt) -> None:
        dl = self._deadline_of.pop(cmd.attempt_id, None)
        if dl is None:
            self._flag("attempt started without an attempt_started event", i, cmd.started_at, cmd.attempt_id)
            dl = cmd.deadline
        elif cmd.deadline > dl + EPS:
            self._flag("attempt granted a deadline beyond the hierarchy", i, cmd.started_at,
                       f"{cmd.attempt_id}: {cmd.deadline - dl:.6f}s too long")
        self._running[cmd.attempt_id] = (i, dl)

    def on_attempt_stopped(self, attempt_id: str, now: float) -> None:
        """The driver handed the attempt's answer to the engine, or cancelled it."""
        entry = self._running.pop(attempt_id, None)
        if entry is not None and now > entry[1] + EPS:
            self._flag("attempt kept running past its deadline", entry[0], now,
                       f"{attempt_id}: stopped {now - entry[1]:.6f}s late")

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
                "examples": [v.__dict__ for v in self.examples]}
