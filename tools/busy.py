"""Keep every core busy while a command runs: `python tools/busy.py -- CMD ...` (make test-busy).

One busy-loop process per core (os.cpu_count()), each bounded by --max-seconds so that nothing
outlives a run that is killed; they are started before CMD and stopped (SIGTERM, then SIGKILL)
after it, by their own ids. The exit status is CMD's. CI runs on a shared 2-core machine: a test
that passes only on an idle machine fails here (docs/reliability.md, "a suite that holds under load").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SPIN = ("import time\n"
        "end = time.monotonic() + {limit}\n"
        "while time.monotonic() < end:\n"
        "    for _ in range(100000):\n"
        "        pass\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="busy loops to run (default: one per core)")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="each busy loop ends by itself after this")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run while the cores are busy")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (busy.py -- CMD ...)")
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(limit=args.max_seconds)])
                for _ in range(args.cores)]
    print(f"busy.py: {len(spinners)} busy loop(s) running (pids {', '.join(str(s.pid) for s in spinners)})",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        rc = subprocess.call(cmd)
    finally:
        for s in spinners:
            s.terminate()
        for s in spinners:
            try:
                s.wait(5)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait(5)
    print(f"busy.py: {' '.join(cmd)} exited {rc} after {time.monotonic() - started:.0f}s with every core busy",
          file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
