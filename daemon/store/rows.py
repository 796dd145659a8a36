"""The rows the stores read and write (daemon/store/interface.py): plain dataclasses, the same
for every implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class MessageRow:
    id: str
    request: str
    route: str
    policy_version: str
    status: str
    accepted_at: float
    message_deadline: float
    finished_at: float | None = None
    delivered_at: float | None = None
    idempotency_key: str | None = None
    run: int = 0


@dataclass(slots=True)
class AttemptRow:
    attempt_id: str
    message_id: str
    channel: str
    provider: str
    try_no: int
    started_at: float
    deadline: float
    ended_at: float | None = None
    outcome: str | None = None
    status_code: int | None = None
    detail: str | None = None
    provider_message_id: str | None = None


@dataclass(slots=True)
class EventRow:
    message_id: str
    type: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredMessage:
    message: MessageRow
    attempts: list[AttemptRow]
    events: list[EventRow]
