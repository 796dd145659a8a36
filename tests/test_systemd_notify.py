"""A real `routingd serve` process talking sd_notify to a test socket, as systemd would see it.

NOTIFY_SOCKET points at an AF_UNIX datagram socket bound by the test (a path, or an abstract
"@name"); every datagram the daemon sends is collected and checked in order: READY=1 once
listening, RELOADING=1 (+MONOTONIC_USEC) then READY=1 for every reload (also a rejected one,
whose STATUS says so), WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM and exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from routingd.daemon.sdnotify import monotonic_usec
from daemon_process import DaemonProcess

CONFIG = """version = 1
[daemon]
watch = {watch}
grace = "{grace}"
[timeouts]
provider = "{timeout}"
message = "10s"
[providers.fast]
type = "sandbox"
latency = "{latency}"
[channels.email]
providers = ["fast"]
[routes.default]
channels = ["email"]
"""


def config(watch: bool = False, grace: str = "1s", latency: str = "1ms", timeout: str = "2s",
           extra: str = "") -> str:
    return CONFIG.format(watch=str(watch).lower(), grace=grace, latency=latency, timeout=timeout) + extra


Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    fields = {}
    for line in datagram.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r} in {datagram!r}"
        fields[key] = value
    return fields


class NotifySocket:
    """The systemd side: a bound AF_UNIX datagram socket that collects notifications."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.received: list[Message] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def next(self, timeout: float = 10.0, watchdog: bool = False) -> Message:
        """The next message (WATCHDOG=1 pings are skipped unless `watchdog`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no notification within {timeout}s; so far: {self.received}")
            self.sock.settimeout(left)
            try:
                msg = parse(self.sock.recv(4096))
            except TimeoutError:
                continue
            self.received.append(msg)
            if watchdog or msg.get("WATCHDOG") != "1":
                return msg

    def pending(self) -> list[Message]:
        """Whatever is already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(parse(self.sock.recv(4096)))
        except BlockingIOError:
            pass
        self.received += out
        return out

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    d = tempfile.mkdtemp(prefix="sdn-")      # short: sun_path holds at most 107 bytes
    s = NotifySocket(os.path.join(d, "notify"))
    yield s
    s.close()
    os.rmdir(d)


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    s = NotifySocket(f"@routingd-test-{uuid.uuid4().hex}")
    yield s
    s.close()


def version(d: DaemonProcess) -> str:
    return d.get("/v1/config").json()["version"]


def reload_pair(n: NotifySocket, trigger: Callable[[], object]) -> tuple[Message, Message]:
    """Trigger a reload; the RELOADING=1 and READY=1 that follow, MONOTONIC_USEC checked against
    this process's own CLOCK_MONOTONIC before the trigger and after the READY=1."""
    before = monotonic_usec()
    trigger()
    reloading = n.next()
    ready = n.next()
    after = monotonic_usec()
    assert reloading.get("RELOADING") == "1", n.received
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after, (before, reloading, after)
    assert ready.get("READY") == "1", n.received
    return reloading, ready


def test_ready_reload_rejected_reload_and_stopping_in_order(tmp_path: Path, path_socket: NotifySocket) -> None:
    n = path_socket
    d = DaemonProcess(tmp_path, config(), env=n.env)
    with d:
        ready = n.next()
        v1 = version(d)
        assert ready == {"READY": "1", "STATUS": f"serving {d.url}, policy {v1}"}

        # a valid new file, SIGHUP (what systemctl reload sends under Type=notify-reload)
        d.write_config(config(extra='[routes.other]\nchannels = ["email"]\n'))
        _, ready = reload_pair(n, lambda: d.send_signal(signal.SIGHUP))
        v2 = version(d)
        assert v2 != v1
        assert ready["STATUS"] == f"serving policy {v2}"

        # an invalid file: still RELOADING=1 then READY=1, the STATUS says it failed
        d.write_config(config(extra='[routes.broken]\nchannels = ["nosuch"]\n'))
        _, ready = reload_pair(n, lambda: d.send_signal(signal.SIGHUP))
        assert ready["STATUS"].startswith("reload failed: "), ready
        assert "routes.broken.channels.0: unknown channel 'nosuch'" in ready["STATUS"]
        assert ready["STATUS"].endswith(f"; serving policy {v2}")
        assert version(d) == v2

        # POST /-/reload is the same reload, with the same notifications
        answers = []
        _, ready = reload_pair(n, lambda: answers.append(d.post("/-/reload")))
        assert answers[0].status == 422
        assert ready["STATUS"].startswith("reload failed: ") and ready["STATUS"].endswith(v2)
        d.write_config(config())
        _, ready = reload_pair(n, lambda: answers.append(d.post("/-/reload")))
        assert answers[1].status == 200 and answers[1].json()["version"] == v1
        assert ready["STATUS"] == f"serving policy {v1}"

        assert d.stop() == 0
        assert n.next() == {"STOPPING": "1", "STATUS": "stopping: in-flight attempts get 1s to finish"}
        assert n.pending() == []                      # nothing after STOPPING=1
    kinds = [next(iter(m)) for m in n.received]
    assert kinds == ["READY", *["RELOADING", "READY"] * 4, "STOPPING"], n.received


def test_abstract_socket_watchdog_and_a_file_change(tmp_path: Path, abstract_socket: NotifySocket) -> None:
    n = abstract_socket
    d = DaemonProcess(tmp_path, config(watch=True), env={**n.env, "WATCHDOG_USEC": "400000"})
    with d:
        first = n.next(watchdog=True)
        assert first["READY"] == "1", n.received         # READY=1 comes before any ping
        # pings every 0.2 s from the event loop: count them over a bounded window
        deadline = time.monotonic() + 3.0
        pings = 0
        while pings < 3 and time.monotonic() < deadline:
            msg = n.next(timeout=max(0.1, deadline - time.monotonic()), watchdog=True)
            assert msg == {"WATCHDOG": "1"}, n.received
            pings += 1
        assert pings >= 2

        # a file edit alone is a reload: RELOADING=1 then READY=1, pings go on around it
        v1 = version(d)
        _, ready = reload_pair(n, lambda: d.write_config(config(watch=True, extra="# edited\n")))
        v2 = version(d)
        assert v2 != v1 and ready["STATUS"] == f"serving policy {v2}"
        later = len([m for m in n.received if m.get("WATCHDOG")])
        deadline = time.monotonic() + 3.0
        while len([m for m in n.received if m.get("WATCHDOG")]) < later + 2:
            assert time.monotonic() < deadline, n.received
            n.next(timeout=max(0.1, deadline - time.monotonic()), watchdog=True)

        assert d.stop() == 0
        assert n.next().get("STOPPING") == "1"
        n.pending()
    others = [m for m in n.received if "WATCHDOG" not in m]
    assert [next(iter(m)) for m in others] == ["READY", "RELOADING", "READY", "STOPPING"], n.received


def test_a_reload_while_draining_sends_no_ready(tmp_path: Path, path_socket: NotifySocket) -> None:
    """After STOPPING=1, systemd must not see READY=1 (or RELOADING=1) again, even if a reload
    is asked for during the grace period."""
    n = path_socket
    d = DaemonProcess(tmp_path, config(grace="1s", latency="30s", timeout="30s"), env=n.env)
    with d:
        assert n.next()["READY"] == "1"
        mid = d.send({"to": {"email": "a@example.com"}})     # in flight for the whole grace period
        d.send_signal(signal.SIGTERM)
        assert n.next().get("STOPPING") == "1"
        r = d.post("/-/reload")                                # still answered while draining
        assert r.status == 200, r.body
        assert d.wait() == 0
        assert n.pending() == []
        assert mid
    assert [next(iter(m)) for m in n.received] == ["READY", "STOPPING"], n.received
