"""The sends subscriber: {prefix}/send in, each PUBACK only once the send is stored or its
rejection published (manual acks on the paho client aiomqtt wraps; docs/mqtt.md)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import aiomqtt

from ..core.policy import MqttSection
from .config import MqttUnavailable

log = logging.getLogger("routingd.mqtt")


MAX_ECHO_BYTES = 64 * 1024           # a rejected request is echoed in full up to this size
INGRESS_CONCURRENCY = 64             # sends handled at once; the reader waits beyond that

SubmitFn = Callable[[bytes], Awaitable[tuple[bool, dict[str, Any]]]]


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


class SendsMixin:
    """MqttLink's half that takes sends from {prefix}/send and acknowledges each late (see the
    package docstring). The state it works on is MqttLink's, made in MqttLink.__init__ and
    declared here for the type checker."""

    settings: MqttSection
    client_id: str
    _task: asyncio.Task[None] | None
    _submit: SubmitFn | None
    _answer_accepted: bool
    _ingress_slots: asyncio.Semaphore
    _ingress_tasks: set[asyncio.Task[None]]
    _ingress_stopped: bool
    _subscribed: aiomqtt.Client | None

    if TYPE_CHECKING:
        @property
        def persistent_session(self) -> bool: ...
        @property
        def send_topic(self) -> str: ...
        @property
        def send_subscription(self) -> str: ...
        @property
        def accepted_topic(self) -> str: ...
        @property
        def rejected_topic(self) -> str: ...
        def publish_nowait(self, topic: str, payload: Any, qos: int | None = None) -> bool: ...
        async def publish(self, topic: str, payload: Any, qos: int | None = None) -> None: ...

    def set_ingress(self, submit: SubmitFn, *, answer_accepted: bool = True) -> None:
        """Take sends from `{prefix}/send` (when settings.subscribe): `submit(payload)` gives
        (True, {"message_id", ...}) or (False, {"error", "details"}). Call before start()."""
        if self._task is not None:
            raise RuntimeError("MqttLink.set_ingress() must be called before start()")
        self._submit = submit
        self._answer_accepted = answer_accepted

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
