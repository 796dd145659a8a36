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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote, urlsplit

import aiomqtt

from .adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from .core.engine import Event, Outcome
from .core.policy import MqttProvider, MqttSection
from .errors import RoutingdError
from .providers.redact import config_secrets, redact
from .status import event_json

log = logging.getLogger("routingd.mqtt")

SHARE_GROUP = "routingd"
DROPPED_METRIC = "routingd_mqtt_events_dropped_total"
MAX_ECHO_BYTES = 64 * 1024           # a rejected request is echoed in full up to this size
INGRESS_CONCURRENCY = 64             # sends handled at once; the reader waits beyond that
# aiomqtt logs a warning for every publish while more than `pending_calls_threshold` (10) await
# their PUBACK. The link alone has 16 publish workers, up to 64 rejections and the provider
# attempts in flight, so more than 10 is normal under load (a
# flood of warnings); warn only when the broker is far behind.
PENDING_PUBLISH_WARNING = 1000

SubmitFn = Callable[[bytes], Awaitable[tuple[bool, dict[str, Any]]]]
EventCallback = Callable[[str, Event], None]


class MqttConfigError(RoutingdError, ValueError):
    """[daemon.mqtt] cannot be used as given (bad url). `key` is the setting's path
    ("daemon.mqtt.url"), the message the reason and the fix: the daemon prints
    "PATH: KEY: MESSAGE", the shape of every other configuration error (`lines()` = ["KEY: MESSAGE"])."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason

    def lines(self) -> list[str]:
        return [f"{self.key}: {self.reason}"]


class MqttUnavailable(RoutingdError, ConnectionError):
    """Not connected to the broker, or the connection was lost before the broker acknowledged."""


class TopicTemplateError(RoutingdError, ValueError):
    """A provider topic template could not be filled for this message."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(settings: MqttSection) -> BrokerAddress:
    """mqtt://[user[:password]@]host[:port] (1883) or mqtts://... (TLS, 8883); the
    username/password keys win over credentials in the url."""
    try:
        parts = urlsplit(settings.url)
        port = parts.port
    except ValueError as exc:
        raise MqttConfigError("daemon.mqtt.url", f"{exc} in {settings.url!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
        raise MqttConfigError("daemon.mqtt.url", "expected mqtt://host[:port] or mqtts://host[:port], "
                              f"got {settings.url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise MqttConfigError("daemon.mqtt.url", f"a broker url has no path or query, got {settings.url!r} "
                              "(set the topic prefix with daemon.mqtt.topic_prefix)")
    tls = settings.tls or scheme in ("mqtts", "ssl")
    password = settings.password.get_secret_value() if settings.password is not None else None
    return BrokerAddress(
        host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
        username=settings.username or (unquote(parts.username) if parts.username else None),
        password=password if password is not None else (unquote(parts.password) if parts.password else None))


def check_topic(topic: str) -> None:
    """A topic name we may publish to (no wildcards, not empty, within MQTT's length limit)."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 65535:
        raise ValueError(f"invalid MQTT topic name {topic!r} (empty, too long, or holds + # or NUL)")


def _encode(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str).encode()


@dataclass(frozen=True)
class _Publication:
    topic: str
    payload: bytes
    qos: int


def _paho(client: aiomqtt.Client) -> Any:
    """The paho-mqtt client inside an aiomqtt one. aiomqtt 2.5 does not expose paho's manual
    acknowledgement (empicano/aiomqtt#345, draft PR #346); its `_client` attribute holds the
    paho client, the workaround named there. Checked so that an aiomqtt without it fails loudly
    instead of acknowledging sends before they are stored."""
    paho = getattr(client, "_client", None)
    if paho is None or not callable(getattr(paho, "manual_ack_set", None)) or not callable(getattr(paho, "ack", None)):
        raise RuntimeError("this aiomqtt/paho-mqtt has no manual acknowledgement (aiomqtt Client._client."
                           "manual_ack_set/ack); routingd needs aiomqtt 2.x on paho-mqtt >= 2.0")
    return paho


class _Acks:
    """The PUBACKs owed on one connection, sent in the order the QoS 1/2 messages arrived (MQTT
    3.1.1 §4.6). Each message is settled once: acknowledged, or left unacknowledged for the broker
    to deliver again on the next connection of this (persistent) session. After the connection
    is lost nothing is sent: the broker redelivers what was not acknowledged on it."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = _paho(client)
        self._pending: deque[list[Any]] = deque()     # [mid, qos, None | True (ack) | False (leave)]
        self.closed = False

    def received(self, message: aiomqtt.Message) -> list[Any] | None:
        if message.qos == 0:
            return None                               # nothing to acknowledge
        entry = [message.mid, message.qos, None]
        self._pending.append(entry)
        return entry

    def settle(self, entry: list[Any] | None, ack: bool) -> None:
        if entry is None or entry[2] is not None:
            return
        entry[2] = ack
        pending = self._pending
        while pending and pending[0][2] is not None:
            mid, qos, acknowledge = pending.popleft()
            if acknowledge and not self.closed:
                self._paho.ack(mid, qos)

    def close(self) -> None:
        self.closed = True
        self._pending.clear()


class MqttLink:
    """The daemon's one MQTT connection (see the module docstring)."""

    def __init__(self, settings: MqttSection, *, on_drop: Callable[[int], Any] | None = None,
                 on_state: Callable[[bool], Any] | None = None, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, publish_workers: int = 16,
                 drop_log_interval_s: float = 10.0) -> None:
        self.settings = settings
        self.address = parse_broker_url(settings)
        self.prefix = settings.topic_prefix.strip("/")
        self.client_id = settings.client_id or f"routingd-{secrets.token_hex(4)}"
        self.capacity = settings.buffer
        self.on_drop = on_drop            # e.g. metrics counter .inc (called with the number dropped)
        self.on_state = on_state          # e.g. a gauge setter (called with True/False)
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = max(reconnect_max_s, reconnect_min_s)
        self.publish_timeout_s = float(max(10, settings.keepalive))
        self.dropped = 0                  # publications dropped because the buffer was full
        self.published = 0                # buffered publications the broker acknowledged
        self.last_error: str | None = None
        self._workers = max(1, publish_workers)
        self._drop_log_interval_s = drop_log_interval_s
        self._drops_unlogged = 0
        self._drop_logged_at = -math.inf
        self._buffer: deque[_Publication] = deque()
        self._inflight = 0
        self._nonempty = asyncio.Event()
        self._up = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._submit: SubmitFn | None = None
        self._answer_accepted = True
        self._ingress_slots = asyncio.Semaphore(INGRESS_CONCURRENCY)
        self._ingress_tasks: set[asyncio.Task[None]] = set()
        self._ingress_stopped = False
        self._warned_session = False
        self._subscribed: aiomqtt.Client | None = None   # the client holding the send subscription
        self._tls_context = self._load_tls() if self.address.tls else None

    # ------------------------------------------------------------------ topics and state

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._inflight

    @property
    def send_topic(self) -> str:
        return f"{self.prefix}/send"

    @property
    def send_subscription(self) -> str:
        return f"$share/{SHARE_GROUP}/{self.send_topic}" if self.settings.shared_subscription else self.send_topic

    @property
    def send_qos(self) -> int:
        """QoS of the send subscription: at most 1. A QoS 2 send is handed over with PUBREC before
        routingd has it stored, and the broker never sends that PUBLISH again; QoS 1 with the
        PUBACK after the commit is the at-least-once that redelivery can keep."""
        return min(self.settings.qos, 1)

    @property
    def persistent_session(self) -> bool:
        """Sends are taken and the client id is fixed in the settings: connect with clean_session
        false so that the broker keeps the subscription and every send not yet acknowledged while
        routingd is away (a random default id would leave an orphaned session at each restart)."""
        return self._submit is not None and self.settings.subscribe and bool(self.settings.client_id)

    @property
    def accepted_topic(self) -> str:
        return f"{self.prefix}/accepted"

    @property
    def rejected_topic(self) -> str:
        return f"{self.prefix}/rejected"

    def events_topic(self, message_id: str) -> str:
        return f"{self.prefix}/events/{message_id}"

    def set_ingress(self, submit: SubmitFn, *, answer_accepted: bool = True) -> None:
        """Take sends from `{prefix}/send` (when settings.subscribe): `submit(payload)` gives
        (True, {"message_id", ...}) or (False, {"error", "details"}). Call before start()."""
        if self._task is not None:
            raise RuntimeError("MqttLink.set_ingress() must be called before start()")
        self._submit = submit
        self._answer_accepted = answer_accepted

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the connection task (returns at once; the broker may still be unreachable)."""
        if self._task is None:
            self._spawn_run()

    def _spawn_run(self) -> None:
        self._restart = None
        self._task = asyncio.create_task(self._run(), name="mqtt-link")
        self._task.add_done_callback(self._run_ended)

    def _run_ended(self, task: asyncio.Task[None]) -> None:
        """_run only ends by cancellation; anything else is a bug that must not end MQTT for good."""
        if task.cancelled() or task is not self._task:
            return
        log.error("MQTT connection task ended unexpectedly; restarting it in %.1fs", self.reconnect_min_s,
                  exc_info=task.exception())
        self._restart = asyncio.get_running_loop().call_later(self.reconnect_min_s, self._spawn_run)

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.connected

    async def stop_ingress(self, timeout: float = 2.0) -> None:
        """Take no more sends (call when a drain starts). With a shared subscription, unsubscribe
        from it, so that the broker hands new sends to the other daemons of the group instead of
        to one that would only reject them. With a persistent session of its own, keep the
        subscription: sends that arrive from now on are left unacknowledged, and the broker keeps
        them, and those published while routingd is down, for its next start. Events keep flowing
        until close()."""
        self._ingress_stopped = True
        client, self._subscribed = self._subscribed, None
        if client is None:
            return
        if self.persistent_session and not self.settings.shared_subscription:
            log.info("MQTT: no longer taking sends; the broker keeps those on %s for session %s until "
                     "routingd starts again", self.send_topic, self.client_id)
            return
        try:
            await asyncio.wait_for(client.unsubscribe(self.send_subscription), timeout)
        except (aiomqtt.MqttError, asyncio.TimeoutError) as exc:
            log.warning("MQTT: could not unsubscribe from %r while stopping: %s", self.send_subscription,
                        exc or type(exc).__name__)
        else:
            log.info("MQTT: no longer taking sends from %s", self.send_subscription)

    async def close(self, flush_timeout: float = 0.0) -> None:
        """Stop: optionally give the buffer up to `flush_timeout` s to drain, then disconnect."""
        if self._task is None:
            return
        deadline = time.monotonic() + flush_timeout
        while self.connected and self.buffered and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self._ingress_tasks):
            task.cancel()
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self._task.cancel()
        await asyncio.gather(self._task, *self._ingress_tasks, return_exceptions=True)
        self._task = None
        if self.buffered:
            log.info("MQTT link closed with %d publication(s) not sent", self.buffered)

    async def __aenter__(self) -> MqttLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ publishing

    def publish_nowait(self, topic: str, payload: Any, qos: int | None = None) -> bool:
        """Queue one publication (dict/list = JSON, str, bytes). Never blocks, never raises:
        False when it was dropped (buffer full: counted and logged; or not publishable)."""
        try:
            check_topic(topic)
            data = _encode(payload)
        except (TypeError, ValueError) as exc:
            log.error("MQTT publication to %r not queued: %s", topic, exc)
            return False
        if len(self._buffer) >= self.capacity:
            self._count_drop()
            return False
        self._buffer.append(_Publication(topic, data, self.settings.qos if qos is None else qos))
        self._nonempty.set()
        return True

    async def publish(self, topic: str, payload: Any, qos: int | None = None) -> None:
        """Publish now and wait for the broker's acknowledgement (PUBACK for QoS 1).

        Raises MqttUnavailable when not connected or when the connection is lost first, and
        ValueError for a topic that cannot be published to. Cancellable at any point."""
        check_topic(topic)
        data = _encode(payload)
        client, lost = self._client, self._lost
        if client is None or lost is None or lost.is_set():
            raise MqttUnavailable(self._unavailable_reason())
        pub = asyncio.ensure_future(client.publish(topic, data, qos=self.settings.qos if qos is None else qos,
                                                   timeout=math.inf))
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((pub, lost_wait), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost_wait.cancel()
            if not pub.done():
                pub.cancel()
        if pub.cancelled():
            raise MqttUnavailable(f"connection to the MQTT broker at {self.address.where} lost before "
                                  "it acknowledged the publication")
        exc = pub.exception()
        if isinstance(exc, aiomqtt.MqttError):
            raise MqttUnavailable(f"MQTT publish to {self.address.where} failed: {exc}") from exc
        if exc is not None:
            raise exc

    def _unavailable_reason(self) -> str:
        why = f": {self.last_error}" if self.last_error else ""
        return f"not connected to the MQTT broker at {self.address.where}{why}"

    def _count_drop(self, n: int = 1) -> None:
        self.dropped += n
        self._drops_unlogged += n
        if self.on_drop is not None:
            try:
                self.on_drop(n)
            except Exception:  # a metrics hook must never break publishing
                log.exception("MQTT on_drop hook failed")
        now = time.monotonic()
        if now - self._drop_logged_at >= self._drop_log_interval_s:
            log.warning("MQTT buffer full (%d publications; broker %s %s): dropped %d since the last "
                        "report, %d in total (%s)", self.capacity, self.address.where,
                        "connected" if self.connected else "unreachable", self._drops_unlogged,
                        self.dropped, DROPPED_METRIC)
            self._drop_logged_at = now
            self._drops_unlogged = 0

    # ------------------------------------------------------------------ the connection task

    def _load_tls(self) -> ssl.SSLContext:
        """The TLS context, built once at start so that a bad ca_file is a startup error."""
        try:
            return ssl.create_default_context(cafile=self.settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttConfigError("daemon.mqtt.ca_file", f"cannot load the CA bundle {self.settings.ca_file!r}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None

    def _make_client(self) -> aiomqtt.Client:
        a = self.address
        client = aiomqtt.Client(a.host, a.port, username=a.username, password=a.password,
                                identifier=self.client_id, keepalive=self.settings.keepalive,
                                clean_session=not self.persistent_session,
                                tls_context=self._tls_context if a.tls else None,
                                max_inflight_messages=64, timeout=self.publish_timeout_s)
        # Before connecting: a persistent session's pending sends arrive right after CONNACK.
        _paho(client).manual_ack_set(True)
        client.pending_calls_threshold = PENDING_PUBLISH_WARNING
        return client

    async def _run(self) -> None:
        delay = self.reconnect_min_s
        failures = 0
        while True:
            connected_at: float | None = None
            refused = False
            try:
                client = self._make_client()
                async with client:
                    connected_at = time.monotonic()
                    failures = 0
                    await self._serve(client)
            except asyncio.CancelledError:
                raise
            except (aiomqtt.MqttError, OSError) as exc:
                cause = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) else ""
                self.last_error = (str(exc) or type(exc).__name__) + cause
                refused = isinstance(exc, aiomqtt.MqttCodeError) and connected_at is None  # a CONNACK code
            except Exception as exc:  # never let the link die: log it and reconnect
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("MQTT connection task failed")
            if connected_at is not None and time.monotonic() - connected_at >= 10.0:
                delay = self.reconnect_min_s      # a connection that lasted: start over quickly
            sleep_s = min(self.reconnect_max_s, delay * random.uniform(0.8, 1.2))
            failures += 1
            if failures == 1 or failures % 20 == 0:
                if refused:   # the broker answered, and said no: credentials, client id or ACL
                    log.error("MQTT broker %s refused the connection: %s (check daemon.mqtt.username, "
                              "password and client_id); retrying in %.1fs (%d buffered, %d dropped)",
                              self.address.where, self.last_error, sleep_s, self.buffered, self.dropped)
                else:
                    log.warning("MQTT broker %s %s: %s; reconnecting in %.1fs (%d buffered, %d dropped)",
                                self.address.where, "connection lost" if connected_at else "unreachable",
                                self.last_error, sleep_s, self.buffered, self.dropped)
            await asyncio.sleep(sleep_s)
            delay = min(self.reconnect_max_s, delay * 2)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection: (re)subscribe, then publish the buffer and read sends until it breaks."""
        ingress = self._submit is not None and self.settings.subscribe and not self._ingress_stopped
        if ingress:
            granted = await client.subscribe(self.send_subscription, qos=self.send_qos)
            if any(getattr(code, "is_failure", code == 0x80) for code in granted):
                log.error("MQTT broker %s refused the subscription to %r (check its ACL); sends over "
                          "MQTT are off until the next reconnect", self.address.where, self.send_subscription)
                ingress = False
        self._subscribed = client if ingress else None
        self._client, self._lost = client, asyncio.Event()
        self._up.set()
        self._state(True)
        session = "persistent session" if self.persistent_session else "clean session"
        log.info("MQTT connected to %s as %s (%s)%s (%d buffered)", self.address.where, self.client_id, session,
                 f", taking sends from {self.send_subscription}" if ingress else "", self.buffered)
        if ingress and not self.persistent_session and not self._warned_session:
            self._warned_session = True
            log.warning("MQTT: daemon.mqtt.client_id is not set, so the broker forgets this daemon's session "
                        "when it disconnects: a send on %s that routingd received but had not stored when it "
                        "crashed or lost the connection is lost; set a client_id of its own for each daemon",
                        self.send_topic)
        acks = _Acks(client)
        tasks = [asyncio.create_task(self._read(client, ingress, acks), name="mqtt-read")]
        tasks += [asyncio.create_task(self._write(client), name=f"mqtt-write-{i}") for i in range(self._workers)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()                 # the loops only end by raising
        finally:
            self._up.clear()
            self._lost.set()
            acks.close()                      # the broker redelivers what was not acknowledged
            self._client = self._subscribed = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._state(False)

    def _state(self, up: bool) -> None:
        if self.on_state is not None:
            try:
                self.on_state(up)
            except Exception:
                log.exception("MQTT on_state hook failed")

    async def _take(self) -> _Publication:
        while not self._buffer:
            self._nonempty.clear()
            await self._nonempty.wait()
        return self._buffer.popleft()

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            pub = await self._take()
            self._inflight += 1
            try:
                await client.publish(pub.topic, pub.payload, qos=pub.qos)
            except (aiomqtt.MqttError, asyncio.CancelledError):
                self._buffer.appendleft(pub)      # publish again after the reconnect
                self._nonempty.set()
                raise
            except Exception:
                log.exception("MQTT publication to %r dropped", pub.topic)
                self._count_drop()
            else:
                self.published += 1
            finally:
                self._inflight -= 1

    async def _read(self, client: aiomqtt.Client, ingress: bool, acks: _Acks) -> None:
        async for message in client.messages:    # raises MqttError when the connection is lost
            entry = acks.received(message)
            if not message.topic.matches(self.send_topic):
                acks.settle(entry, True)          # not ours to keep
                continue
            if not ingress or (self._ingress_stopped and self.persistent_session):
                # Not taking sends now (draining, or a reconnect while draining): a persistent
                # session keeps the send for the next start; a clean one cannot keep it anyway.
                acks.settle(entry, not self.persistent_session)
                continue
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload if payload is not None else "").encode()
            log.debug("MQTT send received (mid %d, qos %d, %d bytes)", message.mid, message.qos, len(raw))
            await self._ingress_slots.acquire()
            task = asyncio.create_task(self._handle_send(raw, bool(message.retain), acks, entry), name="mqtt-send")
            self._ingress_tasks.add(task)
            task.add_done_callback(self._ingress_done)

    def _ingress_done(self, task: asyncio.Task[None]) -> None:
        self._ingress_tasks.discard(task)
        self._ingress_slots.release()

    async def _handle_send(self, raw: bytes, retained: bool, acks: _Acks, entry: list[Any] | None) -> None:
        """Submit one send, then acknowledge it: once it is stored, or once its rejection is
        published. Until then (and if routingd stops first) the broker still owns it."""
        ack = False
        try:
            ack = await self._answer_send(raw, retained, acks)
        finally:
            acks.settle(entry, ack)       # False (also on cancellation or a bug): not acknowledged
            if entry is not None:
                log.debug("MQTT send (mid %d) %s", entry[0], "acknowledged" if ack else "left to the broker")

    async def _answer_send(self, raw: bytes, retained: bool, acks: _Acks) -> bool:
        """True when the send may be acknowledged (stored, or its rejection published)."""
        assert self._submit is not None
        if retained:
            ok, body = False, {"error": "retained message", "details": [
                f"{self.send_topic}: retained messages are not accepted (they would be sent again on "
                "every reconnect); publish without the retain flag and clear the retained message"]}
        else:
            try:
                ok, body = await self._submit(raw)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("MQTT send from %s could not be processed", self.send_topic)
                ok, body = False, {"error": "internal error",
                                   "details": ["the daemon could not process this send; see its log"]}
        if ok:
            if self._answer_accepted:
                self.publish_nowait(self.accepted_topic, body)
            return True
        if self.persistent_session and (acks.closed or (self._ingress_stopped and body.get("retry_after") is not None)):
            # The broker delivers the send again (next connection, or next start while stopping):
            # that delivery gets the answer.
            return False
        answer = rejection_payload(body, raw)
        try:
            await self.publish(self.rejected_topic, answer)
        except MqttUnavailable as exc:
            if self.persistent_session:
                log.warning("MQTT: the rejection of a send could not be published (%s); the broker will "
                            "deliver the send again", exc)
                return False
            self.publish_nowait(self.rejected_topic, answer)   # after the reconnect, if the buffer has room
        except Exception:
            log.exception("MQTT: the rejection of a send could not be published")
        return True


def rejection_payload(body: Mapping[str, Any], raw: bytes) -> dict[str, Any]:
    """{"error", "details", ...the rest of body, "request": the send as JSON (or text)}."""
    out: dict[str, Any] = {"error": str(body.get("error") or "rejected"), "details": body.get("details", [])}
    out.update({k: v for k, v in body.items() if k not in out and k != "request"})
    if len(raw) > MAX_ECHO_BYTES:
        out["request"] = raw[:1024].decode(errors="replace")
        out["request_truncated"] = len(raw)
        return out
    try:
        out["request"] = json.loads(raw)
    except ValueError:
        out["request"] = raw.decode(errors="replace")
    return out


# --------------------------------------------------------------------------- events


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


# --------------------------------------------------------------------------- provider type "mqtt"


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def render_topic(template: str, req: AttemptRequest) -> str:
    """Fill {message_id} and {to.FIELD}; a missing field or a value that would change the
    topic's levels (/ + # NUL) raises TopicTemplateError."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "message_id":
            value: Any = req.message_id
        elif name.startswith("to.") and len(name) > 3:
            field = name[3:]
            value = req.to.get(field)
            if value is None or value == "":
                raise TopicTemplateError(f"topic {template!r}: the recipient has no {field!r}")
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TopicTemplateError(f"topic {template!r}: to.{field} is not a string or number")
        else:
            raise TopicTemplateError(f"topic {template!r}: unknown placeholder {{{name}}} "
                                     "(use {message_id} or {to.FIELD})")
        text = str(value)
        if any(c in text for c in "/+#\0"):
            raise TopicTemplateError(f"topic {template!r}: {{{name}}} = {text!r} holds / + # or NUL")
        return text

    topic = _PLACEHOLDER.sub(fill, template)
    try:
        check_topic(topic)
    except ValueError as exc:
        raise TopicTemplateError(str(exc)) from None
    return topic


class MqttProviderAdapter(ProviderAdapter):
    """Publishes the attempt's JSON to the provider's topic; the broker's PUBACK = delivered."""

    def __init__(self, name: str, config: MqttProvider, link: MqttLink) -> None:
        self.name = name
        self.config = config
        self.link = link
        a = link.address
        self.secrets = config_secrets(extra=(a.password, a.username))

    async def send(self, req: AttemptRequest) -> Outcome:
        try:
            topic = render_topic(self.config.topic, req)
        except TopicTemplateError as exc:
            return Outcome(status=400, detail=redact(str(exc), self.secrets))
        try:
            await self.link.publish(topic, req.payload(), qos=self.config.qos)
        except MqttUnavailable as exc:
            return Outcome(network=True, detail=redact(str(exc), self.secrets))
        except (TypeError, ValueError) as exc:
            return Outcome(status=400, detail=redact(f"cannot publish to {topic!r}: {exc}", self.secrets))
        return Outcome(status=200)


class UnconfiguredMqttAdapter(ProviderAdapter):
    """A provider of type mqtt while [daemon.mqtt] is absent: every attempt is a network failure."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, req: AttemptRequest) -> Outcome:
        return Outcome(network=True, detail="[daemon.mqtt] is not configured")


def _factory(name: str, config: Any, ctx: AdapterContext) -> ProviderAdapter:
    if ctx.mqtt is None:
        return UnconfiguredMqttAdapter(name)
    return MqttProviderAdapter(name, config, ctx.mqtt)


register_adapter("mqtt", _factory)
