"""Provider type `mqtt` (docs/providers.md "mqtt"): publishes the attempt's JSON to the provider's
topic over the daemon's one broker connection (daemon/mqtt/) and waits for the PUBACK
(= delivered); without a connection it answers a network outcome at once, so failover moves on
instead of waiting. It registers when routingd.daemon.mqtt is imported (it needs the link)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from ..core.policy import MqttProvider
from .redact import config_secrets, redact
from ..mqtt.config import MqttUnavailable, TopicTemplateError, check_topic

if TYPE_CHECKING:
    from ..mqtt.link import MqttLink


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
