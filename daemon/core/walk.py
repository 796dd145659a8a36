"""Walking a message's plan tree: starting its nodes and ending them.

Module-level functions that take the `Delivery` (daemon/core/engine.py) whose state they change.
Down the tree: a scope starts its children (`single`: one at a time, `all`: every one), a channel
its provider runs, a provider run its attempts (`try_run`: the drain hold, the breaker, the rate
limiter's turn; `begin`: the attempt itself). Up the tree: a node that ends completes (`complete`)
into its parent, which fails over to its next child, waits for the others or ends in turn,
cutting whatever still runs under it (`cancel_under`); the root's end finishes the message
(`finish`). These functions call one another recursively, which is why they share a module; the
answers that move a run on (outcomes.py) and the deadlines (deadlines.py) call into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .commands import (ATTEMPT_HELD, ATTEMPT_QUEUED, ATTEMPT_STARTED, CHANNEL_FINISHED, CHANNEL_SKIPPED,
                       CHANNEL_STARTED, FAILOVER, FINISHED, PROVIDER_SKIPPED, PROVIDER_SPILLED, AttemptRecord,
                       CancelAttempt, Finish, StartAttempt, _tnew)
from .limiter import GO, SPILL
from .resume import adopt_run
from .tree import (ATTEMPTING, AWAITING, DONE, HELD, QUEUED, RANK_ATTEMPT, RANK_CHANNEL, RANK_SLOW, _by_pre,
                   _Channel, _Group, _name, _Node, _Run)

if TYPE_CHECKING:      # the type only: engine.py imports this module (no import cycle at run time)
    from .engine import Delivery


def start_node(d: Delivery, node: _Node, now: float) -> None:
    node.started = True
    kind = type(node)
    res = d._resume
    if kind is _Run:
        if res is not None and node.pre in res.awaiting:
            adopt_run(d, node, res.awaiting.pop(node.pre), now)      # type: ignore[arg-type]
            return
        try_run(d, node, now)            # type: ignore[arg-type]
        return
    if kind is _Channel:
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(node, _Channel)
        d._chans.append(node)
        step = node.step
        if step.requires and not d.recipient.get(step.requires):
            d._emit(CHANNEL_SKIPPED, now, channel=step.channel,
                    reason=f"recipient has no {step.requires!r}")
            complete(d, node, "skipped", now)
            return
        pre = node.pre
        node.children = [_Run(p, pre, pre + i) for i, p in enumerate(step.providers, 1)]
        node.deadline = min(now + step.timeout_ms / 1000.0, d.message_deadline)
        d._push(node.deadline, RANK_CHANNEL, node)
        d._emit(CHANNEL_STARTED, now, channel=step.channel, deadline=node.deadline)
        if res is not None and pre in res.delivered:
            res.delivered.discard(pre)
            complete(d, node, "delivered", now, reason="delivered before a restart")
            return
        if node.deadline <= now:
            complete(d, node, "failed", now, reason="timeout")
            return
    else:
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(node, _Group)
        d._groups.append(node)
    if not node.children:
        complete(d, node, "failed", now)
        return
    if node.method == "single":
        node.idx = 0 if res is None else res.first.pop(node.pre, 0)
        start_node(d, node.children[node.idx], now)
    else:
        node.launching = True
        for child in node.children:
            if node.result is not None or d.status != "pending":
                break
            start_node(d, child, now)
        node.launching = False
        check_all_done(d, node, now)


def try_run(d: Delivery, run: _Run, now: float) -> None:
    if d.draining:
        hold(d, run, now)            # see drain(): before the breaker, which a probe would consume
        return
    step = run.step
    ch = d._nodes[run.parent]
    if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
        assert isinstance(ch, _Channel)
    if (step.breaker_failures is not None or d.health.drained) and \
            not d.health.allow(step.provider, step.breaker_failures, step.breaker_cooldown_ms / 1000.0, now):
        d._emit(PROVIDER_SKIPPED, now, channel=ch.step.channel, provider=step.provider,
                reason="drained" if step.provider in d.health.drained else "breaker open")
        complete(d, run, "failed", now, reason="skipped")
        return
    lim = d.limiter
    if lim is not None and lim.limited(step.provider):
        # Its turn on a rate-limited provider (docs/configuration.md "Rate limits and
        # priorities"): wait for it only while an attempt could still follow it before the
        # channel deadline -- with its full provider timeout when a next provider could take
        # the message instead, else any time before the deadline -- else spill over now.
        latest = ch.deadline
        if ch.method == "single" and run.pre - ch.pre < len(ch.children):
            latest -= step.timeout_ms / 1000.0
        verdict, turn = lim.request(step.provider, d, run, d.priority, now, latest)
        if verdict == SPILL:
            spill(d, run, turn - now, now)
            return
        if verdict != GO:
            if run.tries == 0:
                d._tried.append(run)     # so that cutting its channel ends it like any started run
            run.state = QUEUED
            run.wake_at = None
            d._emit(ATTEMPT_QUEUED, now, channel=ch.step.channel, provider=step.provider,
                    expected_wait_s=turn - now)
            return
    begin(d, run, ch, now)


def begin(d: Delivery, run: _Run, ch: _Channel, now: float, queued: bool = False) -> None:
    """Start an attempt of `run` now (its breaker and its rate limit said yes)."""
    step = run.step
    run.tries += 1
    if run.tries == 1 and not queued:           # a run that queued first is listed already
        d._tried.append(run)
    d._seq += 1
    attempt_id = f"{d.message_id}.{d.run}.{d._seq}"
    deadline = min(now + step.timeout_ms / 1000.0, ch.deadline)
    channel = ch.step.channel
    rec = AttemptRecord(attempt_id, channel, step.provider, run.tries, now, deadline)
    d.attempts[attempt_id] = rec
    d._runs[attempt_id] = run
    run.attempt = rec
    run.state = ATTEMPTING
    run.slow_counted = False
    slow = step.breaker_slow_ms
    if slow is not None and step.breaker_failures is not None:
        mark = now + slow / 1000.0
        run.slow_at = mark if mark < deadline else None
        if run.slow_at is not None:
            d._push(mark, RANK_SLOW, run)
    d._push(deadline, RANK_ATTEMPT, run)
    if d._wants(ATTEMPT_STARTED):
        d._emit(ATTEMPT_STARTED, now, attempt_id=attempt_id, channel=channel, provider=step.provider,
                attempt=run.tries, deadline=deadline)
    d._out.append(_tnew(StartAttempt, (                    # = StartAttempt(...), field order
        attempt_id, d.message_id, channel, step.provider, run.tries, now, deadline,
        f"{d.message_id}:{channel}:{step.provider}", step.confirm)))


def hold(d: Delivery, run: _Run, now: float) -> None:
    if run.tries == 0:
        d._tried.append(run)         # so that cutting its channel ends it like any started run
    run.state = HELD
    run.wake_at = None
    run.slow_at = None
    d.held += 1
    ch = d._channel_of(run)
    ch.holding = True
    d._emit(ATTEMPT_HELD, now, channel=ch.step.channel, provider=run.step.provider)


def spill(d: Delivery, run: _Run, wait_s: float, now: float) -> None:
    ch = d._channel_of(run)
    run.state = DONE
    d._emit(PROVIDER_SPILLED, now, channel=ch.step.channel, provider=run.step.provider,
            expected_wait_s=wait_s)
    complete(d, run, "failed", now, reason="rate limited")


def complete(d: Delivery, node: _Node, result: str, now: float, reason: str = "") -> None:
    if node.result is not None:
        return
    node.result = result
    if result == "delivered":
        node.delivered = True
    kind = type(node)
    if kind is _Run:
        node.state = DONE         # type: ignore[attr-defined]
    elif kind is _Channel:
        if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
            assert isinstance(node, _Channel)
        cancel_under(d, node, now, "cancelled", "channel finished")
        res = "delivered" if node.delivered else result
        if result != "skipped":
            d._emit(CHANNEL_FINISHED, now, channel=node.step.channel, result=res,
                    **({"reason": reason} if reason else {}))
    if node.parent < 0:
        finish(d, now)
        return
    parent = d._nodes[node.parent]
    if TYPE_CHECKING:       # narrowing for the type checker only: no isinstance per call
        assert isinstance(parent, (_Group, _Channel))
    child_done(d, parent, node, now)


def child_done(d: Delivery, parent: "_Group | _Channel", child: _Node, now: float) -> None:
    if parent.result is not None or d.terminal:
        return
    if child.delivered:
        parent.delivered = True
    if parent.method == "single":
        if child.delivered:
            complete(d, parent, "delivered", now)
            return
        if type(parent) is _Channel and parent.rejected:        # type: ignore[union-attr]
            complete(d, parent, "failed", now, reason="rejected")
            return
        parent.idx += 1
        if parent.idx >= len(parent.children):
            complete(d, parent, "failed", now, reason="every option exhausted")
            return
        nxt = parent.children[parent.idx]
        kind = "provider" if type(parent) is _Channel else "channel"
        d._emit(FAILOVER, now, kind=kind, **{"from": _name(child), "to": _name(nxt)})
        start_node(d, nxt, now)
    else:
        check_all_done(d, parent, now)


def check_all_done(d: Delivery, node: "_Group | _Channel", now: float) -> None:
    if node.launching or node.result is not None or d.status != "pending":
        return
    # `idx` (unused by `all` scopes otherwise) is the first child not known to be finished:
    # results never go back to None, so the whole scan costs O(children) per node, not per call
    children = node.children
    i, n = node.idx, len(children)
    while i < n and children[i].result is not None:
        i += 1
    node.idx = i
    if i < n:
        return
    complete(d, node, "delivered" if node.delivered else "failed", now)


def cancel_under(d: Delivery, node: _Node, now: float, outcome: str, reason: str) -> None:
    """Cut everything still running under `node`: live attempts are cancelled (last in plan
    order first), back-offs dropped, and every running channel reports its end (plan order).
    Only nodes that ever started can be running, so only those are looked at."""
    lo, hi = node.pre, node.end
    if isinstance(node, _Run):
        lo -= 1
    cut: list[_Run]
    if type(node) is _Channel:
        # its runs are its children: no walk over every run of the message per channel end
        runs: list[_Run] = node.children      # type: ignore[assignment, attr-defined]
        cut = [r for r in runs if (r.tries > 0 or r.state == QUEUED) and r.state != DONE]
    else:
        cut = [r for r in d._tried if lo < r.pre <= hi and r.state != DONE]
    if cut:
        if len(cut) > 1:
            cut.sort(key=_by_pre, reverse=True)
        for r in cut:
            rec = r.attempt
            if r.state == QUEUED:
                unqueue(d, r)
            if rec is not None and (r.state == ATTEMPTING or r.state == AWAITING):
                if r.state == ATTEMPTING:
                    d._out.append(CancelAttempt(rec.attempt_id, reason))
                d._end_attempt(rec, outcome, rec.status_code, now, reason)
            r.state = DONE
            r.wake_at = None
            if r.result is None:
                r.result = "failed"
    if isinstance(node, _Group):
        # channels and groups cut while running end here; each channel says so (in plan order)
        open_: list[_Node] = [n for n in d._chans if n.result is None and lo < n.pre <= hi]
        open_ += [n for n in d._groups if n.result is None and lo < n.pre <= hi]
        if len(open_) > 1:
            open_.sort(key=_by_pre)
        for n in open_:
            n.result = "delivered" if n.delivered else "failed"
            if isinstance(n, _Channel):
                res = "delivered" if n.delivered else "timeout" if outcome == "timeout" else "cancelled"
                d._emit(CHANNEL_FINISHED, now, channel=n.step.channel, result=res, reason=reason)


def unqueue(d: Delivery, run: _Run) -> None:
    """A queued run stops waiting for its turn: the limiter forgets its waiter at once."""
    if d.limiter is not None:
        d.limiter.cancel(run.step.provider, run)


def stop_run(d: Delivery, run: _Run, now: float, reason: str) -> None:
    """End a provider run early: cancel its live attempt and any pending back-off."""
    if run.state == QUEUED:
        unqueue(d, run)
    if run.state in (ATTEMPTING, AWAITING) and run.attempt is not None:
        if run.state == ATTEMPTING:
            d._out.append(CancelAttempt(run.attempt.attempt_id, reason))
        d._end_attempt(run.attempt, "cancelled", run.attempt.status_code, now, reason)
    run.state = DONE
    run.wake_at = None


def finish(d: Delivery, now: float, deadline_hit: bool = False) -> None:
    if d.terminal:
        return
    cancel_under(d, d.root, now, "timeout" if deadline_hit else "cancelled",
                       "message deadline" if deadline_hit else "message finished")
    if d.root.delivered or d.delivered_at is not None:
        d.status = "delivered"
    elif deadline_hit:
        d.status = "expired"
    else:
        d.status = "undeliverable"
    d.finished_at = now
    if d._wants(FINISHED):
        d._emit(FINISHED, now, status=d.status)
    d._out.append(_tnew(Finish, (d.status, now, d.delivered_at)))
