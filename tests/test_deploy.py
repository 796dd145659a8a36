"""deploy/: the systemd unit (systemd-analyze verify/security) and the production example policy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from routingd.daemon.core.durations import parse_duration_ms
from routingd.daemon.core.plan import resolve_plan
from routingd.daemon.core.policy import PolicyError, parse_policy

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "routingd.service"
EXAMPLE = REPO / "deploy" / "routing.example.toml"
ROUTINGD = Path(sys.executable).parent / "routingd"

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


# ------------------------------------------------------------------ systemd-analyze


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: run `sh tools/ensure-systemd-analyze.sh` "
                    "(make test does) or install the systemd package")
    return tool


def systemd_version() -> int:
    out = subprocess.run([systemd_analyze(), "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    m = re.match(r"systemd (\d+)", out)
    assert m, out
    return int(m.group(1))


def verify(unit: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify`; the exit code and the problems it printed.

    systemd < 253 does not know Type=notify-reload yet and says so; that line alone is
    tolerated there (the unit then needs the drop-in in docs/operations.md)."""
    proc = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    old = systemd_version() < 253
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()
                and not (old and line.endswith("Failed to parse service type, ignoring: notify-reload"))]
    return proc.returncode, problems


def test_unit_passes_systemd_analyze_verify() -> None:
    rc, problems = verify(UNIT)
    assert rc == 0 and problems == [], problems


@pytest.mark.parametrize("mistake, replacement, expect", [
    ("ProtectSystem=strict", "ProtectSystm=strict", "Unknown key"),
    ("ExecStart=/usr/bin/env ", "ExecStart=/nonexistent/bin/env ", "/nonexistent/bin/env"),
])
def test_verify_would_catch_a_broken_unit(tmp_path: Path, mistake: str, replacement: str, expect: str) -> None:
    text = UNIT.read_text()
    assert mistake in text
    broken = tmp_path / "routingd.service"
    broken.write_text(text.replace(mistake, replacement))
    rc, problems = verify(broken)
    assert rc != 0 or problems
    assert any(expect in p for p in problems), problems


def test_unit_hardening_exposure_stays_low() -> None:
    proc = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for routingd.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def unit_settings(text: str) -> dict[str, list[str]]:
    """"Section.Key" -> every value assigned to it, in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def parse_size(value: str) -> int:
    """A systemd byte size: 1536M, 1G, 1073741824 (base 1024)."""
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_unit_declares_the_runtime_contract() -> None:
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Service.Type"] == "notify-reload"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.Restart"] == "on-failure"
    assert parse_duration_ms(one["Service.WatchdogSec"]) == 30_000
    # the stop timeout leaves room for the daemon's grace period (default 10s) to run out
    assert parse_duration_ms(one["Service.TimeoutStopSec"]) > 10_000
    assert one["Service.ExecStart"] == ("/usr/bin/env routingd serve --config %E/routingd/routing.toml"
                                        " --state %S/routingd/routingd.db")
    for key, value in {"DynamicUser": "yes", "StateDirectory": "routingd",
                       "ConfigurationDirectory": "routingd", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
                       "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
                       "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
                       "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
                       "ProtectClock": "yes", "ProtectHostname": "yes", "UMask": "0077"}.items():
        assert one.get(f"Service.{key}") == value, key
    assert s["Service.SystemCallFilter"][0] == "@system-service"
    # memory and tasks bounded by the unit too, above what the daemon's own [daemon] limits allow
    # (100k pending messages measured 657 MiB RSS, docs/performance.md)
    assert parse_size(one["Service.MemoryHigh"]) >= 1024 ** 3
    assert parse_size(one["Service.MemoryMax"]) > parse_size(one["Service.MemoryHigh"])
    assert parse_size(one["Service.MemoryMax"]) <= 4 * 1024 ** 3
    assert 32 < int(one["Service.TasksMax"]) <= 256
    # AF_UNIX must stay allowed: the sd_notify socket is an AF_UNIX datagram socket
    assert "AF_UNIX" in one["Service.RestrictAddressFamilies"].split()


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_RUN = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(%d, %d, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_MDWE) failed: " + os.strerror(ctypes.get_errno()))
    os.execv(sys.argv[1], sys.argv[1:])
""" % (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN))


def mdwe_supported() -> bool:
    """PR_SET_MDWE (Linux >= 6.3) is the kernel's own MemoryDenyWriteExecute= (which systemd
    implements with seccomp); probe it in a child so this process stays unrestricted."""
    code = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(%d, %d, 0, 0, 0) != 0)" % (
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def test_python_and_the_daemon_run_under_memory_deny_write_execute(tmp_path: Path) -> None:
    if not mdwe_supported():
        pytest.skip(f"kernel {os.uname().release} lacks PR_SET_MDWE (Linux >= 6.3); "
                    "the unit's MemoryDenyWriteExecute=yes is then checked by systemd only")
    code = textwrap.dedent("""
        import ctypes, mmap, pkgutil, importlib, ssl, sqlite3, asyncio
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            raise SystemExit("W+X mapping was allowed: MDWE is not in force")
        except PermissionError:
            pass
        import routingd.daemon
        for m in pkgutil.walk_packages(routingd.daemon.__path__, "routingd.daemon."):
            importlib.import_module(m.name)
        ssl.create_default_context()
        sqlite3.connect(":memory:").execute("select 1")
        CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)     # a libffi closure
        assert CB(lambda x: x + 1)(1) == 2
        async def echo():
            from aiohttp import web, ClientSession
            app = web.Application()
            app.router.add_get("/", lambda r: web.json_response({"ok": True}))
            runner = web.AppRunner(app); await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
            port = site._server.sockets[0].getsockname()[1]
            async with ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/") as resp:
                    assert (await resp.json()) == {"ok": True}
            await runner.cleanup()
        asyncio.run(echo())
        print("mdwe ok")
    """)
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_RUN)
    proc = subprocess.run([sys.executable, str(wrapper), sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "mdwe ok" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------ routing.example.toml


def example_env() -> dict[str, str]:
    """Every ${VAR} the (uncommented) example names, set to a dummy secret."""
    text = EXAMPLE.read_text()
    live = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    names = {m.group(1) for m in VAR.finditer(live)}
    assert {"SMTP_PASSWORD", "SENDGRID_API_KEY", "TWILIO_AUTH_TOKEN", "SLACK_WEBHOOK_URL", "ROUTINGD_TOKEN"} <= names, names
    return {n: (f"https://hooks.example.com/services/secret-{n.lower()}" if n.endswith("_URL") else f"secret-{n.lower()}")
            for n in names}


def test_example_is_valid_when_its_variables_are_set() -> None:
    env = example_env()
    policy = parse_policy(EXAMPLE.read_text(), str(EXAMPLE), env=env)
    assert policy.warnings == ()
    m = policy.model
    # the vendors' own types, not http relays (docs/providers.md)
    assert {n: p.type for n, p in m.providers.items()} == {
        "ses": "ses", "relay": "smtp", "sendgrid": "sendgrid", "twilio": "twilio", "fcm": "fcm", "slack": "slack"}
    assert {"email", "sms", "push", "chat"} <= set(m.channels)
    assert m.providers["relay"].password.get_secret_value() == "secret-smtp_password"
    assert m.providers["twilio"].auth_token.get_secret_value() == "secret-twilio_auth_token"
    tokens = [t.get_secret_value() for t in m.daemon.api_tokens]
    assert tokens == [env["ROUTINGD_TOKEN"], env["ROUTINGD_TOKEN_2"]]
    assert m.daemon.mqtt is None                  # commented out
    assert "default" in m.routes
    for route in m.routes:
        assert resolve_plan(policy, route).to_json()["route"] == route


def test_example_drops_unset_token_variables() -> None:
    env = example_env()
    del env["ROUTINGD_TOKEN_2"]
    policy = parse_policy(EXAMPLE.read_text(), str(EXAMPLE), env=env)
    assert [t.get_secret_value() for t in policy.model.daemon.api_tokens] == [env["ROUTINGD_TOKEN"]]


def test_example_names_each_missing_secret() -> None:
    env = example_env()
    del env["SMTP_PASSWORD"], env["TWILIO_AUTH_TOKEN"]
    with pytest.raises(PolicyError) as err:
        parse_policy(EXAMPLE.read_text(), "routing.toml", env=env)
    lines = err.value.lines()
    assert any(re.match(r"routing\.toml:\d+(:\d+)?: providers\.relay\.password: environment variable "
                        "SMTP_PASSWORD is not set", line) for line in lines), lines
    assert any("providers.twilio.auth_token" in line and "TWILIO_AUTH_TOKEN" in line
               for line in lines), lines


def test_example_mqtt_block_is_valid_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    start = text.index("#[daemon.mqtt]")
    block_end = text.index("\n\n", start)
    block = text[start:block_end]
    uncommented = text[:start] + "\n".join(line[1:] for line in block.splitlines()) + text[block_end:]
    policy = parse_policy(uncommented, "routing.toml", env={**example_env(), "MQTT_PASSWORD": "pw"})
    mqtt = policy.model.daemon.mqtt
    assert mqtt is not None and mqtt.tls and mqtt.password is not None


def test_routingd_check_accepts_the_example_with_its_environment() -> None:
    env = {**os.environ, **example_env()}
    ok = subprocess.run([str(ROUTINGD), "check", str(EXAMPLE)], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env.pop("SENDGRID_API_KEY")
    bad = subprocess.run([str(ROUTINGD), "check", str(EXAMPLE)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert "providers.sendgrid.api_key: environment variable SENDGRID_API_KEY is not set" in bad.stderr
    assert "Traceback" not in bad.stderr
