"""Accepting a message (Router.submit): checked, planned, rendered, admitted within the limits,
and committed to the store with its first attempts before the 202."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..content import render_message, unreachable
from ..core.engine import Delivery, SetTimer, StartAttempt
from ..core.plan import Plan, PlanError, resolve_plan
from ..core.policy import Policy, Problem
from ..core.request import MessageRequest, SendRequest
from ..ids import new_message_id
from ..profiles import merge_profile, profiles_of
from ..store import MessageRow, StoreError
from ..store.interface import ProfileChanged
from .base import Overloaded, SubmitResult, _attempt_values, _Live, request_bytes, timeout_problems

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("routingd.runtime")


class Accept:
    def __init__(self, router: Router) -> None:
        self._r = router
        # Plans of requests without overrides, per route, for the current policy (swap_policy
        # starts a new cache): a Plan is immutable, so every such message can share it.
        self.plans: dict[str | None, Plan] = {}

    async def submit(self, request: SendRequest, idempotency_key: str | None = None,
                     request_json: str | None = None, idempotency_ttl_s: float | None = None) -> SubmitResult:
        user_id = request.message.to.get("user_id")
        if not isinstance(user_id, str):
            return await self._submit(request, idempotency_key, request_json, idempotency_ttl_s, None, None)
        r = self._r
        self._running()
        # A to.user_id gets its stored profile's fields, and is stored with them (docs/api.md
        # "Profiles"). On PostgreSQL from what this process knows, which the insert checks: if a
        # profile was written meanwhile (through another process), the insert is refused and the
        # send accepted again with the profile read afresh, which is not checked (it was read
        # after the send arrived), so that second try is not refused (daemon/profiles.py). A 422
        # is never answered from what this process assumed either: the profile is read first.
        profiles = profiles_of(r.store)
        got = profiles.known(user_id)
        if got is not None:
            try:
                return await self._submit(request, idempotency_key, request_json, idempotency_ttl_s, *got)
            except ProfileChanged:
                profiles.changed(user_id)
            except PlanError:
                if got[1] is None:          # read now (SQLite) or checked: the answer stands
                    raise
                profiles.changed(user_id)
        try:
            profile, seen = await profiles.read(user_id)
        except StoreError as e:
            log.error("cannot accept a message: %s", e)
            raise Overloaded(5.0, "routingd cannot read its state store (the daemon log says why)") from None
        return await self._submit(request, idempotency_key, request_json, idempotency_ttl_s, profile, seen)

    def _running(self) -> None:
        """Overloaded (503) unless the Router routes: not before its start, not once it stops
        (checked again after a profile was read: the stop may have come meanwhile)."""
        if not self._r._started or self._r._stopping:
            raise Overloaded(1.0, "routingd is not running (starting or shutting down)")

    async def _submit(self, request: SendRequest, idempotency_key: str | None, request_json: str | None,
                      idempotency_ttl_s: float | None, profile: dict[str, Any] | None,
                      seen: tuple[str, int | None] | None) -> SubmitResult:
        r = self._r
        self._running()
        policy = r._policy
        request, profiled = merge_profile(request, profile)
        if profiled:
            request_json = None
        msg = request.message
        too_long = timeout_problems(msg)
        if too_long:
            raise PlanError(too_long)
        plan = self._plan(policy, msg)
        why = unreachable(plan, msg.to, profiled=profiled)
        if why is not None:
            raise PlanError([Problem(("message", "to"), why)])
        # A template is rendered for every channel now: a missing variable is the client's 422,
        # never a failure at send time (docs/providers.md "Content").
        rendered = render_message(policy, plan, msg)
        daemon = r.limits if r.limits is not None else policy.model.daemon
        if r.inflight >= daemon.max_inflight:
            raise Overloaded(1.0)
        text = request_json or request.model_dump_json()
        size = request_bytes(text)
        if r._held_bytes + size > daemon.max_inflight_bytes:
            # memory is bounded in bytes, not only in messages (docs/security.md)
            raise Overloaded(1.0, f"routingd holds {r._held_bytes} bytes of pending requests; this one "
                             f"({size} bytes) would pass [daemon] max_inflight_bytes ({daemon.max_inflight_bytes})")
        if r.store.backlog_full:     # accepting would add writes the disk cannot take (docs/reliability.md)
            raise Overloaded(5.0, f"routingd cannot write its state store ({r.store.backlog} writes wait "
                             "for the disk; the daemon log says why)")
        clock = r._housekeeping
        clock.follow_clock()
        shifted = clock.shifted
        now = r.clock.now()
        row = MessageRow(id=new_message_id(), request=text, route=plan.route,
                         policy_version=policy.version, status="pending", accepted_at=now,
                         message_deadline=now + plan.message_timeout_ms / 1000.0,
                         idempotency_key=idempotency_key)
        # The engine starts the message before the insert commits: its first attempts' rows go
        # into the insert's own transaction, so their calls go out right after the commit the
        # 202 waits for (write-ahead at no extra commit; see attempts.py). Nothing of it takes
        # effect until then: an idempotent replay or a failed insert drops the commands (a
        # half-open breaker's probe it took is then re-armed like a probe that vanished).
        delivery = Delivery(row.id, plan, msg.to, now, r._rng, r.health, limiter=r.fleet.limiter,
                            priority=self._priority(policy, plan, msg))
        first = delivery.start(now)
        ahead: list[tuple[Any, ...]] | None = None
        for cmd in first:
            if isinstance(cmd, StartAttempt):
                values = _attempt_values(cmd.attempt_id, row.id, delivery.attempts[cmd.attempt_id], None)
                if ahead is None:
                    ahead = [values]
                else:
                    ahead.append(values)
        r._reserved += 1
        r._held_bytes += size        # taken back by _begin (then _finish) or below
        try:
            existing = await r.store.insert_message(
                row, daemon.idempotency_ttl / 1000.0 if idempotency_ttl_s is None else idempotency_ttl_s, now, ahead,
                seen)
        except ProfileChanged:
            r._ratelimits.unstart(first, now)      # not stored: as an idempotent replay (below)
            raise
        except StoreError as e:
            # Not stored, so not accepted: the client is told to retry (503), never a 202.
            log.error("cannot accept a message: %s", e)
            r._ratelimits.unstart(first, now)
            raise Overloaded(5.0, "routingd cannot write its state store (the daemon log says why)") from None
        finally:
            r._reserved -= 1
            r._held_bytes -= size
        if existing is not None:
            r._ratelimits.unstart(first, now)
            return SubmitResult(existing, False)
        r.metrics.message_accepted()
        if r._stopping:          # durable; the next start routes it
            if ahead is not None and r.store.is_open:   # those calls never go out: say so
                at = r.clock.now()                       # (else resume says "interrupted")
                for v in ahead:
                    r.store.put_attempt_values(v[:7] + (at, "cancelled", None, "not started: routingd is stopping"))
            return SubmitResult(row.id, True)
        snap = r._snapshots.of(policy)
        if clock.shifted != shifted:
            # the clock was re-anchored while the insert committed (its row moved with the
            # pending ones in the store): move this message too, and its first commands' wake-up
            step = clock.shifted - shifted
            delivery.rebase(step)
            row.accepted_at += step
            row.message_deadline += step
            now += step
            first = [c for c in first if not isinstance(c, SetTimer)] + [SetTimer(delivery.next_wakeup)]
        live = _Live(row, msg, delivery, snap, rendered=rendered)
        if ahead is not None:
            for v in ahead:
                live.written[v[0]] = v[7:]      # (ended_at, outcome, status_code, detail): stored
        r._begin(live, first, now)
        return SubmitResult(row.id, True)

    def _priority(self, policy: Policy, plan: Plan, msg: MessageRequest, check: bool = True) -> int:
        """The message's place in rate-limited providers' queues: its message.priority, at most
        [daemon] max_message_priority (a 422 above it), else its route's `priority`."""
        if msg.priority is not None:
            bound = policy.model.daemon.max_message_priority     # a file setting (no CLI/env one)
            if check and msg.priority > bound:
                raise PlanError([Problem(("message", "priority"), f"{msg.priority} is above [daemon] "
                                         f"max_message_priority ({bound})")])
            return min(msg.priority, bound)
        route = policy.routes.get(plan.route)
        return 0 if route is None else route.priority

    def _plan(self, policy: Policy, msg: MessageRequest) -> Plan:
        """resolve_plan(policy, request=msg), cached for requests that override nothing."""
        if msg.routing is not None or msg.timeout is not None or msg.channels or msg.providers:
            return resolve_plan(policy, request=msg)
        plans = self.plans
        plan = plans.get(msg.route)
        if plan is None or policy is not self._r._policy:
            plan = resolve_plan(policy, request=msg)      # raises PlanError for an unknown route
            if policy is self._r._policy and len(plans) < 1024:
                plans[msg.route] = plan
        return plan
