"""The routing.toml model: pydantic models, ${VAR} / ${credential:NAME} / ${file:PATH}
interpolation (secrets are read by a resolver the caller passes in: core does no I/O), validation
with key paths.

`parse_policy(text, path, env)` gives an immutable `Policy` whose `version` is the content hash of
the text, or raises `PolicyError` listing every problem as "PATH: key.path: reason". Reading the
file and the environment is the caller's (daemon/config_files.py `load_policy`).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, SecretStr, Tag,
                      ValidationError, field_validator, model_validator)

from .errors import ConfigError, Problem
from .behaviour import BehaviourSpec, Duration, FailMode, Rate
from .durations import parse_duration_ms as _parse_duration_ms
from .limiter import Limit
from .templates import EMPTY as NO_TEMPLATES
from .templates import TemplateSet, compile_templates

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

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


# --------------------------------------------------------------------------- providers


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


class BreakerSection(Strict):
    failures: int = Field(default=5, ge=1, le=10_000)
    cooldown: Duration = 30_000
    # an attempt still running this long counts as a breaker failure at that moment (not only
    # at its timeout): a hang is detected after `slow`, not after the whole attempt timeout
    slow: Duration | None = Field(default=None, ge=1)


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


class SandboxProvider(ProviderBase, BehaviourSpec):
    """A stand-in vendor: its `rate_limit` is the *vendor's* limit it models (it answers 429 above
    it, as the simulator's scenario `rate_limit` does), so routingd's own limit on it is spelled
    `outbound_rate_limit` (docs/configuration.md "Rate limits and priorities")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["sandbox"]
    fail: FailMode = "none"
    outbound_rate_limit: Rate | None = None

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


# --------------------------------------------------------------------------- channels, routes


class ChannelSection(Strict):
    providers: list[str] = Field(min_length=1)
    method: Literal["single", "all"] = "single"
    timeout: Duration | None = None
    requires: str | None = None


class RouteGroup(Strict):
    method: Literal["single", "all"] = "single"
    channels: list["RouteItem"] = Field(min_length=1)


def _route_item_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return ":channel"
    if isinstance(v, (dict, RouteGroup)):
        return ":group"
    return None


# A channel name or a nested { method, channels } group. Discriminated so that a bad group
# reports only its own problems (not also "should be a valid string").
RouteItem = Annotated[
    Union[Annotated[str, Tag(":channel")], Annotated[RouteGroup, Tag(":group")]],
    Discriminator(_route_item_kind, custom_error_type="route_item",
                  custom_error_message="expected a channel name or a { method, channels } table"),
]
RouteGroup.model_rebuild()


class RouteSection(Strict):
    method: Literal["single", "all"] = "single"
    # under a provider's rate limit, higher goes first (docs/configuration.md "Rate limits and priorities")
    priority: int = Field(default=0, ge=-1000, le=1000)
    channels: list[RouteItem] = Field(min_length=1)
    timeouts: TimeoutsSection = TimeoutsSection()


# --------------------------------------------------------------------------- templates


class TemplatePart(Strict):
    """One channel's part of a [templates.NAME] table (docs/configuration.md "[templates]"):
    subject/title fill the title, text/body the text, html the HTML part."""

    subject: str | None = None
    title: str | None = None
    text: str | None = None
    body: str | None = None
    html: str | None = None

    @model_validator(mode="after")
    def _one_each(self) -> "TemplatePart":
        if self.subject is not None and self.title is not None:
            raise ValueError("give subject or title, not both (both fill the title)")
        if self.text is not None and self.body is not None:
            raise ValueError("give text or body, not both (both fill the text)")
        if all(getattr(self, k) is None for k in ("subject", "title", "text", "body", "html")):
            raise ValueError("a template part needs at least one of subject, title, text, body, html")
        return self


TemplatesSection = dict[str, dict[str, TemplatePart]]     # NAME -> channel name -> part


class PolicyModel(Strict):
    version: Literal[1] = 1
    daemon: DaemonSection = DaemonSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    failover: FailoverSection = FailoverSection()
    providers: dict[str, Provider] = Field(default_factory=dict)
    channels: dict[str, ChannelSection] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(default_factory=dict)
    templates: TemplatesSection = Field(default_factory=dict)


# --------------------------------------------------------------------------- errors


class PolicyError(ConfigError):
    """routing.toml (or a scenario file) is invalid; `problems` lists every reason (the one
    configuration-error shape: daemon/core/errors.py ConfigError)."""


def user_loc(raw_loc: tuple) -> tuple[str | int, ...]:
    """pydantic's error location without the union-branch names it inserts.

    Branch tags of our own unions start with ':' (no user name can); a provider's `type` tag
    sits right after providers.NAME; the rest are pydantic's names of model/function branches.
    """
    out: list[str | int] = []
    for i, p in enumerate(raw_loc):
        if isinstance(p, str):
            if p.startswith(":") or p.startswith("literal[") or p.startswith("function-"):
                continue
            if p in ("RouteGroup", "BreakerSection", "InlineRouting"):
                continue
            if i == 2 and raw_loc[0] == "providers" and p in PROVIDER_TYPES:
                continue
            if p in ("str", "int") and i > 0 and not _is_mapping_key(raw_loc, i):
                continue
        out.append(p)
    return tuple(out)


def _is_mapping_key(raw_loc: tuple, i: int) -> bool:
    # providers.NAME / channels.NAME / routes.NAME / headers.NAME: user-chosen keys
    return raw_loc[i - 1] in ("providers", "channels", "routes", "headers", "templates")


def problems_from_validation(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    """The one formatter of pydantic's errors, for files (routing.toml, scenarios) and requests
    (HTTP and MQTT `details`) alike: user-written key paths, one wording ("unknown key",
    "required key is missing"), the first message per location."""
    out: list[Problem] = []
    for e in err.errors():
        loc = user_loc(e["loc"])
        msg = e["msg"]
        for pre in ("Value error, ", "Assertion failed, "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _valid_keys_hint(err.title, e["loc"])
        elif e["type"] in _EXPECTED:
            msg = f"expected {_EXPECTED[e['type']]}, got {toml_repr(e.get('input'))}"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {toml_repr(e.get('input'))}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # A discriminated union (provider `type`): name the key and the choices.
            ctx = e.get("ctx") or {}
            key = str(ctx.get("discriminator", "type")).strip("'")
            kind = "provider " if "providers" in loc else ""
            expected = _expected_tags(ctx)
            if e["type"] == "union_tag_invalid":
                msg = f"unknown {kind}{key} {ctx.get('tag')!r}; expected one of: {expected}"
            else:
                msg = f"required key is missing; expected one of: {expected}"
            loc = loc + (key,)
        out.append(Problem(prefix + loc, _GOT_PY.sub(lambda m: "got " + toml_repr(m.group(1) == "True"), msg)))
    # Unions report once per branch; keep the first message per location.
    seen: dict[tuple, Problem] = {}
    for p in out:
        seen.setdefault(p.loc, p)
    return list(seen.values())


# pydantic's type errors in TOML's words, with what was given (strict: "1" is not an integer).
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
             "float_type": "a number", "float_parsing": "a number", "dict_type": "a table",
             "model_type": "a table", "model_attributes_type": "a table", "list_type": "an array"}
# A validator's "got {v!r}" of a boolean says True/False, Python's spelling; the file says true/false.
_GOT_PY = re.compile(r"\bgot (True|False)\b")


def toml_repr(v: Any) -> str:
    """A value as the file spells it: true, "1", 1.5, a table, an array."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return "nothing" if v is None else type(v).__name__


def _valid_keys_hint(title: str, raw_loc: tuple) -> str:
    """'; did you mean 'retries'? valid keys: ...' for an unknown key, from the model the error
    is about (found by the ValidationError's title); '' when the table's keys are not known."""
    import difflib

    keys = _keys_at(_model_named(title), tuple(raw_loc[:-1]))
    if not keys:
        return ""
    close = difflib.get_close_matches(str(raw_loc[-1]), keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} valid keys: {', '.join(keys)}" if hint else f"; valid keys: {', '.join(keys)}"


def bare_millisecond_warnings(raw: Any, model: Any = None, loc: tuple = (), path: tuple = ()) -> list[str]:
    """A duration written as a bare integer under 1000 is milliseconds (docs/configuration.md
    "Durations"): `provider = 2` is 2 ms, almost surely meant as 2 s; say so (a warning, since
    it is valid). `loc` is pydantic's location (with a provider's `type` as its branch tag),
    `path` the user's key path."""
    model = PolicyModel if model is None else model
    out: list[str] = []
    items = list(raw.items()) if isinstance(raw, dict) else list(enumerate(raw)) if isinstance(raw, list) else []
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        loc = loc + (raw["type"],)
    for k, v in items:
        if isinstance(v, (dict, list)):
            out += bare_millisecond_warnings(v, model, loc + (k,), path + (k,))
        elif (isinstance(raw, dict) and isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000
              and _is_duration(model, loc + (k,))):
            key = ".".join(str(p) for p in path + (k,))
            out.append(f"{key} = {v} is {v} ms (a bare integer duration is milliseconds); "
                       f"write \"{v}s\" for seconds, or \"{v}ms\" to say you mean milliseconds")
    return out


def _model_fields(cls: Any) -> dict[str, Any]:
    """A pydantic model class's fields (typed Any: in the compiled core's build, where pydantic is
    not installed, mypy cannot see that the class is a BaseModel)."""
    return dict(cls.model_fields)


def _is_duration(model: Any, loc: tuple) -> bool:
    import typing

    parent = _keys_at(model, loc[:-1], want_model=True)
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return False
    field = next((f for n, f in _model_fields(parent).items() if loc[-1] in (n, f.alias)), None)
    if field is None:
        return False
    todo: list[Any] = [*field.metadata, field.annotation]
    for _ in range(64):
        if not todo:
            break
        x = todo.pop()
        if getattr(x, "func", None) is _parse_duration_ms:
            return True
        todo += list(getattr(x, "__metadata__", ())) + list(typing.get_args(x))
    return False


def _model_named(name: str) -> type[BaseModel] | None:
    found: list[type[BaseModel]] = []
    todo: list[Any] = [BaseModel]
    seen: set[Any] = set()
    while todo:
        cls = todo.pop()
        sub: Any
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                if sub.__name__ == name and sub.__module__.startswith(("routingd.", "daemon.", "simulator.")):
                    found.append(sub)
    return found[0] if len(found) == 1 else None


def _keys_at(model: Any, loc: tuple, want_model: bool = False) -> Any:
    """The keys of the table at pydantic's `loc` (branch tags included) inside `model` (with
    `want_model`: its model class); None when unknown. A provider table's tag is its `type`."""
    import typing

    t: Any = model
    i = 0
    for _ in range(64):                       # bounded: loc is short, every step consumes or unwraps
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin is Union or type(t).__name__ == "UnionType":
            members = [m for m in typing.get_args(t) if m is not type(None)]
            nxt = loc[i] if i < len(loc) else None
            picked = None
            for m in members:
                meta = getattr(m, "__metadata__", ())
                base = typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m
                tags = {getattr(x, "tag", None) for x in meta}
                ftype = getattr(base, "model_fields", {}).get("type")
                lits = set(typing.get_args(ftype.annotation)) if ftype is not None else set()
                if nxt is not None and (nxt in tags or nxt in lits or nxt == getattr(base, "__name__", None)):
                    picked, i = base, i + 1
                    break
            if picked is None:
                bases = [typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m for m in members]
                models = [m for m in bases if isinstance(m, type) and issubclass(m, BaseModel)]
                if len(models) != 1:
                    return None
                picked = models[0]
            t = picked
        elif origin is dict:
            if i >= len(loc):
                return None
            t, i = typing.get_args(t)[1], i + 1
        elif origin is list:
            if i >= len(loc):
                return None
            t, i = typing.get_args(t)[0], i + 1
        elif isinstance(t, type) and issubclass(t, BaseModel):
            if i >= len(loc):
                return t if want_model else [f.alias or n for n, f in _model_fields(t).items()]
            name = loc[i]
            field = next((f for n, f in _model_fields(t).items() if name in (n, f.alias)), None)
            if field is None:
                return None
            t, i = field.annotation, i + 1
        else:
            return None
    return None


def _expected_tags(ctx: Mapping[str, Any]) -> str:
    tags = ctx.get("expected_tags")
    if tags:
        return ", ".join(t.strip().strip("'") for t in str(tags).split(","))
    return ", ".join(PROVIDER_TYPES)


# --------------------------------------------------------------------------- interpolation

_VAR = re.compile(r"\$\{(?:(credential|file):([^}]*)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")

# Reads a secret for ${credential:NAME} (kind "credential") or ${file:PATH} (kind "file"); raises
# ValueError with a reason that never holds the value. The daemon's is daemon/secrets.py.
SecretResolver = Callable[[str, str], str]


def interpolate(raw: Any, env: Mapping[str, str], loc: tuple = (), problems: list[Problem] | None = None,
                used: dict[str, str] | None = None, secrets: SecretResolver | None = None) -> Any:
    """Replace ${VAR}, ${VAR:-default}, ${credential:NAME} and ${file:PATH} in every string of a
    parsed TOML tree, except under [templates] (message text, where "${" is the author's).

    `used`, when given, collects {value: reference} of every substituted value, so that error
    messages can name the reference instead of echoing its (possibly secret) value."""
    if problems is None:
        problems = []
    if isinstance(raw, dict):
        if loc == () and "templates" in raw:
            return {k: v if k == "templates" else interpolate(v, env, (k,), problems, used, secrets)
                    for k, v in raw.items()}
        return {k: interpolate(v, env, loc + (k,), problems, used, secrets) for k, v in raw.items()}
    if isinstance(raw, list):
        return [interpolate(v, env, loc + (i,), problems, used, secrets) for i, v in enumerate(raw)]
    if isinstance(raw, str) and "${" in raw:
        def sub(m: re.Match) -> str:
            kind, ref = m.group(1), m.group(2)
            if kind is not None:
                return _secret(kind, ref, loc, problems, used, secrets)
            name, default = m.group(3), m.group(4)
            if name in env:
                if used is not None and env[name]:
                    used[env[name]] = name
                return env[name]
            if default is not None:
                return default
            # api_tokens may name an unset variable: that simply means "no token".
            if loc[:2] == ("daemon", "api_tokens"):
                return ""
            problems.append(Problem(loc, f"environment variable {name} is not set "
                                         f"(write ${{{name}:-}} to default it to empty)"))
            return ""
        return _VAR.sub(sub, raw)
    return raw


def _secret(kind: str, ref: str, loc: tuple, problems: list[Problem], used: dict[str, str] | None,
            secrets: SecretResolver | None) -> str:
    if secrets is None:
        problems.append(Problem(loc, f"${{{kind}:{ref}}} cannot be read here (only routingd's daemon and "
                                     "command line read secrets)"))
        return ""
    try:
        value = secrets(kind, ref)
    except ValueError as e:
        problems.append(Problem(loc, f"${{{kind}:{ref}}}: {e}"))
        return ""
    if used is not None and value:
        used[value] = f"{kind}:{ref}"
    return value


# --------------------------------------------------------------------------- the snapshot


@dataclass(frozen=True)
class Policy:
    """An immutable, validated policy snapshot. `version` is the content hash."""

    model: PolicyModel
    version: str
    source: str
    path: str
    warnings: tuple[str, ...] = field(default=())
    templates: TemplateSet = field(default=NO_TEMPLATES, compare=False)   # [templates], compiled

    @property
    def providers(self) -> dict[str, Any]:
        return self.model.providers

    @property
    def channels(self) -> dict[str, ChannelSection]:
        return self.model.channels

    @property
    def routes(self) -> dict[str, RouteSection]:
        return self.model.routes


def _check_names(kind: str, names: Any, problems: list[Problem]) -> None:
    for name in names:
        if not NAME_RE.match(str(name)):
            problems.append(Problem((kind, name), "name may hold only letters, digits, '_', '-' and '.'"))


def _check_items(items: list, loc: tuple, channels: Mapping[str, Any], problems: list[Problem], depth: int = 0) -> None:
    if depth > 16:
        problems.append(Problem(loc, "route nesting is deeper than 16 levels"))
        return
    for i, item in enumerate(items):
        if isinstance(item, str):
            if item not in channels:
                problems.append(Problem(loc + (i,), f"unknown channel {item!r}"
                                        + (f"; defined channels: {', '.join(sorted(channels))}" if channels else "")))
        else:
            _check_items(item.channels, loc + (i, "channels"), channels, problems, depth + 1)


def plan_limit_msg(key: str, limit: int, what: str) -> str:
    return f"more than {limit} {what} (the limit [daemon] {key})"


def plan_shape_problems(items: list, loc: tuple, daemon: DaemonSection, once: bool = False) -> list[Problem]:
    """A route's (or inline routing's) items against the plan limits: nesting depth, channels
    in the plan and, with `once` (a request's inline routing), the same channel twice (it would
    deliver twice to one recipient; a route in the file may do so on purpose).

    Walks at most max_plan_channels channels and stops at the first limit passed, so a request
    of any size costs no more than the limit to check."""
    problems: list[Problem] = []
    seen: set[str] = set()
    count = 0
    max_ch, max_depth = daemon.max_plan_channels, daemon.max_plan_depth
    # an explicit stack, not recursion: (items, loc, depth, next index)
    stack: list[tuple[list, tuple, int, int]] = [(list(items), loc, 1, 0)]
    while stack:
        seq, here, depth, i = stack.pop()
        if i >= len(seq):
            continue
        stack.append((seq, here, depth, i + 1))
        item = seq[i]
        if isinstance(item, str):
            if once and item in seen:
                return [Problem(here + (i,), f"channel {item!r} appears twice in one plan")]
            seen.add(item)
            count += 1
            if count > max_ch:
                return [Problem(here + (i,), plan_limit_msg("max_plan_channels", max_ch, "channels in one plan"))]
        elif hasattr(item, "channels"):
            if depth > max_depth:
                return [Problem(here + (i,), plan_limit_msg("max_plan_depth", max_depth,
                                                            "levels of nested groups"))]
            stack.append((list(item.channels), here + (i, "channels"), depth + 1, 0))
    return problems


def _route_channels(items: list, depth: int = 0) -> list[str]:
    """Channel names of a route's item list, nested groups included, in order, once each."""
    out: list[str] = []
    for item in items:
        names = [item] if isinstance(item, str) else (_route_channels(item.channels, depth + 1) if depth < 16 else [])
        out += [n for n in names if n not in out]
    return out


def validate_references(model: PolicyModel) -> tuple[list[Problem], list[str]]:
    """Cross-references the schema cannot see: unknown providers/channels, timeout sanity."""
    problems: list[Problem] = []
    warnings: list[str] = []
    _check_names("providers", model.providers, problems)
    _check_names("channels", model.channels, problems)
    _check_names("routes", model.routes, problems)
    for cname, ch in model.channels.items():
        for i, listed in enumerate(ch.providers):
            if listed not in model.providers:
                problems.append(Problem(("channels", cname, "providers", i), f"unknown provider {listed!r}"
                                        + (f"; defined providers: {', '.join(sorted(model.providers))}" if model.providers else "")))
        if len(set(ch.providers)) != len(ch.providers):
            problems.append(Problem(("channels", cname, "providers"), "a provider is listed twice"))
        if len(ch.providers) > model.daemon.max_channel_providers:
            problems.append(Problem(("channels", cname, "providers"), plan_limit_msg(
                "max_channel_providers", model.daemon.max_channel_providers, "providers in one channel")))
    for rname, r in model.routes.items():
        _check_items(r.channels, ("routes", rname, "channels"), model.channels, problems)
        problems += plan_shape_problems(r.channels, ("routes", rname, "channels"), model.daemon)
    for pname, p in model.providers.items():
        if p.backoff.max < p.backoff.base:
            problems.append(Problem(("providers", pname, "backoff", "max"), "must be at least backoff.base"))
    if model.daemon.mqtt is None:
        for pname, p in model.providers.items():
            if p.type == "mqtt":
                warnings.append(f"providers.{pname}: type \"mqtt\" but there is no [daemon.mqtt]: every attempt "
                                "fails at once (network, \"[daemon.mqtt] is not configured\") and fails over")
    route_sets_provider_timeout = any(r.timeouts.provider is not None for r in model.routes.values())
    for pname, p in model.providers.items():
        slow = p.breaker.slow if p.breaker is not False else None
        if slow is None:
            continue
        if p.timeout is not None:
            timeout, where = p.timeout, f"providers.{pname}.timeout"
        elif route_sets_provider_timeout:
            continue        # depends on the route: explain ROUTE shows it
        else:
            timeout = model.timeouts.provider if model.timeouts.provider is not None else BUILTIN_PROVIDER_TIMEOUT_MS
            where = "timeouts.provider" if model.timeouts.provider is not None else "the built-in provider timeout"
        if slow >= timeout:
            warnings.append(f"providers.{pname}.breaker.slow ({slow} ms) is not shorter than {where} ({timeout} ms): "
                            "an attempt times out before it could be marked slow, so it has no effect")
    msg_default = model.timeouts.message if model.timeouts.message is not None else BUILTIN_MESSAGE_TIMEOUT_MS
    if model.timeouts.channel is not None and model.timeouts.channel > msg_default:
        warnings.append(f"timeouts.channel ({model.timeouts.channel} ms) is larger than the message timeout "
                        f"({msg_default} ms); the message deadline will cut it short")
    for cname, ch in model.channels.items():
        if ch.timeout is not None and ch.timeout > msg_default:
            warnings.append(f"channels.{cname}.timeout ({ch.timeout} ms) is larger than the message timeout "
                            f"({msg_default} ms); the message deadline will cut it short")
    for rname, r in model.routes.items():
        mt = r.timeouts.message if r.timeouts.message is not None else msg_default
        ct = r.timeouts.channel
        if ct is not None and ct > mt:
            warnings.append(f"routes.{rname}.timeouts.channel ({ct} ms) is larger than its message timeout ({mt} ms)")
        if r.timeouts.message is None:
            continue        # the file-level warnings above already cover this route
        for cname in _route_channels(r.channels):
            used = model.channels.get(cname)
            if used is None or used.timeout is None and ct is not None:
                continue    # unknown (reported) or the route's own channel timeout (warned above)
            eff = used.timeout if used.timeout is not None else model.timeouts.channel
            if eff is not None and eff > mt:
                warnings.append(f"routes.{rname}: channel {cname!r} has a timeout ({eff} ms) larger than the "
                                f"route's message timeout ({mt} ms); the message deadline will cut it short")
    if model.routes and "default" not in model.routes:
        warnings.append("no [routes.default]: every send must name a route or carry inline routing")
    return problems, warnings


def _dict_at(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def raw_reference_problems(raw: Any) -> list[Problem]:
    """Unknown providers in channels and unknown channels in routes, read from the raw tree.

    Used when the schema already failed, so that a file is not fixed one round at a time:
    the cross-references are reported with the schema errors.
    """
    if not isinstance(raw, dict):
        return []
    providers = _dict_at(raw, "providers")
    channels = _dict_at(raw, "channels")
    problems: list[Problem] = []
    for cname, ch in channels.items():
        plist = ch.get("providers") if isinstance(ch, dict) else None
        if isinstance(plist, list):
            for i, p in enumerate(plist):
                if isinstance(p, str) and p not in providers:
                    problems.append(Problem(("channels", cname, "providers", i), f"unknown provider {p!r}"
                                            + (f"; defined providers: {', '.join(sorted(providers))}"
                                               if providers else "")))

    def walk(items: Any, loc: tuple, depth: int) -> None:
        if not isinstance(items, list) or depth > 16:
            return
        for i, item in enumerate(items):
            if isinstance(item, str) and item not in channels:
                problems.append(Problem(loc + (i,), f"unknown channel {item!r}"
                                        + (f"; defined channels: {', '.join(sorted(channels))}" if channels else "")))
            elif isinstance(item, dict):
                walk(item.get("channels"), loc + (i, "channels"), depth + 1)

    routes = _dict_at(raw, "routes")
    for rname, r in routes.items():
        if isinstance(r, dict):
            walk(r.get("channels"), ("routes", rname, "channels"), 0)
    return problems


def parse_policy(text: str, path: str = "routing.toml", env: Mapping[str, str] | None = None,
                 secrets: SecretResolver | None = None) -> Policy:
    """Parse and validate routing.toml text; raise PolicyError with every problem found, each
    naming the line of its key. `env` holds the ${VAR} values (none given: no variable is set;
    daemon/config_files.py passes the process environment); `secrets` reads ${credential:NAME}
    and ${file:PATH} (none given: they are errors)."""
    try:
        return _parse_policy(text, path, {} if env is None else env, secrets)
    except PolicyError as e:
        e.text = text
        raise


def _parse_policy(text: str, path: str, env: Mapping[str, str], secrets: SecretResolver | None) -> Policy:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(path, [Problem((), f"not valid TOML: {e}")]) from None
    except RecursionError:
        raise PolicyError(path, [Problem((), "not valid TOML: arrays or tables are nested too deeply")]) from None
    problems: list[Problem] = []
    used: dict[str, str] = {}
    try:
        raw = interpolate(raw, env, (), problems, used, secrets)
        try:
            model = PolicyModel.model_validate(raw, strict=True)
        except ValidationError as e:
            problems += problems_from_validation(e)
            known = {p.loc for p in problems}
            problems += [p for p in raw_reference_problems(raw) if p.loc not in known]
            raise PolicyError(path, _masked(problems, used)) from None
        ref_problems, warnings = validate_references(model)
        warnings = bare_millisecond_warnings(raw) + warnings
    except RecursionError:
        raise PolicyError(path, [Problem((), "the file is nested too deeply to check")]) from None
    problems += ref_problems
    _check_names("templates", model.templates, problems)
    templates, issues = compile_templates(model.templates, model.channels)
    problems += [Problem(loc, msg) for loc, msg in issues]
    if problems:
        raise PolicyError(path, _masked(problems, used))
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Policy(model=model, version=version, source=text, path=path, warnings=tuple(warnings),
                  templates=templates)


def _masked(problems: list[Problem], used: Mapping[str, str]) -> list[Problem]:
    """Never echo a value that came from the environment (it may be a secret put in the wrong key):
    name its variable instead."""
    if not used:
        return problems
    out = []
    for p in problems:
        msg = p.msg
        for value in sorted(used, key=len, reverse=True):
            # as is, and as repr() shows it inside a message (a backslash, a tab or both quote
            # kinds come out escaped), and that escaped again (a message quoted by repr once more)
            once = repr(value)[1:-1]
            for form in dict.fromkeys((value, once, repr(once)[1:-1], once.replace("\\'", "'"))):
                if form and form in msg:
                    msg = msg.replace(form, f"${{{used[value]}}}")
        out.append(Problem(p.loc, msg))
    return out
