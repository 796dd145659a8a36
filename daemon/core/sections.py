"""The routing.toml tables beside the routing ones: [daemon] and [daemon.mqtt] (the daemon's
settings; daemon/settings.py layers the environment and the command line over them),
[timeouts] and [failover] (the file-wide defaults), the built-in timeouts, and `Strict`, the base
of every table model (an unknown key is an error, a parsed table is immutable).

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from .behaviour import Duration

BUILTIN_PROVIDER_TIMEOUT_MS = 5 * 60_000
BUILTIN_CHANNEL_TIMEOUT_MS = 30 * 60_000
BUILTIN_MESSAGE_TIMEOUT_MS = 72 * 3_600_000
DEFAULT_FAILOVER_ON: tuple[int | str, ...] = (408, 429, "5xx", "timeout", "network")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- daemon section


class MqttSection(Strict):
    url: str = "mqtt://127.0.0.1:1883"

    @field_validator("url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ValueError(f"{e} in {v!r}") from None
        if parts.scheme.lower() not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {v!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"a broker url has no path or query, got {v!r} (set daemon.mqtt.topic_prefix)")
        return v

    topic_prefix: str = "routingd"
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    qos: Literal[0, 1, 2] = 1
    shared_subscription: bool = False
    subscribe: bool = True
    tls: bool = False
    ca_file: str | None = None
    buffer: int = Field(default=10_000, ge=1)
    keepalive: int = Field(default=30, ge=1)


class DaemonSection(Strict):
    listen: str = "127.0.0.1:8080"
    state: str = "routingd.db"
    # The state store (docs/scaling.md): absent, the SQLite file `state`; a postgresql:// URL,
    # the PostgreSQL store (then `state` is not used).
    store: str | None = None
    # PostgreSQL only (daemon/settings.py refuses it with SQLite): how long a process owns its
    # pending messages without renewing them before another process takes them over (docs/scaling.md)
    lease: Duration | None = Field(default=None, ge=1_000, le=600_000)
    # PostgreSQL only (daemon/settings.py refuses more than 1 with SQLite): `serve` starts this
    # many full routingd processes sharing the listening socket (SO_REUSEPORT) under one
    # supervisor (daemon/workers.py, docs/scaling.md "Workers")
    workers: int = Field(default=1, ge=1, le=64)
    api_tokens: list[SecretStr] = Field(default_factory=list)
    mqtt: MqttSection | None = None
    max_body: int = Field(default=256 * 1024, ge=1024)
    max_inflight: int = Field(default=100_000, ge=1)
    # Memory in bytes (docs/security.md): the request text pending messages hold, UTF-8 bytes;
    # past it a send is 503. At least max_body (checked by the daemon's settings), else the
    # largest allowed request could never be accepted.
    max_inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    # Connections (docs/security.md): a request's line and headers must arrive within
    # header_timeout of its first byte, its body within body_timeout of its headers; a
    # connection without a request is closed after idle_timeout; at most max_connections are
    # open (beyond it the longest-idle one is closed, or the new one refused if none is idle).
    header_timeout: Duration = Field(default=10_000, ge=1)
    body_timeout: Duration = Field(default=30_000, ge=1)
    idle_timeout: Duration = Field(default=60_000, ge=1, le=3_600_000)   # aiohttp's own keep-alive: 3630s
    max_connections: int = Field(default=512, ge=2, le=1_000_000)
    # What one plan may hold (docs/security.md "Limits"): a request builds its plan from
    # inline routing and overrides, so these bound the work and memory one send can cause.
    max_plan_channels: int = Field(default=16, ge=1, le=1_000)
    max_plan_depth: int = Field(default=8, ge=0, le=16)
    max_channel_providers: int = Field(default=8, ge=1, le=100)
    max_overrides: int = Field(default=64, ge=0, le=10_000)
    # the highest message.priority a request may ask for (docs/configuration.md "Rate limits and priorities")
    max_message_priority: int = Field(default=0, ge=-1000, le=1000)
    grace: Duration = 10_000
    retention: Duration = 7 * 24 * 3_600_000
    idempotency_ttl: Duration = 24 * 3_600_000
    watch: bool = True
    log_format: Literal["text", "json"] = "text"     # docs/operations.md "Logs"

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a PostgreSQL URL, postgresql://USER@HOST[:PORT]/DATABASE "
                             "(leave store out for the SQLite file named by `state`)")
        return v

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _drop_empty(cls, v: Any) -> Any:
        # "${ROUTINGD_TOKEN}" with the variable unset interpolates to "": no token.
        if isinstance(v, list):
            return [t for t in v if not (isinstance(t, str) and t == "")]
        return v


# --------------------------------------------------------------------------- timeouts, failover


class TimeoutsSection(Strict):
    provider: Duration | None = None
    channel: Duration | None = None
    message: Duration | None = None


def _failover_entry(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a status code, \"4xx\", \"5xx\", \"timeout\" or \"network\"")
    if isinstance(v, int):
        if not 100 <= v <= 599:
            raise ValueError(f"status code {v} is not between 100 and 599")
        return v
    if isinstance(v, str) and v in ("timeout", "network", "4xx", "5xx"):
        return v
    if isinstance(v, str) and v.isdigit():
        return _failover_entry(int(v))
    raise ValueError(f"bad failover outcome {v!r}; expected a status code, \"4xx\", \"5xx\", "
                     "\"timeout\" or \"network\"")


FailoverEntry = Annotated[Union[int, str], BeforeValidator(_failover_entry)]


class FailoverSection(Strict):
    on: list[FailoverEntry] = Field(default_factory=lambda: list(DEFAULT_FAILOVER_ON))
