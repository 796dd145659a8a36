"""The routing.toml model: parsing, validation with key paths, and the immutable `Policy`.

`parse_policy(text, path, env)` gives an immutable `Policy` whose `version` is the content hash of
the text, or raises `PolicyError` listing every problem as "PATH: key.path: reason". Reading the
file and the environment is the caller's (daemon/config_files.py `load_policy`).

The model's parts live beside it, one job each, and are re-exported here, so that
`from routingd.daemon.core.policy import X` names every one of them:

- sections.py: `Strict`, [daemon] and [daemon.mqtt], [timeouts], [failover], the built-in timeouts;
- provider_models.py: [providers.NAME], every provider type;
- routing_model.py: [channels], [routes], [templates] and `PolicyModel`, the whole file;
- interpolation.py: ${VAR}, ${credential:NAME}, ${file:PATH} (secrets are read by a resolver the
  caller passes in) and the masking of their values in error messages;
- wording.py: pydantic's errors in the file's words, the bare-millisecond warning;
- cross_checks.py: the checks the schema cannot make (references, plan limits, timeouts).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from .cross_checks import (NAME_RE, check_names, plan_limit_msg, plan_shape_problems, raw_reference_problems,
                           validate_references)
from .errors import ConfigError, Problem
from .interpolation import SecretResolver, interpolate, masked
from .provider_models import (EMAIL_PROVIDER_TYPES, EMAIL_PROVIDERS, PROVIDER_TYPES, Address, AppriseProvider,
                              BackoffSection, BaseUrl, Breaker, BreakerSection, FcmProvider, HttpProvider, HttpUrl,
                              MqttProvider, Provider, ProviderBase, SandboxProvider, SendgridProvider, SesProvider,
                              SlackProvider, SmtpProvider, TwilioProvider, load_ec_public_key)
from .routing_model import (ChannelSection, PolicyModel, RouteGroup, RouteItem, RouteSection, TemplatePart,
                            TemplatesSection)
from .sections import (BUILTIN_CHANNEL_TIMEOUT_MS, BUILTIN_MESSAGE_TIMEOUT_MS, BUILTIN_PROVIDER_TIMEOUT_MS,
                       DEFAULT_FAILOVER_ON, DaemonSection, FailoverEntry, FailoverSection, MqttSection, Strict,
                       TimeoutsSection)
from .templates import EMPTY as NO_TEMPLATES
from .templates import TemplateSet, compile_templates
from .wording import bare_millisecond_warnings, problems_from_validation, toml_repr, user_loc

__all__ = [
    # this module
    "Policy", "PolicyError", "parse_policy",
    # re-exported: the model's parts (see the docstring)
    "Address", "AppriseProvider", "BackoffSection", "BaseUrl", "Breaker", "BreakerSection",
    "BUILTIN_CHANNEL_TIMEOUT_MS", "BUILTIN_MESSAGE_TIMEOUT_MS", "BUILTIN_PROVIDER_TIMEOUT_MS", "ChannelSection",
    "DaemonSection", "DEFAULT_FAILOVER_ON", "EMAIL_PROVIDER_TYPES", "EMAIL_PROVIDERS", "FailoverEntry",
    "FailoverSection", "FcmProvider", "HttpProvider", "HttpUrl", "MqttProvider", "MqttSection", "NAME_RE",
    "PolicyModel", "Problem", "Provider", "PROVIDER_TYPES", "ProviderBase", "RouteGroup", "RouteItem",
    "RouteSection", "SandboxProvider", "SecretResolver", "SendgridProvider", "SesProvider", "SlackProvider",
    "SmtpProvider", "Strict", "TemplatePart", "TemplatesSection", "TimeoutsSection", "TwilioProvider",
    "bare_millisecond_warnings", "interpolate", "load_ec_public_key", "plan_limit_msg", "plan_shape_problems",
    "problems_from_validation", "raw_reference_problems", "toml_repr", "user_loc", "validate_references",
]


class PolicyError(ConfigError):
    """routing.toml (or a scenario file) is invalid; `problems` lists every reason (the one
    configuration-error shape: daemon/core/errors.py ConfigError)."""


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
            raise PolicyError(path, masked(problems, used)) from None
        ref_problems, warnings = validate_references(model)
        warnings = bare_millisecond_warnings(raw) + warnings
    except RecursionError:
        raise PolicyError(path, [Problem((), "the file is nested too deeply to check")]) from None
    problems += ref_problems
    check_names("templates", model.templates, problems)
    templates, issues = compile_templates(model.templates, model.channels)
    problems += [Problem(loc, msg) for loc, msg in issues]
    if problems:
        raise PolicyError(path, masked(problems, used))
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Policy(model=model, version=version, source=text, path=path, warnings=tuple(warnings),
                  templates=templates)
