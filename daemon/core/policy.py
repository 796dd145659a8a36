"""The routing.toml model: pydantic models, ${VAR} interpolation, validation with key paths.

`load_policy(path)` gives an immutable `Policy` whose `version` is the content hash of the
file, or raises `PolicyError` listing every problem as "PATH: key.path: reason".
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, SecretStr, Tag,
                      ValidationError, field_validator)

from .behaviour import BehaviourSpec, Duration, FailMode

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
    grace: Duration = 10_000
    retention: Duration = 7 * 24 * 3_600_000
    idempotency_ttl: Duration = 24 * 3_600_000
    watch: bool = True

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


class HttpProvider(ProviderBase):
    type: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

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
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["sandbox"]
    fail: FailMode = "none"


Provider = Annotated[Union[HttpProvider, MqttProvider, SandboxProvider], Field(discriminator="type")]
PROVIDER_TYPES: tuple[str, ...] = ("http", "mqtt", "sandbox")


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
    channels: list[RouteItem] = Field(min_length=1)
    timeouts: TimeoutsSection = TimeoutsSection()


class PolicyModel(Strict):
    version: Literal[1] = 1
    daemon: DaemonSection = DaemonSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    failover: FailoverSection = FailoverSection()
    providers: dict[str, Provider] = Field(default_factory=dict)
    channels: dict[str, ChannelSection] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(default_factory=dict)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]
    msg: str

    @property
    def key_path(self) -> str:
        return ".".join(str(p) for p in self.loc) or "(file)"


class PolicyError(Exception):
    """routing.toml (or a scenario file) is invalid; `problems` lists every reason."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.path}: {p.key_path}: {p.msg}" for p in self.problems]


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
    return raw_loc[i - 1] in ("providers", "channels", "routes", "headers")


def problems_from_validation(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors():
        loc = user_loc(e["loc"])
        msg = e["msg"]
        for pre in ("Value error, ", "Assertion failed, "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
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
        out.append(Problem(prefix + loc, msg))
    # Unions report once per branch; keep the first message per location.
    seen: dict[tuple, Problem] = {}
    for p in out:
        seen.setdefault(p.loc, p)
    return list(seen.values())


def _expected_tags(ctx: Mapping[str, Any]) -> str:
    tags = ctx.get("expected_tags")
    if tags:
        return ", ".join(t.strip().strip("'") for t in str(tags).split(","))
    return ", ".join(PROVIDER_TYPES)


# --------------------------------------------------------------------------- interpolation

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(raw: Any, env: Mapping[str, str], loc: tuple = (), problems: list[Problem] | None = None,
                used: dict[str, str] | None = None) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a parsed TOML tree.

    `used`, when given, collects {value: VAR} of every substituted variable, so that error
    messages can name the variable instead of echoing its (possibly secret) value."""
    if problems is None:
        problems = []
    if isinstance(raw, dict):
        return {k: interpolate(v, env, loc + (k,), problems, used) for k, v in raw.items()}
    if isinstance(raw, list):
        return [interpolate(v, env, loc + (i,), problems, used) for i, v in enumerate(raw)]
    if isinstance(raw, str) and "${" in raw:
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
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


# --------------------------------------------------------------------------- the snapshot


@dataclass(frozen=True)
class Policy:
    """An immutable, validated policy snapshot. `version` is the content hash."""

    model: PolicyModel
    version: str
    source: str
    path: str
    warnings: tuple[str, ...] = field(default=())

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


def parse_policy(text: str, path: str = "routing.toml", env: Mapping[str, str] | None = None) -> Policy:
    """Parse and validate routing.toml text; raise PolicyError with every problem found."""
    import os  # environment only, read once here: no I/O beyond it

    env = dict(os.environ) if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(path, [Problem((), f"not valid TOML: {e}")]) from None
    except RecursionError:
        raise PolicyError(path, [Problem((), "not valid TOML: arrays or tables are nested too deeply")]) from None
    problems: list[Problem] = []
    used: dict[str, str] = {}
    try:
        raw = interpolate(raw, env, (), problems, used)
        try:
            model = PolicyModel.model_validate(raw)
        except ValidationError as e:
            problems += problems_from_validation(e)
            known = {p.loc for p in problems}
            problems += [p for p in raw_reference_problems(raw) if p.loc not in known]
            raise PolicyError(path, _masked(problems, used)) from None
        ref_problems, warnings = validate_references(model)
    except RecursionError:
        raise PolicyError(path, [Problem((), "the file is nested too deeply to check")]) from None
    problems += ref_problems
    if problems:
        raise PolicyError(path, _masked(problems, used))
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Policy(model=model, version=version, source=text, path=path, warnings=tuple(warnings))


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


def read_config_text(path: str) -> str:
    """Read a TOML config file (routing.toml, a scenario) as text; PolicyError when it cannot be."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(path, [Problem((), f"cannot read file: {e.strerror or e}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(path, [Problem((), f"not UTF-8 text (byte {e.start})")]) from None


def load_policy(path: str, env: Mapping[str, str] | None = None) -> Policy:
    """Read and validate a routing.toml file (the one file read this package does)."""
    return parse_policy(read_config_text(path), path, env)
