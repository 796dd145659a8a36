"""Faults the daemon must survive or refuse clearly, on real processes, sockets and files.

  * providers that misbehave: bytes that are not HTTP, a 2xx with a garbage or huge body,
    a body cut short, a connection reset, a junk Retry-After, a closed port, and one slower
    than every timeout (provider, channel and message deadlines all fire);
  * the state file: the disk refusing writes at start and while running (RLIMIT_FSIZE: the
    kernel refuses to grow files, as on a full disk; root is not exempt), a directory that
    cannot be written (under /proc, where not even root creates files), a file where a
    directory is expected, a corrupt, truncated or half-zeroed SQLite file, a file locked by
    another routingd or by another SQLite program -- each a clear line and exit 1;
  * receipts for attempts that do not exist (404, the daemon carries on);
  * wall-clock jumps: in-flight deadlines follow the monotonic clock (a jump of the wall
    clock neither fires nor postpones them), and across a restart the stored absolute
    deadlines are read against the wall clock.
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from daemon_process import DaemonProcess, StandinLoop, free_port, routingd_command, serving, ts
from provider_standin import ProviderStandin

from routingd.daemon.core.policy import parse_policy
from routingd.daemon.core.request import SendRequest
from routingd.daemon.metrics import Metrics
from routingd.daemon.runtime import Router
from routingd.daemon.store import Store


# --------------------------------------------------------------------------- misbehaving providers

# name -> stand-in script; each has its own channel [name, "ok_<name>"] and route r_<name>
FAULTS: dict[str, list[dict[str, Any]]] = {
    "garbage": [{"garbage": True}],
    "reset": [{"reset": True}],
    "truncated": [{"truncated": True}],
    "junkbody": [{"status": 200, "body": "\x00\xff not json {{{", "headers": {"Content-Type": "application/json"}}],
    "hugebody": [{"status": 200, "body": "y" * (4 * 1024 * 1024)}],
    "junkretry": [{"status": 429, "retry_after": "banana"}],
    "pastdate": [{"status": 503, "retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}],
}

SLOW_ROUTE = """
[providers.slow1]
type = "http"
url = "{slow1}"
[providers.slow2]
type = "http"
url = "{slow2}"
[providers.slow3]
type = "http"
url = "{slow3}"
[channels.cslow]
providers = ["slow1", "slow2"]
timeout = "1200ms"
[channels.cslow_next]
providers = ["slow3"]
[routes.rslow]
channels = ["cslow", "cslow_next"]
timeouts = {{ message = "2s" }}
"""


def faults_config(urls: dict[str, str], closed_port_url: str) -> str:
    lines = ['version = 1', '[daemon]', 'grace = "200ms"',
             '[timeouts]', 'provider = "800ms"', 'channel = "10s"', 'message = "20s"', '']
    for name in [*FAULTS, "closed"]:
        url = closed_port_url if name == "closed" else urls[name]
        lines += [f'[providers.{name}]', 'type = "http"', f'url = "{url}"', 'breaker = false',
                  f'[providers.ok_{name}]', 'type = "http"', f'url = "{urls["ok"]}"',
                  f'[channels.c_{name}]', f'providers = ["{name}", "ok_{name}"]',
                  f'[routes.r_{name}]', f'channels = ["c_{name}"]', '']
    lines += ['[routes.default]', 'channels = ["c_reset"]']
    return "\n".join(lines) + SLOW_ROUTE.format(**urls)


def closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}/send"     # nothing listens there: connection refused


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, standins: StandinLoop) -> Iterator[tuple[DaemonProcess, dict[str, Any]]]:
    s = {name: standins.standin(script) for name, script in FAULTS.items()}
    s["ok"] = standins.standin([{"status": 200}])
    for name in ("slow1", "slow2", "slow3"):
        s[name] = standins.standin([{"delay": 60}])            # slower than every timeout
    d = DaemonProcess(tmp_path_factory.mktemp("faults"), faults_config({k: v.url for k, v in s.items()},
                                                                       closed_port()))
    with serving(d):
        yield d, s


@pytest.mark.parametrize("fault", ["garbage", "reset", "truncated", "closed"])
def test_a_provider_that_breaks_the_connection_is_a_network_failure_and_fails_over(
        world: tuple[DaemonProcess, dict[str, Any]], fault: str) -> None:
    d, _ = world
    st = d.wait_status(d.send({"to": {"email": "a@example.com"}, "route": f"r_{fault}"}), "delivered")
    first, second = st["attempts"]
    assert (first["provider"], first["outcome"], first["status_code"]) == (fault, "network", None)
    assert first["detail"]                                  # what went wrong, in words
    assert (second["provider"], second["outcome"]) == (f"ok_{fault}", "delivered")
    assert d.get("/healthz").status == 200


@pytest.mark.parametrize("fault", ["junkbody", "hugebody"])
def test_a_2xx_with_a_garbage_or_huge_body_is_delivered(world: tuple[DaemonProcess, dict[str, Any]],
                                                       fault: str) -> None:
    d, _ = world
    st = d.wait_status(d.send({"to": {"email": "a@example.com"}, "route": f"r_{fault}"}), "delivered")
    assert [(a["provider"], a["outcome"], a["status_code"]) for a in st["attempts"]] == [(fault, "delivered", 200)]


def test_junk_or_past_retry_after_is_ignored_not_trusted(world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, _ = world
    for fault, code in (("junkretry", 429), ("pastdate", 503)):
        st = d.wait_status(d.send({"to": {"email": "a@example.com"}, "route": f"r_{fault}"}), "delivered")
        assert [(a["provider"], a["status_code"]) for a in st["attempts"]] == [(fault, code), (f"ok_{fault}", 200)]


def test_a_provider_slower_than_every_timeout_meets_each_deadline_in_turn(
        world: tuple[DaemonProcess, dict[str, Any]], standins: StandinLoop) -> None:
    """slow1 is cut at its 800ms provider timeout, slow2 at the 1.2s channel deadline, slow3 at
    the 2s message deadline: the message expires, every request was abandoned by the daemon."""
    d, s = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "rslow"})
    st = d.wait_status(mid, "expired", timeout=15)
    a1, a2, a3 = st["attempts"]
    assert [a["provider"] for a in (a1, a2, a3)] == ["slow1", "slow2", "slow3"]
    accepted, message_deadline = ts(st["accepted_at"]), ts(st["message_deadline"])
    assert message_deadline == pytest.approx(accepted + 2.0, abs=0.002)
    assert ts(a1["deadline"]) == pytest.approx(ts(a1["started_at"]) + 0.8, abs=0.002)      # provider
    assert ts(a2["deadline"]) == pytest.approx(ts(a1["started_at"]) + 1.2, abs=0.002)      # channel
    assert ts(a3["deadline"]) == pytest.approx(message_deadline, abs=0.002)                # message
    for a in (a1, a2, a3):
        assert a["outcome"] in ("timeout", "cancelled") and a["status_code"] is None
        assert ts(a["ended_at"]) >= ts(a["deadline"]) - 0.001          # nothing was cut early
    assert ts(st["finished_at"]) >= message_deadline - 0.001
    for name in ("slow1", "slow2", "slow3"):                           # the daemon hung up on each
        reqs = standins.call(s[name].wait_for(1, finished=True))
        assert reqs[0].finished == "cancelled"


def test_receipts_for_attempts_that_do_not_exist_are_404_and_harmless(
        world: tuple[DaemonProcess, dict[str, Any]]) -> None:
    d, _ = world
    mid = d.send({"to": {"email": "a@example.com"}, "route": "r_junkbody"})
    st = d.wait_status(mid, "delivered")
    real = st["attempts"][0]["attempt_id"]
    for provider, attempt_id in (("junkbody", f"{mid}.1.99"), ("junkbody", f"{mid}.9.1"),
                                 ("junkbody", "nosuchmessage.1.1"), ("junkbody", "x"),
                                 ("ok_junkbody", real),                   # another provider's attempt
                                 ("nosuchprovider", real)):
        r = d.post(f"/v1/receipts/{provider}", {"attempt_id": attempt_id, "status": "delivered"})
        assert r.status == 404, (provider, attempt_id, r.body)
        assert r.json()["error"]
    # the real attempt of a finished message: a late receipt, recorded, nothing else changes
    r = d.post("/v1/receipts/junkbody", {"attempt_id": real, "status": "failed"})
    assert r.status == 200
    after = d.status(mid)
    assert after["status"] == "delivered" and after["attempts"] == st["attempts"]
    assert any(e["type"] == "late_receipt" for e in after["events"])
    assert d.get("/healthz").status == 200


# --------------------------------------------------------------------------- the state file at start

SANDBOX = """
version = 1
[daemon]
grace = "200ms"
[providers.fast]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["fast"]
[routes.default]
channels = ["email"]
"""


def serve_fails(tmp_path: Path, state: str, preexec: Callable[[], None] | None = None, timeout: float = 30) -> str:
    """Run `routingd serve` on `state`; assert exit 1, no traceback; return its stderr."""
    cfg = tmp_path / "routing.toml"
    cfg.write_text(SANDBOX)
    proc = subprocess.run([*routingd_command(), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                           "--state", state], capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "listening on" not in out, out
    return proc.stderr


def one_line_about(stderr: str, path: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(path), lines[0]
    return lines[0]


def test_disk_refusing_writes_at_start_is_a_clear_error(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    line = one_line_about(serve_fails(tmp_path, state, preexec=lambda: resource.setrlimit(
        resource.RLIMIT_FSIZE, (1024, 1024))), state)
    assert "refused a write" in line and "check free space" in line


def test_unwritable_and_impossible_state_locations_are_clear_errors(tmp_path: Path) -> None:
    line = one_line_about(serve_fails(tmp_path, "/proc/routingd-state.db"), "/proc/routingd-state.db")
    assert "write access" in line
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    state = str(afile / "state.db")
    line = one_line_about(serve_fails(tmp_path, state), state)
    assert f"{afile} is a file, not a directory" in line
    line = one_line_about(serve_fails(tmp_path, str(tmp_path)), str(tmp_path))
    assert "is a directory" in line


def _store_with_messages(path: Path, n: int = 300) -> None:
    async def main() -> None:
        policy = parse_policy(SANDBOX, "routing.toml", env={})
        router = Router(policy, Store(str(path)), Metrics())
        await router.start()
        await router.stop(0)
        store = Store(str(path))
        await store.open()
        from routingd.daemon.store import MessageRow
        req = SendRequest.model_validate({"message": {"to": {"email": "a@example.com"}}}).model_dump_json()
        now = time.time()
        for i in range(n):
            await store.insert_message(MessageRow(f"m{i:05d}", req, "default", policy.version, "delivered", now,
                                                  now + 60, now, now), 86400, now)
        await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("damage", ["header", "middle", "truncated", "zeroed"])
def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "state.db"
    _store_with_messages(path)
    data = path.read_bytes()
    assert len(data) > 64 * 1024
    damaged = {"header": b"X" * 100 + data[100:],
               "middle": data[:8192] + b"\xde\xad\xbe\xef" * 2048 + data[16384:],
               "truncated": data[:len(data) // 2],
               "zeroed": data[:4096] + b"\0" * (len(data) - 4096)}[damage]
    path.write_bytes(damaged)
    stderr = serve_fails(tmp_path, str(path))
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith(str(path)) and "corrupt" in last and "move the file aside" in last, stderr


def test_a_state_file_in_use_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    d = DaemonProcess(tmp_path / "first", SANDBOX, state_path=state)
    with d:
        line = one_line_about(serve_fails(tmp_path, str(state)), str(state))
        assert "in use by another routingd process" in line
        assert d.stop() == 0
    holder = sqlite3.connect(state, isolation_level=None)       # another program, not routingd
    holder.execute("BEGIN EXCLUSIVE")
    try:
        line = one_line_about(serve_fails(tmp_path, str(state)), str(state))
        assert "locked by another process" in line
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --------------------------------------------------------------------------- the disk fills up while running


@dataclass
class PipedDaemon(DaemonProcess):
    """A DaemonProcess whose output goes through a pipe rather than a file, so that a file-size
    limit put on the daemon refuses its database writes but not its log."""

    _out: list[str] = field(default_factory=list, init=False)

    def spawn(self) -> subprocess.Popen[bytes]:
        import os

        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = ""
        proc = self.proc
        out = self._out = []                    # this run's output only (as log_path is per run)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.append(line.decode(errors="replace"))

        threading.Thread(target=pump, daemon=True).start()
        return self.proc

    def log_text(self) -> str:
        return "".join(self._out)


def test_disk_refusing_writes_while_running_answers_503_then_recovers(tmp_path: Path) -> None:
    d = PipedDaemon(tmp_path, SANDBOX)
    with d:
        first = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(first, "delivered")
        hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (1, hard))       # no file may grow past 1 byte
        try:
            for _ in range(3):
                r = d.post("/v1/send", {"message": {"to": {"email": "b@example.com"}}})
                assert r.status == 503, r.body
                assert "state store" in r.json()["error"] and int(r.header("Retry-After") or "0") >= 1
            assert d.get("/healthz").status == 200
            assert d.status(first)["status"] == "delivered"            # reads still work
        finally:
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (hard, hard))
        mid = d.send({"to": {"email": "c@example.com"}})                # space again: accepted, delivered
        d.wait_status(mid, "delivered")
        assert d.stop() == 0
        log = d.log_text()
        d.start()                                                       # and both are in the store
        assert d.status(first)["status"] == "delivered"
        assert d.status(mid)["status"] in ("delivered", "pending")
        d.wait_status(mid, "delivered")
        assert d.stop() == 0
    assert "Traceback" not in log + d.log_text()
    assert "cannot accept a message" in log and "refused a write" in log


# --------------------------------------------------------------------------- clock jumps


class WallClock:
    """time.time() shifted by `offset` seconds: what an NTP step or `date -s` does to a process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)


JUMP_POLICY = """
version = 1
[timeouts]
provider = "{provider}"
channel = "1m"
message = "{message}"
[providers.hang]
type = "http"
url = "{hang}"
breaker = false
[providers.ok]
type = "http"
url = "{ok}"
[channels.email]
providers = ["hang", "ok"]
[routes.default]
channels = ["email"]
"""


def arun(fn: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


async def wait_for_status(router: Router, mid: str, want: str, timeout: float = 10) -> dict[str, Any]:
    end = asyncio.get_running_loop().time() + timeout
    while True:
        st = router.status(mid)
        assert st is not None
        if st["status"] == want:
            return st
        assert st["status"] == "pending", st
        assert asyncio.get_running_loop().time() < end, st
        await asyncio.sleep(0.01)


def send_request() -> SendRequest:
    return SendRequest.model_validate({"message": {"to": {"email": "a@example.com"}}})


@pytest.mark.parametrize("jump_s", [3600.0, -3600.0])
def test_a_wall_clock_jump_does_not_move_in_flight_deadlines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            jump_s: float) -> None:
    """With the attempt in flight the wall clock jumps an hour. Forward, a wall-clock deadline
    would expire the 1-minute message at once; backward, it would hold the 300ms attempt for an
    hour. The attempt is cut at 300ms of monotonic time and the backup delivers."""
    wall = WallClock(monkeypatch)

    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as hang, ProviderStandin([{"status": 200}]) as ok:
            policy = parse_policy(JUMP_POLICY.format(provider="300ms", message="1m", hang=hang.url, ok=ok.url),
                                  "routing.toml", env={})
            router = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await router.start()
            try:
                mid = (await router.submit(send_request())).message_id
                await hang.wait_for(1)
                wall.offset = jump_s
                st = await wait_for_status(router, mid, "delivered")
                first = st["attempts"][0]
                assert first["outcome"] == "timeout"
                # the attempt ran 300ms on the daemon's clock, whatever the wall clock did
                assert ts(first["ended_at"]) - ts(first["started_at"]) == pytest.approx(0.3, abs=0.25)
                assert ts(st["message_deadline"]) - ts(st["accepted_at"]) == pytest.approx(60, abs=0.002)
                assert (await hang.wait_for(1, finished=True))[0].finished == "cancelled"
            finally:
                await router.stop(0)

    arun(main)


def test_across_a_restart_deadlines_are_wall_clock_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store keeps absolute deadlines. A restart after the wall clock moved past a message's
    deadline expires it; one where the wall clock moved back keeps the same absolute deadline
    (so the message has that much more time, not a fresh timeout)."""
    wall = WallClock(monkeypatch)

    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as hang:
            text = JUMP_POLICY.format(provider="1m", message="5s", hang=hang.url, ok=hang.url)
            policy = parse_policy(text, "routing.toml", env={})

            async def run_once(stop_when: Callable[[Router], Awaitable[None]]) -> None:
                router = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
                await router.start()
                try:
                    await stop_when(router)
                finally:
                    await router.stop(0)

            ids: list[str] = []

            async def accept(router: Router) -> None:
                for _ in range(2):
                    ids.append((await router.submit(send_request())).message_id)
                await hang.wait_for(2)

            await run_once(accept)
            original = {}

            async def read_deadlines(router: Router) -> None:
                for mid in ids:
                    st = router.status(mid)
                    assert st is not None and st["status"] == "pending"
                    original[mid] = st["message_deadline"]

            wall.offset = -3600.0               # the wall clock went back an hour while down
            await run_once(read_deadlines)
            wall.offset = +3600.0               # and then an hour forward: both are past their deadline

            async def expired(router: Router) -> None:
                for mid in ids:
                    st = await wait_for_status(router, mid, "expired", timeout=5)
                    assert st["message_deadline"] == original[mid]
                    ev = [e for e in st["events"] if e["type"] == "message_deadline"]
                    assert ev and ev[-1].get("while") == "routingd was not running"

            await run_once(expired)

    arun(main)


def test_the_longest_policy_timeout_renders_and_dates_past_9999_saturate(tmp_path: Path) -> None:
    """A message timeout just under 1000 years (the longest a duration may be) gives a deadline in the
    31st century, shown as such. A date past year 9999 (a datetime cannot hold it) would read as
    the last representable one instead of failing the status."""
    from routingd.daemon.runtime import rfc3339

    text = SANDBOX.replace("[providers.fast]", '[timeouts]\nmessage = "364999d"\n[providers.fast]')

    async def main() -> None:
        router = Router(parse_policy(text, "routing.toml", env={}), Store(str(tmp_path / "state.db")), Metrics())
        await router.start()
        try:
            mid = (await router.submit(send_request())).message_id
            st = await wait_for_status(router, mid, "delivered")
            assert st["message_deadline"].startswith("30")
            assert ts(st["message_deadline"]) - ts(st["accepted_at"]) == pytest.approx(364999 * 86400, abs=1)
        finally:
            await router.stop(0)

    arun(main)
    assert rfc3339(1e20) == "9999-12-31T23:59:59.999Z"
    assert rfc3339(-1e20) == "0001-01-01T00:00:00.000Z"
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z" and rfc3339(None) is None
