"""MQTT against a REAL `routingd serve` process and a REAL mosquitto (tests/mqtt_broker.py).

Issue 6, "Done when": events for a message's whole life, a send arriving over MQTT and delivered
(and an invalid one answered on {prefix}/rejected), the `mqtt` provider publishing to the device
topic, an `mqtt` provider without [daemon.mqtt] failing over at once, and the broker stopped and
restarted under traffic with HTTP service unbroken and events flowing again afterwards.

The daemon is driven over HTTP with blocking calls (tests/daemon_process.py); they run in a
thread (`http()`) so that the aiomqtt subscribers keep reading meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import aiomqtt
import pytest

from daemon_process import DaemonProcess
from daemon_process import run_bounded as run
from mqtt_broker import Broker, payload_json, receive_until, start_broker, subscriber

PREFIX = "rt"
TOKEN = "mqtt-daemon-t0ken"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def policy(broker_url: str | None, *, buffer: int = 10_000, client_id: str = "routingd-under-test") -> str:
    """Email goes through a fast sandbox; push tries the `mqtt` device provider first and falls
    over to a sandbox. `broker_url=None` leaves [daemon.mqtt] out."""
    mqtt = "" if broker_url is None else f"""
[daemon.mqtt]
url = "{broker_url}"
topic_prefix = "{PREFIX}"
client_id = "{client_id}"
qos = 1
buffer = {buffer}
keepalive = 5
"""
    return f"""
version = 1

[daemon]
api_tokens = ["{TOKEN}"]
grace = "2s"
watch = false
{mqtt}
[timeouts]
provider = "2s"
channel = "5s"
message = "20s"

[failover]
on = [408, 429, "5xx", "timeout", "network"]

[providers.mail]
type = "sandbox"
latency = {{ median = "5ms", p99 = "20ms" }}

[providers.device]
type = "mqtt"
topic = "devices/{{to.user_id}}/notify"
qos = 1
timeout = "2s"
breaker = false

[providers.fallback]
type = "sandbox"
latency = {{ median = "5ms", p99 = "20ms" }}

[channels.email]
providers = ["mail"]
requires = "email"

[channels.push]
providers = ["device", "fallback"]
requires = "user_id"

[routes.default]
channels = ["email"]

[routes.push]
channels = ["push"]
"""


# --------------------------------------------------------------------------- helpers


async def http(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """A blocking DaemonProcess call, off the loop so the MQTT clients keep reading."""
    return await asyncio.to_thread(fn, *args, **kw)


async def receive_events(client: aiomqtt.Client, message_id: str, timeout: float = 8.0) -> list[dict[str, Any]]:
    """The events of one message up to and including "finished" (others are ignored)."""
    msgs = await receive_until(
        client, lambda got: any(payload_json(m).get("type") == "finished" for m in got
                                if str(m.topic) == f"{PREFIX}/events/{message_id}"),
        timeout, what=f"events of {message_id}")
    mine = [m for m in msgs if str(m.topic) == f"{PREFIX}/events/{message_id}"]
    assert all(m.qos == 1 for m in mine), [m.qos for m in mine]
    return [payload_json(m) for m in mine]


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll a blocking condition (run in a thread) until it is truthy; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(cond)
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def mail(n: int | str) -> dict[str, Any]:
    return {"to": {"email": f"u{n}@example.com"}, "content": {"title": "hi", "body": f"n={n}"}}


def push(user: str) -> dict[str, Any]:
    return {"to": {"user_id": user}, "content": {"title": "Door open"}, "route": "push"}


def connected(d: DaemonProcess) -> float | None:
    return d.metric("routingd_mqtt_connected")


def dropped(d: DaemonProcess) -> float:
    return d.metric("routingd_mqtt_events_dropped_total") or 0.0


# --------------------------------------------------------------------------- the shared daemon


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield b
    finally:
        b.stop(hard=True)


@pytest.fixture(scope="module")
def daemon(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("routingd"), policy(broker.url), token=TOKEN) as d:
        run(until(lambda: connected(d) == 1, what="routingd_mqtt_connected 1"))
        yield d
        assert d.stop() == 0, d.log_tail()


# --------------------------------------------------------------------------- events


def test_events_for_a_whole_life_over_http_send(broker: Broker, daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with subscriber(broker, f"{PREFIX}/events/#") as sub:
            mid = await http(daemon.send, mail(1))
            events = await receive_events(sub, mid)
        status = await http(daemon.wait_status, mid, "delivered")

        types = [e["type"] for e in events]
        # Exactly what the engine recorded, in the same order (the status endpoint's list).
        assert types == [e["type"] for e in status["events"]]
        for a, b in (("started", "attempt_started"), ("attempt_started", "attempt_ended"),
                     ("attempt_ended", "delivered"), ("delivered", "finished")):
            assert types.index(a) < types.index(b), types
        assert types[0] == "started" and types[-1] == "finished"
        for e in events:
            assert e["message_id"] == mid and RFC3339_MS.match(e["at"]), e
        ats = [e["at"] for e in events]
        assert ats == sorted(ats)
        by_type = {e["type"]: e for e in events}
        assert by_type["started"]["route"] == "default"
        assert by_type["started"]["policy_version"] == status["policy_version"]
        assert by_type["attempt_started"]["provider"] == "mail"
        assert by_type["attempt_started"]["attempt_id"] == status["attempts"][0]["attempt_id"]
        assert RFC3339_MS.match(by_type["attempt_started"]["deadline"])
        assert by_type["attempt_ended"]["outcome"] == "delivered"
        assert by_type["finished"]["status"] == "delivered"

    run(main())


# --------------------------------------------------------------------------- sends over MQTT


def test_send_over_mqtt_is_accepted_delivered_and_an_invalid_one_rejected(
        broker: Broker, daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with subscriber(broker, f"{PREFIX}/accepted", f"{PREFIX}/rejected",
                              f"{PREFIX}/events/#") as sub:
            await sub.publish(f"{PREFIX}/send", json.dumps({"message": mail("mqtt")}), qos=1)
            got = await receive_until(sub, lambda g: any(str(m.topic) == f"{PREFIX}/accepted" for m in g),
                                      what="the answer on accepted")
            answer = payload_json(next(m for m in got if str(m.topic) == f"{PREFIX}/accepted"))
            mid = answer["message_id"]
            status = await http(daemon.wait_status, mid, "delivered")
            assert status["attempts"][0]["provider"] == "mail"
            assert [a["outcome"] for a in status["attempts"]] == ["delivered"]
            # Its events are published like those of an HTTP send.
            events = [payload_json(m) for m in got if str(m.topic) == f"{PREFIX}/events/{mid}"]
            if not any(e["type"] == "finished" for e in events):
                events += await receive_events(sub, mid)
            assert events[-1]["type"] == "finished" and events[-1]["status"] == "delivered"

            # Invalid: no recipient. Not JSON. An unknown route. Each one answered on rejected.
            bad = [json.dumps({"message": {"content": {"title": "no recipient"},
                                           "metadata": {"key": "bad-1"}}}).encode(),
                   b"not json",
                   json.dumps({"message": {**mail(2), "route": "nope"}}).encode()]
            for raw in bad:
                await sub.publish(f"{PREFIX}/send", raw, qos=1)
            got = await receive_until(
                sub, lambda g: sum(str(m.topic) == f"{PREFIX}/rejected" for m in g) >= len(bad),
                what="three rejections")
            rejected = [payload_json(m) for m in got if str(m.topic) == f"{PREFIX}/rejected"]
            assert not [m for m in got if str(m.topic) == f"{PREFIX}/accepted"]
        by_request = {json.dumps(r["request"], sort_keys=True): r for r in rejected}
        assert len(by_request) == 3
        no_to = by_request[json.dumps(json.loads(bad[0]), sort_keys=True)]
        assert no_to["error"] == "invalid send request"
        assert ["message", "to"] in [d["loc"] for d in no_to["details"]]
        assert no_to["request"]["message"]["metadata"] == {"key": "bad-1"}
        not_json = by_request[json.dumps("not json")]
        assert "JSON" in not_json["error"]
        unknown = by_request[json.dumps(json.loads(bad[2]), sort_keys=True)]
        assert any(d["loc"] == ["message", "route"] and "nope" in d["msg"] for d in unknown["details"])

    run(main())


def test_an_mqtt_send_larger_than_max_body_is_refused_like_an_http_one(broker: Broker, daemon: DaemonProcess) -> None:
    """The same [daemon] max_body on every way in (issue 24.4): a 3 MB send over MQTT (no token
    needed there) was accepted and stored while HTTP refuses anything over 256 KiB."""
    accepted_before = daemon.metric("routingd_messages_accepted_total")

    async def main() -> list[dict[str, Any]]:
        async with subscriber(broker, f"{PREFIX}/accepted", f"{PREFIX}/rejected") as sub:
            for size in (3 * 1024 * 1024, 256 * 1024 + 1):
                body = {"message": {**mail("big"), "content": {"body": ""}}}
                pad = size - len(json.dumps(body))
                body["message"]["content"]["body"] = "x" * pad
                raw = json.dumps(body).encode()
                assert len(raw) == size
                await sub.publish(f"{PREFIX}/send", raw, qos=1)
            got = await receive_until(
                sub, lambda g: sum(str(m.topic) == f"{PREFIX}/rejected" for m in g) >= 2, what="two rejections")
            assert not [m for m in got if str(m.topic) == f"{PREFIX}/accepted"]
            return [payload_json(m) for m in got if str(m.topic) == f"{PREFIX}/rejected"]

    rejected = run(main())
    for r in rejected:
        assert r["error"] == "request body too large (limit 262144 bytes)", r["error"]
        assert r["request_truncated"] in (3 * 1024 * 1024, 256 * 1024 + 1)
    assert daemon.metric("routingd_messages_accepted_total") == accepted_before


# --------------------------------------------------------------------------- provider type mqtt


def test_mqtt_provider_publishes_to_the_device_topic_and_puback_is_delivered(
        broker: Broker, daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with subscriber(broker, "devices/u42/notify") as device:
            mid = await http(daemon.send, push("u42"))
            got = await receive_until(device, lambda g: len(g) >= 1, what="the device notification")
        status = await http(daemon.wait_status, mid, "delivered")
        note = got[0]
        assert str(note.topic) == "devices/u42/notify" and note.qos == 1
        payload = payload_json(note)
        assert payload["message_id"] == mid
        assert payload["to"] == {"user_id": "u42"}
        assert payload["content"] == {"title": "Door open"}
        assert payload["channel"] == "push"
        [attempt] = status["attempts"]
        assert (attempt["provider"], attempt["outcome"], attempt["status_code"]) == ("device", "delivered", 200)
        assert payload["attempt_id"] == attempt["attempt_id"]

    run(main())


def test_mqtt_provider_without_puback_before_the_deadline_is_a_timeout(broker: Broker, daemon: DaemonProcess) -> None:
    async def main() -> None:
        msg = {**push("frozen"), "providers": {"device": {"timeout": "300ms"}}}
        async with subscriber(broker, "devices/frozen/notify") as device:
            broker.pause()             # the connection stays up, but no PUBACK comes
            try:
                mid = await http(daemon.send, msg)
                st = await http(daemon.wait_status, mid, "delivered")
            finally:
                broker.resume()
            # The PUBLISH was on the wire: the broker passes it on once it runs again.
            [late] = await receive_until(device, lambda g: len(g) >= 1, what="the late notification")
        assert payload_json(late)["message_id"] == mid
        first, second = st["attempts"]
        assert (first["provider"], first["outcome"]) == ("device", "timeout"), st
        assert (second["provider"], second["outcome"]) == ("fallback", "delivered"), st
        await until(lambda: connected(daemon) == 1, what="the link to stay connected")

    run(main())


def test_mqtt_provider_without_daemon_mqtt_fails_over_at_once(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, policy(None), token=TOKEN) as d:
        mid = d.send(push("u7"))
        status = d.wait_status(mid, "delivered", timeout=10)
        first, second = status["attempts"]
        assert (first["provider"], first["outcome"]) == ("device", "network")
        assert first["detail"] == "[daemon.mqtt] is not configured"
        assert (second["provider"], second["outcome"]) == ("fallback", "delivered")
        assert d.metric("routingd_mqtt_connected") in (None, 0.0)
        assert d.stop() == 0


# --------------------------------------------------------------------------- broker outage


def test_broker_stopped_and_restarted_under_traffic(mqtt_broker_persistent: Broker, tmp_path: Path) -> None:
    broker = mqtt_broker_persistent
    buffer = 8
    # A persistent session: the broker keeps the QoS 1 events published while this reader is
    # offline, so the test sees exactly what routingd published after its reconnect.
    reader = {"identifier": "events-reader", "clean_session": False}

    async def main(d: DaemonProcess) -> None:
        await until(lambda: connected(d) == 1, what="routingd_mqtt_connected 1")
        async with subscriber(broker, f"{PREFIX}/events/#", **reader) as sub:
            mid = await http(d.send, mail("before"))
            assert (await receive_events(sub, mid))[-1]["status"] == "delivered"
        assert await http(dropped, d) == 0

        await asyncio.to_thread(broker.stop)
        await until(lambda: connected(d) == 0, what="routingd_mqtt_connected 0 after the broker stopped")

        # Traffic while the broker is down: every send answered 202 and delivered, HTTP probes fine.
        outage: list[str] = []
        for i in range(6):
            outage.append(await http(d.send, mail(f"down-{i}")))
            if i % 2:
                outage.append(await http(d.send, push(f"dev{i}")))
            assert (await http(d.get, "/healthz")).status == 200
        statuses = [await http(d.wait_status, m, "delivered") for m in outage]
        assert (await http(d.get, "/readyz")).status == 200
        for st in statuses:
            if st["route"] == "push":      # the device attempt fails at once, the fallback delivers
                first, second = st["attempts"]
                assert (first["provider"], first["outcome"]) == ("device", "network"), st
                assert "not connected to the MQTT broker" in first["detail"], st
                assert (second["provider"], second["outcome"]) == ("fallback", "delivered"), st
        emitted = sum(len(st["events"]) for st in statuses)
        assert emitted > buffer
        drops = await http(dropped, d)
        assert 0 < drops <= emitted - buffer
        assert "MQTT buffer full" in d.log_text()

        await asyncio.to_thread(broker.start)
        await until(lambda: connected(d) == 1, timeout=15, what="routingd_mqtt_connected 1 after the restart")
        async with subscriber(broker, **reader) as sub:
            # What waited in the buffer is published after the reconnect, oldest first...
            backlog = await receive_until(sub, lambda g: len(g) >= emitted - drops, what="the backlog")
            # ...and events flow again for new messages.
            mid = await http(d.send, mail("after"))
            after = await receive_events(sub, mid)
        assert [e["type"] for e in after] == [e["type"] for e in (await http(d.status, mid))["events"]]
        events = [payload_json(m) for m in backlog]
        assert {e["message_id"] for e in events} <= set(outage)
        assert len(events) == emitted - drops == buffer   # nothing beyond the drops was lost
        # Oldest first: the messages (sent one after another) in the order they were sent, and
        # each message's events in the order they happened. (Not one `at` order across messages:
        # a message's first events carry its acceptance time but are emitted once its insert has
        # committed, after events another message had meanwhile.)
        order = list(dict.fromkeys(e["message_id"] for e in events))
        assert order == [m for m in outage if m in order], "the backlog is published oldest first"
        for m in order:
            ats = [e["at"] for e in events if e["message_id"] == m]
            assert ats == sorted(ats), f"the backlog of {m} is published oldest first"
        first = [e["type"] for e in events if e["message_id"] == outage[0]]
        assert first and first == [e["type"] for e in statuses[0]["events"]][:len(first)]
        assert await http(dropped, d) == drops

    with DaemonProcess(tmp_path / "d", policy(broker.url, buffer=buffer), token=TOKEN) as d:
        run(main(d), timeout=35)
        assert d.stop() == 0, d.log_tail()


# --------------------------------------------------------------------------- startup and credentials


def test_daemon_starts_without_broker_and_connects_when_it_appears(mqtt_broker: Broker, tmp_path: Path) -> None:
    broker = mqtt_broker
    broker.stop()

    async def main(d: DaemonProcess) -> None:
        # No broker: HTTP is served, email delivered, the device attempt fails over at once.
        assert (await http(d.get, "/readyz")).status == 200
        st = await http(d.wait_status, await http(d.send, push("late")), "delivered")
        assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == [("device", "network"),
                                                                           ("fallback", "delivered")]
        assert "not connected to the MQTT broker at mqtt://127.0.0.1:" in st["attempts"][0]["detail"]
        assert await http(connected, d) == 0
        await until(lambda: re.search(r"MQTT broker mqtt://\S+ unreachable: .*reconnecting in", d.log_text()),
                    what="the unreachable-broker warning")

        await asyncio.to_thread(broker.start)
        await until(lambda: connected(d) == 1, timeout=15, what="routingd_mqtt_connected 1")
        # The send subscription is made on connect: a send over MQTT is taken now.
        async with subscriber(broker, f"{PREFIX}/accepted") as sub:
            await sub.publish(f"{PREFIX}/send", json.dumps({"message": mail("late")}), qos=1)
            [answer] = await receive_until(sub, lambda g: len(g) >= 1, what="the answer on accepted")
        await http(d.wait_status, payload_json(answer)["message_id"], "delivered")

    with DaemonProcess(tmp_path / "d", policy(broker.url), token=TOKEN) as d:
        run(main(d))
        assert d.stop() == 0, d.log_tail()


def test_broker_credentials_from_the_environment(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "mosquitto", users={"routingd": "s3cret-pw"})
    text = policy(broker.url).replace(
        'keepalive = 5\n', 'keepalive = 5\nusername = "${MQTT_USER}"\npassword = "${MQTT_PASSWORD}"\n')
    try:
        d = DaemonProcess(tmp_path / "d", text, token=TOKEN, env={"MQTT_USER": "routingd", "MQTT_PASSWORD": "wrong"})
        with d:
            # Refused by the broker: logged with the reason, HTTP unaffected, SIGTERM still exits 0.
            run(until(lambda: re.search(r"ERROR routingd.mqtt: MQTT broker mqtt://\S+ refused the connection: .*[Nn]ot authori[sz]ed "
                                        r"\(check daemon.mqtt.username, password and client_id\)", d.log_text()),
                      what="the not-authorised warning"))
            assert "s3cret-pw" not in d.log_text() and "wrong" not in d.log_text()
            assert d.wait_status(d.send(mail("auth")), "delivered")
            assert connected(d) == 0
            assert d.stop() == 0, d.log_tail()

            d.env = {"MQTT_USER": "routingd", "MQTT_PASSWORD": "s3cret-pw"}
            d.start()

            async def main() -> None:
                await until(lambda: connected(d) == 1, what="routingd_mqtt_connected 1")
                async with subscriber(broker, "devices/sec/notify", username="routingd",
                                      password="s3cret-pw") as device:
                    mid = await http(d.send, push("sec"))
                    [note] = await receive_until(device, lambda g: len(g) >= 1, what="the device notification")
                assert payload_json(note)["message_id"] == mid
                st = await http(d.wait_status, mid, "delivered")
                assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == [("device", "delivered")]

            run(main())
            assert d.stop() == 0, d.log_tail()
    finally:
        broker.stop(hard=True)


def test_bad_broker_url_is_a_startup_error(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, policy("http://127.0.0.1:1883"), token=TOKEN, start_timeout=10)
    d.spawn()
    assert d.wait() == 1
    out = d.log_text().strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert out == (f"{d.config_path}:10: daemon.mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], "
                   "got 'http://127.0.0.1:1883'")
