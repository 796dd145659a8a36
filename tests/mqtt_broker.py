"""A real mosquitto broker on a free loopback port, for tests.

    from mqtt_broker import mqtt_broker          # the fixture (or tests.mqtt_broker)

    def test_x(mqtt_broker):
        mqtt_broker.url          # "mqtt://127.0.0.1:PORT"
        mqtt_broker.stop()       # broker outage (SIGTERM; stop(hard=True) = SIGKILL)
        mqtt_broker.start()      # recovery on the SAME port
        mqtt_broker.pause()      # SIGSTOP: connections stay open, nothing is answered; resume()

    start_broker(tmp_path / "b", users={"routingd": "s3cret"})   # anonymous access off
    start_broker(tmp_path / "b", debug=True).packet_log()       # every packet the broker saw

`start_broker(directory)` is the plain function behind the fixture (tests/conftest.py makes both
fixtures available to every module). A missing mosquitto binary fails the test with the
command that installs it; it is never a skip.

Test clients of a broker: `subscriber(broker, *topics)` (an aiomqtt client subscribed at QoS 1),
`receive(client, n)` / `receive_until(client, done)` (bounded collection) and
`payload_json(message)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiomqtt
import pytest

from daemon_process import free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin")


class BrokerError(RuntimeError):
    """The broker could not be found or started; the message says what to do."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(_SEARCH))
    if not found:
        raise BrokerError("the mosquitto binary was not found (PATH, /usr/sbin, /usr/local/sbin); "
                          "install it with `sh tools/ensure-mosquitto.sh` (run by `make test`) "
                          "or your package manager (Debian/Ubuntu: apt-get install mosquitto)")
    return found


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One mosquitto process bound to 127.0.0.1:port; restartable on the same port."""

    host = "127.0.0.1"

    def __init__(self, binary: str, directory: Path, port: int, *, persistence: bool = False,
                 users: dict[str, str] | None = None, debug: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.persistence = persistence
        self.debug = debug
        self.users = dict(users or {})
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self.packet_log_file = directory / "mosquitto-debug.log"
        self.password_file = directory / "passwords"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {self.host}", f"allow_anonymous {'false' if self.users else 'true'}",
                 f"persistence {'true' if self.persistence else 'false'}", "log_dest stdout",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if self.debug:
            # Every packet: "Sending PUBLISH to ID (d0, q1, r0, m1, 'topic', ...)", "Received PUBACK
            # from ID (Mid: 1, RC:0)" -- what the broker saw, for tests of acknowledgements.
            # mosquitto buffers its stdout; a log file of its own is written line by line.
            lines += ["log_type debug", f"log_dest file {self.packet_log_file}"]
        if self.persistence:
            # Sessions and queued QoS 1 messages survive stop()/start() (saved on SIGTERM).
            lines += [f"persistence_location {self.directory}/", "autosave_interval 0"]
        if self.users:
            self._write_password_file()
            lines.append(f"password_file {self.password_file}")
        if os.geteuid() == 0:
            lines.append("user root")   # mosquitto would otherwise drop to user "mosquitto"
        self.config_file.write_text("\n".join(lines) + "\n")

    def _write_password_file(self) -> None:
        """user:password pairs hashed by mosquitto_passwd (next to the mosquitto binary)."""
        tool = shutil.which("mosquitto_passwd") or shutil.which(
            "mosquitto_passwd", path=os.pathsep.join((str(Path(self.binary).parent), "/usr/bin", *_SEARCH)))
        if not tool:
            raise BrokerError("mosquitto_passwd was not found; it ships with mosquitto "
                              "(Debian/Ubuntu: apt-get install mosquitto)")
        self.password_file.write_text("")
        self.password_file.chmod(0o600)
        for user, password in self.users.items():
            done = subprocess.run([tool, "-b", str(self.password_file), user, password],
                                  capture_output=True, text=True, timeout=10)
            if done.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        """Start (or restart) the broker and wait, bounded, until it accepts connections."""
        if self.running:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen([self.binary, "-c", str(self.config_file)],
                                              stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _accepts(self.host, self.port):
                    return
                time.sleep(0.02)
            if self._proc.poll() is None:       # still running but never listening
                self.stop(hard=True)
                break
            # Exited (e.g. the port was briefly still bound): retry until the deadline.
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise BrokerError(f"mosquitto did not accept connections on {self.host}:{self.port} within "
                          f"{START_TIMEOUT_S:.0f}s; its log:\n{self.log_tail()}")

    def stop(self, *, hard: bool = False) -> None:
        """Stop the broker: SIGTERM (clean shutdown) or, with hard=True, SIGKILL (a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections open but answers nothing (no PUBACK)."""
        assert self._proc is not None and self.running, "the broker is not running"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self._proc is not None, "the broker is not running"
        self._proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def packet_log(self) -> str:
        """The packet log of a broker started with debug=True (written as it happens)."""
        assert self.debug, "start the broker with debug=True"
        try:
            return self.packet_log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"


def start_broker(directory: Path, *, persistence: bool = False, users: dict[str, str] | None = None,
                 debug: bool = False) -> Broker:
    """Start mosquitto on a free loopback port with its config/log under `directory`;
    `users` (name -> password) switches anonymous access off; `debug` logs every packet."""
    binary = find_mosquitto()
    directory.mkdir(parents=True, exist_ok=True)
    broker = Broker(binary, directory, free_port(), persistence=persistence, users=users, debug=debug)
    broker.start()
    return broker


def _broker_fixture(tmp_path: Path, persistence: bool) -> Iterator[Broker]:
    try:
        broker = start_broker(tmp_path / "mosquitto", persistence=persistence)
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop(hard=True)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto (persistence false) for one test; killed at the end."""
    yield from _broker_fixture(tmp_path, persistence=False)


@pytest.fixture
def mqtt_broker_persistent(tmp_path: Path) -> Iterator[Broker]:
    """Like mqtt_broker, but sessions and queued messages survive stop()/start()."""
    yield from _broker_fixture(tmp_path, persistence=True)


# --------------------------------------------------------------------------- test clients


@contextlib.asynccontextmanager
async def subscriber(broker: Broker, *topics: str, **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    """An aiomqtt client of `broker` (extra `kw` for aiomqtt.Client), subscribed at QoS 1."""
    async with aiomqtt.Client(broker.host, broker.port, **kw) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def receive_until(client: aiomqtt.Client, done: Callable[[list[aiomqtt.Message]], bool],
                        timeout: float = 8.0, what: str = "messages") -> list[aiomqtt.Message]:
    """Collect messages until `done(collected)` holds; AssertionError after `timeout` seconds."""
    got: list[aiomqtt.Message] = []

    async def collect() -> None:
        async for message in client.messages:
            got.append(message)
            if done(got):
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: not complete within {timeout}s; got "
                             f"{[(str(m.topic), m.payload) for m in got]}") from None
    return got


async def receive(client: aiomqtt.Client, n: int, timeout: float = 5.0) -> list[aiomqtt.Message]:
    """The next `n` messages (bounded)."""
    return await receive_until(client, lambda got: len(got) >= n, timeout, what=f"{n} message(s)")


def payload_json(message: aiomqtt.Message) -> Any:
    assert isinstance(message.payload, bytes)
    return json.loads(message.payload)
