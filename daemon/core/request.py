"""The send request (Courier's message shape) as far as routing is concerned."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from .behaviour import Duration
from .policy import RouteGroup

# An idempotency key (the Idempotency-Key header over HTTP, "idempotency_key" over MQTT): 1-255
# printable ASCII characters, no spaces.
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


class TimeoutOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    provider: Duration | None = None
    channel: Duration | None = None
    message: Duration | None = None


class TargetOverride(BaseModel):
    """`channels.X` / `providers.X` of a request. Courier spells it `timeout` or `timeouts`;
    other Courier keys (`override`, `if`, ...) are accepted and ignored by routing."""

    model_config = ConfigDict(extra="allow", frozen=True)
    timeout: Duration | None = None
    timeouts: Duration | None = None

    @property
    def effective_timeout(self) -> int | None:
        return self.timeout if self.timeout is not None else self.timeouts


class InlineRouting(RouteGroup):
    pass


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    to: dict[str, Any]
    content: dict[str, Any] = Field(default_factory=dict)
    route: str | None = None
    routing: InlineRouting | None = None
    timeout: TimeoutOverride | None = Field(default=None, validation_alias=AliasChoices("timeout", "timeouts"))
    channels: dict[str, TargetOverride] = Field(default_factory=dict)
    providers: dict[str, TargetOverride] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] | None = None
    template: str | None = None

    @model_validator(mode="after")
    def _to_has_fields(self) -> "MessageRequest":
        if not self.to:
            raise ValueError("message.to must name the recipient (user_id, email, phone_number, ...)")
        return self


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    message: MessageRequest


ReceiptStatus = Literal["delivered", "failed"]
