"""Shared pieces of the benchmarks: results with verdicts, processes, wrk, /proc memory figures.

Every benchmark runs its subject and its baseline in the same run on the same machine and
prints both, their ratio and PASS/FAIL against the target (or "info" when there is none), so a
noisy machine slows both sides instead of faking a result. Only loopback addresses are used and
every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PYTHON = sys.executable

# tests/daemon_process.py: the real `routingd serve` subprocess harness the integration tests use
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchError(Exception):
    """A benchmark could not run (a tool is missing, a process did not start); one line for the user."""


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One figure compared with its target: ok is None when there is no target (informational)."""

    name: str
    actual: float | None
    target: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class BenchResult:
    name: str
    lines: list[str] = field(default_factory=list)       # the human-readable figures, in order
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    wall_s: float = 0.0

    def say(self, line: str = "") -> None:
        self.lines.append(line)
        print(f"  {line}" if line else "", flush=True)

    def check(self, name: str, actual: float | None, target: float | None, *, at_least: bool = True,
              unit: str = "x") -> Check:
        if target is None:
            c = Check(name, actual, "none", None)
        else:
            ok = actual is not None and (actual >= target if at_least else actual <= target)
            c = Check(name, actual, f"{'>=' if at_least else '<='} {target:g}{unit}", ok)
        self.checks.append(c)
        shown = "-" if actual is None else f"{actual:.3f}{unit}"
        self.say(f"{c.verdict:4s}  {name} = {shown} (target {c.target})")
        return c

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "wall_s": round(self.wall_s, 2), "figures": self.figures,
                "checks": [{"name": c.name, "actual": c.actual, "target": c.target, "verdict": c.verdict}
                           for c in self.checks]}


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def ratio(subject: float | None, baseline: float | None) -> float | None:
    if subject is None or not baseline:
        return None
    return subject / baseline


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None when empty."""
    v = sorted(values)
    if not v:
        return None
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


# --------------------------------------------------------------------------- memory


def proc_status_kib(pid: int, key: str) -> int | None:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


# --------------------------------------------------------------------------- helper processes


class Helper:
    """A python helper process (bare server, sink) that prints its port as its first stdout line."""

    def __init__(self, args: Sequence[str], workdir: Path, name: str, start_timeout: float = 15.0,
                 command_prefix: Sequence[str] = ()) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen([*command_prefix, PYTHON, *args], stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + start_timeout
        line = b""
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            line += chunk
            if b"\n" in line:
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        first = line.split(b"\n", 1)[0].decode().strip()
        if not first.isdigit():
            self.close()
            raise BenchError(f"{name} did not start (first line {first!r}); see {self.log_path}: "
                             f"{self.log_path.read_text(errors='replace')[-500:]}")
        self.port = int(first)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "Helper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_daemon(workdir: Path, config: str, env: Mapping[str, str] | None = None,
                 command_prefix: Sequence[str] = (), start_timeout: float = 30.0) -> Any:
    """A started `routingd serve` (tests/daemon_process.DaemonProcess) on 127.0.0.1, port 0."""
    from daemon_process import DaemonProcess

    class _Daemon(DaemonProcess):
        def command(self) -> list[str]:
            return [*command_prefix, *super().command()] if command_prefix else super().command()

    d = _Daemon(workdir, config, env=dict(env or {"ROUTINGD_LOG_LEVEL": "WARNING"}), start_timeout=start_timeout)
    return d.start()


def wait_drained(daemon: Any, timeout: float) -> tuple[bool, float]:
    """Poll /metrics until routingd_messages_inflight is 0; (drained, seconds waited)."""
    t0 = time.monotonic()
    while True:
        v = daemon.metric("routingd_messages_inflight")
        if v == 0:
            return True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        time.sleep(0.05)


def finished_counts(daemon: Any) -> dict[str, float]:
    out = {"accepted": daemon.metric("routingd_messages_accepted_total") or 0.0}
    for s in ("delivered", "undeliverable", "expired"):
        out[s] = daemon.metric("routingd_messages_finished_total", {"status": s}) or 0.0
    return out


# --------------------------------------------------------------------------- wrk

SEND_LUA = BENCH / "send.lua"
_JSON_RE = re.compile(r"^BENCH_JSON (\{.*\})$", re.M)


@dataclass
class WrkSettings:
    threads: int = 1
    connections: int = 32
    duration_s: int = 8
    timeout_s: int = 10

    def describe(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration_s}s --timeout {self.timeout_s}s"


def wrk_arguments(p: argparse.ArgumentParser) -> None:
    """The command-line flags of a benchmark that runs wrk in alternating baseline/subject rounds."""
    p.add_argument("--duration", type=int, default=8, help="wrk seconds per side (default 8)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/subject rounds, best counts")


def wrk_settings(a: argparse.Namespace) -> WrkSettings:
    """The WrkSettings of wrk_arguments' flags."""
    return WrkSettings(a.threads, a.connections, a.duration)


@dataclass
class WrkResult:
    requests: int
    accepted: int              # 202 answers
    other: int                 # any other status
    errors: int                # connect/read/write errors and timeouts
    duration_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s if self.duration_s else 0.0


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not installed: run `sh tools/ensure-wrk.sh` (Debian/Ubuntu: apt-get install "
                         "wrk), or skip the wrk benchmarks with --skip ingress,delivery")
    return path


def start_wrk(url: str, settings: WrkSettings, body: str, log_path: Path) -> subprocess.Popen[bytes]:
    """wrk in the background (stop it with SIGINT: it then prints its summary and exits)."""
    cmd = [wrk_path(), f"-t{settings.threads}", f"-c{settings.connections}", f"-d{settings.duration_s}s",
           f"--timeout={settings.timeout_s}s", "-s", str(SEND_LUA), url]
    out = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, env={**os.environ, "BENCH_BODY": body}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    finally:
        out.close()


def run_wrk(url: str, settings: WrkSettings, body: str, log_path: Path | None = None) -> WrkResult:
    """POST `body` to `url` with wrk and benchmarks/send.lua; bounded by the duration + a margin."""
    cmd = [wrk_path(), f"-t{settings.threads}", f"-c{settings.connections}", f"-d{settings.duration_s}s",
           f"--timeout={settings.timeout_s}s", "-s", str(SEND_LUA), url]
    env = {**os.environ, "BENCH_BODY": body}
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=settings.duration_s + settings.timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(cmd)}") from None
    if log_path is not None:
        log_path.write_text(p.stdout + p.stderr)
    m = _JSON_RE.search(p.stdout)
    if p.returncode != 0 or m is None:
        raise BenchError(f"wrk failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}")
    d = json.loads(m.group(1))
    return WrkResult(requests=d["requests"], accepted=d["accepted"], other=d["other"],
                     errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
                     duration_s=d["duration_us"] / 1e6, p50_s=d["p50_us"] / 1e6, p90_s=d["p90_us"] / 1e6,
                     p99_s=d["p99_us"] / 1e6, max_s=d["max_us"] / 1e6)


def send_body(seq: int | None = None) -> str:
    """The send request every load generator posts (Courier's message shape, the default route)."""
    msg: dict[str, Any] = {"to": {"user_id": "u1", "email": "a@example.com"},
                           "content": {"title": "Disk full", "body": "Disk /var is 95% full on db-1"},
                           "metadata": {"tags": ["bench"]}}
    if seq is not None:
        msg["metadata"]["bench_seq"] = seq
    return json.dumps({"message": msg}, separators=(",", ":"))
