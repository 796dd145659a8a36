"""The provider tables of routing.toml, [providers.NAME]: what every type shares
(`ProviderBase`: timeout, retries, confirm, breaker, backoff, outbound limits) and one model per
`type` (http, mqtt, sandbox; smtp, ses, sendgrid; twilio, fcm, slack, apprise), joined by the
discriminated union `Provider`. Parsing and checking only: a key file or a service-account path
is read by the provider's adapter (daemon/providers/), never here.

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Discriminator, Field, SecretStr, Tag,
                      field_validator, model_validator)

from .behaviour import BehaviourSpec, Duration, FailMode, OutageParams, Rate
from .durations import parse_duration_ms
from .limiter import Limit
from .sections import Strict


def _slow_mark(v: Any) -> Any:
    if v is None or v is False:
        return v
    if v is True:
        raise ValueError("expected a duration like \"500ms\", or false to turn slow-call detection off; got true")
    ms = parse_duration_ms(v)
    if ms < 1:
        raise ValueError("must be at least 1ms; `slow = false` turns slow-call detection off")
    return ms


SlowMark = Annotated[Union[int, Literal[False], None], BeforeValidator(_slow_mark)]


class BreakerSection(Strict):
    failures: int = Field(default=5, ge=1, le=10_000)
    cooldown: Duration = 30_000
    # an attempt still running this long counts as a breaker failure at that moment (not only
    # at its timeout): a hang is detected after `slow`, not after the whole attempt timeout.
    # None (unset): half the attempt's own timeout (plan.py; docs/performance.md "Failover
    # quality" for why it is on by default); false: off
    slow: SlowMark = None


class BackoffSection(Strict):
    base: Duration = 500
    max: Duration = 30_000


def _breaker(v: Any) -> Any:
    if v is True:
        return {}
    if v is False or isinstance(v, (dict, BreakerSection)):
        return v
    raise ValueError(f"expected a table like {{ failures = 5, cooldown = \"30s\" }}, true or false, got {v!r}")


# A table, or false (off). Discriminated so a bad table reports only its own problems.
Breaker = Annotated[
    Union[Annotated[BreakerSection, Tag(":table")], Annotated[Literal[False], Tag(":off")]],
    Discriminator(lambda v: ":off" if v is False else ":table"),
    BeforeValidator(_breaker),
]


class ProviderBase(Strict):
    timeout: Duration | None = None
    retries: int = Field(default=0, ge=0, le=100)
    confirm: Literal["response", "receipt"] = "response"
    receipt_timeout: Duration = 120_000
    receipt_secret: SecretStr | None = None
    breaker: Breaker = BreakerSection()
    backoff: BackoffSection = BackoffSection()
    # routingd's own outbound limits on this provider (docs/configuration.md "Rate limits and
    # priorities"; daemon/core/limiter.py): a token bucket, and calls in flight at once
    rate_limit: Rate | None = None
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    max_inflight: int | None = Field(default=None, ge=1, le=1_000_000)

    def outbound_rate(self) -> float | None:
        return self.rate_limit

    def outbound_limit(self) -> Limit | None:
        """The limit routingd keeps to on this provider, None: none."""
        rate = self.outbound_rate()
        if rate is None and self.max_inflight is None:
            return None
        return Limit(rate=rate, burst=None if self.burst is None else float(self.burst),
                     max_inflight=self.max_inflight)

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> "ProviderBase":
        if self.burst is not None and self.outbound_rate() is None:
            raise ValueError("burst is the size of the rate limit's token bucket: set "
                             f"{'outbound_rate_limit' if getattr(self, 'type', '') == 'sandbox' else 'rate_limit'} too")
        return self


class HttpProvider(ProviderBase):
    type: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    # A Jinja2 template that renders the JSON body (docs/providers.md "Content"); none: routingd's own.
    body: str | None = None

    @field_validator("body")
    @classmethod
    def _body(cls, v: str | None) -> str | None:
        if v is not None:
            from .templates import compile_source
            error = compile_source(v)[1]
            if error is not None:
                raise ValueError(error)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"url must start with http:// or https:// and name a host, got {v!r}")
        return v


class MqttProvider(ProviderBase):
    type: Literal["mqtt"]
    topic: str
    qos: Literal[1, 2] = 1

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v or "+" in v:
            raise ValueError("topic must be a non-empty topic name without the wildcards + and #")
        return v


def _aware(v: Any) -> Any:
    """An outage's `start`: a TOML date-time with its offset, which names one instant."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            raise ValueError(f"{v.isoformat()} has no time zone offset; write it like "
                             f"{v.isoformat()}Z (UTC) or with +01:00")
        return v
    raise ValueError(f"expected a date-time with its offset, like 2026-12-06T18:00:00Z (no "
                     f"quotes), got {v!r}")


class SandboxOutage(OutageParams):
    """One of a sandbox provider's `outages`: from `start` (a wall-clock instant) for `duration`
    (docs/configuration.md "type = sandbox")."""

    start: Annotated[dt.datetime, BeforeValidator(_aware)]


class SandboxProvider(ProviderBase, BehaviourSpec):
    """A stand-in vendor: its `rate_limit` is the *vendor's* limit it models (it answers 429 above
    it, as the simulator's scenario `rate_limit` does), so routingd's own limit on it is spelled
    `outbound_rate_limit` (docs/configuration.md "Rate limits and priorities"). `outages` switch
    its fail mode on at wall-clock times (the latest-starting active one wins, as in the
    simulator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["sandbox"]
    fail: FailMode = "none"
    outbound_rate_limit: Rate | None = None
    outages: list[SandboxOutage] = Field(default_factory=list)

    def outbound_rate(self) -> float | None:
        return self.outbound_rate_limit


# ---- email provider types (docs/providers.md "smtp", "ses", "sendgrid")


def _address(v: str) -> str:
    """`from`: "addr@host" or "Name <addr@host>", one address, no line breaks."""
    import email.utils

    _, addr = email.utils.parseaddr(v)
    if "\r" in v or "\n" in v or "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise ValueError(f"expected an email address like \"alerts@example.com\" or "
                         f"\"Alerts <alerts@example.com>\", got {v!r}")
    return v


def _base_url(v: str | None) -> str | None:
    if v is not None and not re.match(r"^https?://[^/\s]+/?$", v):
        raise ValueError(f"expected scheme and host only, like https://host[:port], got {v!r}")
    return None if v is None else v.rstrip("/")


Address = Annotated[str, AfterValidator(_address)]
BaseUrl = Annotated[Union[str, None], AfterValidator(_base_url)]


class SmtpProvider(ProviderBase):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["smtp"]
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)   # None: 587 starttls, 465 implicit, 25 none
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    ca_file: str | None = None                               # trust this CA bundle instead of the system's
    username: str | None = None
    password: SecretStr | None = None
    from_: Address = Field(alias="from")
    pool_size: int = Field(default=4, ge=1, le=100)          # connections kept open to the relay at most

    @model_validator(mode="after")
    def _auth_pair(self) -> "SmtpProvider":
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password (AUTH), or neither")
        return self


class SesProvider(ProviderBase):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["ses"]
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    from_: Address = Field(alias="from")
    configuration_set: str | None = None
    endpoint_url: BaseUrl = None                             # None: https://email.<region>.amazonaws.com
    access_key_id: str | None = None                         # both or neither; neither: the AWS credential chain
    secret_access_key: SecretStr | None = None
    # Receipts (SNS, docs/providers.md "ses"): the hosts SigningCertURL and SubscribeURL may name
    # (None: sns.<region>.amazonaws.com), and how old a signed notification may be.
    sns_hosts: list[Annotated[str, Field(min_length=1)]] | None = None
    receipt_max_age: Duration = 3_600_000

    @model_validator(mode="after")
    def _key_pair(self) -> "SesProvider":
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither (the AWS credential chain)")
        return self


def load_ec_public_key(text: str) -> Any:
    """An ECDSA public key from PEM or from the base64 DER SendGrid's settings show; ValueError
    (without the key in it) otherwise. Parsing only: no I/O."""
    import base64
    import binascii

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

    try:
        if "-----BEGIN" in text:
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise ValueError("expected the Event Webhook's verification key: base64 DER "
                         "(as SendGrid shows it) or PEM") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("expected an ECDSA public key (SendGrid signs its Event Webhook with ECDSA)")
    return key


class SendgridProvider(ProviderBase):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["sendgrid"]
    api_key: SecretStr
    from_: Address = Field(alias="from")
    base_url: BaseUrl = "https://api.sendgrid.com"
    # Receipts (Event Webhook, docs/providers.md "sendgrid"): the verification key SendGrid shows
    # for the signed webhook (base64 DER or PEM), and how old a signed batch may be.
    webhook_public_key: str | None = None
    receipt_max_age: Duration = 600_000

    @field_validator("webhook_public_key")
    @classmethod
    def _public_key(cls, v: str | None) -> str | None:
        if v is not None:
            load_ec_public_key(v)
        return v


EMAIL_PROVIDERS = (SmtpProvider, SesProvider, SendgridProvider)
EMAIL_PROVIDER_TYPES: tuple[str, ...] = ("smtp", "ses", "sendgrid")

# ---- end of the email provider types

# --- sms / push / chat vendors (docs/providers.md "twilio", "fcm", "slack", "apprise") ---


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError("must start with http:// or https:// and name a host")   # not echoed: it may hold a secret
    return v


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class TwilioProvider(ProviderBase):
    type: Literal["twilio"]
    account_sid: str = Field(min_length=1)
    auth_token: SecretStr
    from_: str | None = Field(default=None, alias="from", min_length=1)
    messaging_service_sid: str | None = Field(default=None, min_length=1)
    status_callback: HttpUrl | None = None
    base_url: HttpUrl = "https://api.twilio.com"

    @model_validator(mode="after")
    def _sender(self) -> TwilioProvider:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of `from` (a Twilio number) and `messaging_service_sid`")
        return self


class FcmProvider(ProviderBase):
    type: Literal["fcm"]
    project_id: str = Field(min_length=1)
    service_account: SecretStr          # a path to the service-account JSON, or the JSON itself
    base_url: HttpUrl = "https://fcm.googleapis.com"

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, v: SecretStr) -> SecretStr:
        # JSON text is checked here; a path is read (and checked) when the adapter is built
        text = v.get_secret_value().strip()
        if not text:
            raise ValueError("must be a path to a service-account JSON file, or that JSON")
        if text.startswith("{"):
            import json

            try:
                info = json.loads(text)
            except ValueError as e:
                raise ValueError(f"is not valid JSON ({type(e).__name__} at char {getattr(e, 'pos', '?')})") from None
            missing = [k for k in ("client_email", "private_key", "token_uri") if not isinstance(info, dict) or not info.get(k)]
            if missing:
                raise ValueError(f"is not a service-account key: missing {', '.join(missing)}")
        return v


class SlackProvider(ProviderBase):
    type: Literal["slack"]
    webhook_url: SecretStr | None = None
    token: SecretStr | None = None
    channel: str | None = Field(default=None, min_length=1)
    base_url: HttpUrl | None = None     # webhook: replaces the webhook URL's origin; token: the Web API root

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _http_url(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _mode(self) -> SlackProvider:
        if (self.webhook_url is None) == (self.token is None):
            raise ValueError("set either `webhook_url` (an incoming webhook) or `token` + `channel` (chat.postMessage)")
        if self.webhook_url is not None:
            if self.channel is not None:
                raise ValueError("`channel` goes with `token`: an incoming webhook posts to the channel it was made for")
        elif self.channel is None:
            raise ValueError("`token` needs `channel` (the default; a message's to.slack.channel overrides it)")
        return self


class AppriseProvider(ProviderBase):
    type: Literal["apprise"]
    urls: list[SecretStr] = Field(min_length=1)

    @field_validator("urls")
    @classmethod
    def _apprise_urls(cls, v: list[SecretStr]) -> list[SecretStr]:
        for i, u in enumerate(v):
            if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://\S", u.get_secret_value()):
                raise ValueError(f"urls[{i}] is not an Apprise URL (scheme://...)")
        return v


Provider = Annotated[Union[HttpProvider, MqttProvider, SandboxProvider, SmtpProvider, SesProvider, SendgridProvider,
                           TwilioProvider, FcmProvider, SlackProvider, AppriseProvider], Field(discriminator="type")]
PROVIDER_TYPES: tuple[str, ...] = ("http", "mqtt", "sandbox", *EMAIL_PROVIDER_TYPES, "twilio", "fcm", "slack", "apprise")
