"""daemon/core/ is sans-IO: no event loop, no network/DB/simulator libraries, no wall clock, no
files and no environment (reading them is the edge's: daemon/config_files.py).

The engine and the policy model are shared by the asyncio daemon and the SimPy simulator; if
either crept into daemon/core/, the two drivers could no longer share one routing logic.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "daemon" / "core"

FORBIDDEN_MODULES = {"asyncio", "aiohttp", "aiomqtt", "simpy", "sqlite3"}
# clock readers and sleepers, by module
CLOCK_CALLS = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
             "process_time", "process_time_ns", "clock_gettime", "clock_gettime_ns", "localtime",
             "gmtime", "ctime", "asctime", "sleep"},
    "datetime": {"now", "utcnow", "today"},
}
# file and environment readers: a builtin called by name, a method on any object (Path.read_text,
# io.open, os.open...), an attribute of os
FILE_BUILTINS = {"open"}
FILE_METHODS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "fdopen"}
OS_READERS = {"environ", "environb", "getenv", "getenvb", "putenv", "listdir", "scandir", "stat", "walk"}
# daemon/core/__init__.py hashes the sources of the compiled modules at import, so that a stale
# compiled core never runs after an edit (docs/architecture.md "The compiled core"): that one
# read of the package's own files is its whole job, and is allowed there only.
EXEMPT = {"__init__.py": {"calls .read_bytes()"}}


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Every forbidden import or clock call in `source`, as "file:line: what"."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    # local name -> what it stands for: ("module", "time") or ("func", "time.monotonic")
    aliases: dict[str, tuple[str, str]] = {}

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    flag(node, f"imports {a.name}")
                if top in ("time", "datetime"):
                    aliases[a.asname or top] = ("module", a.name if a.asname else top)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_MODULES:
                flag(node, f"imports from {node.module}")
            for a in node.names:
                local = a.asname or a.name
                if node.module == "time" and a.name in CLOCK_CALLS["time"]:
                    flag(node, f"imports the clock function time.{a.name}")
                    aliases[local] = ("func", f"time.{a.name}")
                elif node.module == "datetime" and a.name in ("datetime", "date"):
                    aliases[local] = ("module", "datetime")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant) and \
                    str(node.args[0].value).split(".")[0] in FORBIDDEN_MODULES:
                flag(node, f"imports {node.args[0].value} dynamically")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            for a in node.names:
                if a.name in OS_READERS:
                    flag(node, f"imports os.{a.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in OS_READERS:
            flag(node, f"uses os.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in FILE_BUILTINS:
            flag(node, f"calls {node.func.id}()")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in FILE_METHODS:
            flag(node, f"calls .{node.func.attr}()")
        f = node.func
        if isinstance(f, ast.Name) and aliases.get(f.id, ("", ""))[0] == "func":
            flag(node, f"calls {aliases[f.id][1]}()")
        elif isinstance(f, ast.Attribute):
            base = f.value
            # time.monotonic(), datetime.now(), datetime.datetime.now(), dt.date.today()
            root = base
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases and aliases[root.id][0] == "module":
                module = aliases[root.id][1].split(".")[0]
                if f.attr in CLOCK_CALLS.get(module, set()):
                    flag(node, f"calls {ast.unparse(f)}()")
    return found


def core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, f"no modules found under {CORE}"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_is_sans_io(path: Path) -> None:
    allowed = EXEMPT.get(str(path.relative_to(CORE)), set())
    found = [v for v in violations(path.read_text(encoding="utf-8"), str(path)) if v.split(": ", 1)[1] not in allowed]
    assert found == []


def test_importing_core_loads_no_event_loop_or_io_library() -> None:
    """Also at run time: importing every core module pulls none of them in (even indirectly)."""
    mods = sorted(f"routingd.daemon.core.{p.stem}" for p in core_files() if p.stem != "__init__")
    code = textwrap.dedent(f"""
        import importlib, sys
        for m in {mods!r}:
            importlib.import_module(m)
        print(",".join(sorted(m for m in {sorted(FORBIDDEN_MODULES)!r} if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=CORE.parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# The checker itself must be able to fail: each of these sources is a violation.
BAD_SOURCES = [
    "import asyncio",
    "import aiohttp.web",
    "from aiomqtt import Client",
    "import simpy as sp",
    "from sqlite3 import connect",
    "import time\nx = time.time()",
    "import time as t\nx = t.monotonic()",
    "from time import monotonic\n",
    "from time import perf_counter as pc\nx = pc()",
    "import datetime\nx = datetime.datetime.now()",
    "from datetime import datetime\nx = datetime.now()",
    "from datetime import date\nx = date.today()",
    "from datetime import datetime as dt\nx = dt.utcnow()",
    "import time\ntime.sleep(1)",
    "m = __import__('asyncio')",
    "f = open('routing.toml')",
    "from pathlib import Path\nx = Path('routing.toml').read_text()",
    "import os\nx = os.environ.get('X')",
    "import os\nx = os.getenv('X')",
    "from os import environ",
    "import io\nf = io.open('x')",
]


@pytest.mark.parametrize("source", BAD_SOURCES)
def test_checker_flags_forbidden_code(source: str) -> None:
    assert violations(source) != []


@pytest.mark.parametrize("source", [
    "import random\nx = random.Random(1).random()",
    "from datetime import timedelta\nx = timedelta(seconds=1)",
    "def f(now: float) -> float:\n    return now + 1",
    "import os\nx = os.path.join('a', 'b')",
])
def test_checker_allows_pure_code(source: str) -> None:
    assert violations(source) == []
