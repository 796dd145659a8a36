"""systemd's sd_notify protocol without a dependency: one AF_UNIX datagram per notification.

This is what systemd's own self-contained example (sd_notify(3), "NOTES") does: read
$NOTIFY_SOCKET, which is either a filesystem path ("/run/systemd/notify") or an abstract socket
name ("@..."; the "@" stands for a leading NUL byte), and send "KEY=VALUE\\n..." datagrams to it.

    notifier = Notifier.from_env()          # a no-op when NOTIFY_SOCKET is unset
    notifier.ready("serving 127.0.0.1:8080, config 3f2a...")
    notifier.reloading()                    # RELOADING=1 + MONOTONIC_USEC (Type=notify-reload)
    notifier.ready("reload failed; still serving config 3f2a...")
    notifier.stopping()
    asyncio.create_task(run_watchdog(notifier))   # WATCHDOG=1 every WATCHDOG_USEC/2, if set

Sending never raises: a daemon must not die because its supervisor went away. The first failure
is logged as a warning, later ones at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Mapping

from .errors import RoutingdError

log = logging.getLogger("routingd.sdnotify")

# A datagram to PID 1 is local and tiny; bound the rare case of a full receive queue so the
# event loop is never blocked for long.
SEND_TIMEOUT_S = 1.0


class NotifyAddressError(RoutingdError, ValueError):
    """$NOTIFY_SOCKET holds something that is neither an absolute path nor an @abstract name."""


def socket_address(value: str) -> str | bytes:
    """The sockaddr for a $NOTIFY_SOCKET value: a path, or b"\\0name" for "@name"."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    raise NotifyAddressError(
        f"NOTIFY_SOCKET={value!r} is not supported: expected an absolute path or an @abstract name")


def one_line(text: str) -> str:
    """STATUS= must be one line: fold newlines and runs of blanks into single spaces."""
    return " ".join(text.split())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify messages to one socket; every method is a no-op when disabled."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sockaddr: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if address:
            try:
                self._sockaddr = socket_address(address)
            except NotifyAddressError as e:
                self._warn(str(e))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sockaddr is not None

    # ---------------------------------------------------------------- the protocol messages

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", status=status)

    def reloading(self, status: str | None = None) -> bool:
        """Type=notify-reload: say a reload started, stamped with CLOCK_MONOTONIC; send
        ready() when it is over (whether it succeeded or not)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", status=status)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", status=status)

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start-up/reload/stop (EXTEND_TIMEOUT_USEC=)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    # ---------------------------------------------------------------- transport

    def notify(self, *fields: str, status: str | None = None) -> bool:
        """Send the fields (and STATUS=) as one datagram; True if it was sent."""
        if self._sockaddr is None:
            return False
        lines = list(fields)
        if status is not None:
            lines.append(f"STATUS={one_line(status)}")
        if not lines:
            return False
        data = "\n".join(lines).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(data, self._sockaddr)
        except OSError as e:
            self._warn(f"cannot notify systemd at {self.address}: {e.strerror or e}")
            self._close_socket()
            return False
        return True

    def close(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _warn(self, msg: str) -> None:
        if self._warned:
            log.debug("%s", msg)
        else:
            self._warned = True
            log.warning("%s (further notify errors are logged at debug level)", msg)

    def __repr__(self) -> str:
        return f"Notifier({self.address!r})"


# -------------------------------------------------------------------- watchdog


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if no watchdog is
    requested for this process (unset, not a positive integer, or WATCHDOG_PID names another
    process, as sd_watchdog_enabled(3) specifies)."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("ignoring watchdog: WATCHDOG_PID=%r is not a process id", wpid)
            return None
    return usec / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float | None = None) -> None:
    """Ping WATCHDOG=1 every `interval` seconds (default: watchdog_interval()) until cancelled.

    It runs on the event loop on purpose: if the loop is stuck, the pings stop and systemd
    restarts the service. Returns at once when no watchdog is requested."""
    if interval is None:
        interval = watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
