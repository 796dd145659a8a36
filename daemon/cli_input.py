"""What the `routingd` subcommands share (cli.py and its cli_*.py modules): the exit codes, the
one-line error output, and reading their inputs -- a routing.toml (`load`) or a send request
(`load_request`), from a file or stdin, as an `InputError` with one line per problem."""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

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
