"""The JSON shapes of a message's state: the GET /v1/messages/{id} body (docs/api.md) and an
event as both HTTP and MQTT publish it (docs/mqtt.md "Events"): one serialiser, so that an event
reads the same whichever way it is watched.

    event_json(event, message_id=None)   {"type", ["message_id",] "at", **data}
        Times -- `at`, `deadline` and every data key ending in `_at` or `_deadline` -- are RFC 3339
        UTC with milliseconds (routingd.daemon.clock.rfc3339: saturates past year 9999); an
        infinite one (no deadline) and any other non-finite number are null, never Infinity. A data
        key that would shadow type / message_id / at is renamed: `at` of a retry_scheduled event is
        `retry_at` (any other `data_at`), `type` `event_type`, `message_id` `event_message_id`.
    attempt_json(row), message_json(row, attempts, events)   the status body's parts
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol, Sequence

from .clock import rfc3339
from .store import AttemptRow, MessageRow

__all__ = ["attempt_json", "event_json", "message_json"]


class EventLike(Protocol):
    """An engine Event or a stored EventRow: both have these."""

    @property
    def type(self) -> str: ...

    @property
    def at(self) -> float: ...

    @property
    def data(self) -> Mapping[str, Any]: ...


def _time(t: float) -> str | None:
    return rfc3339(t) if math.isfinite(t) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _is_time_key(key: str) -> bool:
    return key == "deadline" or key.endswith(("_at", "_deadline"))


def event_json(e: EventLike, message_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": e.type}
    if message_id is not None:
        out["message_id"] = message_id
    out["at"] = _time(e.at)
    for key, value in e.data.items():
        if key == "at":
            key = "retry_at" if e.type == "retry_scheduled" else "data_at"
        elif key == "type":
            key = "event_type"
        elif key == "message_id":
            key = "event_message_id"
        if _is_time_key(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = _time(float(value))
        else:
            out[key] = _jsonable(value)
    return out


def attempt_json(a: AttemptRow) -> dict[str, Any]:
    out: dict[str, Any] = {"attempt_id": a.attempt_id, "channel": a.channel, "provider": a.provider,
                           "try": a.try_no, "started_at": rfc3339(a.started_at), "ended_at": rfc3339(a.ended_at),
                           "deadline": rfc3339(a.deadline), "outcome": a.outcome, "status_code": a.status_code}
    if a.detail:
        out["detail"] = a.detail
    if a.provider_message_id:
        out["provider_message_id"] = a.provider_message_id
    return out


def message_json(row: MessageRow, attempts: list[dict[str, Any]], events: Sequence[EventLike]) -> dict[str, Any]:
    return {"message_id": row.id, "status": row.status, "accepted_at": rfc3339(row.accepted_at),
            "finished_at": rfc3339(row.finished_at), "delivered_at": rfc3339(row.delivered_at),
            "message_deadline": rfc3339(row.message_deadline), "route": row.route,
            "policy_version": row.policy_version, "attempts": attempts,
            "events": [event_json(e) for e in events]}
