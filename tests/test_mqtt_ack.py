"""Sends over MQTT are acknowledged only once stored: a REAL `routingd serve` process, a REAL
mosquitto (tests/mqtt_broker.py, with its packet log when a test reads what the broker saw) and
the daemon's REAL SQLite file.

The window between "received" and "stored" is held open by another SQLite connection holding
the store's write lock (BEGIN IMMEDIATE): the daemon's commit waits for it (up to the store's 5 s
busy timeout), and the test kills the daemon, or stops the broker, meanwhile. The daemon runs
with --log-level DEBUG, so its log says when it has read a send ("MQTT send received (mid N").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import aiomqtt

from daemon_process import DaemonProcess, run_bounded, wait_until
from mqtt_broker import Broker, payload_json, receive_until, start_broker, subscriber

PREFIX = "rt"
TOKEN = "mqtt-ack-t0ken"
CLIENT_ID = "routingd-ack"
SEND, ACCEPTED, REJECTED = f"{PREFIX}/send", f"{PREFIX}/accepted", f"{PREFIX}/rejected"
RECEIVED = re.compile(r"MQTT send received \(mid (\d+),")
RUN_S = 40.0        # bound on each asyncio.run below: these tests restart the daemon


def policy(broker_url: str) -> str:
    return f"""
version = 1

[daemon]
api_tokens = ["{TOKEN}"]
grace = "2s"
watch = false

[daemon.mqtt]
url = "{broker_url}"
topic_prefix = "{PREFIX}"
client_id = "{CLIENT_ID}"
qos = 1
keepalive = 5

[timeouts]
provider = "2s"
channel = "5s"
message = "20s"

[providers.mail]
type = "sandbox"
latency = {{ median = "5ms", p99 = "20ms" }}

[channels.email]
providers = ["mail"]
requires = "email"

[routes.default]
channels = ["email"]
"""


def daemon(tmp_path: Path, broker: Broker) -> DaemonProcess:
    return DaemonProcess(tmp_path / "routingd", policy(broker.url), token=TOKEN, args=["--log-level", "DEBUG"])


def send(marker: str, **extra: Any) -> bytes:
    return json.dumps({**extra, "message": {"to": {"email": f"{marker}@example.com"},
                                            "content": {"title": "hi", "body": marker}}}).encode()


async def publish(broker: Broker, *payloads: bytes, retain: bool = False) -> None:
    """Publish on {prefix}/send (QoS 1) from a producer client of its own."""
    async with aiomqtt.Client(broker.host, broker.port) as producer:
        for raw in payloads:
            await producer.publish(SEND, raw, qos=1, retain=retain)


def connected(d: DaemonProcess) -> bool:
    return d.metric("routingd_mqtt_connected") == 1


def received_mids(d: DaemonProcess) -> list[int]:
    """The mids of the sends the daemon has read (its DEBUG log, this start only)."""
    return [int(m) for m in RECEIVED.findall(d.log_text())]


def stored(d: DaemonProcess, marker: str) -> int:
    """Messages in the daemon's SQLite file whose request holds `marker`."""
    with contextlib.closing(sqlite3.connect(str(d.state_path), timeout=5)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages WHERE request LIKE ?",
                                (f"%{marker}%",)).fetchone()[0])


@contextlib.contextmanager
def store_write_locked(d: DaemonProcess) -> Iterator[None]:
    """Hold the store's SQLite write lock: the daemon's commits wait (a stalled disk, a busy
    database) until this ends, for at most its 5 s busy timeout."""
    conn = sqlite3.connect(str(d.state_path), timeout=5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def open_session(broker: Broker, client: dict[str, Any], *topics: str) -> None:
    """Create a persistent session subscribed to `topics` (the broker keeps what they get)."""
    async with subscriber(broker, *topics, **client):
        pass


def acked(broker: Broker, mid: int) -> bool:
    return f"Received PUBACK from {CLIENT_ID} (Mid: {mid}," in broker.packet_log()


def answers(msgs: list[aiomqtt.Message], topic: str) -> list[dict[str, Any]]:
    return [payload_json(m) for m in msgs if str(m.topic) == topic]


# --------------------------------------------------------------------------- crash before the commit


def test_a_send_routingd_was_killed_on_before_storing_it_is_delivered_once_after_the_restart(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "mosquitto", debug=True)
    try:
        with daemon(tmp_path, broker) as d:
            wait_until(lambda: connected(d), what="routingd_mqtt_connected 1")
            with store_write_locked(d):
                run_bounded(publish(broker, send("crash-window")), RUN_S)
                wait_until(lambda: received_mids(d), timeout=4, what="the daemon to read the send")
                [mid] = received_mids(d)
                d.kill()                                  # received, not committed: SIGKILL
            assert f"Sending PUBLISH to {CLIENT_ID} (d0, q1, r0, m{mid}, '{SEND}'" in broker.packet_log()
            assert not acked(broker, mid), "the send was acknowledged before it was stored"
            assert stored(d, "crash-window") == 0

            async def restart() -> list[aiomqtt.Message]:
                async with subscriber(broker, ACCEPTED, REJECTED) as sub:
                    await asyncio.to_thread(d.start)      # same client id: the session resumes
                    return await receive_until(sub, lambda g: len(g) >= 1, timeout=15, what="the answer")

            got = run_bounded(restart(), RUN_S)
            [answer] = answers(got, ACCEPTED)
            assert answers(got, REJECTED) == []
            # The broker delivered it again (DUP flag), and this time it was acknowledged.
            assert f"Sending PUBLISH to {CLIENT_ID} (d1, q1, r0, m{mid}, '{SEND}'" in broker.packet_log()
            wait_until(lambda: acked(broker, mid), timeout=5, what="the PUBACK of the redelivered send")
            status = d.wait_status(answer["message_id"], "delivered")
            assert [a["outcome"] for a in status["attempts"]] == ["delivered"]
            assert d.stop() == 0, d.log_tail()
        assert stored(d, "crash-window") == 1                 # exactly one message
        assert "Traceback" not in d.log_text(), d.log_tail()
    finally:
        broker.stop(hard=True)


BURST = 12


def test_a_burst_routingd_was_killed_on_between_receiving_and_committing_is_stored_once_each(
        tmp_path: Path) -> None:
    """A first burst is stored and acknowledged; a second burst is read by the daemon while its
    commits wait on the write lock, and the daemon is SIGKILLed: the broker (persistent session)
    delivers the second burst again at the next start, every send is stored exactly once (the
    idempotency_key each carries keeps a redelivery one message), none lost, the first burst
    never comes again."""
    broker = start_broker(tmp_path / "mosquitto", debug=True)
    first = [f"burst-a-{i:02d}" for i in range(BURST)]
    second = [f"burst-b-{i:02d}" for i in range(BURST)]

    def sends(markers: list[str]) -> list[bytes]:
        return [send(m, idempotency_key=f"key-{m}") for m in markers]

    try:
        with daemon(tmp_path, broker) as d:
            wait_until(lambda: connected(d), what="routingd_mqtt_connected 1")

            async def stored_and_answered(markers: list[str]) -> None:
                async with subscriber(broker, ACCEPTED) as sub:
                    await publish(broker, *sends(markers))
                    await receive_until(sub, lambda g: len(g) >= len(markers), timeout=15, what="the accepts")

            run_bounded(stored_and_answered(first), RUN_S)
            before = received_mids(d)
            wait_until(lambda: all(acked(broker, mid) for mid in before), timeout=10, what="the first burst's PUBACKs")
            with store_write_locked(d):
                run_bounded(publish(broker, *sends(second)), RUN_S)
                wait_until(lambda: len(received_mids(d)) >= 2 * BURST, timeout=4,
                           what="the daemon to read the second burst")
                window = received_mids(d)[BURST:]
                d.kill()                                  # received, not committed: SIGKILL
            assert not [mid for mid in window if acked(broker, mid)], "a send was acknowledged before it was stored"
            assert [stored(d, m) for m in second] == [0] * BURST

            async def restart() -> list[aiomqtt.Message]:
                async with subscriber(broker, ACCEPTED, REJECTED) as sub:
                    await asyncio.to_thread(d.start)      # same client id: the session resumes
                    return await receive_until(sub, lambda g: len(g) >= BURST, timeout=20, what="the answers")

            got = run_bounded(restart(), RUN_S)
            assert answers(got, REJECTED) == []
            assert len(answers(got, ACCEPTED)) == BURST
            wait_until(lambda: all(acked(broker, mid) for mid in window), timeout=10,
                       what="the PUBACKs of the redelivered burst")
            assert d.stop() == 0, d.log_tail()
        assert [stored(d, m) for m in first + second] == [1] * (2 * BURST)     # each once, 0 lost
        assert "Traceback" not in d.log_text(), d.log_tail()
    finally:
        broker.stop(hard=True)


# --------------------------------------------------------------------------- stored, not acknowledged


def test_a_send_stored_but_not_acknowledged_comes_again_and_its_idempotency_key_keeps_it_one_message(
        tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "mosquitto", persistence=True, debug=True)
    # The answers arrive across a broker restart: a persistent session of their own keeps them.
    reader = {"identifier": "answers-reader", "clean_session": False}
    try:
        with daemon(tmp_path, broker) as d:
            wait_until(lambda: connected(d), what="routingd_mqtt_connected 1")
            run_bounded(open_session(broker, reader, ACCEPTED, REJECTED), RUN_S)
            with store_write_locked(d):
                run_bounded(publish(broker, send("keyed", idempotency_key="order-4711"), send("keyless")), RUN_S)
                wait_until(lambda: len(received_mids(d)) == 2, timeout=4, what="the daemon to read both sends")
                broker.stop()          # the connection is lost before the commits (sessions saved)
            # Lock released: both are stored now, but nothing can acknowledge them.
            wait_until(lambda: stored(d, "keyed") == 1 and stored(d, "keyless") == 1, timeout=5,
                       what="both sends to be stored")
            broker.start()

            async def collect() -> list[aiomqtt.Message]:
                async with subscriber(broker, **reader) as sub:
                    # 2 answers from the first delivery (buffered while the broker was down) and
                    # 2 from the broker's second delivery of the two unacknowledged sends.
                    return await receive_until(sub, lambda g: len(g) >= 4, timeout=20, what="4 answers")

            got = run_bounded(collect(), RUN_S)
            assert answers(got, REJECTED) == []
            accepted = answers(got, ACCEPTED)
            redelivered = re.findall(rf"Sending PUBLISH to {CLIENT_ID} \(d1, q1, r0, m\d+, '{SEND}'",
                                     broker.packet_log())
            assert len(redelivered) == 2, broker.packet_log()

            by_id: dict[str, list[dict[str, Any]]] = {}
            for a in accepted:
                by_id.setdefault(a["message_id"], []).append(a)
            keyed = [ans for ans in by_id.values() if len(ans) == 2]
            # The keyed send: one message, the second answer says it was a replay.
            assert len(keyed) == 1 and sorted(a.get("replayed", False) for a in keyed[0]) == [False, True]
            # The keyless one: at-least-once, two messages (docs/mqtt.md says to set a key).
            assert sorted(len(ans) for ans in by_id.values()) == [1, 1, 2]
            for message_id in by_id:
                d.wait_status(message_id, "delivered")
            assert d.stop() == 0, d.log_tail()
        assert stored(d, "keyed") == 1
        assert stored(d, "keyless") == 2
    finally:
        broker.stop(hard=True)


# --------------------------------------------------------------------------- answered sends are acknowledged


def test_accepted_and_rejected_sends_are_acknowledged_and_never_delivered_again(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "mosquitto", debug=True)
    try:
        with daemon(tmp_path, broker) as d:
            wait_until(lambda: connected(d), what="routingd_mqtt_connected 1")

            async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                async with subscriber(broker, ACCEPTED, REJECTED) as sub:
                    # One invalid send alone: its PUBACK comes after its rejection was published.
                    await publish(broker, b"not json")
                    [first] = await receive_until(sub, lambda g: len(g) >= 1, what="the first rejection")
                    await asyncio.to_thread(wait_until, lambda: received_mids(d), 5, "the send to be read")
                    [mid] = received_mids(d)
                    await asyncio.to_thread(wait_until, lambda: acked(broker, mid), 5, "its PUBACK")
                    log = broker.packet_log()
                    rejection = re.search(rf"Received PUBLISH from {CLIENT_ID} \(d0, q1, r0, m\d+, '{REJECTED}'", log)
                    assert rejection and rejection.start() < log.index(f"Received PUBACK from {CLIENT_ID} (Mid: {mid},")

                    # A valid send, the same again (a producer's retry: same idempotency_key), a send
                    # with no recipient and one with a bad key.
                    await publish(broker, send("happy", idempotency_key="happy-1"),
                                  send("happy", idempotency_key="happy-1"),
                                  json.dumps({"message": {"content": {"title": "no recipient"}}}).encode(),
                                  send("bad-key", idempotency_key=""))
                    got = await receive_until(sub, lambda g: len(g) >= 4, what="4 answers")
                return answers(got, ACCEPTED), [payload_json(first), *answers(got, REJECTED)]

            accepted, rejected = run_bounded(main(), RUN_S)
            # The happy path: one message; the retry answered with its id, marked as a replay.
            assert len(accepted) == 2 and accepted[0]["message_id"] == accepted[1]["message_id"]
            assert sorted(a.get("replayed", False) for a in accepted) == [False, True]
            d.wait_status(accepted[0]["message_id"], "delivered")
            errors = sorted(r["error"] for r in rejected)
            assert errors == ["bad idempotency_key", "invalid send request", "request body is not valid JSON"], rejected
            bad_key = next(r for r in rejected if r["error"] == "bad idempotency_key")
            assert bad_key["details"] == [{"loc": ["idempotency_key"], "msg": "1 to 255 printable ASCII characters"}]
            assert bad_key["request"]["idempotency_key"] == ""
            # Every send the broker handed to routingd was acknowledged...
            wait_until(lambda: all(acked(broker, m) for m in received_mids(d)), timeout=5, what="every PUBACK")
            assert len(received_mids(d)) == 5
            d.kill()
            assert stored(d, "happy") == 1

        async def take_over_session() -> list[aiomqtt.Message]:
            # ...so its session holds nothing: a client resuming it gets only what is new.
            async with aiomqtt.Client(broker.host, broker.port, identifier=CLIENT_ID, clean_session=False) as c:
                await publish(broker, send("marker"))
                return await receive_until(c, lambda g: any(b"marker" in m.payload for m in g  # type: ignore[operator]
                                                            if isinstance(m.payload, bytes)), what="the marker")

        got = run_bounded(take_over_session(), RUN_S)
        assert [m.payload for m in got] == [send("marker")]
    finally:
        broker.stop(hard=True)


# --------------------------------------------------------------------------- restarts


def test_sends_published_while_routingd_is_stopped_are_taken_at_its_next_start(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "mosquitto")
    try:
        with daemon(tmp_path, broker) as d:
            wait_until(lambda: connected(d), what="routingd_mqtt_connected 1")
            assert "(persistent session), taking sends from rt/send" in d.log_text()
            assert d.stop() == 0, d.log_tail()
            assert f"the broker keeps those on {SEND} for session {CLIENT_ID}" in d.log_text()
            run_bounded(publish(broker, *(send(f"while-down-{i}") for i in range(3))), RUN_S)

            async def restart() -> list[aiomqtt.Message]:
                async with subscriber(broker, ACCEPTED, REJECTED) as sub:
                    await asyncio.to_thread(d.start)
                    return await receive_until(sub, lambda g: len(g) >= 3, timeout=15, what="3 answers")

            got = run_bounded(restart(), RUN_S)
            assert answers(got, REJECTED) == []
            for a in answers(got, ACCEPTED):
                assert d.status(a["message_id"])["status"] in ("pending", "delivered")
                d.wait_status(a["message_id"], "delivered")
            assert d.stop() == 0, d.log_tail()
        assert [stored(d, f"while-down-{i}") for i in range(3)] == [1, 1, 1]
        assert "Traceback" not in d.log_text(), d.log_tail()
    finally:
        broker.stop(hard=True)
