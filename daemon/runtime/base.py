"""What the Router's parts share: the per-message state (`_Live`), a policy version's snapshot,
the public answers and errors (`SubmitResult`, `Overloaded`, `Limits`) and the small helpers
more than one part uses (`request_bytes`, `timeout_problems`, `_attempt_values`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from ..adapters import Content, ProviderAdapter
from ..core.engine import AttemptRecord, Delivery, Event
from ..core.policy import Policy, Problem
from ..core.request import MessageRequest
from ..errors import RoutingdError
from ..openapi import MAX_TIMEOUT_MS
from ..store import AttemptRow, EventRow, MessageRow

class Overloaded(RoutingdError):
    """The router cannot take the message now (in-flight limit, or shutting down)."""

    def __init__(self, retry_after_s: float, reason: str = "routingd is at its in-flight limit") -> None:
        self.retry_after_s = retry_after_s
        self.reason = reason
        super().__init__(f"{reason}; retry in {retry_after_s:g}s")


class Limits(Protocol):
    """The process limits the Router reads: daemon/settings.py Settings (CLI > ROUTINGD_* env >
    [daemon]) or, without it, the policy's DaemonSection; durations in ms."""

    @property
    def max_inflight(self) -> int: ...

    @property
    def max_inflight_bytes(self) -> int: ...

    @property
    def max_body(self) -> int: ...

    @property
    def idempotency_ttl(self) -> int: ...

    @property
    def retention(self) -> int: ...


@dataclass(frozen=True)
class SubmitResult:
    message_id: str
    created: bool


@dataclass
class _Snapshot:
    policy: Policy
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    refs: int = 0


_NO_PRIOR: Mapping[str, AttemptRow] = MappingProxyType({})


class _Live:
    """One message this process is routing (or finished recently). Slots and a plain __init__:
    one is made per message and 1,024 finished ones are kept (and freed, cold) -- no attribute
    dict, no default factories, and the attempts of earlier runs as a shared empty mapping
    unless the message was resumed."""

    __slots__ = ("row", "request", "delivery", "snapshot", "prior", "events", "details", "tasks", "wake_seq",
                 "finished", "written", "rendered")

    def __init__(self, row: MessageRow, request: MessageRequest | None, delivery: Delivery, snapshot: _Snapshot,
                 prior: Mapping[str, AttemptRow] = _NO_PRIOR, events: list[EventRow | Event] | None = None,
                 rendered: dict[str, Content] | None = None) -> None:
        self.row = row
        self.request = request              # None once finished (only new attempts need it)
        self.rendered = rendered            # channel -> its template's content (None: no template)
        self.delivery = delivery
        self.snapshot = snapshot
        self.prior = prior                  # attempts of earlier runs (read only)
        self.events: list[EventRow | Event] = [] if events is None else events   # both have .type, .at, .data
        self.details: dict[str, str] = {}   # attempt_id -> detail
        self.tasks: dict[str, asyncio.Future[None]] = {}   # attempt tasks (or futures, see attempts.py)
        self.wake_seq = -1                  # the message's live entry in the WakeupHeap (-1: none)
        self.finished = False
        self.written: dict[str, tuple[Any, ...]] = {}     # attempt_id -> last row state stored


def timeout_problems(msg: MessageRequest) -> list[Problem]:
    """Request timeout overrides past MAX_TIMEOUT_MS (a year): "no deadline" in disguise, and a
    10^400 ms one would not even convert to a float. Checked for every way in (HTTP, MQTT)."""
    if msg.timeout is None and not msg.channels and not msg.providers:
        return []
    found: list[tuple[tuple[str | int, ...], int | None]] = []
    if msg.timeout is not None:
        found += [(("message", "timeout", k), getattr(msg.timeout, k)) for k in ("provider", "channel", "message")]
    for kind, targets in (("channels", msg.channels), ("providers", msg.providers)):
        for name, t in targets.items():
            found += [(("message", kind, name) + k, v) for k, v in t.timeout_values()]
    return [Problem(loc, f"at most {MAX_TIMEOUT_MS} ms (366 days)")
            for loc, v in found if v is not None and v > MAX_TIMEOUT_MS]


def request_bytes(text: str) -> int:
    """A request text's size in UTF-8 bytes, what [daemon] max_inflight_bytes counts (an ASCII
    text -- nearly all -- without encoding it)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _attempt_values(attempt_id: str, message_id: str, rec: AttemptRecord, detail: str | None) -> tuple[Any, ...]:
    """An attempt's row as Store.put_attempt_values() takes it (AttemptRow's field order) from
    the engine's record of it: the last four fields are (ended_at, outcome, status_code, detail),
    the state EventLog.note compares with `_Live.written`."""
    return (attempt_id, message_id, rec.channel, rec.provider, rec.try_no, rec.started_at,
            rec.deadline, rec.ended_at, rec.outcome, rec.status_code, detail)
