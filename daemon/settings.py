"""Process settings of `routingd serve`, with their precedence.

    CLI flags (--config, --listen, --state)  >  ROUTINGD_* environment  >  [daemon] of routing.toml
    >  built-in defaults

The config path itself cannot come from the file it names: it is `--config`, else
`ROUTINGD_CONFIG`, else `./routing.toml` (`config_path()`). `ROUTINGD_API_TOKENS` takes a
comma-separated list (or a JSON list); tokens are `SecretStr` and never logged.

The fields (names, types, defaults, bounds) are those of `DaemonSection` in core/sections.py,
carried over with `create_model`, so a [daemon] key and its ROUTINGD_* variable cannot drift.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Mapping

from pydantic import SecretStr, ValidationError, ValidationInfo, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .core.policy import DaemonSection, Policy
from .errors import RoutingdError

ENV_PREFIX = "ROUTINGD_"
DEFAULT_CONFIG = "routing.toml"
DEFAULT_LEASE_S = 10.0          # [daemon] lease when absent (docs/scaling.md)


class SettingsError(RoutingdError):
    """Settings are unusable; `lines()` gives one actionable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_listen(value: str) -> ListenAddress:
    """"HOST:PORT" or "[V6]:PORT" -> ListenAddress; ValueError with a readable reason."""
    v = value.strip()
    if v.startswith("["):
        host, sep, port = v[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {value!r}: write an IPv6 host as [::1]:8080")
    else:
        host, sep, port = v.rpartition(":")
        if not sep:
            raise ValueError(f"listen address {value!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
        if ":" in host:
            raise ValueError(f"listen address {value!r}: write an IPv6 host as [::1]:8080")
    if not host:
        raise ValueError(f"listen address {value!r} has no host (use 0.0.0.0 for every interface)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {value!r}: port must be a number from 0 to 65535")
    return ListenAddress(host, int(port))


def store_url_problem(url: str) -> str | None:
    """Why `url` cannot be the PostgreSQL store's ([daemon] store, docs/scaling.md), in words that
    never quote its password; None when libpq can parse it (whether the server answers is for the
    start to find out: `check` does not connect)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return ("expected a PostgreSQL URL, postgresql://USER@HOST[:PORT]/DATABASE (leave store out for "
                "the SQLite file named by `state`)")
    import psycopg      # only with a store: the SQLite daemon never loads the driver
    from psycopg.conninfo import conninfo_to_dict
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        # libpq's message ends by quoting the offending part, which may be the password or the
        # whole URL: keep what it says, not what it quotes
        reason = str(e).strip().splitlines()[0].split(': "')[0].split(" in URI")[0] or "cannot be parsed"
        return f"not a valid PostgreSQL URL: {reason}"
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"not a valid PostgreSQL URL: port {port!r} is not a number from 1 to 65535"
    return None


class _DaemonTableSource(PydanticBaseSettingsSource):
    """The [daemon] table of routing.toml (already validated and ${VAR}-interpolated)."""

    def __init__(self, settings_cls: type[BaseSettings], table: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._table = dict(table)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._table.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._table.items() if k in self.settings_cls.model_fields}


def _daemon_fields() -> dict[str, Any]:
    """DaemonSection's fields, for create_model(): one definition of names, types, defaults and
    bounds for both [daemon] and ROUTINGD_*. `api_tokens` is marked NoDecode so that
    ROUTINGD_API_TOKENS reaches `Settings._tokens` as text (commas or a JSON list) instead of
    failing pydantic-settings' own JSON decoding."""
    fields: dict[str, Any] = {}
    for name, info in DaemonSection.model_fields.items():
        annotation: Any = info.annotation
        if name == "api_tokens":
            annotation = Annotated[annotation, NoDecode]
        fields[name] = (annotation, info)  # create_model copies the FieldInfo
    return fields


# The [daemon] fields as a BaseSettings (env and table sources); Settings adds the config path,
# the parsing of env text and the source order.
_DaemonSettings = create_model("_DaemonSettings", __base__=BaseSettings, **_daemon_fields())


class Settings(_DaemonSettings):  # type: ignore[valid-type,misc]  # made by create_model: mypy cannot see it
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="ignore", frozen=True)

    config: str = DEFAULT_CONFIG

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("["):
                import json
                try:
                    v = json.loads(s)
                except ValueError:
                    raise ValueError("ROUTINGD_API_TOKENS: not a JSON list; "
                                     "write tokens separated by commas") from None
            else:
                v = [t.strip() for t in s.split(",")]
        if isinstance(v, list):
            return [t for t in v if not (isinstance(t, str) and t.strip() == "")
                    and not (isinstance(t, SecretStr) and t.get_secret_value() == "")]
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        # ROUTINGD_STORE does not pass DaemonSection's own check (create_model carries the fields,
        # not their validators): without this a mysql:// URL from the environment would open the
        # SQLite file without a word, and a URL libpq cannot parse would fail at start with a
        # traceback (or an error quoting its password)
        if v is None or v == "":
            return None
        problem = store_url_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("lease")
    @classmethod
    def _lease_needs_postgres(cls, v: int | None, info: ValidationInfo) -> int | None:
        # a key accepted and ignored would be a defect: the SQLite file has one process, no lease
        if v is not None and not info.data.get("store"):       # store is declared before it
            raise ValueError("lease applies to the PostgreSQL store only (several processes on one "
                             "database, docs/scaling.md); set store = \"postgresql://...\" or remove lease")
        return v

    @field_validator("workers")
    @classmethod
    def _workers_need_postgres(cls, v: int, info: ValidationInfo) -> int:
        # the SQLite file is locked by one process: a second worker could not open it
        if v > 1 and not info.data.get("store"):       # store is declared before it
            raise ValueError(f"workers = {v} needs the PostgreSQL store (one SQLite file serves one "
                             "process, docs/scaling.md \"Workers\"); set store = \"postgresql://...\" "
                             "or workers = 1")
        return v

    @field_validator("mqtt")
    @classmethod
    def _workers_share_the_subscription(cls, v: Any, info: ValidationInfo) -> Any:
        # N workers each subscribed to the send topic would each accept every MQTT send
        workers = info.data.get("workers") or 1
        if v is not None and workers > 1 and v.subscribe and not v.shared_subscription:
            raise ValueError(f"with workers = {workers} every worker would take every MQTT send: set "
                             "mqtt.shared_subscription = true (the broker gives each send to one of them) "
                             "or mqtt.subscribe = false")
        return v

    @property
    def lease_s(self) -> float:
        """The lease on pending messages, seconds (PostgreSQL; default 10 s)."""
        return DEFAULT_LEASE_S if self.lease is None else self.lease / 1000.0

    @field_validator("max_inflight_bytes")
    @classmethod
    def _bytes_hold_a_body(cls, v: int, info: ValidationInfo) -> int:
        body = info.data.get("max_body")        # declared before it (DaemonSection's order)
        if isinstance(body, int) and v < body:
            raise ValueError(f"{v} is less than max_body ({body}): a request of max_body bytes "
                             "could never be accepted")
        return v

    # The [daemon] table, bound per load by a throwaway subclass (see load_settings()).
    daemon_table: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   env_settings: Any, dotenv_settings: Any,
                                   file_secret_settings: Any) -> tuple[Any, ...]:
        return (init_settings, env_settings, _DaemonTableSource(settings_cls, cls.daemon_table))

    @property
    def listen_address(self) -> ListenAddress:
        return parse_listen(self.listen)

    def token_values(self) -> list[bytes]:
        return [t.get_secret_value().encode() for t in self.api_tokens]


def config_path(cli_value: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """--config > ROUTINGD_CONFIG > ./routing.toml"""
    env = os.environ if env is None else env
    return cli_value or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG


def load_settings(policy: Policy | None, *, config: str, listen: str | None = None,
                  state: str | None = None) -> Settings:
    """Merge CLI flags > ROUTINGD_* env > policy [daemon] table > defaults; SettingsError if bad."""
    table: dict[str, Any] = {}
    if policy is not None:
        table = policy.model.daemon.model_dump(exclude_unset=True)  # dicts, so env merges in
    cli: dict[str, Any] = {"config": config}
    if listen is not None:
        cli["listen"] = listen
    if state is not None:
        cli["state"] = state

    class _Bound(Settings):
        daemon_table = table

    try:
        bound = _Bound(**cli)
    except ValidationError as e:
        raise SettingsError([_problem_line(err) for err in e.errors()]) from None
    except ValueError as e:  # pydantic-settings' SettingsError for undecodable env values
        raise SettingsError([str(e)]) from None
    return bound


def _problem_line(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    loc0 = err.get("loc", ("",))[0]
    if err.get("type") in ("greater_than_equal", "less_than_equal") and _is_duration(str(loc0)):
        msg += f" (milliseconds), got {err.get('input')!r}"        # a duration's bound: ROUTINGD_LEASE=500ms
    for pre in ("Value error, ", "Assertion failed, "):
        if msg.startswith(pre):
            msg = msg[len(pre):]
    return f"setting {loc} (daemon.{loc} / {ENV_PREFIX}{loc.upper().replace('.', '__')}): {msg}"


def _is_duration(name: str) -> bool:
    """Is the setting `name` a duration (its bounds are milliseconds, whatever unit was written)?"""
    from .core.durations import parse_duration_ms

    def holds(x: Any) -> bool:
        return getattr(x, "func", None) is parse_duration_ms or any(holds(a) for a in typing.get_args(x))

    field = Settings.model_fields.get(name)
    return field is not None and (holds(field.annotation) or any(holds(m) for m in field.metadata))
