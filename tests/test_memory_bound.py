"""Memory bounded in bytes (issue 24.4): [daemon] max_inflight_bytes bounds the request text that
pending messages hold (503 + Retry-After past it, naming the limit), and the finished messages
the Router keeps in memory (status, late receipts) hold no request body."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess, StandinLoop, serving  # noqa: E402

from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.core.request import SendRequest  # noqa: E402
from routingd.daemon.metrics import Metrics  # noqa: E402
from routingd.daemon.runtime import Overloaded, Router  # noqa: E402
from routingd.daemon.store import Store  # noqa: E402

BODY = 64 * 1024


def big_send(i: int) -> tuple[SendRequest, str]:
    text = json.dumps({"message": {"to": {"email": f"u{i}@example.com"},
                                   "content": {"title": "t", "body": f"{i}:" + "x" * BODY}}})
    return SendRequest.model_validate_json(text), text


def test_finished_messages_kept_in_memory_hold_no_request_body(tmp_path: Path) -> None:
    policy = parse_policy('version = 1\n[providers.s]\ntype = "sandbox"\n[channels.email]\nproviders = ["s"]\n'
                          '[routes.default]\nchannels = ["email"]\n', "routing.toml", env={})
    n = 40

    async def main() -> tuple[int, int]:
        router = Router(policy, Store(str(tmp_path / "state.db")), Metrics(), rng_seed=1)
        await router.start()
        try:
            # warm up (first-use allocations: plan cache, adapters, statements), then measure
            req, text = big_send(-1)
            first = (await router.submit(req, request_json=text)).message_id
            await wait_finished(router, [first])
            await router.store.flush()
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                ids = []
                for i in range(n):
                    req, text = big_send(i)
                    ids.append((await router.submit(req, request_json=text)).message_id)
                    del req, text
                await wait_finished(router, ids)
                await router.store.flush()
                assert router.inflight_bytes == 0
                assert all(router.status(m) is not None for m in ids)       # still kept in memory
                gc.collect()
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            return before, after
        finally:
            await router.stop(0)

    before, after = asyncio.run(asyncio.wait_for(main(), 60))
    grown = after - before
    print(f"\n{n} finished messages of {BODY // 1024} KiB each: traced memory grew {grown // 1024} KiB")
    # with their bodies they would hold n x 64 KiB = 2.5 MiB; without, a few KiB each
    assert grown < n * BODY // 4, f"{n} finished messages hold {grown} bytes"


async def wait_finished(router: Router, ids: list[str], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while any((router.status(m) or {}).get("status") == "pending" for m in ids):
        assert loop.time() < end, "messages still pending"
        await asyncio.sleep(0.01)


def test_router_refuses_past_max_inflight_bytes_and_counts_them_back(tmp_path: Path) -> None:
    """In process: the exact accounting (bytes of the stored text, back to 0 once finished)."""
    policy = parse_policy('version = 1\n[daemon]\nmax_inflight_bytes = 200000\n'
                          '[providers.s]\ntype = "sandbox"\nfail = "hang"\ntimeout = "300ms"\n'
                          '[channels.email]\nproviders = ["s"]\n[routes.default]\nchannels = ["email"]\n',
                          "routing.toml", env={})

    async def main() -> None:
        router = Router(policy, Store(str(tmp_path / "state.db")), Metrics(), rng_seed=1)
        await router.start()
        try:
            sizes = []
            ids = []
            for i in range(3):
                req, text = big_send(i)
                ids.append((await router.submit(req, request_json=text)).message_id)
                sizes.append(len(text.encode()))
            assert router.inflight_bytes == sum(sizes)
            req, text = big_send(3)
            try:
                await router.submit(req, request_json=text)
            except Overloaded as e:
                assert "max_inflight_bytes (200000)" in e.reason and e.retry_after_s >= 1
            else:
                raise AssertionError("a fourth 64 KiB request was accepted past 200000 bytes")
            await wait_finished(router, ids)
            assert router.inflight_bytes == 0
            await router.submit(req, request_json=text)      # room again
        finally:
            await router.stop(0)

    asyncio.run(asyncio.wait_for(main(), 60))


CONFIG = """
version = 1
[daemon]
max_inflight_bytes = {limit}
grace = "200ms"
[timeouts]
provider = "5m"
message = "20m"
[providers.stuck]
type = "http"
url = "{stuck}"
breaker = false
[channels.email]
providers = ["stuck"]
[routes.default]
channels = ["email"]
"""


def test_a_live_daemon_answers_503_past_max_inflight_bytes(tmp_path: Path) -> None:
    limit = 1024 * 1024
    body = json.dumps({"message": {"to": {"email": "a@example.com"},
                                   "content": {"body": "x" * (200 * 1024)}}}).encode()
    with StandinLoop() as loop:
        stuck = loop.standin([{"hang": True}])
        with serving(DaemonProcess(tmp_path, CONFIG.format(limit=limit, stuck=stuck.url))) as d:
            answers = [d.request("POST", "/v1/send", body=body, headers={"Content-Type": "application/json"})
                       for _ in range(8)]
            statuses = [r.status for r in answers]
            fit = limit // len(body)
            assert statuses == [202] * fit + [503] * (8 - fit), statuses
            refused = answers[-1]
            assert int(refused.header("Retry-After") or "0") >= 1
            assert "max_inflight_bytes" in refused.json()["error"] and str(limit) in refused.json()["error"]
            # a small send still fits beside them
            small = json.dumps({"message": {"to": {"email": "a@example.com"}}}).encode()
            r = d.request("POST", "/v1/send", body=small, headers={"Content-Type": "application/json"})
            assert r.status == 202
