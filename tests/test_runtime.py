"""The asyncio Router against real HTTP provider stand-ins on loopback and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import until  # noqa: E402
from provider_standin import ProviderStandin  # noqa: E402

from routingd.daemon import adapters  # noqa: E402
from routingd.daemon.core.plan import PlanError  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.core.request import SendRequest  # noqa: E402
from routingd.daemon.metrics import Metrics  # noqa: E402
from routingd.daemon.runtime import Overloaded, Router  # noqa: E402
from routingd.daemon.store import Store  # noqa: E402

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


def send(to: dict[str, Any] | None = None, **message: Any) -> SendRequest:
    body = {"to": to if to is not None else {"email": "a@example.com", "phone_number": "+15550100"},
            "content": {"title": "Disk full", "body": "/var is at 99%"}, **message}
    return SendRequest.model_validate({"message": body})


def http(name: str, url: str, **extra: str) -> str:
    lines = [f"[providers.{name}]", 'type = "http"', f'url = "{url}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def policy_text(providers: str, channels: str, route: str, timeouts: str = "",
                daemon: str = "") -> str:
    timeouts = timeouts or 'provider = "2s"'
    return (f"version = 1\n[daemon]\n{daemon}\n[timeouts]\n{timeouts}\n"
            f"{providers}\n{channels}\n[routes.default]\n{route}\n")


@asynccontextmanager
async def router_for(tmp_path: Path, text: str, *, grace: float = 0.0) -> AsyncIterator[Router]:
    policy = parse_policy(text, "routing.toml", env={})
    router = Router(policy, Store(str(tmp_path / "state.db")), Metrics(), rng_seed=7)
    await router.start()
    try:
        yield router
    finally:
        await router.stop(grace)


async def finished(router: Router, mid: str, timeout: float = 10.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        st = router.status(mid)
        assert st is not None
        if st["status"] != "pending":
            return st
        if loop.time() > end:
            raise AssertionError(f"message still pending after {timeout}s: {st}")
        await asyncio.sleep(0.01)


def types(st: dict[str, Any]) -> list[str]:
    return [e["type"] for e in st["events"]]


def metric(router: Router, name: str, **labels: str) -> float:
    v = router.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


EMAIL_AB = '[channels.email]\nproviders = ["a", "b"]\nrequires = "email"\n'


# --------------------------------------------------------------------------- failover


def test_provider_failover_on_503_with_idempotency_key_and_payload(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"status": 503}]) as a, ProviderStandin([{"status": 200}]) as b:
            text = policy_text(http("a", a.url, headers='{ Authorization = "Bearer t0k" }') + http("b", b.url),
                               EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                res = await r.submit(send(metadata={"tags": ["ops"]}))
                assert res.created
                st = await finished(r, res.message_id)
                assert st["status"] == "delivered"
                assert [(x["provider"], x["outcome"], x["status_code"]) for x in st["attempts"]] == \
                    [("a", "failed", 503), ("b", "delivered", 200)]
                fo = [e for e in st["events"] if e["type"] == "failover"]
                assert fo and fo[0]["kind"] == "provider" and fo[0]["from"] == "a" and fo[0]["to"] == "b"
                ra, rb = a.requests[0], b.requests[0]
                assert ra.idempotency_key == f"{res.message_id}:email:a"
                assert rb.idempotency_key == f"{res.message_id}:email:b"
                assert ra.headers["Authorization"] == "Bearer t0k" and "Authorization" not in rb.headers
                assert rb.json == {"message_id": res.message_id, "attempt_id": st["attempts"][1]["attempt_id"],
                                   "channel": "email", "to": {"email": "a@example.com", "phone_number": "+15550100"},
                                   "content": {"title": "Disk full", "body": "/var is at 99%"},
                                   "metadata": {"tags": ["ops"]}}
                assert metric(r, "routingd_failovers_total", kind="provider") == 1
                assert metric(r, "routingd_attempts_total", channel="email", provider="a", outcome="failed") == 1
                assert metric(r, "routingd_messages_finished_total", status="delivered") == 1
                assert metric(r, "routingd_time_to_deliver_seconds_count") == 1

    run(main)


def test_hung_provider_is_cancelled_at_its_timeout_and_fails_over(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as a, ProviderStandin() as b:
            text = policy_text(http("a", a.url, timeout='"300ms"') + http("b", b.url), EMAIL_AB,
                               'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert st["status"] == "delivered"
                att = st["attempts"]
                assert [(x["provider"], x["outcome"]) for x in att] == [("a", "timeout"), ("b", "delivered")]
                assert att[0]["ended_at"] == att[0]["deadline"]          # ended exactly at its deadline
                # the request to the hung provider was really cancelled (its connection closed)
                await a.wait_for(1, finished=True, timeout=5)
                assert a.requests[0].finished == "cancelled"

    run(main)


def test_channel_failover_on_400_and_network_errors_fail_over(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"status": 400, "body": "bad address"}]) as a, \
                ProviderStandin([{"reset": True}]) as c, ProviderStandin() as d:
            text = policy_text(http("a", a.url) + http("b", a.url) + http("c", c.url) + http("d", d.url),
                               EMAIL_AB + '[channels.sms]\nproviders = ["c", "d"]\n',
                               'channels = ["email", "sms"]')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert st["status"] == "delivered"
                assert [(x["provider"], x["outcome"]) for x in st["attempts"]] == \
                    [("a", "rejected"), ("c", "network"), ("d", "delivered")]
                assert "bad address" in st["attempts"][0]["detail"]
                assert len(a.requests) == 1                     # a 400 does not try provider b
                kinds = [e["kind"] for e in st["events"] if e["type"] == "failover"]
                assert kinds == ["channel", "provider"]

    run(main)


def test_channel_without_its_contact_field_is_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin() as a, ProviderStandin() as c:
            text = policy_text(http("a", a.url) + http("b", a.url) + http("c", c.url),
                               EMAIL_AB + '[channels.sms]\nproviders = ["c"]\nrequires = "phone_number"\n',
                               'channels = ["email", "sms"]')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send(to={"phone_number": "+15550100"}))).message_id
                st = await finished(r, mid)
                assert st["status"] == "delivered" and [x["provider"] for x in st["attempts"]] == ["c"]
                skipped = [e for e in st["events"] if e["type"] == "channel_skipped"]
                assert skipped and skipped[0]["channel"] == "email"
                assert a.requests == []

    run(main)


def test_message_expires_at_its_timeout_and_the_running_attempt_is_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]',
                               timeouts='provider = "5s"\nmessage = "400ms"')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert st["status"] == "expired"
                assert st["finished_at"] == st["message_deadline"]
                assert [(x["provider"], x["outcome"]) for x in st["attempts"]] == [("a", "timeout")]
                assert "message_deadline" in types(st)
                await a.wait_for(1, finished=True, timeout=5)
                assert a.requests[0].finished == "cancelled"
                assert metric(r, "routingd_messages_finished_total", status="expired") == 1

    run(main)


def test_429_retry_after_is_honoured_when_it_fits_else_failover(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"status": 429, "retry_after": "0.3"}, {"status": 200}]) as a, \
                ProviderStandin() as b:
            text = policy_text(http("a", a.url, retries="1") + http("b", b.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert st["status"] == "delivered"
                assert [(x["provider"], x["try"], x["outcome"]) for x in st["attempts"]] == \
                    [("a", 1, "failed"), ("a", 2, "delivered")]
                retry = [e for e in st["events"] if e["type"] == "retry_scheduled"][0]
                assert retry["delay_s"] == pytest.approx(0.3)
                first, second = a.requests
                assert second.received_at - first.received_at >= 0.3
                assert b.requests == []

    async def does_not_fit() -> None:
        (tmp_path / "2").mkdir()
        async with ProviderStandin([{"status": 429, "retry_after": "120"}]) as a, ProviderStandin() as b:
            text = policy_text(http("a", a.url, retries="3") + http("b", b.url), EMAIL_AB, 'channels = ["email"]',
                               timeouts='provider = "2s"\nchannel = "5s"')
            async with router_for(tmp_path / "2", text) as r:
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert st["status"] == "delivered"
                assert [x["provider"] for x in st["attempts"]] == ["a", "b"]
                assert "retry_abandoned" in types(st)

    run(main)
    run(does_not_fit)


# --------------------------------------------------------------------------- receipts


def test_receipt_confirms_delivery_and_a_missing_receipt_times_out(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"status": 202}]) as a, ProviderStandin() as b:
            text = policy_text(http("a", a.url, confirm='"receipt"', receipt_timeout='"400ms"')
                               + http("b", b.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                # 1: the receipt arrives
                mid = (await r.submit(send())).message_id
                await a.wait_for(1, finished=True)
                aid = a.requests[0].json["attempt_id"]
                await asyncio.sleep(0.05)
                assert r.status(mid)["status"] == "pending"
                assert await r.receipt("b", aid, "delivered") is False        # wrong provider
                assert await r.receipt("a", "nope.0.1", "delivered") is False  # unknown attempt
                assert await r.receipt("a", aid, "delivered") is True
                st = await finished(r, mid)
                assert st["status"] == "delivered"
                assert [(x["provider"], x["outcome"], x["status_code"]) for x in st["attempts"]] == \
                    [("a", "delivered", 202)]
                assert b.requests == []
                # 2: no receipt: receipt timeout, then failover
                mid2 = (await r.submit(send())).message_id
                st2 = await finished(r, mid2)
                assert st2["status"] == "delivered"
                assert [(x["provider"], x["outcome"]) for x in st2["attempts"]] == [("a", "timeout"), ("b", "delivered")]
                assert "receipt_timeout" in types(st2)
                # 3: the late receipt for the timed-out attempt still counts (as a duplicate now)
                late = st2["attempts"][0]["attempt_id"]
                assert await r.receipt("a", late, "delivered") is True
                st2 = r.status(mid2)
                assert "late_receipt" in types(st2) and "duplicate" in types(st2)
                with pytest.raises(ValueError):
                    await r.receipt("a", late, "maybe")

    run(main)


def test_sandbox_providers_hang_fail_over_and_confirm_by_receipt(tmp_path: Path) -> None:
    text = policy_text(
        '[providers.s1]\ntype = "sandbox"\nfail = "hang"\ntimeout = "200ms"\n'
        '[providers.s2]\ntype = "sandbox"\nlatency = "20ms"\nconfirm = "receipt"\n'
        'receipt_delay = "50ms"\nreceipt_timeout = "2s"\n'
        '[providers.s3]\ntype = "sandbox"\nfail = "down"\n',
        '[channels.email]\nproviders = ["s1", "s2"]\n[channels.sms]\nproviders = ["s3"]\n',
        'method = "all"\nchannels = ["email", "sms"]')

    async def main() -> None:
        async with router_for(tmp_path, text) as r:
            mid = (await r.submit(send())).message_id
            st = await finished(r, mid)
            assert st["status"] == "delivered"
            got = {(x["provider"], x["outcome"]) for x in st["attempts"]}
            assert got == {("s1", "timeout"), ("s2", "delivered"), ("s3", "network")}
            s2 = [x for x in st["attempts"] if x["provider"] == "s2"][0]
            assert s2["status_code"] == 202        # accepted first, delivered by the receipt

    run(main)


def _attempt_rows(db: Path) -> list[tuple[str, str | None]]:
    """(provider, outcome) of every committed attempt row, read as another process would."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT provider, outcome FROM attempts ORDER BY started_at"))


def test_a_provider_call_goes_out_only_once_its_attempt_row_is_committed(tmp_path: Path) -> None:
    """Write-ahead (runtime/attempts.py Attempts.start, Store.committed): while another connection holds the
    database's write lock, the failover attempt on b is decided but its call is held back; once
    the lock is released, the row is committed and then the call reaches b. A SIGKILL at any
    moment thus leaves a row for every call a provider may have received."""
    db = tmp_path / "state.db"

    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as a, ProviderStandin([{"hang": True}]) as b:
            text = policy_text(http("a", a.url, timeout='"1s"') + http("b", b.url), EMAIL_AB,
                               'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                mid = (await r.submit(send())).message_id
                await a.wait_for(1)
                assert [p for p, _ in _attempt_rows(db)] == ["a"]
                blocker = sqlite3.connect(db, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")          # the writer now waits (busy_timeout 5 s)
                try:
                    await until(lambda: [x["provider"] for x in r.status(mid)["attempts"]] == ["a", "b"],
                                what="the failover attempt on b")
                    await asyncio.sleep(0.5)                # time enough for a call to reach b
                    assert b.requests == []
                finally:
                    blocker.execute("ROLLBACK")
                    blocker.close()
                await b.wait_for(1)
                assert [p for p, _ in _attempt_rows(db)] == ["a", "b"]

    run(main)


def test_a_sandbox_attempt_is_answered_only_once_its_attempt_row_is_committed(tmp_path: Path) -> None:
    """The same for an adapter answered by a loop timer (the sandbox): s2 answers 1 ms after the
    call, but its call waits for its row, and the row for the write lock."""
    db = tmp_path / "state.db"
    text = policy_text('[providers.s1]\ntype = "sandbox"\nfail = "hang"\ntimeout = "1s"\n'
                       # s2's timeout is long: however slow the machine, its call (held back by
                       # the lock) is answered before its deadline
                       '[providers.s2]\ntype = "sandbox"\nlatency = "1ms"\ntimeout = "60s"\n',
                       '[channels.email]\nproviders = ["s1", "s2"]\n', 'channels = ["email"]')

    async def main() -> None:
        async with router_for(tmp_path, text) as r:
            mid = (await r.submit(send())).message_id
            end = asyncio.get_running_loop().time() + 5       # one bound for both waits
            await until(lambda: [p for p, _ in _attempt_rows(db)] == ["s1"], what="s1's row")
            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                await until(lambda: len(r.status(mid)["attempts"]) >= 2, what="the failover attempt on s2",
                            timeout=end - asyncio.get_running_loop().time())
                await asyncio.sleep(0.3)
                assert [(x["provider"], x["outcome"]) for x in r.status(mid)["attempts"]] == \
                    [("s1", "timeout"), ("s2", None)]
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            st = await finished(r, mid)
            assert st["status"] == "delivered"
            await r.store.flush()                           # the ends are written after the fact
            assert _attempt_rows(db) == [("s1", "timeout"), ("s2", "delivered")]

    run(main)


# --------------------------------------------------------------------------- accepting


def test_idempotent_resubmit_returns_the_same_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin() as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                results = await asyncio.gather(*(r.submit(send(), idempotency_key="order-42") for _ in range(4)))
                ids = {x.message_id for x in results}
                assert len(ids) == 1 and [x.created for x in results].count(True) == 1
                other = await r.submit(send(), idempotency_key="order-43")
                assert other.created and other.message_id not in ids
                await finished(r, other.message_id)
                await finished(r, results[0].message_id)
                assert len(a.requests) == 2
                assert metric(r, "routingd_messages_accepted_total") == 2
            # the replays' first attempts (started before their inserts found the key) left no row
            assert sorted(p for p, _ in _attempt_rows(tmp_path / "state.db")) == ["a", "a"]

    run(main)


def test_the_first_attempts_are_committed_with_the_message(tmp_path: Path) -> None:
    """The engine starts a message before its insert commits and the insert's transaction holds
    the first attempts' rows (Router.submit): when submit() returns -- the 202 -- they are on
    disk, and their calls need no second commit. A message accepted while the router stops
    keeps them, as `cancelled` ("not started"), and the next start routes it."""
    db = tmp_path / "state.db"
    text = policy_text('[providers.s1]\ntype = "sandbox"\nlatency = "10s"\n'
                       '[providers.s2]\ntype = "sandbox"\nlatency = "10s"\n',
                       '[channels.email]\nproviders = ["s1"]\n[channels.sms]\nproviders = ["s2"]\n',
                       'method = "all"\nchannels = ["email", "sms"]', timeouts='provider = "1m"')

    async def main() -> None:
        async with router_for(tmp_path, text) as r:
            mid = (await r.submit(send())).message_id
            assert sorted(_attempt_rows(db)) == [("s1", None), ("s2", None)]   # no loop turn since
            assert [x["provider"] for x in r.status(mid)["attempts"]] == ["s1", "s2"]
            late = asyncio.ensure_future(r.submit(send()))
            await asyncio.sleep(0)                  # its insert is queued; then the router stops
            await asyncio.gather(late, r.stop(0.0))
            assert late.result().created
        check = Store(str(db))
        await check.open()
        got = check.get_message(late.result().message_id)
        await check.close()
        assert got is not None and got.message.status == "pending"
        assert [(a.provider, a.outcome, a.detail) for a in got.attempts] == \
            [("s1", "cancelled", "not started: routingd is stopping"),
             ("s2", "cancelled", "not started: routingd is stopping")]

    run(main)


def test_unknown_route_is_a_plan_error_and_the_inflight_limit_is_enforced(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]',
                               daemon="max_inflight = 2")
            async with router_for(tmp_path, text) as r:
                with pytest.raises(PlanError):
                    await r.submit(send(route="nope"))
                with pytest.raises(PlanError):
                    await r.submit(send(routing={"channels": ["fax"]}))
                await r.submit(send())
                await r.submit(send())
                assert r.inflight == 2
                with pytest.raises(Overloaded) as e:
                    await r.submit(send())
                assert e.value.retry_after_s > 0
                assert r.store.counts() == {"pending": 2}

    run(main)


def test_status_json_shape_and_event_listeners(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin() as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                seen: list[tuple[str, str]] = []
                r.add_event_listener(lambda mid, ev: seen.append((mid, ev.type)))
                r.add_event_listener(lambda mid, ev: 1 / 0)          # a broken listener changes nothing
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                assert r.status("no-such-message") is None
                assert set(st) >= {"message_id", "status", "accepted_at", "finished_at", "route", "policy_version",
                                   "attempts", "events"}
                assert st["route"] == "default" and st["policy_version"] == r.policy.version
                for key in ("accepted_at", "finished_at", "message_deadline"):
                    assert RFC3339_MS.match(st[key]), st[key]
                att = st["attempts"][0]
                assert set(att) >= {"attempt_id", "channel", "provider", "try", "started_at", "ended_at", "deadline",
                                    "outcome", "status_code"}
                assert all(RFC3339_MS.match(att[k]) for k in ("started_at", "ended_at", "deadline"))
                assert all(RFC3339_MS.match(e["at"]) for e in st["events"])
                assert types(st)[0] == "started" and types(st)[-1] == "finished"
                await until(lambda: len([t for m, t in seen if m == mid]) >= len(types(st)))
                assert [t for m, t in seen if m == mid] == types(st)
                # the same answer once the message has left memory: read back from SQLite
                await r.store.flush()
                r._recent.clear()
                assert r.status(mid) == st

    run(main)


def test_event_listeners_hear_an_event_only_once_its_row_is_committed(tmp_path: Path) -> None:
    """MQTT subscribers must never see a status that a crash rolls back: each event a listener
    hears is already in the state file (read back on another connection at that moment)."""
    async def main() -> None:
        async with ProviderStandin() as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                heard: list[tuple[str, int]] = []          # (event type, how many the file held then)

                def listener(mid: str, ev: Any) -> None:
                    conn = sqlite3.connect(r.store.path)
                    try:
                        rows = conn.execute("SELECT events FROM event_log WHERE message_id = ?", (mid,)).fetchall()
                    finally:
                        conn.close()
                    stored = [e[0] for (text,) in rows for e in json.loads(text)]
                    heard.append((ev.type, stored.count(ev.type)))

                r.add_event_listener(listener)
                mid = (await r.submit(send())).message_id
                st = await finished(r, mid)
                await until(lambda: len(heard) >= len(types(st)))
                assert [t for t, _ in heard] == types(st)
                assert all(n >= 1 for _, n in heard), heard

    run(main)


def test_missing_adapter_type_fails_the_attempt_as_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(adapters._FACTORIES, "mqtt", raising=False)

    async def main() -> None:
        async with ProviderStandin() as b:
            text = policy_text('[providers.a]\ntype = "mqtt"\ntopic = "x"\n' + http("b", b.url), EMAIL_AB,
                               'channels = ["email"]')
            async with router_for(tmp_path, text) as r:
                st = await finished(r, (await r.submit(send())).message_id)
                assert st["status"] == "delivered"
                assert st["attempts"][0]["outcome"] == "network"
                assert "no adapter for type 'mqtt'" in st["attempts"][0]["detail"]

    run(main)


# --------------------------------------------------------------------------- policies, stop, restart


def test_swap_policy_new_messages_use_it_in_flight_keep_theirs(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"delay": 0.3}]) as old, ProviderStandin() as new:
            t1 = policy_text(http("a", old.url) + http("b", old.url), EMAIL_AB, 'channels = ["email"]')
            t2 = policy_text(http("a", new.url) + http("b", new.url), EMAIL_AB, 'channels = ["email"]')
            async with router_for(tmp_path, t1) as r:
                m1 = (await r.submit(send())).message_id
                await old.wait_for(1)
                p2 = parse_policy(t2, "routing.toml", env={})
                r.swap_policy(p2)
                assert r.policy is p2
                m2 = (await r.submit(send())).message_id
                s1, s2 = await finished(r, m1), await finished(r, m2)
                assert s1["status"] == s2["status"] == "delivered"
                assert s1["policy_version"] != s2["policy_version"] == p2.version
                assert len(old.requests) == 1 and len(new.requests) == 1
                assert metric(r, "routingd_config_hash") == int(p2.version[:13], 16)

    run(main)


def test_stop_lets_inflight_attempts_finish_within_the_grace(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"delay": 0.2}]) as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]')
            policy = parse_policy(text, "routing.toml", env={})
            store = Store(str(tmp_path / "state.db"))
            r = Router(policy, store, Metrics())
            await r.start()
            mid = (await r.submit(send())).message_id
            await a.wait_for(1)
            await r.stop(5.0)
            with pytest.raises(Overloaded):
                await r.submit(send())
            check = Store(str(tmp_path / "state.db"))
            await check.open()
            assert check.get_message(mid).message.status == "delivered"
            await check.close()

    run(main)


def test_restart_resumes_pending_messages_under_their_policy_to_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as first, ProviderStandin() as elsewhere:
            # run 1: the provider hangs; the daemon stops with the messages in flight
            t1 = policy_text(http("a", first.url) + http("b", first.url), EMAIL_AB, 'channels = ["email"]',
                             timeouts='provider = "30s"\nchannel = "1m"\nmessage = "2m"')
            p1 = parse_policy(t1, "routing.toml", env={})
            r1 = Router(p1, Store(str(tmp_path / "state.db")), Metrics())
            await r1.start()
            ids = [(await r1.submit(send())).message_id for _ in range(3)]
            await first.wait_for(3)
            before = {m: r1.status(m) for m in ids}
            await r1.stop(0.1)
            await first.wait_for(3, finished=True)
            assert {x.finished for x in first.requests} == {"cancelled"}
            # run 2: a NEW policy points elsewhere, but resumed messages keep the snapshot they
            # were accepted under; the provider has recovered meanwhile
            first.set_script([{"status": 200}])
            t2 = policy_text(http("a", elsewhere.url) + http("b", elsewhere.url), EMAIL_AB, 'channels = ["email"]')
            r2 = Router(parse_policy(t2, "routing.toml", env={}), Store(str(tmp_path / "state.db")), Metrics())
            await r2.start()
            try:
                assert r2.inflight == 3
                for m in ids:
                    st = await finished(r2, m)
                    assert st["status"] == "delivered"
                    assert st["policy_version"] == p1.version
                    assert st["message_deadline"] == before[m]["message_deadline"]
                    assert st["accepted_at"] == before[m]["accepted_at"]
                    runs = [(x["attempt_id"].split(".")[1], x["outcome"]) for x in st["attempts"]]
                    assert runs == [("0", "cancelled"), ("1", "delivered")]
                    starts = [e for e in st["events"] if e["type"] == "started"]
                    assert [e["run"] for e in starts] == [0, 1]
                assert len(first.requests) == 6 and elsewhere.requests == []
                # the retried request carries the same Idempotency-Key as the interrupted one
                assert {x.idempotency_key for x in first.requests[:3]} == {x.idempotency_key for x in first.requests[3:]}
            finally:
                await r2.stop(0)

    run(main)


def test_restart_after_the_message_deadline_expires_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as a:
            text = policy_text(http("a", a.url) + http("b", a.url), EMAIL_AB, 'channels = ["email"]',
                               timeouts='provider = "30s"\nmessage = "300ms"')
            policy = parse_policy(text, "routing.toml", env={})
            r1 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r1.start()
            mid = (await r1.submit(send())).message_id
            await a.wait_for(1)
            await r1.stop(0)
            await asyncio.sleep(0.4)            # the daemon is down past the message deadline
            r2 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r2.start()
            try:
                st = await finished(r2, mid)
                assert st["status"] == "expired" and len(a.requests) == 1
                assert st["finished_at"] >= st["message_deadline"]         # RFC 3339 strings sort by time
                assert "message_deadline" in types(st)
            finally:
                await r2.stop(0)

    run(main)


def test_stop_starts_no_new_attempt_and_the_next_start_finishes_the_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin([{"status": 503, "delay": 0.1}]) as a, ProviderStandin() as b:
            text = policy_text(http("a", a.url) + http("b", b.url), EMAIL_AB, 'channels = ["email"]')
            policy = parse_policy(text, "routing.toml", env={})
            r1 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r1.start()
            mid = (await r1.submit(send())).message_id
            await a.wait_for(1)
            await r1.stop(5.0)           # a answers 503 within the grace; failover to b must not start
            assert b.requests == []
            r2 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r2.start()
            try:
                st = await finished(r2, mid)
                assert st["status"] == "delivered"
                # no row for b in the first run: its failover was held, not started (Delivery.drain)
                assert [(x["provider"], x["outcome"]) for x in st["attempts"]] == \
                    [("a", "failed"), ("a", "failed"), ("b", "delivered")]
                assert [e["provider"] for e in st["events"] if e["type"] == "attempt_held"] == ["b"]
                assert len(b.requests) == 1
            finally:
                await r2.stop(0)

    run(main)


def test_rfc3339_saturates_instead_of_raising() -> None:
    """routingd.daemon.clock.rfc3339 (status endpoint, MQTT event formatter): a time past year 9999 is the
    last representable date, one before year 1 (or NaN) the first; ordinary times are exact."""
    from routingd.daemon.clock import EARLIEST, LATEST, rfc3339

    assert rfc3339(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert rfc3339(253402300799.998) == "9999-12-31T23:59:59.997Z"       # the last ms that fits
    for t in (253402300800.0, 1e20, float("inf")):
        assert rfc3339(t) == LATEST == "9999-12-31T23:59:59.999Z"
    for t in (-1e20, float("-inf"), float("nan")):
        assert rfc3339(t) == EARLIEST == "0001-01-01T00:00:00.000Z"
    assert rfc3339(None) is None


def test_sandbox_attempts_in_flight_at_stop_finish_within_the_grace_or_stay_pending(tmp_path: Path) -> None:
    """A sandbox attempt is answered by a loop timer, not a task (runtime/attempts.py Attempts._start_timed): stop()
    still waits for it within the grace, and cancels what is left for the next start."""
    async def main() -> None:
        for latency, grace, want in (("300ms", 5.0, "delivered"), ("30s", 0.2, "pending")):
            text = policy_text(f'[providers.s]\ntype = "sandbox"\nlatency = "{latency}"\n',
                               '[channels.email]\nproviders = ["s"]\nrequires = "email"\n', 'channels = ["email"]',
                               timeouts='provider = "1m"')
            path = tmp_path / f"{want}.db"
            r = Router(parse_policy(text, "routing.toml", env={}), Store(str(path)), Metrics())
            await r.start()
            mid = (await r.submit(send())).message_id
            await asyncio.sleep(0.05)
            await r.stop(grace)
            check = Store(str(path))
            await check.open()
            got = check.get_message(mid)
            await check.close()
            assert got is not None and got.message.status == want, (latency, got)
            outcomes = [a.outcome for a in got.attempts]
            assert outcomes == (["delivered"] if want == "delivered" else ["cancelled"]), outcomes

    run(main)


def test_many_deadlines_fire_each_at_its_own_time(tmp_path: Path) -> None:
    """Every message's wake-up sits in one heap served by one loop timer (runtime/wakeups.py WakeupHeap):
    later messages with EARLIER deadlines re-arm it, and no attempt is timed out early. (s1's
    breaker is off: an open breaker would cut the remaining hung attempts at once.)"""
    async def main() -> None:
        text = policy_text('[providers.s1]\ntype = "sandbox"\nfail = "hang"\nbreaker = false\n'
                           '[providers.s2]\ntype = "sandbox"\nlatency = "1ms"\n',
                           '[channels.email]\nproviders = ["s1", "s2"]\nrequires = "email"\n', 'channels = ["email"]')
        async with router_for(tmp_path, text) as r:
            timeouts = [400 - 6 * i for i in range(60)]          # 400 ms down to 46 ms
            mids = [(await r.submit(send(providers={"s1": {"timeout": t}}))).message_id for t in timeouts]
            for mid, t in zip(mids, timeouts):
                st = await finished(r, mid)
                assert st["status"] == "delivered", st
                first = st["attempts"][0]
                assert (first["provider"], first["outcome"]) == ("s1", "timeout"), st["attempts"]
                assert st["attempts"][1]["provider"] == "s2"
                live = r._recent[mid].delivery.attempts[first["attempt_id"]]
                assert live.ended_at == live.deadline, live                # cut at its own deadline
                assert abs((live.deadline - live.started_at) - t / 1000) < 1e-5, (t, live)

    run(main)


def test_attempt_requests_are_built_field_by_field_only_while_the_fields_are_known() -> None:
    """Attempts.start (runtime/attempts.py) skips AttemptRequest's frozen __init__ while its fields are exactly
    the ones it sets (what the adapter then sends is checked end to end by
    test_provider_failover_on_503_with_idempotency_key_and_payload)."""
    import dataclasses

    from routingd.daemon import runtime
    from routingd.daemon.adapters import AttemptRequest

    assert runtime._ATTEMPT_REQUEST_PLAIN, "AttemptRequest changed: update runtime/attempts.py Attempts.start's field list"
    assert {f.name for f in dataclasses.fields(AttemptRequest)} >= {"to", "content", "metadata", "deadline_s"}


def test_a_policy_swapped_while_the_router_starts_is_stored_for_resume(tmp_path: Path) -> None:
    """A reload that lands while start() is still resuming the store's pending messages must end
    up in the store's policies table like any other: the messages accepted under it name it, and
    a later restart resumes them under it (not under whatever routing.toml says by then)."""
    text_a = policy_text('[providers.s1]\ntype = "sandbox"\nlatency = "1ms"\n',
                         '[channels.email]\nproviders = ["s1"]\nrequires = "email"\n', 'channels = ["email"]')
    text_b = text_a.replace('provider = "2s"', 'provider = "3s"')

    class PausingStore(Store):
        """The real store; load_pending (start()'s resume step) waits until the test lets it go."""

        def __init__(self, path: str) -> None:
            super().__init__(path)
            self.loading = asyncio.Event()
            self.go_on = asyncio.Event()

        async def load_pending(self) -> Any:
            self.loading.set()
            await self.go_on.wait()
            return await super().load_pending()

    async def main() -> None:
        store = PausingStore(str(tmp_path / "state.db"))
        a = parse_policy(text_a, "routing.toml", env={})
        b = parse_policy(text_b, "routing.toml", env={})
        router = Router(a, store, Metrics(), rng_seed=7)
        starting = asyncio.ensure_future(router.start())
        await asyncio.wait_for(store.loading.wait(), 10)      # start() is resuming: a reload now
        router.swap_policy(b)
        store.go_on.set()
        await asyncio.wait_for(starting, 10)
        try:
            mid = (await router.submit(send())).message_id
            st = await finished(router, mid)
            assert st["policy_version"] == b.version
            await store.flush()
            assert await store.policy_source(b.version) == (text_b, "routing.toml")
        finally:
            await router.stop(0.0)

    run(main)


def test_freeze_startup_collects_the_starts_garbage_and_freezes_what_lives() -> None:
    """`serve` calls it once before it routes (daemon/ids.py): a full collection then no longer
    walks what the start built, and the start's garbage was collected first, not kept frozen."""
    import gc
    import weakref

    from routingd.daemon.ids import freeze_startup

    class Node:
        pass

    kept, cyclic = Node(), Node()
    cyclic.me = cyclic                   # type: ignore[attr-defined]  # only the cyclic collector frees it
    gone = weakref.ref(cyclic)
    del cyclic
    try:
        freeze_startup()
        assert gone() is None                                   # collected, not frozen
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())     # out of the collector's walk
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())
