"""Binding a scenario to one routing file: resolved plans per route, provider models, outages.

Every reference the scenario makes into the routing file (routes, providers) is checked here and
reported against the scenario file as "FILE: key.path: reason".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Collection

from pydantic import ValidationError

from ..daemon.core.behaviour import BehaviourSpec, OutageWindow, behaviour_of
from ..daemon.core.plan import Plan, PlanError, resolve_plan
from ..daemon.core.policy import Policy, PolicyError, Problem, problems_from_validation

from .providers import SimProvider
from .scenario import Scenario


@dataclass(frozen=True)
class OutageInfo:
    provider: str
    kind: str
    start_s: float
    end_s: float
    update: dict[str, Any] = field(default_factory=dict, compare=False)   # BehaviourSpec overrides


@dataclass(frozen=True)
class RunSetup:
    scenario: Scenario
    policy: Policy
    routing_path: str
    seed: int
    plans: dict[str, Plan]                   # route -> plan
    route_mix: list[tuple[str, float]]
    specs: dict[str, BehaviourSpec]          # provider -> healthy behaviour
    base_fail: dict[str, str]                # provider -> fail mode from the routing file (sandbox)
    outages: list[OutageInfo]                # the scenario's outages that apply to this routing file

    def providers(self) -> dict[str, SimProvider]:
        """Fresh provider models (own rate windows, own seeded random stream each)."""
        windows: dict[str, list[OutageWindow]] = {}
        for o in self.outages:
            spec = self.specs[o.provider].model_copy(update=o.update)
            windows.setdefault(o.provider, []).append(OutageWindow(o.start_s, o.end_s, o.kind, spec))
        return {name: SimProvider(name, spec, random.Random(f"{self.seed}:{name}"),
                                  self.base_fail.get(name, "none"), tuple(windows.get(name, ())))
                for name, spec in self.specs.items()}


def _base_spec(cfg: Any) -> tuple[BehaviourSpec, str]:
    if getattr(cfg, "type", None) == "sandbox":
        return behaviour_of(cfg), cfg.fail
    return BehaviourSpec(), "none"


def bind_scenario(scenario: Scenario, policy: Policy, routing_path: str | None = None,
                  seed: int | None = None, known_elsewhere: Collection[str] = ()) -> RunSetup:
    """Check the scenario against `policy` and build what a run needs.

    `known_elsewhere`: provider names defined by another routing file of the same invocation (a
    what-if comparison); scenario entries for them are ignored here instead of rejected.
    """
    m = scenario.model
    problems: list[Problem] = []
    where = routing_path or policy.path
    mix = m.traffic.route_mix()
    plans: dict[str, Plan] = {}
    for route, _ in mix:
        loc = ("traffic", "routes", route) if m.traffic.routes else ("traffic", "route")
        if route not in policy.routes:
            known = ", ".join(sorted(policy.routes)) or "none"
            problems.append(Problem(loc, f"unknown route {route!r} in {where}; routes: {known}"))
            continue
        try:
            plans[route] = resolve_plan(policy, route)
        except PlanError as e:
            problems.extend(Problem(loc, f"{p.key_path}: {p.msg}") for p in e.problems)

    def unknown(loc: tuple, name: str) -> None:
        if name not in known_elsewhere:
            known = ", ".join(sorted(policy.providers)) or "none"
            problems.append(Problem(loc, f"unknown provider {name!r} in {where}; providers: {known}"))

    # a sandbox's own `outages` are wall-clock instants for the daemon: they mean nothing in
    # simulated time, and running without them would ignore what the file asks for
    timed = [Problem(("providers", name, "outages"), "a sandbox provider's outages are wall-clock "
                     "times for the daemon; the simulator takes outages from the scenario's [[outages]] "
                     "(docs/simulator.md \"Scenario files\")")
             for name, cfg in policy.providers.items() if getattr(cfg, "outages", ())]
    if timed:
        raise PolicyError(policy.path, timed, policy.source)

    for name in scenario.provider_overrides:
        if name not in policy.providers:
            unknown(("providers", name), name)
    for i, o in enumerate(m.outages):
        if o.provider not in policy.providers:
            unknown(("outages", i, "provider"), o.provider)

    specs: dict[str, BehaviourSpec] = {}
    base_fail: dict[str, str] = {}
    for name, cfg in policy.providers.items():
        base, fail = _base_spec(cfg)
        data = {**base.model_dump(), **scenario.provider_overrides.get(name, {})}
        try:
            specs[name] = BehaviourSpec.model_validate(data)
        except ValidationError as e:
            problems.extend(problems_from_validation(e, ("providers", name)))
            continue
        base_fail[name] = fail
    if problems:
        raise PolicyError(scenario.path, problems, scenario.text)
    outages = [OutageInfo(o.provider, o.kind, o.start / 1000.0, (o.start + o.duration) / 1000.0,
                          o.behaviour_update())
               for o in m.outages if o.provider in policy.providers]
    return RunSetup(scenario, policy, routing_path or scenario.routing_path,
                    m.seed if seed is None else seed, plans, mix, specs, base_fail, outages)
