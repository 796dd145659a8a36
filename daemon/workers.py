"""`[daemon] workers = N`: N full routingd processes on one machine sharing one listening port.

    routingd serve  (workers = 3)
      └─ supervisor (this module): resolves the listen address once, talks to systemd
           ├─ worker 0: routingd serve --listen HOST:PORT   (SO_REUSEPORT)
           ├─ worker 1: ...
           └─ worker 2: ...

Each worker is an ordinary `serve` process on the PostgreSQL store (leases, takeover and shared
breakers make several processes on one database safe: docs/scaling.md); the kernel spreads the
connections over their listening sockets (SO_REUSEPORT). Why processes and not threads: one
process's event loop and store writer share one GIL, so ingress stops at one core.

The supervisor:
- resolves the address once: port 0 picks one free port for every worker, and it keeps a bound
  (not listening) SO_REUSEPORT socket on it for its lifetime, so a restarted worker finds its
  port free of strangers;
- starts the workers with ROUTINGD_WORKER_INDEX / ROUTINGD_WORKER_FD (the write end of a pipe)
  and without NOTIFY_SOCKET: a worker reports "listening URL" and "reloaded TRIGGER ok|failed
  VERSION" lines on the pipe; only the supervisor talks to systemd (READY=1 once every worker
  listens, RELOADING=1 .. READY=1 around a SIGHUP, STOPPING=1, WATCHDOG=1);
- forwards SIGHUP to every listening worker and waits (bounded) for each one's reload answer;
  forwards SIGTERM/SIGINT to every worker (each drains with its grace) and exits 0 when all
  exited 0, else 1;
- gives the workers a private directory for their metric files (PROMETHEUS_MULTIPROC_DIR), so
  /metrics answers for all of them; marks a worker's files dead when it exits and removes the
  directory at the end (daemon/shared_metrics.py);
- restarts a worker that died unexpectedly after a back-off (0.5 s doubling to 30 s); after
  QUICK_DEATHS deaths each within QUICK_S of its start it gives up on that worker with one
  error line (and exits 1 when no worker is left). Meanwhile the dead worker's pending messages
  are taken over by the others when its lease runs out (docs/scaling.md "Leases").
A worker that exits before listening at the first start fails the whole start (exit 1): its
own lines say why (a bad database URL, say), and every worker would fail the same way.

(Over 400 lines because both ends of the supervisor's pipe protocol, WorkerLink and Supervisor,
live here: a change to the protocol is one change to one file.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from .settings import ListenAddress, Settings, parse_listen
from .shared_metrics import ENV_DIR as METRICS_ENV
from .shared_metrics import MetricsDir

log = logging.getLogger("routingd.workers")

ENV_INDEX = "ROUTINGD_WORKER_INDEX"
ENV_FD = "ROUTINGD_WORKER_FD"
ENV_PARENT = "ROUTINGD_WORKER_PARENT"
# what only the supervisor may see: systemd's notify socket and watchdog
SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

QUICK_S = 30.0              # a worker that dies sooner than this after its start died "quickly"
QUICK_DEATHS = 5            # ... this many times in a row: give up on it
BACKOFF_S = 0.5             # first restart delay, doubled per quick death
BACKOFF_MAX_S = 30.0
RELOAD_WAIT_S = 60.0        # how long a SIGHUP waits for every worker's reload answer
PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- worker side


class WorkerLink:
    """A worker's end: its index, and the pipe on which it reports to the supervisor."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self.fd = fd

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerLink | None":
        env = os.environ if env is None else env
        if ENV_INDEX not in env:
            return None
        try:
            index, fd = int(env[ENV_INDEX]), int(env.get(ENV_FD, "-1"))
        except ValueError:
            return None
        if fd >= 0:
            try:
                os.set_inheritable(fd, False)       # not for the worker's own children
            except OSError:
                fd = -1
        _die_with_parent(env.get(ENV_PARENT))
        return cls(index, fd)

    def report(self, line: str) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, (" ".join(line.split()) + "\n").encode())
        except OSError:         # the supervisor is gone: the worker goes on until it is stopped
            pass

    def tag_logs(self) -> None:
        """Every log line of this process names its worker ("worker 2: ...")."""
        prefix = f"worker {self.index}: "

        class _Tag(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                if not getattr(record, "_worker_tagged", False):
                    record.msg = prefix + str(record.msg)
                    record._worker_tagged = True
                return True
        for h in logging.getLogger().handlers:
            h.addFilter(_Tag())


def _die_with_parent(parent: str | None) -> None:
    """SIGTERM this worker (a clean drain) when the supervisor dies, even by kill -9 (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent and parent.isdigit() and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)        # it died before the prctl


# --------------------------------------------------------------------------- supervisor side


def reserve_port(addr: ListenAddress) -> tuple[socket.socket, ListenAddress]:
    """Bind (never listen) an SO_REUSEPORT socket on the address: port 0 becomes one free port
    for every worker, and the port stays ours while the supervisor lives."""
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)     # as asyncio's create_server
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock, ListenAddress(addr.host, int(sock.getsockname()[1]))


def listen_arg(addr: ListenAddress) -> str:
    return f"[{addr.host}]:{addr.port}" if ":" in addr.host else f"{addr.host}:{addr.port}"


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    listening: bool = False
    listened: bool = False          # this run of it reported "listening"
    url: str = ""
    last_rc: int | None = None
    reload_wait: asyncio.Future[str] | None = None
    started_at: float = 0.0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: Settings, config: str, state: str | None, log_level: str) -> None:
        self.settings = settings
        self.n = int(settings.workers)
        self.config = os.path.abspath(config)
        self.state = state
        self.log_level = log_level
        self.workers = [_Worker(i) for i in range(self.n)]
        self._stop = asyncio.Event()
        self._failed: str | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics_dir: MetricsDir | None = None

    # ------------------------------------------------------------------ processes

    def command(self, listen: str) -> list[str]:
        cmd = [sys.executable, "-m", "routingd.daemon.cli", "serve", "--config", self.config, "--listen", listen,
               "--log-level", self.log_level]
        if self.state is not None:
            cmd += ["--state", self.state]
        return cmd

    def env(self, index: int, fd: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ONLY}
        env.update({ENV_INDEX: str(index), ENV_FD: str(fd), ENV_PARENT: str(os.getpid())})
        if self.metrics_dir is not None:
            env[METRICS_ENV] = self.metrics_dir.path
        return env

    async def _spawn(self, w: _Worker, listen: str) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        r, wfd = os.pipe()
        try:
            w.proc = await asyncio.create_subprocess_exec(*self.command(listen), env=self.env(w.index, wfd),
                                                          pass_fds=(wfd,), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(wfd)
        w.started_at = time.monotonic()
        w.listened = False
        w.pids.append(w.proc.pid)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        return reader

    async def _read_reports(self, w: _Worker, reader: asyncio.StreamReader, ready: asyncio.Event) -> None:
        while True:
            line = (await reader.readline()).decode(errors="replace").split()
            if not line:
                break
            if line[0] == "listening" and len(line) >= 2:
                w.listening, w.listened, w.url = True, True, line[1]
                if len(w.pids) > 1:
                    log.info("worker %d (pid %d) listening again (start %d)", w.index, w.pids[-1], len(w.pids))
                ready.set()
            elif line[0] == "reloaded" and len(line) >= 4:
                trigger, result, version = line[1], line[2], line[3]
                if trigger == "SIGHUP" and w.reload_wait is not None and not w.reload_wait.done():
                    w.reload_wait.set_result(f"{result} {version}")
        w.listening = False
        if w.reload_wait is not None and not w.reload_wait.done():
            w.reload_wait.set_result("exited -")

    async def _keep(self, w: _Worker, listen: str, ready: asyncio.Event) -> None:
        """Run worker `w` until the supervisor stops, restarting it when it dies."""
        quick = 0
        while not self._stop.is_set():
            reader = await self._spawn(w, listen)
            proc = w.proc
            assert proc is not None
            reports = asyncio.ensure_future(self._read_reports(w, reader, ready))
            if self._stop.is_set():         # the stop came while it was being started: it missed the SIGTERM
                proc.send_signal(signal.SIGTERM)
            rc = await proc.wait()
            await reports
            if self.metrics_dir is not None:
                self.metrics_dir.worker_died(proc.pid)      # its gauges leave /metrics, its counters stay
            w.last_rc = rc
            if self._stop.is_set():
                return
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            if not ready.is_set():          # the first start: every worker would fail alike
                self._fail(f"worker {w.index} (pid {proc.pid}) {how} before listening; stopping the others")
                return
            quick = quick + 1 if time.monotonic() - w.started_at < QUICK_S else 1
            if quick >= QUICK_DEATHS:
                log.error("worker %d (pid %d) %s: it died %d times in a row within %gs of its start; giving up "
                          "on it (%d worker(s) go on; its pending messages are taken over by them)",
                          w.index, proc.pid, how, quick, QUICK_S, self._alive())
                if not self._alive():
                    self._fail("no worker left")
                return
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (quick - 1))
            log.error("worker %d (pid %d) %s unexpectedly; restarting it in %gs (its pending messages are "
                      "taken over by the other workers once its lease runs out)", w.index, proc.pid, how, delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                w.last_rc = 0           # stopped while waiting to restart: nothing of it was running
                return
            except asyncio.TimeoutError:
                pass

    def _alive(self) -> int:
        return sum(1 for w in self.workers if w.proc is not None and w.proc.returncode is None)

    def _fail(self, why: str) -> None:
        if self._failed is None:
            self._failed = why
            log.error("%s", why)
        self._stop.set()

    def _signal_all(self, sig: signal.Signals, only_listening: bool = False) -> list[_Worker]:
        sent = []
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None or (only_listening and not w.listening):
                continue
            try:
                w.proc.send_signal(sig)
                sent.append(w)
            except ProcessLookupError:
                pass
        return sent

    # ------------------------------------------------------------------ signals

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.info("%s again: already stopping", sig.name)
            return
        log.info("%s received: stopping %d worker(s)", sig.name, self._alive())
        self._stop.set()

    def _on_hup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        """SIGHUP: every listening worker reloads; systemd hears RELOADING=1, then READY=1 once
        each has answered (a worker that is (re)starting reads the file at its start anyway)."""
        async with self._reload_lock:
            ready_phase = self._ready and not self._stop.is_set()
            if ready_phase:
                self.notifier.reloading()
            loop = asyncio.get_running_loop()
            for w in self.workers:
                w.reload_wait = loop.create_future()
            sent = self._signal_all(signal.SIGHUP, only_listening=True)
            futures = [w.reload_wait for w in sent if w.reload_wait is not None]
            answers: list[str] = []
            if futures:
                done, _ = await asyncio.wait(futures, timeout=RELOAD_WAIT_S)
                answers = [f.result() if f in done else "unanswered -" for f in futures]
            for w in self.workers:
                w.reload_wait = None
            bad = [f"worker {w.index}: {a.split()[0]}" for w, a in zip(sent, answers) if not a.startswith("ok")]
            versions = sorted({a.split()[1] for a in answers if a.startswith("ok")})
            if bad:
                log.error("reload (SIGHUP): %s", ", ".join(bad))
            else:
                log.info("reload (SIGHUP): %d worker(s) serve policy %s", len(sent), ", ".join(versions))
            if ready_phase:
                status = (f"reload failed ({', '.join(bad)})" if bad else
                          f"serving policy {', '.join(versions)}") + f" with {self._alive()} workers"
                self.notifier.ready(status)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        from .sdnotify import Notifier, run_watchdog

        self.notifier = Notifier.from_env()
        self._ready = False
        try:
            reserved, addr = reserve_port(parse_listen(self.settings.listen))
        except OSError as e:
            log.error("cannot listen on %s: %s", self.settings.listen, e.strerror or e)
            return 1
        listen = listen_arg(addr)
        try:
            metrics_dir = self.metrics_dir = MetricsDir.create()
        except OSError as e:
            reserved.close()
            log.error("cannot create the directory of the workers' metrics: %s", e)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        readies = [asyncio.Event() for _ in self.workers]
        keepers = [asyncio.ensure_future(self._keep(w, listen, e)) for w, e in zip(self.workers, readies)]
        watchdog: asyncio.Task[None] | None = None
        try:
            all_ready = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in readies)))
            stop = asyncio.ensure_future(self._stop.wait())
            waiters: list[asyncio.Future[Any]] = [all_ready, stop]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            all_ready.cancel()
            await asyncio.gather(all_ready, return_exceptions=True)     # (its cancellation retrieved)
            if not self._stop.is_set():
                self._ready = True
                pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
                line = f"listening on {addr.url} with {self.n} workers (pids {pids}) sharing the port"
                if log.isEnabledFor(logging.INFO):
                    log.info("%s", line)
                else:
                    print(f"routingd: {line}", file=sys.stderr, flush=True)
                self.notifier.ready(f"serving {addr.url} with {self.n} workers")
                watchdog = asyncio.ensure_future(run_watchdog(self.notifier))
                await stop
            self.notifier.stopping(f"stopping {self._alive()} workers")
            self._signal_all(signal.SIGTERM)
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for t in [*self._tasks, *([watchdog] if watchdog else [])]:
                t.cancel()
            for w in self.workers:          # only on an error of our own: never leave a worker behind
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()
                    await w.proc.wait()
            reserved.close()
            metrics_dir.remove()
            self.notifier.close()
        if self._failed is not None:
            return 1
        bad = [f"worker {w.index} {_how(w.last_rc)}" for w in self.workers if not _clean(w)]
        if bad:
            log.error("stopped; not cleanly: %s", ", ".join(bad))
            return 1
        log.info("stopped (%d workers)", self.n)
        return 0


def _clean(w: _Worker) -> bool:
    # a worker stopped before it listened may die of the SIGTERM itself: it held nothing yet
    return w.last_rc == 0 or (w.last_rc == -signal.SIGTERM and not w.listened)


def _how(rc: int | None) -> str:
    if rc is None:
        return "never ran"
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"


def supervise(settings: Settings, config: str, state: str | None, log_level: str) -> int:
    return asyncio.run(Supervisor(settings, config, state, log_level).run())
