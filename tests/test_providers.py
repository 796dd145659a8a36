"""Provider adapters: `http` against a real stand-in server, `sandbox` from the shared model."""

from __future__ import annotations

import asyncio
import email.utils
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provider_standin import ProviderStandin  # noqa: E402
from vendor_standins import serve_loopback  # noqa: E402

from routingd.daemon.adapters import AdapterContext, AttemptRequest, build_adapter  # noqa: E402
from routingd.daemon.core.engine import Outcome  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.providers import HttpAdapter, SandboxAdapter, make_http_session, parse_retry_after  # noqa: E402

STANDIN = Path(__file__).resolve().parent / "provider_standin.py"


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


def req(n: int = 1, deadline_s: float = 5.0) -> AttemptRequest:
    return AttemptRequest(message_id="m1", attempt_id=f"m1.0.{n}", channel="email", provider="p", try_no=n,
                          deadline_s=deadline_s, idempotency_key="m1:email:p", to={"email": "a@example.com"},
                          content={"body": "hi"}, metadata={"k": 1})


def provider_config(body: str) -> Any:
    text = f'version = 1\n[providers.p]\n{body}\n[channels.email]\nproviders = ["p"]\n' \
           '[routes.default]\nchannels = ["email"]\n'
    return parse_policy(text, "routing.toml", env={}).providers["p"]


# --------------------------------------------------------------------------- http


def test_http_adapter_maps_answers_to_outcomes() -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    script = [{"status": 200}, {"status": 503, "body": "upstream down"}, {"status": 429, "retry_after": "2"},
              {"status": 429, "retry_after": date}, {"status": 429, "retry_after": "soon"}, {"status": 400},
              {"status": 202, "body": "not json at all \x00"}]

    async def main() -> None:
        async with ProviderStandin(script) as s:
            session = make_http_session()
            try:
                cfg = provider_config(f'type = "http"\nurl = "{s.url}"\nheaders = {{ "X-Api-Key" = "k1" }}')
                a = build_adapter("p", cfg, AdapterContext(http_session=session))
                assert isinstance(a, HttpAdapter)
                got = [await a.send(req(i)) for i in range(len(script))]
            finally:
                await session.close()
        assert got[0] == Outcome(status=200)
        assert got[1].status == 503 and "upstream down" in got[1].detail and not got[1].network
        assert got[2].retry_after_s == 2.0
        assert got[3].status == 429 and 25 <= got[3].retry_after_s <= 31
        assert got[4].status == 429 and got[4].retry_after_s is None
        assert got[5].status == 400
        assert got[6] == Outcome(status=202)            # a 2xx body is never parsed
        first = s.requests[0]
        assert first.method == "POST" and first.idempotency_key == "m1:email:p"
        assert first.headers["X-Api-Key"] == "k1" and first.headers["Content-Type"].startswith("application/json")
        assert first.json == req(0).payload()

    run(main)


@pytest.mark.parametrize("action,expect", [({"reset": True}, "reset"), ({"garbage": True}, "Bad status line"),
                                           ({"truncated": True}, "ClientPayloadError")])
def test_http_transport_failures_are_network_outcomes(action: dict[str, Any], expect: str) -> None:
    async def main() -> None:
        async with ProviderStandin([action]) as s:
            session = make_http_session()
            try:
                o = await HttpAdapter("p", provider_config(f'type = "http"\nurl = "{s.url}"'),
                                      AdapterContext(http_session=session)).send(req())
            finally:
                await session.close()
        assert o.network and o.status is None and expect in o.detail, o

    run(main)


def test_http_connection_refused_is_network() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]            # bound but not listening: connection refused

        async def main() -> Outcome:
            session = make_http_session()
            try:
                return await HttpAdapter("p", provider_config(f'type = "http"\nurl = "http://127.0.0.1:{port}/x"'),
                                         AdapterContext(http_session=session)).send(req())
            finally:
                await session.close()

        o = run(main)
    assert o.network and "Connect" in o.detail


def test_cancelling_an_http_attempt_closes_the_request() -> None:
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as s:
            session = make_http_session()
            try:
                task = asyncio.create_task(HttpAdapter("p", provider_config(f'type = "http"\nurl = "{s.url}"'),
                                                       AdapterContext(http_session=session)).send(req()))
                await s.wait_for(1)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await s.wait_for(1, finished=True, timeout=5)
                assert s.requests[0].finished == "cancelled"
            finally:
                await session.close()

    run(main)


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now) == pytest.approx(42, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now) == 0.0
    for bad in (None, "", "-1", "nan", "tomorrow", "inf"):
        assert parse_retry_after(bad, now) is None, bad


# --------------------------------------------------------------------------- sandbox


def sandbox(body: str, receipts: Any = None, seed: int = 1) -> SandboxAdapter:
    a = build_adapter("p", provider_config('type = "sandbox"\n' + body), AdapterContext(rng_seed=seed,
                                                                                        receipts=receipts))
    assert isinstance(a, SandboxAdapter)
    return a


def test_sandbox_outage_modes() -> None:
    async def main() -> None:
        assert (await sandbox('fail = "down"').send(req())).network
        assert (await sandbox('fail = "error"\nlatency = "1ms"').send(req())).status == 503
        o = await sandbox('fail = "throttle"\nlatency = "1ms"\nthrottle_retry_after = "2s"').send(req())
        assert o.status == 429 and o.retry_after_s == 2.0
        assert (await sandbox('latency = "5ms"').send(req())) == Outcome(status=200)
        hang = asyncio.create_task(sandbox('fail = "hang"').send(req()))
        done, _ = await asyncio.wait([hang], timeout=0.3)
        assert not done                                   # only the deadline (cancellation) ends it
        hang.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hang
        limited = sandbox('latency = "1ms"\nrate_limit = "2/s"')
        statuses = [(await limited.send(req(i))).status for i in range(4)]
        assert statuses[:2] == [200, 200] and 429 in statuses[2:]

    run(main)


def test_sandbox_receipt_is_fed_back_and_no_receipts_mode_sends_none() -> None:
    async def main() -> None:
        got: list[tuple[str, str, str]] = []

        async def sink(provider: str, attempt_id: str, status: str) -> bool:
            got.append((provider, attempt_id, status))
            return True

        a = sandbox('latency = "1ms"\nconfirm = "receipt"\nreceipt_delay = "30ms"', receipts=sink)
        assert (await a.send(req(7))).status == 202
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not got and loop.time() < end:
            await asyncio.sleep(0.01)
        assert got == [("p", "m1.0.7", "delivered")]
        quiet = sandbox('latency = "1ms"\nconfirm = "receipt"\nreceipt_delay = "10ms"\nfail = "no-receipts"',
                        receipts=sink)
        assert (await quiet.send(req(8))).status == 202
        await asyncio.sleep(0.1)
        assert len(got) == 1
        await a.close()
        await quiet.close()

    run(main)


def test_sandbox_is_reproducible_with_a_seed() -> None:
    async def draws(seed: int) -> list[Any]:
        a = sandbox('latency = { median = "1ms", p99 = "3ms" }\nerror_rate = 0.5', seed=seed)
        return [(await a.send(req(i))).status for i in range(20)]

    first = run(lambda: draws(3))
    assert first == run(lambda: draws(3))
    assert {200, 503} <= set(first)


# --------------------------------------------------------------------------- the stand-in as a process


def test_standin_runs_as_a_separate_process() -> None:
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--port", "0", "--script", '[{"status": 503}]'],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())

        async def main() -> None:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async with s.post(base + "/send", json={"attempt_id": "x"}, headers={"Idempotency-Key": "k"}) as r:
                    assert r.status == 503
                async with s.put(base + "/_script", json=[{"status": 201}]) as r:
                    assert r.status == 200
                async with s.post(base + "/send", json={}) as r:
                    assert r.status == 201
                async with s.get(base + "/_requests") as r:
                    recorded = await r.json()
            assert [x["idempotency_key"] for x in recorded] == ["k", None]
            assert recorded[0]["json"] == {"attempt_id": "x"} and recorded[0]["finished"] == "answered"

        run(main)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_standin_posts_signed_receipts() -> None:
    async def main() -> None:
        got: list[tuple[dict[str, Any], str | None]] = []
        from aiohttp import web

        async def receipts(request: web.Request) -> web.Response:
            got.append((json.loads(await request.read()), request.headers.get("X-Routingd-Signature")))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/v1/receipts/p", receipts)
        runner, receiver = await serve_loopback(app)
        try:
            async with ProviderStandin([{"status": 202, "receipt": "delivered", "receipt_delay": 0.01}],
                                       receipt_url=f"{receiver}/v1/receipts/p",
                                       receipt_secret="s3cret") as s:
                session = make_http_session()
                try:
                    await HttpAdapter("p", provider_config(f'type = "http"\nurl = "{s.url}"'),
                                      AdapterContext(http_session=session)).send(req(3))
                finally:
                    await session.close()
                loop = asyncio.get_running_loop()
                end = loop.time() + 5
                while not s.receipts_sent and loop.time() < end:
                    await asyncio.sleep(0.01)
                assert s.receipts_sent == [{"attempt_id": "m1.0.3", "status": "delivered", "http_status": 200}]
        finally:
            await runner.cleanup()
        import hashlib
        import hmac
        body, sig = got[0]
        assert body == {"attempt_id": "m1.0.3", "status": "delivered"}
        raw = json.dumps(body).encode()
        assert sig == "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()

    run(main)
