"""The email adapters' delivery rate beside a raw client making the same requests, in one run.

sendgrid  routingd's `sendgrid` adapter (SendgridAdapter.send: the body from the attempt, the
          JSON, the answer mapped to an Outcome) vs a raw aiohttp client POSTing the same JSON
          body with the same headers, both with --concurrency requests in flight on one
          ClientSession, against tests/sendgrid_standin.py in its own process (it validates
          each body as SendGrid does and answers 202 + X-Message-Id).
smtp      routingd's `smtp` adapter (a MIME message built per attempt, sent on its pool of
          pool_size connections, --concurrency attempts in flight) vs a raw aiosmtplib loop
          sending one prebuilt message after another on one connection, against one aiosmtpd
          server (its own thread) that accepts every message.
Both print messages/s of each side and the ratio; target: ratio >= 0.5 for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aiosmtplib  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

from routingd.daemon.adapters import AdapterContext, AttemptRequest, build_adapter  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.providers import make_http_session  # noqa: E402

TARGET = 0.5
KEY = "SG.bench"


def _provider(body: str) -> Any:
    text = f'version = 1\n[providers.p]\n{body}\n[channels.email]\nproviders = ["p"]\n[routes.default]\nchannels = ["email"]\n'
    return parse_policy(text, "bench", env={}).providers["p"]


def _req(i: int) -> AttemptRequest:
    return AttemptRequest(message_id=f"m{i}", attempt_id=f"m{i}.0.1", channel="email", provider="p", try_no=1,
                          deadline_s=30.0, idempotency_key=f"m{i}:email:p", to={"email": "bob@example.org"},
                          content={"title": "Disk full on db1", "body": "Disk at 91% on db1"})


async def _drive(count: int, concurrency: int, one: Any) -> float:
    """messages/s of `count` calls of one(i), `concurrency` at a time; every call must succeed."""
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            await one(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - t0)


async def bench_sendgrid(count: int, concurrency: int) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sendgrid_standin.py"), KEY],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().decode().strip()
        session = make_http_session()
        try:
            adapter = build_adapter("p", _provider(f'type = "sendgrid"\napi_key = "{KEY}"\n'
                                                   f'from = "alerts@example.com"\nbase_url = "{base}"'),
                                    AdapterContext(http_session=session))

            async def routingd(i: int) -> None:
                out = await adapter.send(_req(i))
                assert out.status == 202 and out.provider_message_id, out

            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            body = json.dumps(adapter.body(_req(0), "bob@example.org")).encode()   # type: ignore[attr-defined]

            async def raw(i: int) -> None:
                async with session.post(f"{base}/v3/mail/send", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 202

            await _drive(min(200, count), concurrency, raw)          # warm both up
            await _drive(min(200, count), concurrency, routingd)
            baseline = await _drive(count, concurrency, raw)
            subject = await _drive(count, concurrency, routingd)
            return subject, baseline
        finally:
            await session.close()
    finally:
        proc.terminate()
        proc.wait(10)


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


async def bench_smtp(count: int, concurrency: int, pool_size: int) -> tuple[float, float]:
    from daemon_process import free_port

    srv = Controller(_Sink(), hostname="127.0.0.1", port=free_port())
    srv.start()
    try:
        adapter = build_adapter("p", _provider(f'type = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n'
                                               f'from = "alerts@example.com"\npool_size = {pool_size}'), AdapterContext())

        async def routingd(i: int) -> None:
            out = await adapter.send(_req(i))
            assert out.status == 200, out

        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = "Disk full on db1", "alerts@example.com", "bob@example.org"
        msg.set_content("Disk at 91% on db1")
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, start_tls=False, local_hostname="localhost")
        await client.connect()

        async def raw(i: int) -> None:
            await client.send_message(msg)

        try:
            await _drive(min(100, count), 1, raw)
            await _drive(min(100, count), concurrency, routingd)
            baseline = await _drive(count, 1, raw)
            subject = await _drive(count, concurrency, routingd)
        finally:
            await client.quit()
            await adapter.close()
        return subject, baseline
    finally:
        srv.stop()


def _line(name: str, subject: float, baseline: float) -> bool:
    r = subject / baseline
    ok = r >= TARGET
    print(f"{name:9} routingd {subject:8.0f} msg/s   raw {baseline:8.0f} msg/s   ratio {r:.2f}  "
          f"(target >= {TARGET}) {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--pool-size", type=int, default=4)
    args = ap.parse_args()
    sg = asyncio.run(bench_sendgrid(args.count, args.concurrency))
    smtp = asyncio.run(bench_smtp(args.count, args.pool_size, args.pool_size))
    ok = _line("sendgrid", *sg)
    ok = _line("smtp", *smtp) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
