"""[daemon.mqtt]'s broker address and topics checked, and the MQTT errors (docs/mqtt.md)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..core.policy import MqttSection
from ..errors import RoutingdError


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
