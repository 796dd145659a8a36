"""The events publisher: a Router event listener that publishes each event to
{prefix}/events/{message_id} through the link's buffer (docs/mqtt.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..core.engine import Event
from ..status import event_json

if TYPE_CHECKING:
    from .link import MqttLink

log = logging.getLogger("routingd.mqtt")


EventCallback = Callable[[str, Event], None]


def event_payload(message_id: str, event: Event) -> dict[str, Any]:
    """{"type", "message_id", "at", **data}: the one event serialiser (daemon/status.py event_json)."""
    return event_json(event, message_id)


def event_publisher(link: MqttLink, prefix: str | None = None) -> EventCallback:
    """A Router event listener: cb(message_id, event) publishes to {prefix}/events/{message_id}
    through the link's buffer (QoS = daemon.mqtt.qos, 1 by default). Never blocks or raises."""
    base = (prefix if prefix is not None else link.prefix).strip("/")

    def publish(message_id: str, event: Event) -> None:
        try:
            link.publish_nowait(f"{base}/events/{message_id}", event_payload(message_id, event))
        except Exception:  # a listener must never break the router
            log.exception("MQTT event for %s not published", message_id)

    return publish
