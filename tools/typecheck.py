"""`make test`'s mypy run: daemon/ and simulator/ checked under their import names.

The folders install as routingd.daemon and routingd.simulator (setup.py), and the simulator
imports the core relatively (`from ..daemon.core.engine import ...`). mypy names a module after
its path, which here would be `daemon.x`, so this hands it every file with its import name.

    .venv/bin/python tools/typecheck.py        (exit 0: clean; errors print as FILE:LINE: ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"daemon": "routingd.daemon", "simulator": "routingd.simulator"}   # as setup.py FOLDERS


def sources() -> list[BuildSource]:
    found = []
    for folder, name in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(BuildSource(str(path.relative_to(ROOT)), ".".join((name, *parts))))
    return found


def main() -> int:
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml"), *FOLDERS])
    try:
        result = build.build(sources(), options)
        messages = result.errors
    except CompileError as e:
        messages = e.messages
    for line in messages:
        print(line)
    if messages:
        print(f"mypy: {sum(' error: ' in m for m in messages)} errors", file=sys.stderr)
    return 1 if any(" error: " in m for m in messages) else 0


if __name__ == "__main__":
    sys.exit(main())
