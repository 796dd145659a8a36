"""`routingd init [PATH] [--force]`: write the commented starter routing.toml (starter.py),
never over an existing file unless asked, and only a file that `check` accepts."""

from __future__ import annotations

import argparse
import os
import sys

from .cli_input import EXIT_INVALID, EXIT_OK, _err


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
