"""routingd.daemon.sdnotify against a real AF_UNIX datagram socket (a path and an abstract name)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from routingd.daemon.sdnotify import (Notifier, monotonic_usec, one_line, run_watchdog, socket_address,
                             watchdog_interval)

REPO = Path(__file__).resolve().parent.parent


class Receiver:
    """The systemd side: a bound AF_UNIX datagram socket that collects notifications."""

    def __init__(self, env_value: str, sockaddr: str | bytes) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sockaddr)

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # a short directory: sun_path holds at most 107 bytes
    d = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(d, "notify")
    r = Receiver(path, path)
    yield r
    r.close()
    os.unlink(path)
    os.rmdir(d)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"routingd-test-{uuid.uuid4().hex}"
    r = Receiver("@" + name, b"\0" + name.encode())
    yield r
    r.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, path_receiver: Receiver, abstract_receiver: Receiver) -> Receiver:
    return path_receiver if request.param == "path" else abstract_receiver


def test_messages_arrive_in_order(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value})
    assert n.enabled
    before = monotonic_usec()
    assert n.ready("serving 127.0.0.1:8080")
    assert n.reloading()
    after = monotonic_usec()
    assert n.ready("config abc123")
    assert n.status("line one\nline two\t  end")
    assert n.watchdog()
    assert n.stopping()
    msgs = [receiver.recv() for _ in range(6)]
    assert msgs[0] == "READY=1\nSTATUS=serving 127.0.0.1:8080"
    first, second = msgs[1].split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert msgs[2:] == ["READY=1\nSTATUS=config abc123", "STATUS=line one line two end",
                        "WATCHDOG=1", "STOPPING=1"]
    assert receiver.pending() == []
    n.close()


def test_a_real_process_notifies_from_its_environment(abstract_receiver: Receiver) -> None:
    code = ("from routingd.daemon.sdnotify import Notifier\n"
            "n = Notifier.from_env()\n"
            "assert n.ready('up') and n.stopping()\n")
    env = {**os.environ, "NOTIFY_SOCKET": abstract_receiver.env_value}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)
    assert abstract_receiver.recv() == "READY=1\nSTATUS=up"
    assert abstract_receiver.recv() == "STOPPING=1"


def test_no_op_without_notify_socket(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    with caplog.at_level(logging.DEBUG, logger="routingd.sdnotify"):
        assert n.ready("x") is False
        assert n.reloading() is False
        assert n.stopping() is False
        assert n.watchdog() is False
    assert caplog.records == []
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled is False


def test_errors_never_raise_and_warn_once(caplog: pytest.LogCaptureFixture, path_receiver: Receiver) -> None:
    missing = path_receiver.env_value + "-gone"
    n = Notifier.from_env({"NOTIFY_SOCKET": missing})
    with caplog.at_level(logging.DEBUG, logger="routingd.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and missing in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2


def test_recovers_when_the_socket_comes_back(path_receiver: Receiver) -> None:
    n = Notifier(path_receiver.env_value)
    assert n.ready()
    path_receiver.close()
    os.unlink(path_receiver.env_value)
    assert n.watchdog() is False             # supervisor gone: no exception
    again = Receiver(path_receiver.env_value, path_receiver.env_value)
    path_receiver.sock = again.sock           # the fixture cleans this one up
    assert n.watchdog() is True
    assert again.recv() == "WATCHDOG=1"


def test_bad_address_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="routingd.sdnotify"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"})
        assert n.ready() is False
    assert not n.enabled
    assert "relative/notify" in caplog.text


def test_socket_address_and_one_line() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    with pytest.raises(ValueError):
        socket_address("@")
    assert one_line("  a\r\nb  c\n") == "a b c"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_checks_this_process_by_default() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 1.0
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert watchdog_interval(env) is None


def test_run_watchdog_pings_from_the_loop_until_cancelled(abstract_receiver: Receiver) -> None:
    n = Notifier(abstract_receiver.env_value)

    async def main() -> None:
        task = asyncio.create_task(run_watchdog(n, interval=0.02))
        received: list[str] = []
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            received += abstract_receiver.pending()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert received[:3] == ["WATCHDOG=1"] * 3

    asyncio.run(main())


def test_run_watchdog_returns_at_once_without_watchdog(abstract_receiver: Receiver,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    # no WATCHDOG_USEC: nothing to do
    asyncio.run(asyncio.wait_for(run_watchdog(Notifier(abstract_receiver.env_value)), 5))
    # a watchdog but no notify socket: nothing to do either
    asyncio.run(asyncio.wait_for(run_watchdog(Notifier(None), interval=0.01), 5))
    assert abstract_receiver.pending() == []


def test_run_watchdog_reads_the_environment(abstract_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")      # a ping every 20 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier(abstract_receiver.env_value)

    async def main() -> None:
        task = asyncio.create_task(run_watchdog(n))
        try:
            msg = await asyncio.wait_for(asyncio.to_thread(abstract_receiver.recv, 5.0), 10)
        finally:
            task.cancel()
        assert msg == "WATCHDOG=1"

    asyncio.run(main())
