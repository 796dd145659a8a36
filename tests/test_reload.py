"""Hot reload of routing.toml on a real `routingd serve` process.

- a reload under concurrent sends fails no request, and accepted messages keep their snapshot;
- an invalid file keeps the old policy serving (and says so in /metrics and /v1/config);
- a file edit alone (no signal) is picked up: in place, editor-style rename, delete + re-create;
- so is an edit made while the daemon was still starting, before its file watch was in place.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from routingd.daemon.core.policy import parse_policy
from daemon_process import DaemonError, DaemonProcess, wait_until

# One route, one channel, two sandbox providers: the first hangs until its timeout, so every
# message fails over after 150 ms -- well after a reload that happens meanwhile. The provider
# names carry the policy's letter, so the attempts show which snapshot a message ran under.
POLICY = """version = 1
[daemon]
grace = "1s"
[timeouts]
provider = "2s"
message = "10s"
[providers.{x}1]
type = "sandbox"
fail = "hang"
timeout = "150ms"
breaker = false
[providers.{x}2]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["{x}1", "{x}2"]
[routes.default]
channels = ["email"]
"""

MESSAGE = {"to": {"email": "a@example.com"}}


def policy(x: str, extra: str = "") -> str:
    return POLICY.format(x=x) + extra


def config(d: DaemonProcess) -> dict[str, Any]:
    r = d.get("/v1/config")
    assert r.status == 200, r.body
    return r.json()


def wait_version(d: DaemonProcess, old: str, timeout: float = 5.0) -> str:
    wait_until(lambda: config(d)["version"] != old, timeout, f"a version other than {old}")
    return config(d)["version"]


def providers_of(status: dict[str, Any]) -> list[str]:
    return [a["provider"] for a in status["attempts"]]


# --------------------------------------------------------------------------- concurrent sends


def test_reloads_under_concurrent_sends_fail_no_request(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, policy("a"))
    with d:
        va = config(d)["version"]
        before = [d.send(MESSAGE) for _ in range(5)]          # in flight across every reload
        total = 300
        sent: list[tuple[str, str]] = []                       # (message_id, policy_version at accept)
        failures: list[str] = []

        def sender() -> None:
            for i in range(total):
                try:
                    mid = d.send(MESSAGE)
                    sent.append((mid, d.status(mid)["policy_version"]))
                except (DaemonError, OSError) as e:
                    failures.append(f"send {i}: {e}")

        t = threading.Thread(target=sender, name="sender")
        t.start()
        versions = {va}
        reloads = 0
        try:
            # alternate b/a files, each reloaded by SIGHUP or POST /-/reload (and, since the
            # watch is on, by the file change too), while the sender keeps going
            while t.is_alive() and reloads < 12:
                x = "b" if reloads % 2 == 0 else "a"
                d.write_config(policy(x))
                if reloads % 2 == 0:
                    d.send_signal(signal.SIGHUP)
                else:
                    r = d.post("/-/reload")
                    assert r.status == 200, r.body
                    versions.add(r.json()["version"])
                reloads += 1
                time.sleep(0.1)
        finally:
            t.join(60)
        assert not t.is_alive()
        assert failures == []
        assert len(sent) == total
        assert reloads >= 4, "the sender finished before the reloads had a chance"
        vb = parse_policy(policy("b"), str(d.config_path)).version
        assert versions == {va}                                # POST /-/reload always loaded "a"
        seen = {v for _, v in sent}
        assert seen == {va, vb}, "reloads happened while sending, so both policies took messages"

        for mid in before:
            st = d.wait_status(mid, "delivered")
            assert st["policy_version"] == va and providers_of(st) == ["a1", "a2"]
        for mid, v in sent:
            st = d.wait_status(mid, "delivered")
            assert st["policy_version"] == v                   # the snapshot it was accepted under
            x = "a" if v == va else "b"
            assert providers_of(st) == [f"{x}1", f"{x}2"], st  # ... and it failed over within it
        assert d.metric("routingd_messages_accepted_total") == total + len(before)
        assert d.metric("routingd_config_last_reload_successful") == 1.0
        assert "Traceback" not in d.log_text()
        assert d.stop() == 0


# --------------------------------------------------------------------------- invalid files


def test_an_invalid_file_keeps_the_old_policy_serving(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, policy("a"))
    with d:
        va = config(d)["version"]
        hash_a = d.metric("routingd_config_hash")
        assert d.metric("routingd_config_last_reload_successful") == 1.0
        ts_a = d.metric("routingd_config_last_reload_success_timestamp_seconds")

        bad_route = policy("a", '[routes.broken]\nchannels = ["nosuch"]\n')
        line = bad_route.splitlines().index('channels = ["nosuch"]') + 1      # PATH:LINE:COL of the element
        for broken, error in [
            (bad_route, f"{d.config_path}:{line}:13: routes.broken.channels.0: unknown channel 'nosuch'"),
            ("version = 1\n[providers.a1\n", f"{d.config_path}:2:14: (file): not valid TOML"),   # not even TOML
        ]:
            d.write_config(broken)                          # no signal: the watch sees it
            wait_until(lambda: config(d)["last_reload"]["errors"] != [] and
                       config(d)["last_reload"]["trigger"] == "file"
                       and any(error in e for e in config(d)["last_reload"]["errors"]),
                       timeout=5.0, what="the rejected reload")
            assert d.metric("routingd_config_last_reload_successful") == 0.0
            info = config(d)
            assert info["version"] == va and info["last_reload"]["ok"] is False
            assert d.metric("routingd_config_hash") == hash_a
            assert d.metric("routingd_config_last_reload_success_timestamp_seconds") == ts_a
            st = d.wait_status(d.send(MESSAGE), "delivered")   # still serving, the old policy
            assert st["policy_version"] == va and providers_of(st) == ["a1", "a2"]
            assert f"reload (file) rejected: {error}" in d.log_text()

        r = d.post("/-/reload")
        assert r.status == 422 and r.json()["details"]

        d.write_config(policy("b"))                         # fixed
        vb = wait_version(d, va)
        assert d.metric("routingd_config_last_reload_successful") == 1.0
        assert d.metric("routingd_config_hash") not in (None, hash_a)
        assert d.metric("routingd_config_last_reload_success_timestamp_seconds") > ts_a
        info = config(d)
        assert info["last_reload"]["ok"] is True and info["last_reload"]["errors"] == []
        st = d.wait_status(d.send(MESSAGE), "delivered")
        assert st["policy_version"] == vb and providers_of(st) == ["b1", "b2"]
        assert d.stop() == 0


# --------------------------------------------------------------------------- file edits alone


def test_a_file_edit_alone_is_picked_up(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, policy("a"))
    with d:
        info = config(d)
        v, loaded = info["version"], info["loaded_at"]

        # written in place (truncate + write, as `echo > file` or a naive editor does)
        d.config_path.write_text(policy("b"))
        v2 = wait_version(d, v)
        info = config(d)
        assert info["last_reload"]["trigger"] == "file" and info["loaded_at"] > loaded

        # editor-style save: write a temp file next to it, then rename it over the original
        tmp = d.config_path.parent / ".routing.toml.swp"
        tmp.write_text(policy("a", "# saved by an editor\n"))
        os.replace(tmp, d.config_path)
        v3 = wait_version(d, v2)

        # vim with backupcopy=no: rename the original away, write a new file, delete the backup
        os.rename(d.config_path, d.config_path.with_name("routing.toml~"))
        d.config_path.write_text(policy("b", "# vim\n"))
        os.unlink(d.config_path.with_name("routing.toml~"))
        v4 = wait_version(d, v3)

        assert len({v, v2, v3, v4}) == 4
        st = d.wait_status(d.send(MESSAGE), "delivered")
        assert st["policy_version"] == v4 and providers_of(st) == ["b1", "b2"]
        assert d.stop() == 0


def test_watch_false_ignores_edits_but_sighup_still_reloads(tmp_path: Path) -> None:
    off = '[daemon]\nwatch = false\n'
    d = DaemonProcess(tmp_path, policy("a").replace('[daemon]\n', off))
    with d:
        v = config(d)["version"]
        d.write_config(policy("b").replace('[daemon]\n', off))
        time.sleep(1.5)                                     # three debounce periods: no reload
        assert config(d)["version"] == v
        d.send_signal(signal.SIGHUP)
        wait_version(d, v)
        assert config(d)["last_reload"]["trigger"] == "SIGHUP"
        assert d.stop() == 0


# --------------------------------------------------------------------------- an edit during startup


class _NotifyRecorder:
    """The systemd side of sd_notify: a bound AF_UNIX datagram socket; `kinds()` lists the first
    KEY of each datagram, in order."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sdn-")      # short: sun_path holds at most 107 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def kinds(self) -> list[str]:
        return [next(iter(m)) for m in self.drain()]

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def test_an_edit_while_the_daemon_reads_its_startup_file_is_picked_up(tmp_path: Path) -> None:
    """routing.toml edited after the daemon read it at startup but before its file watch was in
    place (config management writing the file right after starting the service) is still loaded:
    no SIGHUP, no further edit.

    The edit lands inside that window deterministically, with no hook in the daemon: routing.toml
    starts out as a FIFO. The daemon's startup read opens it and blocks on the empty pipe; the
    test sees that open (a non-blocking open for writing fails with ENXIO until a reader is
    there), then renames a regular file holding policy "b" over the path, and only then writes
    policy "a" into the pipe and closes it. So the daemon loads "a" while "b" is already on
    disk, and nothing touches the file again.

    systemd hears READY=1 for "a" first, then RELOADING=1 and READY=1 for "b": never a
    RELOADING=1 before READY=1."""
    d = DaemonProcess(tmp_path, None)
    os.mkfifo(d.config_path)
    text_a, text_b = policy("a"), policy("b")
    va = parse_policy(text_a, str(d.config_path)).version
    vb = parse_policy(text_b, str(d.config_path)).version
    errors: list[BaseException] = []

    def feed_fifo() -> None:
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    fd = os.open(d.config_path, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    assert time.monotonic() < deadline, "the daemon never opened routing.toml"
                    time.sleep(0.002)
            try:
                # the daemon is inside its startup read, waiting for data: edit the file now
                d.write_config(text_b)
                os.set_blocking(fd, True)
                os.write(fd, text_a.encode())       # far below the pipe's capacity
            finally:
                os.close(fd)                        # EOF: the daemon's read returns "a"
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    n = _NotifyRecorder()
    d.env = {"NOTIFY_SOCKET": n.path}
    feeder = threading.Thread(target=feed_fifo, name="fifo feeder")
    feeder.start()
    try:
        with d:
            feeder.join(10)
            assert not feeder.is_alive() and errors == []
            assert d.config_path.read_text() == text_b
            wait_until(lambda: config(d)["version"] == vb, 5.0, f"policy b ({vb}) in force")
            info = config(d)
            assert info["last_reload"]["ok"] is True and info["last_reload"]["trigger"] == "file"
            assert d.metric("routingd_config_last_reload_successful") == 1.0
            st = d.wait_status(d.send(MESSAGE), "delivered")
            assert st["policy_version"] == vb and providers_of(st) == ["b1", "b2"]
            log_text = d.log_text()
            assert f"policy {va} from" in log_text                      # the startup line: "a"
            assert f"reload (file): now serving policy {vb} (was {va})" in log_text
            assert "SIGHUP" not in log_text
            assert d.stop() == 0
        assert n.kinds() == ["READY", "RELOADING", "READY", "STOPPING"], n.received
        assert n.received[0]["STATUS"].endswith(f"policy {va}")
        assert n.received[2]["STATUS"] == f"serving policy {vb}"
        assert "Traceback" not in d.log_text()
    finally:
        feeder.join(10)
        n.close()


# --------------------------------------------------------------------------- the loop during a reload


def test_the_daemon_keeps_answering_while_a_large_file_is_read(tmp_path: Path) -> None:
    """Reading and checking the file (here 1,000 templates to compile: a second or more) happens
    beside the event loop, not on it: requests sent while the reload runs are answered before
    it ends. On the loop, none but one that slipped in ahead of it could be."""
    small = policy("a").replace("[daemon]\n", "[daemon]\nwatch = false\n", 1)    # reloaded when told only
    d = DaemonProcess(tmp_path, small)
    templates = "".join(f'[templates.t{i}]\nemail = {{ title = "Disk {{{{ host }}}} {i}", '
                        f'text = "{{% for x in items %}}{{{{ x }}}} {{% endfor %}} {i}" }}\n' for i in range(1000))
    with d:
        va = config(d)["version"]
        d.write_config(small + templates)
        done = threading.Event()
        answer: list[Any] = []

        def reload() -> None:
            try:
                answer.append(d.post("/-/reload", timeout=120))
            finally:
                done.set()

        t = threading.Thread(target=reload, name="reload")
        t.start()
        answered = 0
        for _ in range(100_000):                # bounded: the reload ends within its timeout
            if done.is_set():
                break
            assert d.get("/healthz").status == 200
            answered += not done.is_set()
        t.join(120)
        assert answer and answer[0].status == 200 and answer[0].json()["version"] != va, answer
        assert answered >= 5, f"only {answered} request(s) answered while the file was read"
        assert config(d)["version"] == answer[0].json()["version"]
        assert d.stop() == 0
