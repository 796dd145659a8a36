"""MQTT for the daemon: one broker connection, events out, sends in, and the `mqtt` provider type.

    link = MqttLink(policy.model.daemon.mqtt, on_drop=metrics.mqtt_dropped.inc)
    link.set_ingress(submit)                       # before start(); async submit(bytes) -> (ok, body)
    router.add_event_listener(event_publisher(link))
    await link.start()  ...  await link.stop_ingress()  # drain  ...  await link.close(flush_timeout=2.0)

`MqttLink` keeps one aiomqtt client alive in a background task and reconnects with capped
exponential back-off (aiomqtt's documented reconnect loop: a fresh `async with Client(...)` per
attempt, `MqttError` = connection failed or lost). Everything the daemon publishes on its own
(events, accepted/rejected answers) goes through a bounded buffer: `publish_nowait()` never blocks
and never raises; when the buffer is full the publication is dropped, counted (`dropped`, the
`on_drop` hook for `routingd_mqtt_events_dropped_total`) and logged at most every 10 s. What was
buffered while the broker was away is published after the reconnect (QoS 1 = PUBACK awaited; a
publication interrupted by a lost connection goes back to the head of the buffer: at-least-once).

Sends on `{prefix}/send` are acknowledged late: the PUBACK of a QoS 1 send goes out only once it
is committed to the store, or once its rejection was published on `{prefix}/rejected` (PUBACK
awaited), in the order the sends arrived. With `client_id` set the session is persistent
(clean_session false), so a send that routingd received but had not committed when it crashed
or lost the connection is delivered again by the broker. aiomqtt (2.5) has no switch for this
(empicano/aiomqtt#345): paho's own manual_ack_set()/ack() are used on the paho client aiomqtt
wraps (`_paho()`).

The `mqtt` provider adapter publishes directly and waits for the PUBACK (= delivered); without a
connection it answers a network outcome at once, so failover moves on instead of waiting.
Topics and payloads: docs/mqtt.md.

The package's modules, one job each: link.py (MqttLink: the connection, reconnects, the publish
buffer), sends.py (taking sends, with the late acknowledgements), events.py (the events
publisher), config.py (the broker address, topic checks, the errors); the provider adapter is
daemon/providers/mqtt.py, like every provider type. Everything is importable from
`routingd.daemon.mqtt` as before.
"""

from __future__ import annotations

from typing import Any

from .config import (BrokerAddress as BrokerAddress, MqttConfigError as MqttConfigError,
                     MqttUnavailable as MqttUnavailable, TopicTemplateError as TopicTemplateError,
                     check_topic as check_topic, parse_broker_url as parse_broker_url)
from .events import EventCallback as EventCallback, event_payload as event_payload, event_publisher as event_publisher
from .link import (DROPPED_METRIC as DROPPED_METRIC, PENDING_PUBLISH_WARNING as PENDING_PUBLISH_WARNING,
                   SHARE_GROUP as SHARE_GROUP, MqttLink as MqttLink)
from .sends import (INGRESS_CONCURRENCY as INGRESS_CONCURRENCY, MAX_ECHO_BYTES as MAX_ECHO_BYTES,
                    SubmitFn as SubmitFn, rejection_payload as rejection_payload)
from ..providers import mqtt as _adapter  # importing registers the provider type "mqtt"

_ADAPTER_NAMES = frozenset({"MqttProviderAdapter", "UnconfiguredMqttAdapter", "render_topic"})


def __getattr__(name: str) -> Any:
    """The provider adapter's names, from daemon/providers/mqtt.py, looked up when asked for:
    that module imports this package's errors, so it may still be loading when this runs."""
    if name in _ADAPTER_NAMES:
        return getattr(_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
