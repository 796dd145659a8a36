"""`routingd serve`: the daemon process around the runtime Router and the HTTP API.

(Over 400 lines on purpose: start, reload, the worker's reports to its supervisor and stop are
one lifecycle over the same state -- the app, the Router, the watcher, the MQTT bridge -- and
split by phase they would only hand that state around. The supervisor of `workers = N` is
workers.py.)

    routingd serve [--config PATH] [--listen HOST:PORT] [--state PATH] [--log-level LEVEL]

Startup: load and validate routing.toml (one line per error, exit 1), merge the settings
(CLI > ROUTINGD_* env > [daemon] table), refuse a non-loopback listen address without API
tokens, open the SQLite store, listen (readyz 503 "starting"), start the Router (resumes every
message that was not finished), then readyz 200 and one startup line with the URL and version.

Signals: SIGHUP (and POST /-/reload) re-reads the file: validate, then swap; an invalid file
keeps the old policy, logs each error and sets routingd_config_last_reload_successful 0.
With [daemon] watch (the default) a change of the file does the same. The watch starts once the
daemon is ready; as soon as it is in place, the file is compared with the text the policy was
loaded from, so an edit made after the startup read but before the watch is reloaded too.
SIGTERM/SIGINT: /v1/send answers 503, the Router finishes in-flight attempts within the grace
period (the rest stay in the store for the next start), exit 0 -- or 1 when writes the state
store refused could still not be stored (its last log line says how many).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Coroutine

from aiohttp import web

from . import oplog
from .oplog import configure_logging
from .api import ApiState, ReloadResult, create_app
from .connections import ConnectionGuard
from .core import core_build
from .config_files import load_policy, read_config_text
from .core.policy import Policy, PolicyError
from .errors import RoutingdError
from .ids import freeze_startup
from .secrets import read_secret
from .settings import ListenAddress, Settings, SettingsError, config_path, load_settings, parse_listen

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Router
    from .sdnotify import Notifier
    from .store import Store
    from .workers import WorkerLink

log = logging.getLogger("routingd")

EXIT_OK = 0
EXIT_FAILED = 1


class StartupError(RoutingdError):
    """The daemon cannot start; `lines()` are ready to print, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)
        super().__init__("; ".join(lines))

    def lines(self) -> list[str]:
        return list(self._lines)


# --------------------------------------------------------------------------- logging


# configure_logging (text or json lines, journald) lives in daemon/oplog.py


# --------------------------------------------------------------------------- settings checks


def startup_settings(policy: Policy, config: str, listen: str | None, state: str | None) -> Settings:
    """Every check `serve` applies to a valid policy before it opens anything -- the merged
    settings (listen address), API tokens on a non-loopback address, the MQTT broker settings --
    shared with `routingd check`, so a file check passes is one serve starts with."""
    try:
        settings = load_settings(policy, config=config, listen=listen, state=state)
    except SettingsError as e:
        raise StartupError(e.lines()) from None
    check_auth(settings)
    if settings.mqtt is not None:
        from .mqtt import MqttConfigError, MqttLink
        try:
            MqttLink(settings.mqtt)
        except MqttConfigError as e:
            raise StartupError([f"{config}: {line}" for line in e.lines()]) from None
    return settings


def check_auth(settings: Settings) -> None:
    addr = settings.listen_address
    if not settings.api_tokens and not addr.is_loopback:
        raise StartupError([
            f"refusing to listen on {settings.listen} without API tokens: anyone who can reach it could "
            "send messages. Set [daemon] api_tokens in routing.toml or ROUTINGD_API_TOKENS, or listen "
            "on a loopback address such as 127.0.0.1:8080"])


# --------------------------------------------------------------------------- reload


class ConfigReloader:
    """Re-read routing.toml, validate, then swap it into the Router (one reload at a time)."""

    def __init__(self, path: str, router: Router, metrics: Metrics, state: ApiState,
                 cli_listen: str | None, cli_state: str | None, settings: Settings,
                 notifier: Notifier | None = None, guard: ConnectionGuard | None = None,
                 worker: WorkerLink | None = None) -> None:
        self.path = path
        self.worker = worker                # tells the supervisor each reload's result
        self.notifier = notifier
        self.guard = guard                  # routingd.daemon.connections.ConnectionGuard of the listener
        self.router = router
        self.metrics = metrics
        self.state = state
        self.settings = settings
        self._cli = (cli_listen, cli_state)
        self._lock = asyncio.Lock()
        self.loaded_at = time.time()
        self.last: dict[str, Any] = {"ok": True, "at": self.loaded_at, "trigger": "start", "errors": []}

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            current = self.router.policy
            # systemd hears of reloads only between READY=1 and STOPPING=1: a READY=1 while
            # starting would report a start that is not done, and one after STOPPING=1 would
            # contradict it (a reload while draining still works, silently).
            notifier = self.notifier if self.state.phase == "ready" else None
            if notifier is not None:
                notifier.reloading()
            try:
                # reading, parsing and validating the file (templates compiled, secrets read) is
                # the reload's cost and touches nothing the loop owns: a thread does it, so the
                # loop keeps serving meanwhile (6.5 ms for the bundled file on an idle machine,
                # far more for a large one or a loaded machine); the swap stays on the loop
                loaded = await asyncio.to_thread(self._load, current, trigger)
                result = loaded if isinstance(loaded, ReloadResult) else self._apply(current, trigger, *loaded)
            except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
                log.exception("reload (%s) failed unexpectedly; keeping policy %s", trigger, current.version)
                result = ReloadResult(False, current.version, errors=(f"{self.path}: internal error: {e}",))
            if result.ok:
                self.metrics.config_loaded(result.version)
            else:
                self.metrics.config_reload_failed()
            self.last = {"ok": result.ok, "at": time.time(), "trigger": trigger, "errors": list(result.errors)}
            if self.worker is not None:
                self.worker.report(f"reloaded {trigger} {'ok' if result.ok else 'failed'} {result.version}")
            if notifier is not None:
                if result.ok:
                    notifier.ready(f"serving policy {result.version}")
                else:
                    notifier.ready(f"reload failed: {result.errors[0] if result.errors else 'error'} "
                                        f"({len(result.errors)} error(s)); serving policy {result.version}")
            return result

    def _load(self, current: Policy, trigger: str) -> ReloadResult | tuple[Policy, Settings]:
        """The file read and checked (in a worker thread): the new policy and its settings, or
        the failed ReloadResult."""
        try:
            policy = load_policy(self.path, secrets=read_secret)
        except PolicyError as e:
            for line in e.lines():
                log.error("reload (%s) rejected: %s", trigger, line)
            log.error("reload (%s): keeping policy %s", trigger, current.version)
            return ReloadResult(False, current.version, errors=tuple(e.lines()))
        try:
            settings = load_settings(policy, config=self.path, listen=self._cli[0], state=self._cli[1])
            check_auth(settings)
        except (SettingsError, StartupError) as e:
            lines = tuple(f"{self.path}: {line}" for line in e.lines())
            for line in lines:
                log.error("reload (%s) rejected: %s", trigger, line)
            return ReloadResult(False, current.version, errors=lines)
        return policy, settings

    def _apply(self, current: Policy, trigger: str, policy: Policy, settings: Settings) -> ReloadResult:
        """Put a checked policy and its settings in force (on the loop)."""
        for w in policy.warnings:
            log.warning("%s: warning: %s", self.path, w)
        for key in ("listen", "state", "store", "lease", "workers", "mqtt"):
            if getattr(settings, key) != getattr(self.settings, key):
                log.warning("reload (%s): [daemon] %s changed; it takes effect at the next restart", trigger, key)
        oplog.set_format(settings.log_format)
        self.state.tokens = settings.token_values()
        self.state.max_body = settings.max_body
        self.state.body_timeout_s = settings.body_timeout / 1000.0
        if self.guard is not None:
            self.guard.configure(settings)      # header/idle timeouts, max_connections
        self.router.limits = settings           # max_inflight(_bytes), idempotency_ttl, retention
        if policy.version == current.version:
            log.info("reload (%s): %s unchanged (version %s)", trigger, self.path, policy.version)
            return ReloadResult(True, policy.version, changed=False, warnings=policy.warnings)
        self.router.swap_policy(policy)
        self.loaded_at = time.time()
        log.info("reload (%s): now serving policy %s (was %s): %s", trigger, policy.version, current.version,
                 oplog.policy_changes(current, policy))
        return ReloadResult(True, policy.version, changed=True, warnings=policy.warnings)

    def file_differs(self) -> bool:
        """Does the file no longer hold the text of the policy in force (or cannot be read)?"""
        try:
            return read_config_text(self.path) != self.router.policy.source
        except PolicyError:
            return True

    def info(self) -> dict[str, Any]:
        from .clock import rfc3339

        last = dict(self.last)
        last["at"] = rfc3339(last["at"])
        return {"version": self.router.policy.version, "loaded_at": rfc3339(self.loaded_at),
                "path": os.path.abspath(self.path), "last_reload": last}


# --------------------------------------------------------------------------- serve


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="PATH",
                        help="routing.toml (default: $ROUTINGD_CONFIG or ./routing.toml)")
    parser.add_argument("--listen", "-l", metavar="HOST:PORT",
                        help="listen address (overrides $ROUTINGD_LISTEN and [daemon] listen; port 0 picks a free one)")
    parser.add_argument("--state", "-s", metavar="PATH",
                        help="SQLite state file (overrides $ROUTINGD_STATE and [daemon] state)")
    parser.add_argument("--log-level", metavar="LEVEL", default=os.environ.get("ROUTINGD_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
                        help="log level (default: $ROUTINGD_LOG_LEVEL or INFO)")


def serve_command(args: argparse.Namespace) -> int:
    configure_logging(getattr(args, "log_level", "INFO") or "INFO")
    path = config_path(getattr(args, "config", None))
    try:
        try:
            policy = load_policy(path, secrets=read_secret)
        except PolicyError as e:
            raise StartupError(e.lines()) from None
        settings = startup_settings(policy, path, args.listen, args.state)
        configure_logging(getattr(args, "log_level", "INFO") or "INFO", settings.log_format)
        from .workers import WorkerLink, supervise
        worker = WorkerLink.from_env()
        if worker is not None:
            worker.tag_logs()
        elif settings.workers > 1:
            # the supervisor: N `serve` workers on one port (daemon/workers.py); each of them
            # prints the policy's warnings
            return supervise(settings, path, args.state, getattr(args, "log_level", "INFO") or "INFO")
        for w in policy.warnings:
            log.warning("%s: warning: %s", path, w)
        return asyncio.run(Service(policy, settings, args.listen, args.state, worker=worker).run())
    except StartupError as e:
        # a worker's lines name it, as its log lines do (docs/scaling.md "Workers")
        from .workers import ENV_INDEX
        tag = f"worker {os.environ[ENV_INDEX]}: " if os.environ.get(ENV_INDEX, "").isdigit() else ""
        for line in e.lines():
            print(tag + " ".join(line.split("\n")), file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a bug: one log line (with its traceback folded), exit 1
        log.exception("routingd serve failed: %s", e)
        return EXIT_FAILED


class Service:
    """One running daemon: store, Router, HTTP site, signal handling."""

    def __init__(self, policy: Policy, settings: Settings, cli_listen: str | None = None,
                 cli_state: str | None = None, worker: WorkerLink | None = None) -> None:
        self.policy = policy
        self.worker = worker            # one of `workers` processes (daemon/workers.py), else None
        self.settings = settings
        self._cli = (cli_listen, cli_state)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> int:
        from .runtime import Router
        from .store import StoreError, is_postgres_url, make_store

        from . import mqtt_service
        from .adapters import AdapterContext
        from .mqtt import MqttConfigError
        from .sdnotify import Notifier, run_watchdog
        from .shared_metrics import SharedMetrics, make_metrics
        from .watch import watch_file

        s = self.settings
        # with workers, /metrics answers for all of them (daemon/shared_metrics.py)
        metrics = make_metrics(self.worker is not None, self.policy.version)
        # a worker never talks to systemd: its supervisor does (and removed NOTIFY_SOCKET)
        self.notifier = notifier = Notifier(None) if self.worker is not None else Notifier.from_env()
        try:
            mqtt = s.mqtt
            if mqtt is not None and mqtt.client_id and self.worker is not None:
                # one session per worker (a broker drops a client whose id connects again),
                # the same one after a restart of that worker
                mqtt = mqtt.model_copy(update={"client_id": f"{mqtt.client_id}-w{self.worker.index}"})
            link = mqtt_service.make_link(mqtt, metrics)
        except MqttConfigError as e:
            raise StartupError([f"{s.config}: {line}" for line in e.lines()]) from None
        store = make_store(s.state, s.store, s.lease_s)
        try:
            await store.open()
        except StoreError as e:
            raise StartupError([str(e)]) from None
        router = Router(self.policy, store, metrics, adapter_ctx=AdapterContext(mqtt=link), limits=s)
        router.add_event_listener(oplog.OutageLog(router))      # breaker lines (daemon/oplog.py)
        shared = None
        if s.store and is_postgres_url(s.store):
            # breakers shared with the other processes on the database (daemon/shared_breakers.py)
            from .shared_breakers import SharedBreakers
            shared = SharedBreakers(router, s.store, metrics)
            router.add_event_listener(shared)
            await shared.start()
        if link is not None:
            mqtt_service.attach(link, router)
        state = ApiState(router=router, metrics=metrics, reloader=None,  # type: ignore[arg-type]
                         tokens=s.token_values(), max_body=s.max_body, body_timeout_s=s.body_timeout / 1000.0,
                         phase="starting")
        runner = web.AppRunner(create_app(state), access_log=logging.getLogger("aiohttp.access"),
                               handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        assert runner.server is not None
        # the listener is ours, not a TCPSite: its connections pass the guard's timeouts and cap
        guard = ConnectionGuard(runner.server, header_timeout_s=s.header_timeout / 1000.0,
                                idle_timeout_s=s.idle_timeout / 1000.0, max_connections=s.max_connections,
                                on_close=lambda reason: metrics.connections_closed.labels(reason=reason).inc())
        metrics.sampled(metrics.connections_open, lambda: len(guard.open))
        metrics.sampled(metrics.inflight_bytes, lambda: router.inflight_bytes)
        reloader = ConfigReloader(s.config, router, metrics, state, *self._cli, settings=s, notifier=notifier,
                                  guard=guard, worker=self.worker)
        state.reloader = reloader
        metrics.sampled(metrics.store_backlog, lambda: store.backlog)
        outage = getattr(store, "outage", None)     # the PostgreSQL store's (daemon/store/pg_outage.py)
        if outage is not None:
            state.extra_ready_checks.append(outage.problem)
        state.extra_ready_checks.append(lambda: _backlog_problem(store))
        addr = parse_listen(s.listen)
        loop = asyncio.get_running_loop()
        try:
            # workers share the port: the kernel spreads connections over their sockets
            listener = await loop.create_server(guard, addr.host, addr.port, backlog=1024,
                                                reuse_port=self.worker is not None)
        except OSError as e:
            await runner.cleanup()
            if shared is not None:
                await shared.close()
            await _close(store)
            raise StartupError([f"cannot listen on {s.listen}: {e.strerror or e}"]) from None
        url = _bound_url(listener, addr)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(reloader.reload("SIGHUP")))
        try:
            if isinstance(metrics, SharedMetrics):
                self._spawn(metrics.sample_forever())       # resumed messages count from the start
            freeze_startup()        # full GC pauses walk only what messages add (daemon/ids.py)
            try:
                await router.start()
            except StoreError as e:
                raise StartupError([str(e)]) from None
            if link is not None:
                await link.start()      # returns at once; a missing broker never stops HTTP service
            state.phase = "ready"
            self._spawn(run_watchdog(notifier))
            if s.watch:
                # stale: an edit since the startup read, made before the watch was in place. The
                # task first runs after the READY=1 below (no await in between), so the reload that
                # follows is announced as RELOADING=1 + READY=1 after it, never before.
                self._spawn(watch_file(s.config, lambda: reloader.reload("file"), stale=reloader.file_differs))
            startup = (f"listening on {url} (policy {self.policy.version} from {os.path.abspath(s.config)}, "
                       # the PostgreSQL store's URL without its password; `state` is not used then
                       f"{f'store {store.path}' if s.store and is_postgres_url(s.store) else f'state {os.path.abspath(s.state)}'}, "
                       f"core {core_build()}, "
                       f"auth {'on' if s.api_tokens else 'off (loopback only)'}, "
                       f"file watch {'on' if s.watch else 'off'})")
            if log.isEnabledFor(logging.INFO):
                log.info("%s", startup)
            else:  # the startup line is printed whatever the log level
                print(f"routingd: {startup}", file=sys.stderr, flush=True)
            notifier.ready(f"serving {url}, policy {self.policy.version}")
            if self.worker is not None:
                self.worker.report(f"listening {url}")
            await self._stop.wait()
            state.phase = "draining"
            grace_s = s.grace / 1000
            notifier.stopping(f"stopping: in-flight attempts get {grace_s:g}s to finish")
            log.info("stopping: no new messages; in-flight attempts get %gs to finish", grace_s)
            if link is not None:
                await link.stop_ingress()   # let other daemons of a shared subscription take new sends
            await router.stop(grace_s)
            metrics.refresh()           # with workers: the last of the sampled counters
            if link is not None:
                await link.close(flush_timeout=min(2.0, grace_s))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            listener.close()            # no new connections; cleanup closes the open ones
            await runner.cleanup()
            await listener.wait_closed()
            if shared is not None:
                await shared.close()
            await _close(store)
            notifier.close()
        if store.backlog:
            # the last line: what this stop could not store (those messages resume from their
            # last stored state on the next start: a delivered one may be sent again)
            log.error("stopped with %d write(s) not stored: the state store refused them (%s); the "
                      "messages they belong to resume from their last stored state on the next start",
                      store.backlog, store.last_error)
            return EXIT_FAILED
        log.info("stopped")
        return EXIT_OK

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.info("%s again: already stopping", sig.name)
            return
        log.info("%s received", sig.name)
        self._stop.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _bound_url(listener: asyncio.Server, addr: ListenAddress) -> str:
    for sock in listener.sockets:
        a = sock.getsockname()
        if isinstance(a, tuple) and len(a) >= 2:
            return ListenAddress(addr.host, int(a[1])).url
    return addr.url


def _backlog_problem(store: Store) -> str | None:
    """readyz: writes waiting for a disk that refuses them make the daemon not ready."""
    n = store.backlog
    if not n:
        return None
    return (f"the state store refuses writes: {n} write(s) wait in memory to be stored "
            f"({store.last_error}); sends answer 503 while it does{' (the backlog is full)' if store.backlog_full else ''}")


async def _close(store: Store) -> None:
    try:
        await store.close()
    except Exception:  # noqa: BLE001 - the store logs its own write errors; do not mask the exit
        log.exception("closing the state store failed")
