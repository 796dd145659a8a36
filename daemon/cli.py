"""The `routingd` command line: check, explain, init; serve and simulate are delegated.

    routingd check [PATH...]                      validate routing.toml (exit 0 ok, 1 invalid)
    routingd explain ROUTE [--config PATH] [--message FILE.json] [--json]
    routingd init [PATH] [--force]                write a commented starter routing.toml
    routingd try PROVIDER --to FIELD=VALUE [--template NAME --data K=V] [--title T --body B]
                                                  send one real message through one provider
    routingd serve ...                            routingd.daemon.service
    routingd simulate ...                         routingd.simulator.cli

The subcommands live beside this module: cli_check.py, cli_explain.py, cli_init.py,
try_provider.py (try), remote_cli.py (status, providers); cli_input.py holds what they share.
This module builds the parser and dispatches.

Every error is one line on stderr and a non-zero exit (1: the input is invalid, 2: usage or an
unavailable subcommand, 130: interrupted); never a traceback (ROUTINGD_DEBUG=1 shows one for an
internal error).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

from .annotations import FORMATS
from .cli_check import cmd_check
from .cli_explain import cmd_explain
from .cli_init import cmd_init
from .cli_input import (DEFAULT_CONFIG, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, InputError, _err,
                        default_config, load)

__all__ = ["InputError", "build_parser", "main", "run"]


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
