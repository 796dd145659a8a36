"""The engine's records: its one input record (`Outcome`), the commands it hands its driver, the
attempt records and the names of the event types it emits (docs/architecture.md, "The engine
contract"). Re-exported by engine.py: drivers import them from routingd.daemon.core.engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Union

from mypy_extensions import mypyc_attr

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Outcome:
    """What one attempt's provider call gave: an HTTP-like status, or a network failure."""

    status: int | None = None
    network: bool = False
    retry_after_s: float | None = None
    detail: str = ""
    provider_message_id: str | None = None   # the vendor's id for the message, for its receipts


# --------------------------------------------------------------------------- commands
#
# Commands are immutable named tuples: the engine makes ~10 of them per message, and a tuple is
# the cheapest immutable record CPython builds (a frozen dataclass's __init__ costs about four
# times as much; the simulator's throughput depends on it). Two commands are equal only if they
# are of the same type and hold the same fields (plain tuples would compare equal across types).
# mypyc (setup.py compiles this module) cannot make a tuple subclass a native class, so these stay
# ordinary Python classes there (native_class=False); everything else here compiles natively.


@mypyc_attr(native_class=False)
class _Typed:
    """Mixed into each command: equal only to a command of the same type with the same fields."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type,operator]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = tuple.__hash__


class _StartAttempt(NamedTuple):
    attempt_id: str
    message_id: str
    channel: str
    provider: str
    try_no: int
    started_at: float
    deadline: float
    idempotency_key: str
    confirm: str = "response"


@mypyc_attr(native_class=False)
class StartAttempt(_Typed, _StartAttempt):
    """Call the provider (the attempt may run until `deadline`, seconds on the driver's clock)."""

    __slots__ = ()


class _CancelAttempt(NamedTuple):
    attempt_id: str
    reason: str


@mypyc_attr(native_class=False)
class CancelAttempt(_Typed, _CancelAttempt):
    """Stop the attempt; its answer, if one still comes, must not be fed back."""

    __slots__ = ()


class _SetTimer(NamedTuple):
    at: float | None


@mypyc_attr(native_class=False)
class SetTimer(_Typed, _SetTimer):
    """The one wake-up this delivery wants (replaces any earlier one); None: no timer."""

    __slots__ = ()


class _Event(NamedTuple):
    type: str
    at: float
    data: dict[str, Any]


@mypyc_attr(native_class=False)
class Event(_Typed, _Event):
    """One entry of a message's history (`data` holds the event's own fields).

    An Event is also the command to record it: `RecordEvent` is this very class, and `.event`
    returns the event itself, so a driver reads `cmd.event.type` whichever name it matched."""

    __slots__ = ()

    @property
    def event(self) -> "Event":
        return self


RecordEvent = Event


class _Finish(NamedTuple):
    status: Literal["delivered", "undeliverable", "expired", "cancelled"]
    at: float
    delivered_at: float | None


@mypyc_attr(native_class=False)
class Finish(_Typed, _Finish):
    """The message reached its terminal status."""

    __slots__ = ()


Command = Union[StartAttempt, CancelAttempt, SetTimer, Event, Finish]

AttemptOutcomeName = Literal["delivered", "failed", "timeout", "network", "rejected", "cancelled"]


@dataclass(slots=True)
class AttemptRecord:
    attempt_id: str
    channel: str
    provider: str
    try_no: int
    started_at: float
    deadline: float
    ended_at: float | None = None
    outcome: str | None = None
    status_code: int | None = None
    receipt_deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"attempt_id": self.attempt_id, "channel": self.channel, "provider": self.provider,
                "try": self.try_no, "started_at": self.started_at, "ended_at": self.ended_at,
                "deadline": self.deadline, "outcome": self.outcome, "status_code": self.status_code}


_tnew = tuple.__new__       # _tnew(SetTimer, (at,)) = SetTimer(at), less a Python-level __new__ call


def _record(type_: str, at: float, data: dict[str, Any]) -> Event:
    """The command recording Event(type_, at, data), built without NamedTuple's __new__."""
    return _tnew(Event, (type_, at, data))


# --------------------------------------------------------------------------- event types
#
# Every type of Event the engine emits (docs/api.md lists their fields). The engine, and any
# reader matching an event by type, names them by these constants, never by a string of its own.

STARTED: Final = "started"
CHANNEL_STARTED: Final = "channel_started"
CHANNEL_SKIPPED: Final = "channel_skipped"
CHANNEL_FINISHED: Final = "channel_finished"
CHANNEL_DEADLINE: Final = "channel_deadline"
MESSAGE_DEADLINE: Final = "message_deadline"
ATTEMPT_STARTED: Final = "attempt_started"
ATTEMPT_ENDED: Final = "attempt_ended"
ATTEMPT_ACCEPTED: Final = "attempt_accepted"
ATTEMPT_RESUMED: Final = "attempt_resumed"
ATTEMPT_SLOW: Final = "attempt_slow"
ATTEMPT_HELD: Final = "attempt_held"
PROVIDER_SKIPPED: Final = "provider_skipped"
PROVIDER_SPILLED: Final = "provider_spilled"
ATTEMPT_QUEUED: Final = "attempt_queued"
RETRY_SCHEDULED: Final = "retry_scheduled"
RETRY_ABANDONED: Final = "retry_abandoned"
RECEIPT_TIMEOUT: Final = "receipt_timeout"
RECEIPT_UNKNOWN: Final = "receipt_unknown"
LATE_RECEIPT: Final = "late_receipt"
FAILOVER: Final = "failover"
DELIVERED: Final = "delivered"
DUPLICATE: Final = "duplicate"
FINISHED: Final = "finished"
BREAKER_OPENED: Final = "breaker_opened"
BREAKER_CLOSED: Final = "breaker_closed"

EVENT_TYPES: Final = frozenset({
    STARTED, CHANNEL_STARTED, CHANNEL_SKIPPED, CHANNEL_FINISHED, CHANNEL_DEADLINE, MESSAGE_DEADLINE,
    ATTEMPT_STARTED, ATTEMPT_ENDED, ATTEMPT_ACCEPTED, ATTEMPT_RESUMED, ATTEMPT_SLOW, ATTEMPT_HELD,
    PROVIDER_SKIPPED, PROVIDER_SPILLED, ATTEMPT_QUEUED, RETRY_SCHEDULED, RETRY_ABANDONED, RECEIPT_TIMEOUT, RECEIPT_UNKNOWN, LATE_RECEIPT,
    FAILOVER, DELIVERED, DUPLICATE, FINISHED, BREAKER_OPENED, BREAKER_CLOSED})
