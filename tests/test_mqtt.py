"""daemon/mqtt.py against a real mosquitto (tests/mqtt_broker.py): events out, sends in, the mqtt
provider type, and broker outages (buffering, drop counting, reconnect, resubscribe)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aiomqtt
import pytest

from routingd.daemon.adapters import AdapterContext, AttemptRequest, build_adapter
from routingd.daemon.core.engine import Event
from routingd.daemon.core.policy import MqttProvider, MqttSection
from routingd.daemon.mqtt import (MqttConfigError, MqttLink, TopicTemplateError, event_payload, event_publisher,
                         parse_broker_url, render_topic)

from daemon_process import free_port
from daemon_process import run_bounded as run
from daemon_process import until
from mqtt_broker import Broker, payload_json, receive, start_broker, subscriber

PREFIX = "rt"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
AT = 1_700_000_000.25


def settings(url: str, **kw: Any) -> MqttSection:
    return MqttSection(url=url, topic_prefix=PREFIX, **kw)


def link_for(broker: Broker, **kw: Any) -> MqttLink:
    opts = {k: kw.pop(k) for k in ("on_drop", "on_state") if k in kw}
    return MqttLink(settings(broker.url, **kw), reconnect_min_s=0.05, reconnect_max_s=0.2, **opts)


def attempt(to: dict[str, Any], message_id: str = "m-9") -> AttemptRequest:
    return AttemptRequest(message_id=message_id, attempt_id="a-1", channel="push", provider="devices",
                          try_no=1, deadline_s=5.0, idempotency_key=f"{message_id}:push:devices", to=to,
                          content={"title": "Door open", "body": "front door"}, metadata={"k": "v"})


DEVICE = MqttProvider(type="mqtt", topic="devices/{to.user_id}/notify")


# --------------------------------------------------------------------------- pure parts


def test_broker_url_credentials_port_and_errors() -> None:
    a = parse_broker_url(MqttSection(url="mqtt://bob:s%40cret@broker.local"))
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.local", 1883, False, "bob", "s@cret")
    b = parse_broker_url(MqttSection(url="mqtts://u:p@h:9000", username="env-user", password="env-pw"))
    assert (b.port, b.tls, b.username, b.password) == (9000, True, "env-user", "env-pw")
    assert parse_broker_url(MqttSection(url="mqtt://h", tls=True)).port == 8883
    for bad, why in (("http://h:1883", "expected mqtt://host"), ("mqtt://", "expected mqtt://host"),
                     ("mqtt://h:1883/topic", "no path or query"), ("mqtt://h:99999", "out of range")):
        # policy validation rejects these at `check` time (tests/test_policy.py); the link keeps its
        # own check as defence in depth, so build the section without validation here.
        with pytest.raises(MqttConfigError, match=why) as err:
            parse_broker_url(MqttSection.model_construct(url=bad))
        assert err.value.key == "daemon.mqtt.url" and repr(bad) in str(err.value)
        assert err.value.lines() == [f"daemon.mqtt.url: {err.value}"]



def test_unreadable_ca_file_is_a_config_error_at_once(tmp_path: Any) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(MqttConfigError, match="cannot load the CA bundle") as err:
        MqttLink(MqttSection(url="mqtts://127.0.0.1", ca_file=missing))
    assert err.value.key == "daemon.mqtt.ca_file" and missing in str(err.value)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(MqttConfigError) as err:
        MqttLink(MqttSection(url="mqtt://127.0.0.1", tls=True, ca_file=str(tmp_path / "junk.pem")))
    assert err.value.key == "daemon.mqtt.ca_file"
    MqttLink(MqttSection(url="mqtt://127.0.0.1", ca_file=missing))   # no TLS: ca_file is not read


def test_event_payload_shape_and_times() -> None:
    p = event_payload("m-1", Event("retry_scheduled", AT, {"at": AT + 2, "delay_s": 2.0, "channel": "sms",
                                                          "deadline": float("inf")}))
    assert p["type"] == "retry_scheduled" and p["message_id"] == "m-1"
    assert p["at"] == "2023-11-14T22:13:20.250Z"
    assert p["retry_at"] == "2023-11-14T22:13:22.250Z" and p["delay_s"] == 2.0 and p["channel"] == "sms"
    assert p["deadline"] is None            # no deadline: JSON null, never Infinity
    json.dumps(p, allow_nan=False)


def test_topic_template() -> None:
    assert render_topic(DEVICE.topic, attempt({"user_id": "u42"})) == "devices/u42/notify"
    assert render_topic("m/{message_id}/{to.n}", attempt({"n": 7}, "x1")) == "m/x1/7"
    for to, template, reason in [({}, DEVICE.topic, "no 'user_id'"),
                                 ({"user_id": "a/b"}, DEVICE.topic, "holds"),
                                 ({"user_id": "#"}, DEVICE.topic, "holds"),
                                 ({"user_id": {"x": 1}}, DEVICE.topic, "not a string"),
                                 ({"user_id": "u"}, "d/{channel}", "unknown placeholder")]:
        with pytest.raises(TopicTemplateError, match=reason):
            render_topic(template, attempt(to))


def test_publish_nowait_never_raises_and_bounds_the_buffer() -> None:
    drops: list[int] = []
    link = MqttLink(settings("mqtt://127.0.0.1:1", buffer=2), on_drop=drops.append)
    assert link.publish_nowait("a/+/b", {"x": 1}) is False       # not a topic name
    assert link.publish_nowait("a/b", {"x": float("nan")}) is False
    assert [link.publish_nowait("a/b", {"i": i}) for i in range(4)] == [True, True, False, False]
    assert (link.buffered, link.dropped, drops) == (2, 2, [1, 1])


# --------------------------------------------------------------------------- events


def test_events_published_per_message_and_received(mqtt_broker: Broker) -> None:
    async def main() -> None:
        link = link_for(mqtt_broker)
        async with link, subscriber(mqtt_broker, f"{PREFIX}/events/#") as sub:
            assert await link.wait_connected(5), link.last_error
            publish = event_publisher(link)
            publish("m-1", Event("started", AT, {"route": "default", "message_deadline": AT + 120}))
            publish("m-1", Event("attempt_started", AT + 0.5, {"attempt_id": "a-1", "channel": "email",
                                                             "provider": "ses", "deadline": AT + 10.5}))
            publish("m-2", Event("finished", AT + 1, {"status": "delivered"}))
            msgs = await receive(sub, 3)
        assert [str(m.topic) for m in msgs] == [f"{PREFIX}/events/m-1", f"{PREFIX}/events/m-1",
                                                f"{PREFIX}/events/m-2"]
        assert all(m.qos == 1 for m in msgs)
        started, attempt_started, finished = (payload_json(m) for m in msgs)
        assert started["type"] == "started" and started["message_id"] == "m-1"
        assert started["route"] == "default" and RFC3339_MS.match(started["message_deadline"])
        assert attempt_started["provider"] == "ses" and RFC3339_MS.match(attempt_started["deadline"])
        assert finished == {"type": "finished", "message_id": "m-2", "at": "2023-11-14T22:13:21.250Z",
                            "status": "delivered"}
        assert link.dropped == 0

    run(main())


class FailsOnceLink(MqttLink):
    """A link whose connection task hits a bug (an exception outside its own handling) once."""

    runs = 0

    async def _run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("a bug in the connection task")
        await super()._run()


def test_a_connection_task_that_dies_is_restarted(mqtt_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        link = FailsOnceLink(settings(mqtt_broker.url), reconnect_min_s=0.05, reconnect_max_s=0.2)
        async with link, subscriber(mqtt_broker, f"{PREFIX}/events/#") as sub:
            assert await link.wait_connected(5), link.last_error
            event_publisher(link)("m-1", Event("finished", AT, {"status": "delivered"}))
            [msg] = await receive(sub, 1)
        assert payload_json(msg)["message_id"] == "m-1" and link.runs == 2

    with caplog.at_level("ERROR", logger="routingd.mqtt"):
        run(main())
    assert "MQTT connection task ended unexpectedly; restarting it" in caplog.text
    assert "a bug in the connection task" in caplog.text


def test_buffer_overflow_counted_while_broker_down_and_backlog_flows_after_restart(
        mqtt_broker_persistent: Broker) -> None:
    broker = mqtt_broker_persistent

    async def main() -> None:
        drops: list[int] = []
        states: list[bool] = []
        # A persistent session: the broker keeps QoS 1 messages for it while it is offline, so
        # the test sees exactly what the link published after its reconnect.
        persistent = {"identifier": "events-reader", "clean_session": False}
        async with subscriber(broker, f"{PREFIX}/events/#", **persistent):
            pass
        link = link_for(broker, buffer=5, on_drop=drops.append, on_state=states.append)
        publish = event_publisher(link)
        async with link:
            assert await link.wait_connected(5), link.last_error
            await asyncio.to_thread(broker.stop)
            await until(lambda: not link.connected, what="the link to notice the outage")
            for i in range(8):
                publish(f"m-{i}", Event("accepted", AT + i, {}))
            assert (link.dropped, drops, link.buffered) == (3, [1, 1, 1], 5)
            await asyncio.to_thread(broker.start)
            assert await link.wait_connected(10), link.last_error
            publish("m-after", Event("accepted", AT + 9, {}))
            await until(lambda: link.buffered == 0 and link.published >= 6, what="the backlog to drain")
        assert states[:3] == [True, False, True]
        async with subscriber(broker, **persistent) as sub:
            msgs = await receive(sub, 6)
        assert sorted(str(m.topic) for m in msgs) == sorted(
            f"{PREFIX}/events/{m}" for m in ("m-0", "m-1", "m-2", "m-3", "m-4", "m-after"))
        assert link.dropped == 3                  # nothing more was lost over the reconnect

    run(main())


# --------------------------------------------------------------------------- ingress


async def publish_sends(broker: Broker, *payloads: str | bytes) -> None:
    """Publish each payload on {PREFIX}/send (QoS 1) from a client of its own, as a producer would."""
    async with aiomqtt.Client(broker.host, broker.port) as sender:
        for raw in payloads:
            await sender.publish(f"{PREFIX}/send", raw, qos=1)


def recording_submit(seen: list[bytes]) -> Callable[[bytes], Awaitable[tuple[bool, dict[str, Any]]]]:
    """A real validator in miniature: JSON object with a "message" object, else a rejection."""

    async def submit(raw: bytes) -> tuple[bool, dict[str, Any]]:
        seen.append(raw)
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            return False, {"error": "invalid JSON", "details": [str(exc)]}
        if not isinstance(doc, dict) or not isinstance(doc.get("message"), dict):
            return False, {"error": "invalid request", "details": ["message: field required"]}
        return True, {"message_id": f"msg-{len(seen)}"}

    return submit


def test_sends_reach_submit_rejections_are_answered_and_survive_a_reconnect(mqtt_broker: Broker) -> None:
    async def main() -> None:
        seen: list[bytes] = []
        link = link_for(mqtt_broker)
        link.set_ingress(recording_submit(seen))
        send = json.dumps({"message": {"to": {"email": "a@example.com"}, "content": {"title": "hi"}}})
        async with link:
            assert await link.wait_connected(5), link.last_error
            async with subscriber(mqtt_broker, f"{PREFIX}/accepted", f"{PREFIX}/rejected") as sub:
                await publish_sends(mqtt_broker, send, b'{"nope": 1}', b"not json")
                msgs = await receive(sub, 3)
            assert sorted(seen) == sorted([send.encode(), b'{"nope": 1}', b"not json"])
            accepted = [payload_json(m) for m in msgs if m.topic.matches(f"{PREFIX}/accepted")]
            rejected = {json.dumps(b["request"]): b for m in msgs
                        if m.topic.matches(f"{PREFIX}/rejected") for b in [payload_json(m)]}
            assert len(accepted) == 1 and accepted[0]["message_id"].startswith("msg-")
            assert rejected[json.dumps({"nope": 1})]["error"] == "invalid request"
            assert rejected[json.dumps({"nope": 1})]["details"] == ["message: field required"]
            assert rejected[json.dumps("not json")]["error"] == "invalid JSON"

            # The subscription is renewed after the broker comes back.
            await asyncio.to_thread(mqtt_broker.stop)
            await until(lambda: not link.connected, what="the link to notice the outage")
            await asyncio.to_thread(mqtt_broker.start)
            assert await link.wait_connected(10), link.last_error
            async with subscriber(mqtt_broker, f"{PREFIX}/accepted") as sub:
                await publish_sends(mqtt_broker, send)
                (again,) = await receive(sub, 1)
            assert payload_json(again)["message_id"] == "msg-4" and len(seen) == 4

    run(main())


def group_member(broker: Broker, client_id: str) -> tuple[MqttLink, list[bytes]]:
    """A link in the shared-subscription group (no answers on accepted) and the sends it took."""
    seen: list[bytes] = []
    link = link_for(broker, shared_subscription=True, client_id=client_id)
    link.set_ingress(recording_submit(seen), answer_accepted=False)
    return link, seen


def test_shared_subscription_splits_sends_between_daemons(mqtt_broker: Broker) -> None:
    async def main() -> None:
        a, seen_a = group_member(mqtt_broker, "daemon-a")
        b, seen_b = group_member(mqtt_broker, "daemon-b")
        assert a.send_subscription == f"$share/routingd/{PREFIX}/send"
        async with a, b:
            assert await a.wait_connected(5) and await b.wait_connected(5)
            sends = [json.dumps({"message": {"n": i}}).encode() for i in range(20)]
            await publish_sends(mqtt_broker, *sends)
            await until(lambda: len(seen_a) + len(seen_b) >= 20, what="20 sends to be handled")
            await asyncio.sleep(0.2)            # a duplicate would show up here
        assert sorted(seen_a + seen_b) == sorted(sends)   # each send handled exactly once
        assert seen_a and seen_b                          # ... and the load was split

    run(main())


def test_stop_ingress_hands_new_sends_to_the_rest_of_the_group(mqtt_broker: Broker) -> None:
    async def main() -> None:
        a, seen_a = group_member(mqtt_broker, "draining-a")
        b, seen_b = group_member(mqtt_broker, "staying-b")
        async with a, b, subscriber(mqtt_broker, f"{PREFIX}/events/#") as events:
            assert await a.wait_connected(5) and await b.wait_connected(5)
            await a.stop_ingress()
            sends = [json.dumps({"message": {"n": i}}).encode() for i in range(10)]
            await publish_sends(mqtt_broker, *sends)
            await until(lambda: len(seen_b) >= 10, what="10 sends to reach the staying daemon")
            # The draining link still publishes its events.
            event_publisher(a)("m-1", Event("finished", AT, {"status": "delivered"}))
            [ev] = await receive(events, 1)
        assert seen_a == [] and sorted(seen_b) == sorted(sends)
        assert payload_json(ev)["message_id"] == "m-1"

    run(main())


# --------------------------------------------------------------------------- acknowledgements and sessions


@pytest.fixture
def packet_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto whose packet log says what it received and sent (start_broker(debug=True))."""
    broker = start_broker(tmp_path / "mosquitto", debug=True)
    try:
        yield broker
    finally:
        broker.stop(hard=True)


def pubacks(broker: Broker, client_id: str) -> list[int]:
    """The mids the broker got a PUBACK for from `client_id`, in the order it got them."""
    return [int(m) for m in re.findall(rf"Received PUBACK from {re.escape(client_id)} \(Mid: (\d+),",
                                       broker.packet_log())]


def sends_to(broker: Broker, client_id: str, dup: int = 0) -> list[int]:
    """The mids of the sends the broker handed to `client_id` (dup=1: delivered again)."""
    return [int(m) for m in re.findall(rf"Sending PUBLISH to {re.escape(client_id)} \(d{dup}, q1, r0, m(\d+), "
                                       rf"'{PREFIX}/send'", broker.packet_log())]


def test_sends_are_acknowledged_once_submitted_and_in_the_order_they_arrived(packet_broker: Broker) -> None:
    first, second = b'{"message": {"n": 1}}', b'{"message": {"n": 2}}'

    async def main() -> None:
        first_may_finish = asyncio.Event()

        async def submit(raw: bytes) -> tuple[bool, dict[str, Any]]:
            if raw == first:
                await first_may_finish.wait()
            return True, {"message_id": json.loads(raw)["message"]["n"]}

        link = link_for(packet_broker, client_id="ordered")
        link.set_ingress(submit)
        async with link, subscriber(packet_broker, f"{PREFIX}/accepted") as sub:
            assert await link.wait_connected(5), link.last_error
            await publish_sends(packet_broker, first, second)
            # The second is answered first (its PUBACK would have reached the broker before the
            # answer did), but it is not acknowledged while the first is still being submitted.
            [answer] = await receive(sub, 1)
            assert payload_json(answer) == {"message_id": 2}
            assert pubacks(packet_broker, "ordered") == []
            first_may_finish.set()
            [answer] = await receive(sub, 1)
            assert payload_json(answer) == {"message_id": 1}
            await until(lambda: len(pubacks(packet_broker, "ordered")) == 2, what="both PUBACKs")
        assert pubacks(packet_broker, "ordered") == sends_to(packet_broker, "ordered") == [1, 2]

    run(main())


def test_only_a_link_that_takes_sends_under_a_client_id_of_its_own_keeps_its_session(
        packet_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    kept = link_for(packet_broker, client_id="kept", qos=2)
    events_only = link_for(packet_broker, client_id="events-only", subscribe=False)
    unnamed = link_for(packet_broker)
    for link in (kept, events_only, unnamed):
        link.set_ingress(recording_submit([]))

    async def main() -> None:
        async with kept, events_only, unnamed:
            for link in (kept, events_only, unnamed):
                assert await link.wait_connected(5), link.last_error

    with caplog.at_level("INFO", logger="routingd.mqtt"):
        run(main())
    log = packet_broker.packet_log()
    assert (kept.persistent_session, events_only.persistent_session, unnamed.persistent_session) == (True, False, False)
    assert re.search(r"as kept \(p2, c0, ", log)                     # clean session 0
    assert re.search(r"as events-only \(p2, c1, ", log)
    assert re.search(rf"as {unnamed.client_id} \(p2, c1, ", log)
    # QoS 2 would hand the send over (PUBREC) before it is stored: the subscription is QoS 1.
    assert "Received SUBSCRIBE from kept\n" in log and f"\t{PREFIX}/send (QoS 1)" in log
    assert caplog.text.count("daemon.mqtt.client_id is not set") == 1
    assert "as kept (persistent session), taking sends" in caplog.text


def test_a_link_that_stops_taking_sends_leaves_them_to_the_next_start_of_its_session(
        packet_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    early, late = b'{"message": {"n": "early"}}', b'{"message": {"n": "late"}}'

    async def main() -> None:
        stopping = asyncio.Event()
        seen_a: list[bytes] = []
        seen_b: list[bytes] = []

        async def stopping_submit(raw: bytes) -> tuple[bool, dict[str, Any]]:
            seen_a.append(raw)
            await stopping.wait()       # what the daemon's router answers once it is stopping:
            return False, {"error": "routingd is not running; retry later", "details": [], "retry_after": 1.0}

        a = link_for(packet_broker, client_id="restarting")
        a.set_ingress(stopping_submit)
        async with subscriber(packet_broker, f"{PREFIX}/accepted", f"{PREFIX}/rejected") as sub:
            async with a:
                assert await a.wait_connected(5), a.last_error
                await publish_sends(packet_broker, early)
                await until(lambda: seen_a == [early], what="the early send to be submitted")
                await a.stop_ingress()          # draining: the subscription stays, nothing is taken
                stopping.set()
                await until(lambda: "MQTT send (mid 1) left to the broker" in caplog.text,
                            what="the early send to be left unanswered")
                await publish_sends(packet_broker, late)
                await until(lambda: sends_to(packet_broker, "restarting") == [1, 2], what="the late send to arrive")
            assert seen_a == [early] and pubacks(packet_broker, "restarting") == []

            b = link_for(packet_broker, client_id="restarting")     # the next start
            b.set_ingress(recording_submit(seen_b))
            async with b:
                answers = await receive(sub, 2)
                await until(lambda: len(pubacks(packet_broker, "restarting")) == 2, what="both PUBACKs")
        assert sorted(seen_b) == sorted([early, late])
        assert [str(m.topic) for m in answers] == [f"{PREFIX}/accepted"] * 2   # nothing was rejected
        assert sends_to(packet_broker, "restarting", dup=1) == [1, 2]

    with caplog.at_level("DEBUG", logger="routingd.mqtt"):
        run(main())
    assert "the broker keeps those on rt/send for session restarting" in caplog.text


# --------------------------------------------------------------------------- provider type "mqtt"


def test_mqtt_provider_publishes_to_the_device_topic_and_puback_is_delivered(mqtt_broker: Broker) -> None:
    async def main() -> None:
        link = link_for(mqtt_broker)
        adapter = build_adapter("devices", DEVICE, AdapterContext(mqtt=link))
        async with link, subscriber(mqtt_broker, "devices/+/notify") as sub:
            assert await link.wait_connected(5), link.last_error
            req = attempt({"user_id": "u42", "email": "a@example.com"})
            outcome = await asyncio.wait_for(adapter.send(req), 5)
            assert (outcome.status, outcome.network) == (200, False)
            (msg,) = await receive(sub, 1)
            assert str(msg.topic) == "devices/u42/notify" and msg.qos == 1
            assert payload_json(msg) == req.payload()

            missing = await adapter.send(attempt({"email": "a@example.com"}))
            assert missing.status == 400 and not missing.network and "user_id" in missing.detail

    run(main())


def test_mqtt_provider_without_broker_is_a_network_outcome(mqtt_broker: Broker) -> None:
    async def main() -> None:
        req = attempt({"user_id": "u42"})
        unconfigured = build_adapter("devices", DEVICE, AdapterContext(mqtt=None))
        outcome = await unconfigured.send(req)
        assert outcome.network and outcome.detail == "[daemon.mqtt] is not configured"

        link = link_for(mqtt_broker)
        adapter = build_adapter("devices", DEVICE, AdapterContext(mqtt=link))
        async with link:
            assert await link.wait_connected(5), link.last_error
            await asyncio.to_thread(mqtt_broker.stop)
            await until(lambda: not link.connected, what="the link to notice the outage")
            down = await asyncio.wait_for(adapter.send(req), 5)
            assert down.network and down.status is None and "not connected" in down.detail
            await asyncio.to_thread(mqtt_broker.start)
            assert await link.wait_connected(10), link.last_error
            back = await asyncio.wait_for(adapter.send(req), 5)
            assert back.status == 200

        never = MqttLink(settings(f"mqtt://127.0.0.1:{free_port()}"), reconnect_min_s=0.05, reconnect_max_s=0.1)
        async with never:
            assert not await never.wait_connected(0.3)
            outcome = await build_adapter("devices", DEVICE, AdapterContext(mqtt=never)).send(req)
            assert outcome.network and "not connected" in outcome.detail

    run(main())
