"""MqttLink: the daemon's one broker connection, kept alive with capped exponential back-off,
and its bounded publish buffer (see the package docstring). Taking sends is its SendsMixin
(sends.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import aiomqtt

from ..core.policy import MqttSection
from .config import MqttConfigError, MqttUnavailable, check_topic, parse_broker_url
from .sends import INGRESS_CONCURRENCY, SubmitFn, SendsMixin, _Acks, _paho

log = logging.getLogger("routingd.mqtt")


SHARE_GROUP = "routingd"
DROPPED_METRIC = "routingd_mqtt_events_dropped_total"
# aiomqtt logs a warning for every publish while more than `pending_calls_threshold` (10) await
# their PUBACK. The link alone has 16 publish workers, up to 64 rejections and the provider
# attempts in flight, so more than 10 is normal under load (a
# flood of warnings); warn only when the broker is far behind.
PENDING_PUBLISH_WARNING = 1000


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


class MqttLink(SendsMixin):
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


# --------------------------------------------------------------------------- events


# --------------------------------------------------------------------------- provider type "mqtt"
