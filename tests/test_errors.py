"""One error tree: every exception routingd raises on purpose derives from RoutingdError and
prints as lines() (a list of ready-to-print lines), and configuration errors share one shape."""

from __future__ import annotations

import pytest

from routingd.daemon import errors
from routingd.daemon.api import ApiError
from routingd.daemon.cli import InputError
from routingd.daemon.core import StaleCompiledCore
from routingd.daemon.core.durations import DurationError, parse_duration_ms
from routingd.daemon.core.plan import PlanError
from routingd.daemon.core.policy import PolicyError, Problem, parse_policy
from routingd.daemon.mqtt import MqttConfigError, MqttUnavailable, TopicTemplateError
from routingd.daemon.runtime import Overloaded
from routingd.daemon.sdnotify import NotifyAddressError
from routingd.daemon.service import StartupError
from routingd.daemon.settings import SettingsError
from routingd.daemon.store import StoreError
from routingd.daemon.try_provider import TryError

ALL = [ApiError, InputError, StaleCompiledCore, DurationError, PlanError, PolicyError, MqttConfigError,
       MqttUnavailable, TopicTemplateError, Overloaded, NotifyAddressError, StartupError, SettingsError,
       StoreError, TryError, errors.ConfigError]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_derives_from_the_one_base(cls: type) -> None:
    assert issubclass(cls, errors.RoutingdError)


def test_lines_is_a_method_everywhere() -> None:
    samples: list[errors.RoutingdError] = [
        InputError(["a: b"]), StartupError(["x", "y"]), SettingsError(["s"]), MqttConfigError("daemon.mqtt.url", "bad"),
        PlanError([Problem(("message", "route"), "unknown route 'x'")]), StoreError("state.db", "locked"),
        Overloaded(1.0), TryError("no such provider"),
    ]
    got = [e.lines() for e in samples]
    assert got == [["a: b"], ["x", "y"], ["s"], ["daemon.mqtt.url: bad"], ["message.route: unknown route 'x'"],
                   ["state.db: locked"], ["routingd is at its in-flight limit; retry in 1s"], ["no such provider"]]


def test_configuration_errors_share_one_shape() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy("colour = 1\n", "r.toml", env={})
    assert isinstance(e.value, errors.ConfigError)
    assert e.value.lines() == ["r.toml:1: colour: unknown key; valid keys: version, daemon, timeouts, failover, "
                              "providers, channels, routes, templates"]
    with pytest.raises(DurationError):
        parse_duration_ms("soon")
