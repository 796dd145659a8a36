"""One routing file for both runs of `simulate --live` (simulator/live.py, docs/simulator.md
"Simulated vs live"): the scenario scaled by `--speed` (`scaled_scenario`: durations divided,
rates multiplied, whole milliseconds, at least 1 ms), and its routing file with every provider
replaced by a `sandbox` provider carrying the behaviour the scenario gives it (`live_routing`),
keeping its timeout, retries, confirm, breaker and back-off; `to_toml` writes it, and
`prepare_live` binds the scaled scenario to the written file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from typing import Any, Sequence

from ..daemon.config_files import load_policy
from ..daemon.core.behaviour import BehaviourSpec
from ..daemon.core.durations import format_duration_ms
from ..daemon.core.policy import Policy, PolicyError, Problem
from ..daemon.secrets import read_secret

from .scenario import Scenario
from .setup import RunSetup, bind_scenario


def _ms(v: int | None, speed: float) -> int | None:
    if v is None:
        return None
    return 0 if v == 0 else max(1, int(round(v / speed)))


def scaled_scenario(sc: Scenario, speed: float, routing_path: str) -> Scenario:
    """The scenario with its durations divided and its rate multiplied by `speed`; its provider
    behaviour moves into the generated routing file (see live_routing), so none is left here."""
    m = sc.model
    outages = [o.model_copy(update={"start": _ms(o.start, speed), "duration": _ms(o.duration, speed),
                                    "retry_after": _ms(o.retry_after, speed)}) for o in m.outages]
    ex = m.expect
    expect = ex.model_copy(update={k: _ms(getattr(ex, k), speed) for k in
                                   ("p50_time_to_deliver", "p95_time_to_deliver", "p99_time_to_deliver",
                                    "max_time_to_deliver", "time_to_route_around")})
    model = m.model_copy(update={"duration": _ms(m.duration, speed), "outages": outages, "expect": expect,
                                 "traffic": m.traffic.model_copy(update={"rate": float(m.traffic.rate) * speed, "bursts": [
                                     b.model_copy(update={"start": _ms(b.start, speed), "duration": _ms(b.duration, speed),
                                                          "rate": None if b.rate is None else float(b.rate) * speed})
                                     for b in m.traffic.bursts]}),
                                 "providers": {}, "routing": routing_path})
    return dataclasses.replace(sc, model=model, routing_path=routing_path, provider_overrides={})


def _timeouts(t: Any, speed: float) -> dict[str, Any]:
    return {k: _ms(getattr(t, k), speed) for k in ("provider", "channel", "message") if getattr(t, k) is not None}


def _behaviour(spec: BehaviourSpec, speed: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "latency": {"median": _ms(spec.latency.median, speed), "p99": _ms(spec.latency.p99, speed)},
        "error_rate": spec.error_rate,
        "receipt_delay": {"median": _ms(spec.receipt_delay.median, speed), "p99": _ms(spec.receipt_delay.p99, speed)},
        "slow_factor": spec.slow_factor,
        "flaky_error_rate": spec.flaky_error_rate,
        "throttle_retry_after": _ms(spec.throttle_retry_after, speed),
    }
    if spec.rate_limit is not None:
        out["rate_limit"] = spec.rate_limit * speed
    return out


def _route_items(items: Sequence[Any]) -> list[Any]:
    return [i if isinstance(i, str) else {"method": i.method, "channels": _route_items(i.channels)} for i in items]


def live_routing(policy: Policy, setup: RunSetup, speed: float) -> dict[str, Any]:
    """The routing file both runs use, as a dict: `policy` scaled by `speed`, every provider a
    sandbox with the behaviour `setup` gives it (scenario over routing file) and its base fail mode."""
    pm = policy.model
    doc: dict[str, Any] = {"version": 1, "daemon": {"watch": False}}
    doc["timeouts"] = _timeouts(pm.timeouts, speed)
    doc["failover"] = {"on": list(pm.failover.on)}
    providers: dict[str, Any] = {}
    for name, cfg in pm.providers.items():
        p: dict[str, Any] = {"type": "sandbox", "retries": cfg.retries, "confirm": cfg.confirm,
                             "receipt_timeout": _ms(cfg.receipt_timeout, speed)}
        if cfg.timeout is not None:
            p["timeout"] = _ms(cfg.timeout, speed)
        if cfg.breaker is False:
            p["breaker"] = False
        else:
            b: dict[str, Any] = {"failures": cfg.breaker.failures, "cooldown": _ms(cfg.breaker.cooldown, speed)}
            if cfg.breaker.slow is False:
                b["slow"] = False           # off stays off (unset: half the scaled timeout, as the daemon computes)
            elif cfg.breaker.slow is not None:
                b["slow"] = _ms(cfg.breaker.slow, speed)
            p["breaker"] = b
        p["backoff"] = {"base": _ms(cfg.backoff.base, speed), "max": _ms(cfg.backoff.max, speed)}
        p.update(_behaviour(setup.specs[name], speed))
        p["fail"] = setup.base_fail.get(name, "none")
        providers[name] = p
    doc["providers"] = providers
    channels: dict[str, Any] = {}
    for name, ch in pm.channels.items():
        c: dict[str, Any] = {"providers": list(ch.providers), "method": ch.method}
        if ch.timeout is not None:
            c["timeout"] = _ms(ch.timeout, speed)
        if ch.requires is not None:
            c["requires"] = ch.requires
        channels[name] = c
    doc["channels"] = channels
    doc["routes"] = {name: {"method": r.method, "channels": _route_items(r.channels),
                            "timeouts": _timeouts(r.timeouts, speed)} for name, r in pm.routes.items()}
    return doc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dt.datetime):
        return v.isoformat()        # RFC 3339 with its offset: a TOML offset date-time
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """A routing dict as TOML: top-level scalars, then one table per section (per name for
    providers, channels, routes), values inline."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, body in doc.items():
        if not isinstance(body, dict):
            continue
        if section in ("providers", "channels", "routes"):
            for name, table in body.items():
                lines.append(f"\n[{section}.{_toml_key(name)}]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
        else:
            lines.append(f"\n[{section}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Prepared:
    """A scenario made ready for both runs."""

    setup: RunSetup                 # the simulated run's (scaled, on the generated routing file)
    routing: dict[str, Any]         # the generated routing file, as a dict
    routing_path: str
    speed: float


def prepare_live(sc: Scenario, policy: Policy, workdir: str, speed: float, seed: int | None) -> Prepared:
    """Bind the scenario to its routing file, generate the scaled sandbox routing file in
    `workdir`, and bind the scaled scenario to that (raises PolicyError naming the scenario)."""
    if not speed > 0:
        raise PolicyError(sc.path, [Problem(("--speed",), f"must be greater than 0, got {speed}")])
    # An arrival window shrunk below 1 ms is kept at 1 ms (_ms), at the rate multiplied by the
    # speed: the run would draw speed/window times the scenario's messages (--speed 1e9 on a 5m
    # drill: 20 million, a run of hours), no longer the scenario scaled
    windows = [("duration", sc.model.duration)] + [(f"traffic.bursts.{i}.duration", b.duration)
                                                    for i, b in enumerate(sc.model.traffic.bursts)]
    for key, ms in windows:
        if ms and ms / speed < 1:
            raise PolicyError(sc.path, [Problem(("--speed",), f"{speed:g} would shrink {key} "
                                                f"({format_duration_ms(ms)}) below 1 ms; at most {ms:g} "
                                                "for this scenario (docs/simulator.md \"Where they differ\")")])
    if sc.model.traffic.cancel:     # refused rather than run without the cancels the file asks for
        raise PolicyError(sc.path, [Problem(("traffic", "cancel"), "--live does not send cancels yet; "
                                            "simulate this scenario without --live, or set cancel = 0")])
    first = bind_scenario(sc, policy, policy.path, seed)
    doc = live_routing(policy, first, speed)
    path = os.path.join(workdir, "routing.toml")
    with open(path, "w") as f:
        f.write(to_toml(doc))
    scaled = scaled_scenario(sc, speed, path)
    setup = bind_scenario(scaled, load_policy(path, secrets=read_secret), path, seed)
    return Prepared(setup, doc, path, speed)
