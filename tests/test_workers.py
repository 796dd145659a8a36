"""`[daemon] workers = 2` (daemon/workers.py): one supervisor, two real `serve` workers sharing
one loopback port (SO_REUSEPORT) on a real PostgreSQL database.

Sends spread over both workers (each message's owner in the database names its process) and
every 202 is delivered; SIGHUP reloads both; SIGTERM stops all cleanly (exit 0); a worker killed
with -9 is restarted and its messages are taken over, none lost; with the SQLite store
`workers = 2` is refused by `serve` and `check` in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from daemon_process import DaemonProcess, StandinLoop, free_port, routingd_command, wait_until

CONFIG = """
version = 1
[daemon]
workers = 2
grace = "2s"
lease = "2s"
watch = false
[timeouts]
provider = "30s"
channel = "40s"
message = "{message}"
[providers.fast]
type = "http"
url = "{url}"
breaker = false
[channels.email]
providers = ["fast"]
[routes.default]
channels = ["email"]
"""

SUPERVISOR_RE = re.compile(r"with 2 workers \(pids (\d+), (\d+)\)")


@pytest.fixture
def supervised(tmp_path: Path, pg_url: str) -> Iterator[Any]:
    """Start a `workers = 2` daemon with a config; returns (daemon, worker pids). The whole
    process group is killed at the end, whatever the test did."""
    started: list[DaemonProcess] = []

    def start(config: str) -> tuple[DaemonProcess, list[int]]:
        d = DaemonProcess(tmp_path, config, env={"ROUTINGD_STORE": pg_url}, start_timeout=60)
        started.append(d)
        d.start()
        wait_until(lambda: SUPERVISOR_RE.search(d.log_text()), timeout=60, what="the supervisor's line")
        m = SUPERVISOR_RE.search(d.log_text())
        assert m is not None
        return d, [int(m.group(1)), int(m.group(2))]

    yield start
    for d in started:
        if d.proc is not None:
            try:
                os.killpg(d.proc.pid, signal.SIGKILL)    # start_new_session: the group is the supervisor's
            except ProcessLookupError:
                pass
            d.close()


def _owner_pids(pg_url: str, ids: list[str]) -> dict[str, int]:
    with psycopg.connect(pg_url) as c:
        rows = c.execute("SELECT id, owner FROM messages WHERE id = ANY(%s)", (ids,)).fetchall()
    return {mid: int(owner.split("/")[1]) for mid, owner in rows}       # host/pid/random (store/lease.py)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _key(r: Any) -> str:
    return r.json["message_id"] if isinstance(r.json, dict) and "message_id" in r.json else r.idempotency_key


def test_two_workers_share_the_sends_reload_on_sighup_and_stop_on_sigterm(
        supervised: Any, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"status": 200}])
    config = CONFIG.format(url=fast.url, message="60s")
    d, pids = supervised(config)
    ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(40)]     # a connection each
    for mid in ids:
        d.wait_status(mid, "delivered", timeout=30)
    standins.call(fast.wait_for(40, finished=True))
    assert len(fast.requests) == 40 and len({_key(r) for r in fast.requests}) == 40
    # both workers accepted some: a message is owned by the process that accepted it
    owners = Counter(_owner_pids(pg_url, ids).values())
    assert set(owners) == set(pids), (owners, pids)

    # SIGHUP to the supervisor: both workers reload and answer with the new version
    old = d.get("/readyz").json()["version"]
    d.write_config(config.replace('message = "60s"', 'message = "2m"'))
    d.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload (SIGHUP): 2 worker(s) serve policy" in d.log_text(), timeout=60,
               what="both workers' reload answers")
    text = d.log_text()
    for i in (0, 1):
        assert re.search(rf"worker {i}: reload \(SIGHUP\): now serving policy (\S+) \(was {old}\)", text), text
    new = re.search(r"reload \(SIGHUP\): 2 worker\(s\) serve policy (\S+)", text)
    assert new is not None and new.group(1) != old
    versions = {d.get("/readyz").json()["version"] for _ in range(20)}      # 20 connections, both workers
    assert versions == {new.group(1)}

    # SIGTERM: every worker drains and exits 0, then the supervisor exits 0
    assert d.stop(timeout=60) == 0
    assert not any(_alive(p) for p in pids)
    text = d.log_text()
    assert "stopped (2 workers)" in text
    assert text.count(": stopped") >= 2 and "Traceback" not in text     # each worker's own last line


def test_a_worker_killed_with_minus_9_is_restarted_and_its_messages_taken_over(
        supervised: Any, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"hold": True, "status": 200}])
    d, pids = supervised(CONFIG.format(url=fast.url, message="60s"))
    ids = [d.send({"to": {"email": f"u{i}@example.com"}}) for i in range(16)]
    standins.call(fast.wait_for(16))                    # every message has a call held at the provider
    owners = _owner_pids(pg_url, ids)
    assert set(owners.values()) == set(pids), owners
    victim = pids[0]
    lost = [mid for mid, p in owners.items() if p == victim]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"(pid {victim}) was killed by SIGKILL unexpectedly; restarting it" in d.log_text(),
               timeout=30, what="the supervisor's restart line")
    standins.call(fast.release())
    for mid in ids:                                     # none lost: taken over once the lease ran out
        st = d.wait_status(mid, "delivered", timeout=60)
        if mid in lost:
            assert [a["outcome"] for a in st["attempts"]] == ["cancelled", "delivered"]
        else:
            assert [a["outcome"] for a in st["attempts"]] == ["delivered"]
    # the killed worker's calls ended with it; one more call per message it held, none twice more
    standins.call(fast.wait_for(16 + len(lost), finished=True))
    calls = Counter(_key(r) for r in fast.requests)
    assert len(fast.requests) == 16 + len(lost)
    assert all(calls[mid] == (2 if mid in lost else 1) for mid in ids)
    assert victim not in set(_owner_pids(pg_url, ids).values())
    # the restarted worker listens again and takes sends
    wait_until(lambda: "worker 0 (pid" in d.log_text() and "listening again" in d.log_text(), timeout=60,
               what="worker 0 restarted")
    more = [d.send({"to": {"email": f"v{i}@example.com"}}) for i in range(4)]
    for mid in more:
        d.wait_status(mid, "delivered", timeout=30)
    assert d.stop(timeout=60) == 0
    assert "Traceback" not in d.log_text()


def test_workers_are_refused_with_the_sqlite_store(tmp_path: Path) -> None:
    """One SQLite file serves one process: `workers = 2` without `store` is refused in one line
    by `serve` and by `check`, never accepted and ignored; with ROUTINGD_STORE it is accepted."""
    d = DaemonProcess(tmp_path, CONFIG.replace('lease = "2s"\n', "").format(url="http://127.0.0.1:9/x",
                                                                             message="60s"),
                      listen=f"127.0.0.1:{free_port()}")
    d.spawn()
    assert d.wait(30) == 1
    text = d.log_text()
    assert len([x for x in text.splitlines() if "workers = 2 needs the PostgreSQL store" in x]) == 1, text
    assert "Traceback" not in text and "listening" not in text
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
    check = subprocess.run([*routingd_command(), "check", str(d.config_path)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1
    assert len([x for x in check.stderr.splitlines() if "workers = 2 needs the PostgreSQL store" in x]) == 1
    assert "Traceback" not in check.stderr
    env["ROUTINGD_STORE"] = "postgresql://routingd@127.0.0.1:9/x"      # checked, not connected to
    ok = subprocess.run([*routingd_command(), "check", str(d.config_path)], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_a_worker_that_cannot_open_the_database_fails_the_start_with_lines_naming_it(
        tmp_path: Path, pg_url: str) -> None:
    """A missing database: each worker's one line says so and names the worker (as its log
    lines do), the supervisor says which exited before listening, exit 1, no traceback."""
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    d = DaemonProcess(tmp_path, CONFIG.format(url="http://127.0.0.1:9/x", message="60s"),
                      env={"ROUTINGD_STORE": missing}, listen=f"127.0.0.1:{free_port()}")
    d.spawn()
    assert d.wait(60) == 1
    text = d.log_text()
    refused = [x for x in text.splitlines() if "no_such_database" in x and "does not exist" in x]
    assert refused and all(re.match(r"worker [01]: postgresql://", x) for x in refused), text
    assert "exited with 1 before listening" in text
    assert "Traceback" not in text and "listening on" not in text


def test_workers_with_an_mqtt_subscription_need_it_shared(tmp_path: Path) -> None:
    """N workers each subscribed to the send topic would each accept every MQTT send: refused
    by `check` unless the subscription is shared (or off)."""
    config = tmp_path / "routing.toml"
    base = CONFIG.format(url="http://127.0.0.1:9/x", message="60s")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_")}
    env["ROUTINGD_STORE"] = "postgresql://routingd@127.0.0.1:9/x"
    results = {}
    for name, table in (("plain", ""), ("shared", "shared_subscription = true\n"), ("off", "subscribe = false\n")):
        config.write_text(base.replace("[timeouts]", f'[daemon.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n{table}'
                                                      "[timeouts]"))
        results[name] = subprocess.run([*routingd_command(), "check", str(config)], env=env, capture_output=True,
                                       text=True, timeout=60)
    assert results["plain"].returncode == 1
    assert len([x for x in results["plain"].stderr.splitlines()
                if "every worker would take every MQTT send" in x]) == 1, results["plain"].stderr
    assert results["shared"].returncode == 0, results["shared"].stderr
    assert results["off"].returncode == 0, results["off"].stderr


class _CredSocket:
    """systemd's side of sd_notify, with the sender's pid of each datagram (SCM_CREDENTIALS)."""

    def __init__(self, path: Path) -> None:
        import socket
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.received: list[tuple[int, dict[str, str]]] = []

    def next(self, timeout: float = 60.0) -> tuple[int, dict[str, str]]:
        """The next (pid, fields), WATCHDOG=1 pings skipped."""
        import socket
        import struct
        import time
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no notification within {timeout}s; so far {self.received}"
            self.sock.settimeout(left)
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = next(struct.unpack("iII", d[:12])[0] for level, kind, d in anc
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n"))
            self.received.append((pid, fields))
            if fields.get("WATCHDOG") != "1":
                return pid, fields


def test_only_the_supervisor_notifies_systemd_ready_once_all_workers_listen(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"status": 200}])
    notify = _CredSocket(tmp_path / "notify.sock")
    d = DaemonProcess(tmp_path / "d", CONFIG.format(url=fast.url, message="60s"),
                      env={"ROUTINGD_STORE": pg_url, "NOTIFY_SOCKET": notify.path}, start_timeout=60)
    try:
        d.spawn()
        pid, msg = notify.next()
        assert pid == d.pid and msg.get("READY") == "1", msg
        # READY=1 comes after every worker listened (the supervisor's line names both)
        assert SUPERVISOR_RE.search(d.log_text()) is not None
        assert "with 2 workers" in msg.get("STATUS", "")
        d.send_signal(signal.SIGHUP)
        pid, msg = notify.next()
        assert pid == d.pid and msg.get("RELOADING") == "1" and "MONOTONIC_USEC" in msg
        pid, msg = notify.next()
        assert pid == d.pid and msg.get("READY") == "1" and "serving policy" in msg.get("STATUS", ""), msg
        assert "reload (SIGHUP): 2 worker(s) serve policy" in d.log_text()
        d.send_signal(signal.SIGTERM)
        pid, msg = notify.next()
        assert pid == d.pid and msg.get("STOPPING") == "1"
        assert d.wait(60) == 0
        assert {p for p, _ in notify.received} == {d.pid}       # no worker ever notified
    finally:
        if d.proc is not None:
            try:
                os.killpg(d.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.close()
        notify.sock.close()


def test_a_worker_that_keeps_dying_is_given_up_after_five_quick_deaths(
        supervised: Any, standins: StandinLoop) -> None:
    """Restarts are bounded: five deaths in a row, each soon after its start, and the supervisor
    gives up on that worker with one line; the other worker goes on serving; the stop then
    exits 1 (a worker did not end cleanly)."""
    fast = standins.standin([{"status": 200}])
    d, pids = supervised(CONFIG.format(url=fast.url, message="60s"))
    victim = pids[0]
    for start in range(2, 6):               # deaths 1-4 are restarted (0.5 s, 1 s, 2 s, 4 s later)
        os.kill(victim, signal.SIGKILL)
        pattern = re.compile(rf"worker 0 \(pid (\d+)\) listening again \(start {start}\)")
        wait_until(lambda: pattern.search(d.log_text()), timeout=90, what=f"worker 0's start {start}")
        m = pattern.search(d.log_text())
        assert m is not None
        victim = int(m.group(1))
    os.kill(victim, signal.SIGKILL)         # the fifth
    wait_until(lambda: "giving up on it" in d.log_text(), timeout=30, what="the give-up line")
    lines = [x for x in d.log_text().splitlines() if "giving up on it" in x]
    assert len(lines) == 1 and "worker 0" in lines[0] and "died 5 times in a row" in lines[0], lines
    assert _alive(pids[1])
    mid = d.send({"to": {"email": "a@example.com"}})            # worker 1 serves alone
    d.wait_status(mid, "delivered", timeout=30)
    assert d.stop(timeout=60) == 1
    assert "not cleanly: worker 0 killed by SIGKILL" in d.log_text()


def test_a_sigterm_while_the_workers_start_stops_them_all_cleanly(
        tmp_path: Path, standins: StandinLoop, pg_url: str) -> None:
    fast = standins.standin([{"status": 200}])
    d = DaemonProcess(tmp_path, CONFIG.format(url=fast.url, message="60s"), env={"ROUTINGD_STORE": pg_url})
    try:
        d.spawn()
        wait_until(lambda: "worker 0: " in d.log_text() or "worker 1: " in d.log_text(), timeout=60,
                   what="a worker's first line")
        d.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.log_tail()
        pids = [int(p) for p in re.findall(r"pid (\d+)", d.log_text())]
        assert not any(_alive(p) for p in pids)
        assert "Traceback" not in d.log_text()
    finally:
        if d.proc is not None:
            try:
                os.killpg(d.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.close()
