"""The `routingd` command line: check, explain, init; serve and simulate are delegated.

    routingd check [PATH...]                      validate routing.toml (exit 0 ok, 1 invalid)
    routingd explain ROUTE [--config PATH] [--message FILE.json] [--json]
    routingd init [PATH] [--force]                write a commented starter routing.toml
    routingd try PROVIDER --to FIELD=VALUE [--template NAME --data K=V] [--title T --body B]
                                                  send one real message through one provider
    routingd serve ...                            routingd.daemon.service
    routingd simulate ...                         routingd.simulator.cli

Every error is one line on stderr and a non-zero exit (1: the input is invalid, 2: usage or an
unavailable subcommand, 130: interrupted); never a traceback (ROUTINGD_DEBUG=1 shows one for an
internal error).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

from .annotations import FORMATS, render
from .errors import RoutingdError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "routing.toml"
CONFIG_ENV = "ROUTINGD_CONFIG"
MAX_INPUT_BYTES = 16 * 1024 * 1024


def default_config() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("routingd")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


class _VersionAction(argparse.Action):
    """--version: the release and whether the routing core runs compiled (imported only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and the routing core's build, and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from .core import core_build
        print(f"routingd {_version()}, core {core_build()}")
        parser.exit()


def _err(line: str) -> None:
    print(" ".join(line.split("\n")), file=sys.stderr)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class InputError(RoutingdError):
    """An input file cannot be used; `lines()` are ready to print, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)
        super().__init__("\n".join(lines))

    def lines(self) -> list[str]:
        return list(self._lines)


def read_text(path: str) -> str:
    """Read a UTF-8 text file (or stdin for "-"), refusing directories, devices and huge files."""
    label = "<stdin>" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        try:
            st = os.stat(path)
        except OSError as e:
            raise InputError([f"{label}: (file): cannot read file: {e.strerror or e}"]) from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError([f"{label}: (file): is a directory, not a file"])
        if not stat.S_ISREG(st.st_mode):
            raise InputError([f"{label}: (file): not a regular file"])
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as e:
            raise InputError([f"{label}: (file): cannot read file: {e.strerror or e}"]) from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError([f"{label}: (file): file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError([f"{label}: (file): not UTF-8 text (invalid byte at offset {e.start})"]) from None


def load(path: str) -> Any:
    """Load and validate a routing.toml; InputError with one line per problem."""
    from .config_files import parse_policy_text
    from .core.policy import PolicyError
    from .secrets import read_secret

    label = "<stdin>" if path == "-" else path
    text = read_text(path)
    try:
        return parse_policy_text(text, label, secrets=read_secret)
    except PolicyError as e:
        raise InputError(e.lines()) from None


# --------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    paths = args.paths or [default_config()]
    status = EXIT_OK
    for path in paths:
        label = "<stdin>" if path == "-" else path
        try:
            policy = load(path)
        except InputError as e:
            for line in e.lines():
                _err(render(line, args.format, title="routingd check"))
            status = EXIT_INVALID
            continue
        try:        # what serve checks at start too: listen, tokens, MQTT (daemon/service.py)
            from .service import StartupError, startup_settings
            startup_settings(policy, path, None, None)
        except StartupError as e:
            for line in e.lines():
                _err(line if line.startswith(f"{label}:") else f"{label}: {line}")
            status = EXIT_INVALID
            continue
        m = policy.model
        templates = f", {_plural(len(m.templates), 'template')}" if m.templates else ""
        print(f"{label}: ok (version {policy.version}; {_plural(len(m.providers), 'provider')}, "
              f"{_plural(len(m.channels), 'channel')}, {_plural(len(m.routes), 'route')}{templates})")
        warnings = list(policy.warnings)
        if not m.routes:
            warnings.append("no [routes] defined: the daemon cannot route any message")
        for w in warnings:
            _err(render(f"{label}: warning: {w}", args.format, "warning", "routingd check"))
    old = old_systemd()
    if old:
        _err(render(f"warning: {old}", args.format, "warning", "routingd check"))
    return status


NOTIFY_RELOAD_SYSTEMD = 253


def old_systemd(env: Any = None) -> str | None:
    """Under systemd (INVOCATION_ID is set for a unit's processes: the unit's ExecStartPre runs
    `routingd check`), a systemd older than 253 does not know the unit's Type=notify-reload and
    runs it as Type=simple; say so, with the fix. Elsewhere nothing is claimed: which systemd
    will run the daemon is not known there (docs/operations.md "Older systemd")."""
    import re
    import shutil
    import subprocess

    env = os.environ if env is None else env
    tool = shutil.which("systemctl", path=env.get("PATH"))
    if not env.get("INVOCATION_ID") or tool is None:
        return None
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", out)
    if m is None or int(m.group(1)) >= NOTIFY_RELOAD_SYSTEMD:
        return None
    return (f"systemd {m.group(1)} does not know Type=notify-reload (systemd 253+) and runs the unit as "
            "Type=simple: no readiness wait, and `systemctl reload` fails. Add the drop-in Type=notify + "
            "ExecReload=/bin/kill -HUP $MAINPID (docs/operations.md, \"Older systemd\")")


# --------------------------------------------------------------------------- explain


def load_request(path: str) -> Any:
    """Read a send request body ({"message": {...}}) as POST /v1/send would take it."""
    from pydantic import ValidationError

    from .core.policy import problems_from_validation
    from .core.request import SendRequest

    label = "<stdin>" if path == "-" else path
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError([f"{label}: (file): not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"]) from None
    try:
        return SendRequest.model_validate(data).message
    except ValidationError as e:
        raise InputError([f"{label}: {p.key_path}: {p.msg}" for p in problems_from_validation(e)]) from None


def cmd_explain(args: argparse.Namespace) -> int:
    from .core.plan import PlanError, resolve_plan
    from .explain import render_tree

    config = args.config or default_config()
    try:
        policy = load(config)
        request = load_request(args.message) if args.message else None
    except InputError as e:
        for line in e.lines():
            _err(line)
        return EXIT_INVALID
    route = args.route
    if route is None:
        route = request.route if request is not None and request.route else "default"
    elif request is not None and request.route and request.route != route:
        _err(f"{args.message}: warning: message.route {request.route!r} is ignored; "
             f"explaining route {route!r}")
    try:
        plan = resolve_plan(policy, route, request)
    except PlanError as e:
        for p in e.problems:
            if p.loc == ("message", "route") and args.route is not None:
                _err(f"routingd explain: {p.msg}")
            else:
                where = args.message if p.loc[:1] == ("message",) and args.message else policy.path
                _err(f"{where}: {p.key_path}: {p.msg}")
        return EXIT_INVALID
    content = None
    if request is not None:
        from .explain import channel_contents
        try:
            content = channel_contents(policy, plan, request)
        except PlanError as e:
            for p in e.problems:
                _err(f"{args.message}: {p.key_path}: {p.msg}")
            return EXIT_INVALID
    from .explain import add_limits, outbound_limits
    limits = outbound_limits(policy)
    if args.json:
        doc = plan.to_json()
        add_limits(doc, limits)
        if request is not None:     # what the text marks SKIPPED
            from .explain import skipped_channels
            doc["skipped"] = skipped_channels(plan.items, dict(request.to))
        if content is not None:
            doc["content"] = {ch: {"title": c.title, "text": c.text, "html": c.html, "source": source}
                              for ch, (c, source) in content.items()}
        print(json.dumps(doc, indent=2))
    else:
        recipient = dict(request.to) if request is not None else None
        sys.stdout.write(render_tree(plan, recipient, list(policy.model.failover.on), limits))
        if content is not None:
            from .explain import render_contents
            sys.stdout.write(render_contents(content))
    return EXIT_OK


# --------------------------------------------------------------------------- try


def cmd_try(args: argparse.Namespace) -> int:
    from .try_provider import try_command

    try:
        policy = load(args.config or default_config())
    except InputError as e:
        for line in e.lines():
            _err(line)
        return EXIT_INVALID
    return try_command(args, policy)


# --------------------------------------------------------------------------- init


def cmd_init(args: argparse.Namespace) -> int:
    from .starter import starter_text
    from .core.policy import PolicyError, parse_policy

    path = args.path
    text = starter_text()
    try:  # never write a file that `check` would reject
        parse_policy(text, path, env={})
    except PolicyError as e:  # pragma: no cover - a bug in the starter document
        for line in e.lines():
            _err(f"routingd init: internal error: {line}")
        return EXIT_INVALID
    if path == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if os.path.isdir(path):
        _err(f"{path}: is a directory; give the path of the file to write")
        return EXIT_INVALID
    if os.path.lexists(path) and not args.force:
        _err(f"{path}: already exists; not overwriting it (use --force to replace it)")
        return EXIT_INVALID
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        if not args.force and os.path.lexists(path):
            raise FileExistsError(path)
        os.replace(tmp, path)
    except FileExistsError:
        _remove(tmp)
        _err(f"{path}: already exists; not overwriting it (use --force to replace it)")
        return EXIT_INVALID
    except OSError as e:
        _remove(tmp)
        _err(f"{path}: cannot write file: {e.strerror or e}")
        return EXIT_INVALID
    print(f"{path}: written; check it with `routingd check {path}`, serve it with "
          f"`routingd serve --config {path}`")
    return EXIT_OK


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- delegated commands


@dataclass(frozen=True)
class Delegate:
    name: str
    help: str
    module: str
    add_arguments: str
    command: str


DELEGATES = (
    Delegate("serve", "run the daemon: HTTP API, deliveries, hot reload",
             "routingd.daemon.service", "add_serve_arguments", "serve_command"),
    Delegate("simulate", "replay provider outages against a routing.toml (SimPy)",
             "routingd.simulator.cli", "add_simulate_arguments", "simulate_command"),
)


def _unavailable(name: str, reason: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        _err(f"routingd {name}: not available in this installation: {reason}")
        return EXIT_USAGE
    return run


def _add_delegate(sub: Any, d: Delegate, load: bool) -> None:
    p = sub.add_parser(d.name, help=d.help, description=d.help)
    if not load:  # only listed in --help; the real arguments are added when it is run
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    try:
        mod = importlib.import_module(d.module)
        add_arguments = getattr(mod, d.add_arguments)
        command = getattr(mod, d.command)
        add_arguments(p)
    except Exception as e:  # a broken or missing module must not break the other commands
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        p.description = f"{d.help}. NOT AVAILABLE in this installation: {reason}"
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_unavailable(d.name, reason))
        return
    p.set_defaults(func=command)


# --------------------------------------------------------------------------- parser, main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _err(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser(load_delegate: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; `load_delegate` names the delegated command whose module to import."""
    parser = _Parser(
        prog="routingd",
        description="Declarative notification routing with failover, and an outage simulator.",
        epilog="Exit status: 0 ok, 1 invalid input (config, message, route), 2 usage error or "
               "unavailable command, 130 interrupted. Config path default: $ROUTINGD_CONFIG or "
               "./routing.toml. Reference: docs/configuration.md.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d_serve = DELEGATES[0]
    _add_delegate(sub, d_serve, load_delegate == d_serve.name)

    p = sub.add_parser("check", help="validate routing.toml files (like nginx -t)",
                       description="Validate routing.toml files. Exit 0 when every file is valid, "
                                   "1 otherwise, with one 'PATH:LINE: key.path: reason' line per error "
                                   "on stderr. Warnings go to stderr as 'PATH: warning: ...'.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="file to check (default: $ROUTINGD_CONFIG or ./routing.toml; - reads stdin)")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="github: errors and warnings as GitHub Actions annotations (::error file=...,line=...::)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="show a route's failover plan with every effective timeout",
                       description="Resolve a route (and optionally a send request's overrides) into "
                                   "its failover plan, every timeout after the precedence rules, "
                                   "each with the setting it came from.")
    p.add_argument("route", nargs="?", metavar="ROUTE",
                   help="route name (default: the message's route, else 'default')")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="routing.toml (default: $ROUTINGD_CONFIG or ./routing.toml)")
    p.add_argument("--message", "-m", metavar="FILE.json",
                   help="a send request body {\"message\": {...}} as POSTed to /v1/send; its "
                        "timeout overrides apply, its inline \"routing\" replaces the route's "
                        "channels, and what each channel would receive is shown (its template "
                        "rendered, else content.title / content.body) (- reads stdin)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("init", help="write a commented starter routing.toml",
                       description="Write a commented starter routing.toml that passes `check` "
                                   "and runs with no outside service (sandbox providers).")
    p.add_argument("path", nargs="?", default=DEFAULT_CONFIG, metavar="PATH",
                   help="where to write it (default: ./routing.toml; - prints it)")
    p.add_argument("--force", "-f", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("try", help="send one real message through one provider and show its answer",
                       description="Send one real message through one provider of the config (no "
                                   "store, no routing, no retries) and print what the vendor answered "
                                   "and the outcome routingd derives from it per failover.on. Exit 0 "
                                   "when it was delivered (2xx), 1 otherwise.")
    from .try_provider import add_try_arguments
    add_try_arguments(p)
    p.set_defaults(func=cmd_try)

    from .remote_cli import add_remote_arguments, providers_command, status_command
    p = sub.add_parser("status", help="a running daemon's policy and readiness, or one message's attempts",
                       description="Ask a running daemon (GET /v1/config and /readyz, or "
                                   "/v1/messages/MESSAGE_ID) and print the answer. Exit 1 when it "
                                   "cannot be reached, refuses the token or knows no such message.")
    p.add_argument("message_id", nargs="?", metavar="MESSAGE_ID", help="a message id from a send's 202")
    add_remote_arguments(p)
    p.set_defaults(func=status_command)

    p = sub.add_parser("providers", help="a running daemon's providers: breaker, drained, recent rates",
                       description="Ask a running daemon (GET /v1/providers) and print each provider's "
                                   "breaker state, whether it is drained, and its recent outcomes and "
                                   "latency. Exit 1 when it cannot be reached or refuses the token.")
    add_remote_arguments(p)
    p.set_defaults(func=providers_command)

    d_sim = DELEGATES[1]
    _add_delegate(sub, d_sim, load_delegate == d_sim.name)
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in argv: the first argument that is not an option (top-level options take
    no values)."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def run(argv: Sequence[str]) -> int:
    parser = build_parser(_command_name(argv))
    args = parser.parse_args(list(argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    rc = func(args)
    return int(rc) if rc is not None else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining
        # about the unflushed stdout at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_INVALID
    except InputError as e:
        for line in e.lines():
            _err(line)
        return EXIT_INVALID
    except Exception as e:  # never a traceback for a user; ROUTINGD_DEBUG=1 shows it
        if os.environ.get("ROUTINGD_DEBUG"):
            raise
        _err(f"routingd: internal error: {type(e).__name__}: {e} (set ROUTINGD_DEBUG=1 for a traceback)")
        return 70


if __name__ == "__main__":
    sys.exit(main())
