"""How a simulated run's facts reach its readers (simulator/runner.py): the metrics, the
hierarchy checker and, with trace=True, the trace each hand the driver a {event type: handler}
table; `event_sinks` merges them into one handler per type, and `_both` makes one call of two
for what the driver tells the metrics and the trace alike (accepts, attempts, finishes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from ..daemon.core.engine import Event

EventSink = Callable[[int, Event], None]


def event_sinks(*tables: Mapping[str, EventSink]) -> dict[str, EventSink]:
    """One handler per event type from several readers' {type: handler} tables (called in the
    order given); a type no reader wants has no entry, so it costs one failed lookup."""
    merged: dict[str, list[EventSink]] = {}
    for table in tables:
        for type_, handler in table.items():
            merged.setdefault(type_, []).append(handler)
    return {type_: hs[0] if len(hs) == 1 else _fan_out(tuple(hs)) for type_, hs in merged.items()}


def _fan_out(handlers: tuple[EventSink, ...]) -> EventSink:
    if len(handlers) == 2:
        first, second = handlers

        def both(i: int, ev: Event) -> None:
            first(i, ev)
            second(i, ev)
        return both

    def each(i: int, ev: Event) -> None:
        for h in handlers:
            h(i, ev)
    return each


def _both(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def call(*args: Any) -> None:
        first(*args)
        second(*args)
    return call
