"""The send request (Courier's message shape) as far as routing is concerned."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from .behaviour import Duration
from .policy import RouteGroup

# An idempotency key (the Idempotency-Key header over HTTP, "idempotency_key" over MQTT): 1-255
# printable ASCII characters, no spaces.
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")

# Courier recipients routingd does not expand (a list, an audience): refused, one message per recipient
UNSUPPORTED_TO_KEYS = ("list_id", "list_pattern", "audience_id")


def _refuse(value: Any) -> Any:
    """A Courier field routingd does not do (yet): refused, never accepted and ignored
    (docs/courier.md "What is refused, and why" lists them, with why). null counts as absent."""
    if value is not None:
        raise ValueError("routingd does not support this Courier field; leave it out "
                         "(docs/courier.md \"What is refused, and why\")")
    return value


# A Courier field that routingd refuses with a 422 naming it (the field's path is the error's loc).
Unsupported = Annotated[Any, AfterValidator(_refuse)]


class TimeoutOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    provider: Duration | None = None
    channel: Duration | None = None
    message: Duration | None = None
    escalation: Unsupported = None
    criteria: Unsupported = None


class ChannelTimeouts(BaseModel):
    """Courier's `channels.X.timeouts` object: this channel's deadline, and the attempt timeout of
    each of its providers (docs/configuration.md "Timeout precedence")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channel: Duration | None = None
    provider: Duration | None = None


class ProviderOverride(BaseModel):
    """`providers.X` of a request: its timeout (`timeout`, or Courier's `timeouts`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: Duration | None = None
    timeouts: Duration | None = None
    override: Unsupported = None
    metadata: Unsupported = None
    if_: Unsupported = Field(default=None, alias="if")

    @property
    def effective_timeout(self) -> int | None:
        return self.timeout if self.timeout is not None else self.timeouts

    def timeout_values(self) -> list[tuple[tuple[str, ...], int | None]]:
        """(key path under this override, milliseconds) of every timeout it sets."""
        return [(("timeout",), self.timeout), (("timeouts",), self.timeouts)]


class ChannelOverride(BaseModel):
    """`channels.X` of a request: its timeout (a duration as `timeout` or `timeouts`, or Courier's
    `timeouts` object), and Courier's per-request provider failover: `providers` (the order to
    try, each one of the channel's providers) and `routing_method` ("single": the first that
    delivers; "all": every one of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: Duration | None = None
    timeouts: Duration | ChannelTimeouts | None = None
    providers: list[str] | None = Field(default=None, min_length=1)
    routing_method: Literal["single", "all"] | None = None
    override: Unsupported = None
    metadata: Unsupported = None
    brand_id: Unsupported = None
    if_: Unsupported = Field(default=None, alias="if")

    @property
    def effective_timeout(self) -> int | None:
        if self.timeout is not None:
            return self.timeout
        t = self.timeouts
        return t.channel if isinstance(t, ChannelTimeouts) else t

    @property
    def provider_timeout(self) -> int | None:
        """`timeouts.provider`: the attempt timeout of this channel's providers."""
        t = self.timeouts
        return t.provider if isinstance(t, ChannelTimeouts) else None

    def timeout_values(self) -> list[tuple[tuple[str, ...], int | None]]:
        t = self.timeouts
        if isinstance(t, ChannelTimeouts):
            return [(("timeout",), self.timeout), (("timeouts", "channel"), t.channel),
                    (("timeouts", "provider"), t.provider)]
        return [(("timeout",), self.timeout), (("timeouts",), t)]


# the names kept before Courier's channel and provider fields were told apart
TargetOverride = ChannelOverride


class InlineRouting(RouteGroup):
    pass


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    to: dict[str, Any]
    content: dict[str, Any] = Field(default_factory=dict)
    route: str | None = None
    # its place in rate-limited providers' queues instead of its route's priority; at most
    # [daemon] max_message_priority (docs/configuration.md "Rate limits and priorities")
    priority: StrictInt | None = Field(default=None, ge=-1000, le=1000)   # 1.0 or true is no priority
    routing: InlineRouting | None = None
    timeout: TimeoutOverride | None = Field(default=None, validation_alias=AliasChoices("timeout", "timeouts"))
    channels: dict[str, ChannelOverride] = Field(default_factory=dict)
    providers: dict[str, ProviderOverride] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] | None = None
    template: str | None = None
    # Courier's brand and tenant context: kept, and passed to providers in their metadata
    brand_id: str | None = None
    context: dict[str, Any] | None = None
    delay: Unsupported = None
    expiry: Unsupported = None
    preferences: Unsupported = None

    @field_validator("to", mode="before")
    @classmethod
    def _one_recipient(cls, v: Any) -> Any:
        if isinstance(v, list):
            raise ValueError("a list of recipients is not supported; send one message per recipient")
        if isinstance(v, dict):
            for key in UNSUPPORTED_TO_KEYS:
                if v.get(key) is not None:
                    raise ValueError(f"to.{key}: routingd does not support Courier's lists and audiences; "
                                     "send one message per recipient")
        return v

    @model_validator(mode="after")
    def _to_has_fields(self) -> "MessageRequest":
        if not self.to:
            raise ValueError("message.to must name the recipient (user_id, email, phone_number, ...)")
        return self

    @property
    def provider_metadata(self) -> dict[str, Any]:
        """What providers receive as `metadata`: the request's own, plus Courier's `brand_id` and
        `context` when given (the request's metadata keys win)."""
        if self.brand_id is None and self.context is None:
            return self.metadata
        extra: dict[str, Any] = {}
        if self.brand_id is not None:
            extra["brand_id"] = self.brand_id
        if self.context is not None:
            extra["context"] = self.context
        return {**extra, **self.metadata}


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    message: MessageRequest


ReceiptStatus = Literal["delivered", "failed"]
