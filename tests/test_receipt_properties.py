"""Hypothesis property: receipts in any order, for any state, repeated, never move a finished
message back, and end each attempt at most once (issue 15; docs/api.md "Receipts").

Engine level: a Delivery with a plan from a small random policy (tests/test_engine_properties.py's
`policies`, every channel able to run) is driven by a random script of inputs: answers to any
attempt ever started (live or not, as a racing driver delivers them), `delivered` / `failed`
receipts for any attempt ever started (before its answer, after it, after its end, after the
Finish), receipts repeated, receipts for attempt ids it never made, and the clock moved on with
on_timer at every wake-up it asked for. Vendor intermediate states (Twilio `sent`, SendGrid
`deferred`, SES `DeliveryDelay`) never reach the engine: daemon/receipts records them as events
and hands only `delivered` / `failed` to Router.receipt, which refuses any other status; the
Router-level variant below sends them through that very path, mixed with the final ones.

Checked on every step, from the commands and the public state alone:
* at most one Finish; once it came, status, finished_at and delivered_at never change (delivered
  stays delivered), and nothing starts, is cancelled or ends any more;
* each attempt: at most one attempt_ended, at most one CancelAttempt (and never after its end);
  once ended its ended_at never changes, and its outcome changes only to `delivered` (a late
  receipt: the vendor did deliver it), and once `delivered` stays so;
* in the end the message is finished and every attempt ended.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine_properties import TICK, policies  # noqa: E402

from routingd.daemon.core.engine import (CancelAttempt, Command, Delivery, Finish, Outcome,  # noqa: E402
                                         RecordEvent, SetTimer, StartAttempt)
from routingd.daemon.core.health import HealthTracker  # noqa: E402
from routingd.daemon.core.plan import resolve_plan  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402

import tomli_w  # noqa: E402

RECIPIENT = {"email": "x", "phone_number": "x", "user_id": "x"}      # every channel can run

# (kind, which attempt (index mod the attempts started), a status or answer, clock step in ticks)
actions = st.lists(st.tuples(
    st.sampled_from(["receipt", "receipt", "receipt", "repeat", "answer", "unknown", "wait"]),
    st.integers(0, 64),
    st.sampled_from(["delivered", "failed"]),
    st.integers(0, 12)), min_size=1, max_size=60)
ANSWERS = (Outcome(200), Outcome(202), Outcome(503), Outcome(400), Outcome(network=True, detail="reset"))


class Checker:
    def __init__(self, d: Delivery) -> None:
        self.d = d
        self.finish: Finish | None = None
        self.frozen: tuple[Any, ...] | None = None
        self.started: list[str] = []
        self.ended: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.records: dict[str, tuple[float | None, str | None]] = {}
        self.wakeup: float | None = None

    def take(self, cmds: list[Command]) -> None:
        for c in cmds:
            if isinstance(c, StartAttempt):
                assert self.finish is None, f"attempt started after Finish: {c}"
                self.started.append(c.attempt_id)
            elif isinstance(c, CancelAttempt):
                assert self.finish is None, f"cancel after Finish: {c}"
                assert c.attempt_id in self.started
                assert c.attempt_id not in self.ended, f"cancel of an attempt that had ended: {c}"
                self.cancelled[c.attempt_id] = self.cancelled.get(c.attempt_id, 0) + 1
                assert self.cancelled[c.attempt_id] == 1, f"{c.attempt_id} cancelled twice"
            elif isinstance(c, RecordEvent) and c.event.type == "attempt_ended":
                aid = c.event.data["attempt_id"]
                assert self.finish is None or c.event.at <= self.finish.at, f"{aid} ended after Finish"
                self.ended[aid] = self.ended.get(aid, 0) + 1
                assert self.ended[aid] == 1, f"attempt {aid} ended twice"
            elif isinstance(c, Finish):
                assert self.finish is None, f"a second Finish: {c} after {self.finish}"
                self.finish = c
            elif isinstance(c, SetTimer):
                self.wakeup = c.at
        d = self.d
        if self.finish is not None:
            state = (d.status, d.finished_at, d.delivered_at)
            if self.frozen is None:
                assert d.status == self.finish.status and d.terminal
                self.frozen = state
            assert state == self.frozen, f"a finished message moved: {self.frozen} -> {state}"
        for aid, rec in d.attempts.items():
            before = self.records.get(aid)
            if before is not None and before[0] is not None:
                assert rec.ended_at == before[0], f"attempt {aid} ended again: {before} -> {rec}"
                if before[1] == "delivered":
                    assert rec.outcome == "delivered", f"attempt {aid} delivered, then {rec.outcome}"
                elif rec.outcome != before[1]:
                    assert rec.outcome == "delivered", f"attempt {aid}: {before[1]} -> {rec.outcome}"
            self.records[aid] = (rec.ended_at, rec.outcome)


def drive(doc: dict[str, Any], script: list[tuple[str, int, str, int]], seed: int) -> Checker:
    plan = resolve_plan(parse_policy(tomli_w.dumps(doc), "random.toml", env={}), "default")
    d = Delivery("m0", plan, RECIPIENT, 0.0, random.Random(seed), HealthTracker())
    chk = Checker(d)
    now = 0.0
    chk.take(d.start(now))
    sent: list[tuple[str, str]] = []

    def advance(to: float) -> None:
        nonlocal now
        # every wake-up asked for up to `to`, at its time (the engine re-arms after each)
        for _ in range(500):
            w = chk.wakeup
            if w is None or w > to:
                break
            now = max(now, w)
            chk.take(d.on_timer(now))
        now = max(now, to)

    for kind, k, status, dt in script:
        advance(now + dt * TICK)
        ids = chk.started
        if kind == "wait" or (not ids and kind != "unknown"):
            continue
        if kind == "answer":
            chk.take(d.on_outcome(ids[k % len(ids)], ANSWERS[k % len(ANSWERS)], now))
        elif kind == "receipt":
            aid = ids[k % len(ids)]
            sent.append((aid, status))
            chk.take(d.on_receipt(aid, status, now))
        elif kind == "repeat" and sent:
            aid, st_ = sent[k % len(sent)]
            chk.take(d.on_receipt(aid, st_, now))
        elif kind == "unknown":
            chk.take(d.on_receipt(f"m0.9.{k}", status, now))
    advance(d.message_deadline + 1.0)
    assert chk.finish is not None and d.terminal, "the message never finished"
    # late receipts after the end (every attempt, both states, twice) still change nothing
    for aid in list(chk.started) * 2:
        for s in ("failed", "delivered"):
            chk.take(d.on_receipt(aid, s, now))
    assert sorted(chk.ended) == sorted(chk.started), "an attempt never ended"
    return chk


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=policies(), script=actions, seed=st.integers(0, 2**32 - 1))
def test_receipts_in_any_order_never_move_a_finished_message_back(doc: dict[str, Any],
                                                                  script: list[tuple[str, int, str, int]],
                                                                  seed: int) -> None:
    drive(doc, script, seed)


def test_the_checker_sees_a_message_moved_back() -> None:
    """Not vacuous: each kind of violation, put into a finished delivery's commands or state, is
    caught (done by hand: the compiled engine's methods cannot be patched)."""
    doc = {"providers": {"p0": {"type": "sandbox", "confirm": "receipt", "receipt_timeout": 1000},
                         "p1": {"type": "sandbox"}},
           "channels": {"c0": {"providers": ["p0", "p1"]}}, "routes": {"default": {"channels": ["c0"]}},
           "timeouts": {"provider": 1000, "channel": 5000, "message": 9000}}
    # p0 answered 2xx, its receipt timed out, p1 delivered; then a late `failed` receipt for p0
    script = [("answer", 0, "delivered", 0), ("wait", 0, "delivered", 9), ("answer", 1, "delivered", 0),
              ("receipt", 0, "failed", 1)]
    chk = drive(doc, script, 1)
    d = chk.d
    # p0's late `delivered` (drive() ends with every receipt for every attempt) made it delivered
    assert d.status == "delivered" and [r.outcome for r in d.attempts.values()] == ["delivered", "delivered"]
    assert d.duplicates == 1
    aid = chk.started[0]
    assert chk.finish is not None
    ended = RecordEvent("attempt_ended", chk.finish.at, {"attempt_id": aid})
    violations: list[tuple[str, Any]] = [
        ("a second Finish", lambda: chk.take([Finish("undeliverable", 99.0, None)])),
        ("ended twice", lambda: chk.take([ended])),
        ("cancel after Finish", lambda: chk.take([CancelAttempt(aid, "x")])),
        ("started after Finish", lambda: chk.take([StartAttempt(aid + "x", "m0", "c0", "p0", 2, 99.0, 100.0,
                                                                "k", "receipt")])),
    ]
    for what, act in violations:
        try:
            act()
        except AssertionError as e:
            assert what in str(e), (what, e)
        else:
            raise AssertionError(f"the checker missed: {what}")
    for what, attr, value in [("moved", "status", "undeliverable"), ("moved", "delivered_at", None)]:
        fresh = drive(doc, script, 1)
        setattr(fresh.d, attr, value)
        try:
            fresh.take([])
        except AssertionError as e:
            assert what in str(e)
        else:
            raise AssertionError(f"the checker missed {attr} = {value!r} after the Finish")
    fresh = drive(doc, script, 1)
    fresh.d.attempts[aid].outcome = "failed"
    try:
        fresh.take([])
    except AssertionError as e:
        assert "delivered, then failed" in str(e)
    else:
        raise AssertionError("the checker missed an ended attempt's outcome changed to failed")


# --------------------------------------------------------------------------- Router level

# A vendor's state names and the receipt each makes (None: an event only), as daemon/receipts maps
# them: Twilio sent / queued, SendGrid deferred / processed, SES DeliveryDelay; then the final ones.
VENDOR_STATES = {"sent": None, "queued": None, "deferred": None, "deliverydelay": None,
                 "delivered": "delivered", "undelivered": "failed", "bounce": "failed"}
ROUTER_POLICY = (
    'version = 1\n[timeouts]\nprovider = "20s"\nchannel = "40s"\nmessage = "60s"\n'
    '[providers.a]\ntype = "http"\nurl = "{a}"\nconfirm = "receipt"\nreceipt_timeout = "30s"\nbreaker = false\n'
    '[providers.b]\ntype = "http"\nurl = "{b}"\nconfirm = "receipt"\nreceipt_timeout = "30s"\nbreaker = false\n'
    '[providers.c]\ntype = "http"\nurl = "{c}"\nbreaker = false\n'
    '[channels.email]\nproviders = ["a", "b"]\n[channels.push]\nproviders = ["c"]\n'
    '[routes.default]\nchannels = ["email", "push"]\n')

vendor_script = st.lists(st.tuples(st.integers(0, 8), st.sampled_from(sorted(VENDOR_STATES))),
                         min_size=1, max_size=14)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=vendor_script, repeat=st.lists(st.integers(0, 13), max_size=4))
def test_vendor_states_through_the_router_never_move_a_finished_message_back(
        script: list[tuple[int, str]], repeat: list[int]) -> None:
    """The same property through Router: each vendor state goes the way daemon/receipts sends it
    (handler._apply: recorded as a vendor_status event, a final one applied as a receipt), with a
    real SQLite store and real HTTP stand-ins: a and b answer 202 (a receipt for b's attempt may come
    before its answer, as the script runs on while b is called). Provider c (push, response-confirmed) answers 500: the
    message can only be delivered by a receipt."""
    import asyncio
    import tempfile

    from daemon_process import until
    from provider_standin import ProviderStandin
    from test_runtime import router_for

    from routingd.daemon.receipts import VendorState
    from routingd.daemon.receipts.handler import _apply

    async def main(tmp: Path) -> None:
        async with ProviderStandin([{"status": 202}]) as a, ProviderStandin([{"status": 202}]) as b, \
                ProviderStandin([{"status": 500}]) as c:
            text = ROUTER_POLICY.format(a=a.url, b=b.url, c=c.url)
            async with router_for(tmp, text) as r:
                from test_runtime import send as request
                mid = (await r.submit(request())).message_id
                await a.wait_for(1, finished=True)
                frozen: list[Any] = []             # (status, finished_at) once finished
                must_deliver = False
                seen: dict[str, tuple[Any, Any]] = {}
                applied: list[tuple[str, str]] = []

                def check() -> dict[str, Any]:
                    s = r.status(mid)
                    assert s is not None
                    ends = [e["attempt_id"] for e in s["events"] if e["type"] == "attempt_ended"]
                    assert len(ends) == len(set(ends)), f"an attempt ended twice: {ends}"
                    assert [e["type"] for e in s["events"]].count("finished") <= 1
                    if s["status"] != "pending":
                        now = (s["status"], s.get("finished_at"))
                        frozen[:] = frozen or [now]
                        assert frozen[0] == now, f"a finished message moved: {frozen[0]} -> {now}"
                    for att in s["attempts"]:
                        before = seen.get(att["attempt_id"])
                        if before is not None and before[0] is not None:
                            assert att["ended_at"] == before[0], f"{att['attempt_id']} ended again"
                            assert att["outcome"] in (before[1], "delivered"), (before, att)
                            if before[1] == "delivered":
                                assert att["outcome"] == "delivered"
                        seen[att["attempt_id"]] = (att["ended_at"], att["outcome"])
                    return s

                s = check()
                for k, state in script:
                    ids = [x["attempt_id"] for x in s["attempts"]]
                    aid = ids[k % len(ids)]
                    provider = s["attempts"][k % len(ids)]["provider"]
                    if provider == "c":
                        continue
                    applied.append((aid, state))
                    must_deliver |= VENDOR_STATES[state] == "delivered" and s["status"] == "pending"
                    await _apply(r, provider, VendorState(None, aid, state, VENDOR_STATES[state]))  # type: ignore[arg-type]
                    s = check()
                for j in repeat:
                    if applied:
                        aid, state = applied[j % len(applied)]
                        prov = next(x["provider"] for x in s["attempts"] if x["attempt_id"] == aid)
                        await _apply(r, prov, VendorState(None, aid, state, VENDOR_STATES[state]))  # type: ignore[arg-type]
                        s = check()
                # then the vendor fails whatever still awaits its receipt, until the message ends
                # (delivered, or undeliverable once c answers 500), and then delivers every attempt late
                for _ in range(4):
                    open_ = [x for x in s["attempts"] if x["outcome"] is None and x["provider"] != "c"]
                    if s["status"] != "pending" or not open_:
                        break
                    for x in open_:
                        applied.append((x["attempt_id"], "undelivered"))
                        await _apply(r, x["provider"], VendorState(None, x["attempt_id"], "undelivered", "failed"))
                        s = check()
                await until(lambda: r.status(mid)["status"] != "pending", timeout=20, what="the message's end")
                s = check()
                for x in s["attempts"]:
                    if x["provider"] != "c":
                        applied.append((x["attempt_id"], "delivered"))
                        await _apply(r, x["provider"], VendorState(None, x["attempt_id"], "delivered", "delivered"))
                        s = check()
                # a vendor state is recorded once however often it is repeated
                vs = [(e["attempt_id"], e["vendor_status"]) for e in s["events"] if e["type"] == "vendor_status"]
                assert len(vs) == len(set(vs)) and set(vs) == set(applied)
                # a `delivered` receipt while the message was pending delivered it, whatever came after
                assert (s["status"] == "delivered") == must_deliver, s
                event(f"ended {s['status']}, {len(s['attempts'])} attempts")

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(asyncio.wait_for(main(Path(tmp)), 60))
