"""HTTP (GET /v1/messages/{id}) and MQTT (the events topic) publish an event in one shape:
one serialiser (daemon/status.py event_json) formats its times and renames its shadowing keys."""

from __future__ import annotations

import json

from routingd.daemon.core.engine import Event
from routingd.daemon.mqtt import event_payload
from routingd.daemon.status import message_json
from routingd.daemon.store import EventRow, MessageRow

AT = 1_700_000_000.25


def _http_events(*events: Event | EventRow) -> list[dict]:
    row = MessageRow(id="m-1", request="{}", route="default", policy_version="v", status="pending",
                     accepted_at=AT, message_deadline=AT + 60)
    return message_json(row, [], list(events))["events"]


def test_http_and_mqtt_format_an_event_alike() -> None:
    ev = Event("retry_scheduled", AT, {"at": AT + 2, "delay_s": 2.0, "channel": "sms", "deadline": float("inf"),
                                       "receipt_deadline": AT + 5, "probe_at": AT + 1, "message_id": "x",
                                       "type": "y", "ratio": float("nan"), "nested": {"n": [1.5]}})
    http = _http_events(ev)[0]
    mqtt = event_payload("m-1", ev)
    assert mqtt.pop("message_id") == "m-1"
    assert http == mqtt
    assert http["retry_at"] == "2023-11-14T22:13:22.250Z" and http["probe_at"] == "2023-11-14T22:13:21.250Z"
    assert http["receipt_deadline"] == "2023-11-14T22:13:25.250Z"
    assert http["deadline"] is None and http["ratio"] is None      # never Infinity / NaN in JSON
    assert http["event_message_id"] == "x" and http["event_type"] == "y"
    json.dumps(http, allow_nan=False)


def test_a_stored_event_reads_as_the_live_one() -> None:
    data = {"channel": "email", "deadline": AT + 9, "at": AT + 3}
    live, stored = _http_events(Event("channel_started", AT, data), EventRow("m-1", "channel_started", AT, data))
    assert live == stored
    assert live["data_at"] == "2023-11-14T22:13:23.250Z"    # `at` of another event than retry_scheduled
