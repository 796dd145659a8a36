"""The `routingd` command line, run as a real process: check, explain, init, delegation, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "routing.toml"
_SCRIPT = Path(sys.executable).parent / "routingd"
ROUTINGD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "routingd.daemon.cli"]
TIMEOUT = 60


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_") and k != "INVOCATION_ID"}
    e.update(env or {})
    p = subprocess.run([*ROUTINGD, *map(str, args)], cwd=cwd or ROOT, env=e, input=stdin,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def err_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.strip()]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- general


def test_help_lists_all_six_commands() -> None:
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("serve", "check", "explain", "init", "try", "simulate"):
        assert re.search(rf"^\s+{cmd}\s", p.stdout, re.M), p.stdout


def test_version() -> None:
    p = run("--version")
    assert p.returncode == 0
    assert re.fullmatch(r"routingd \S+, core (compiled \(mypyc\)|pure Python \(.+\))\n", p.stdout)


def test_usage_errors_are_one_line_exit_2() -> None:
    p = run("check", "--no-such-flag")
    assert p.returncode == 2
    assert len(err_lines(p)) == 1 and "--no-such-flag" in p.stderr
    p = run("frobnicate")
    assert p.returncode == 2
    assert len(err_lines(p)) == 1 and "frobnicate" in p.stderr


# --------------------------------------------------------------------------- check


def test_check_bundled_routing_toml() -> None:
    p = run("check", BUNDLED)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"{re.escape(str(BUNDLED))}: ok \(version [0-9a-f]{{16}}; 5 providers, "
                        r"3 channels, 2 routes\)\n", p.stdout), p.stdout
    assert p.stderr == ""


def test_check_default_path_is_cwd_then_env(tmp_path: Path) -> None:
    (tmp_path / "routing.toml").write_bytes(BUNDLED.read_bytes())
    p = run("check", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("routing.toml: ok ")
    other = write(tmp_path / "other.toml", "version = 2\n")
    p = run("check", cwd=tmp_path, env={"ROUTINGD_CONFIG": str(other)})
    assert p.returncode == 1
    assert err_lines(p) == [f"{other}:1: version: Input should be 1, got 2"]


BAD = """\
version = 1

[timeouts]
provider = "ten seconds"

[providers.ses]
type = "sandbox"
colour = "blue"

[providers.hook]
type = "http"

[channels.email]
providers = ["ses", "mailgun"]

[routes.default]
channels = ["email", "fax"]
"""


def test_check_reports_every_error_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", BAD)
    p = run("check", path)
    assert p.returncode == 1
    assert p.stdout == ""
    lines = err_lines(p)
    located = re.compile(re.escape(str(path)) + r":\d+(:\d+)?: ")     # PATH:LINE[:COL]: like nginx -t
    assert all(located.match(line) for line in lines), lines
    keys = {line.split(": ")[1] for line in lines}
    assert {"timeouts.provider", "providers.ses.colour", "providers.hook.url"} <= keys, lines
    assert any("bad duration" in line for line in lines)
    assert any("unknown key" in line for line in lines)


def test_check_reports_every_reference_error(tmp_path: Path) -> None:
    text = BAD.replace('provider = "ten seconds"', 'provider = "10s"').replace('colour = "blue"\n', "") \
              .replace('type = "http"\n', 'type = "http"\nurl = "https://hook.example.com/"\n')
    path = write(tmp_path / "refs.toml", text)
    p = run("check", path)
    assert p.returncode == 1
    assert sorted(err_lines(p)) == sorted([
        f"{path}:14:21: channels.email.providers.1: unknown provider 'mailgun'; defined providers: hook, ses",
        f"{path}:17:22: routes.default.channels.1: unknown channel 'fax'; defined channels: email",
    ])


@pytest.mark.parametrize("name, content, reason", [
    ("missing.toml", None, "cannot read file"),
    ("a-directory", "DIR", "is a directory"),
    ("junk.toml", bytes(range(256)) * 4, "not UTF-8"),
    ("nul.toml", b"\x00\x01version = 1\n", "not valid TOML"),
    ("broken.toml", b"[providers.ses\ntype = 'sandbox'\n", "not valid TOML"),
])
def test_check_unusable_files_one_line_exit_1(tmp_path: Path, name: str, content: Any, reason: str) -> None:
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    p = run("check", path)
    assert p.returncode == 1
    lines = err_lines(p)
    assert len(lines) == 1 and re.match(re.escape(str(path)) + r"(:\d+:\d+)?: \(file\): ", lines[0]) \
        and reason in lines[0], lines
    if reason == "not valid TOML":      # tomllib's position, as PATH:LINE:COL
        assert re.match(re.escape(str(path)) + r":\d+:\d+: ", lines[0]), lines


def test_check_warnings_go_to_stderr_and_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path / "warn.toml", """\
[timeouts]
message = "1m"
[providers.p]
type = "sandbox"
[channels.c]
providers = ["p"]
timeout = "5m"
[routes.main]
channels = ["c"]
""")
    p = run("check", path)
    assert p.returncode == 0
    assert p.stdout.startswith(f"{path}: ok (version ")
    lines = err_lines(p)
    assert any(line.startswith(f"{path}: warning: channels.c.timeout") for line in lines), lines
    assert any(line.startswith(f"{path}: warning: no [routes.default]") for line in lines), lines


@pytest.mark.parametrize("version, under_systemd, warned", [
    ("systemd 252 (252.38-1~deb12u1)", True, True),
    ("systemd 253 (253.5)", True, False),
    ("systemd 256 (256.7-1)", True, False),
    ("systemd 252 (252.38-1~deb12u1)", False, False),     # not run by systemd: nothing to tell
])
def test_check_warns_under_a_systemd_older_than_253(tmp_path: Path, version: str, under_systemd: bool,
                                                     warned: bool) -> None:
    """The unit's ExecStartPre runs `routingd check`: under systemd 252 it says that
    Type=notify-reload is unknown there and names the drop-in (a stand-in systemctl on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = write(bin_dir / "systemctl", f"#!/bin/sh\necho '{version}'\necho '+PAM +AUDIT'\n")
    tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    if under_systemd:
        env["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
    p = run("check", BUNDLED, env=env)
    assert p.returncode == 0
    lines = [line for line in err_lines(p) if "notify-reload" in line]
    if warned:
        assert len(lines) == 1, err_lines(p)
        assert lines[0].startswith("warning: systemd 252 does not know Type=notify-reload")
        assert "Type=notify" in lines[0] and "docs/operations.md" in lines[0]
    else:
        assert lines == [], err_lines(p)


def test_check_several_files_and_stdin(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "version = 1\n[routes.default]\nchannels = ['x']\n")
    p = run("check", BUNDLED, bad)
    assert p.returncode == 1
    assert p.stdout.startswith(f"{BUNDLED}: ok ")
    assert err_lines(p) == [f"{bad}:3:13: routes.default.channels.0: unknown channel 'x'"]
    p = run("check", "-", stdin=BUNDLED.read_text())
    assert p.returncode == 0 and p.stdout.startswith("<stdin>: ok ")


def test_check_names_unset_environment_variables(tmp_path: Path) -> None:
    path = write(tmp_path / "env.toml", """\
[providers.hook]
type = "http"
url = "${HOOK_URL}"
[channels.c]
providers = ["hook"]
[routes.default]
channels = ["c"]
""")
    p = run("check", path)
    assert p.returncode == 1
    assert any(line.startswith(f"{path}:3: providers.hook.url: environment variable HOOK_URL is not set")
               for line in err_lines(p)), p.stderr
    p = run("check", path, env={"HOOK_URL": "http://127.0.0.1:9/hook"})
    assert p.returncode == 0, p.stderr


# A store URL mistyped in the file or in ROUTINGD_STORE: one line naming it from `check` and from
# `serve` (before any connection), never the SQLite file instead, never the password
_BAD_STORES = [
    ("mysql://routingd:s3cret-pw@127.0.0.1/routingd", "expected a PostgreSQL URL"),
    ("postgresql://routingd:s3cret-pw@127.0.0.1:99999/routingd", "port '99999' is not a number from 1 to 65535"),
    ("postgresql://routingd:s3cret-pw@127.0.0.1:pg/routingd", "port 'pg' is not a number from 1 to 65535"),
    ("postgresql://routingd:s3cret-pw@[::1/routingd", "not a valid PostgreSQL URL: end of string reached"),
    ("postgresql://routingd:s3cret-pw%zz@127.0.0.1/routingd", "not a valid PostgreSQL URL: invalid percent-encoded"),
]


@pytest.mark.parametrize("where", ["file", "environment"])
@pytest.mark.parametrize("url,reason", _BAD_STORES)
def test_a_bad_store_url_is_one_line_from_check_and_serve(tmp_path: Path, url: str, reason: str,
                                                         where: str) -> None:
    text = BUNDLED.read_text().replace('state = "routingd.db"', 'state = "routingd.db"\nstore = "{store}"')
    assert "{store}" in text
    if where == "file":
        config, env = write(tmp_path / "routing.toml", text.replace("{store}", url)), {}
    else:
        config, env = BUNDLED, {"ROUTINGD_STORE": url}
    for argv in (["check", config],
                 ["serve", "--config", config, "--listen", "127.0.0.1:0", "--state", tmp_path / "state.db"]):
        p = run(*argv, cwd=tmp_path, env=env)
        assert p.returncode == 1, (argv, p.stdout, p.stderr)
        lines = err_lines(p)
        assert len(lines) == 1 and reason in lines[0] and "store" in lines[0], (argv, lines)
        assert "s3cret-pw" not in p.stdout + p.stderr
        assert "listening" not in p.stderr
    assert not (tmp_path / "state.db").exists()         # no SQLite file instead


@pytest.mark.parametrize("key,value,reason", [
    ("lease", '"500ms"', 'daemon.lease: Input should be greater than or equal to 1000 (milliseconds), got "500ms"'),
    ("lease", '"1d"', 'daemon.lease: Input should be less than or equal to 600000 (milliseconds), got "1d"'),
    ("lease", '"ten seconds"', "daemon.lease: bad duration 'ten seconds'"),
    ("workers", "0", "daemon.workers: Input should be greater than or equal to 1"),
    ("workers", "-1", "daemon.workers: Input should be greater than or equal to 1"),
    ("workers", '"two"', 'daemon.workers: expected an integer, got "two"'),
    ("workers", "65", "daemon.workers: Input should be less than or equal to 64"),
])
def test_a_bad_lease_or_workers_is_one_line_naming_its_unit(tmp_path: Path, key: str, value: str,
                                                           reason: str) -> None:
    """The bounds of a duration are milliseconds whatever unit was written: the line says so
    (and what was written), from the file and from ROUTINGD_*; no connection is made."""
    store = 'store = "postgresql://routingd@127.0.0.1:9/routingd"'
    text = BUNDLED.read_text().replace('state = "routingd.db"', f'state = "routingd.db"\n{store}\n{key} = {value}')
    p = run("check", write(tmp_path / "routing.toml", text))
    assert p.returncode == 1 and len(err_lines(p)) == 1 and reason in err_lines(p)[0], p.stderr
    if value.startswith('"') and key == "lease":
        p = run("check", BUNDLED, env={"ROUTINGD_STORE": "postgresql://routingd@127.0.0.1:9/routingd",
                                       "ROUTINGD_LEASE": value.strip('"')})
        assert p.returncode == 1 and len(err_lines(p)) == 1, p.stderr
        assert "ROUTINGD_LEASE" in err_lines(p)[0] and reason.split(": ", 1)[1].split(", got")[0] in err_lines(p)[0]


def test_interrupt_exits_130_quietly() -> None:
    proc = subprocess.Popen([*ROUTINGD, "check", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            # a runner started in the background may ignore SIGINT; Python then
                            # would not install its handler: give the child the default back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # wait until the process blocks reading stdin (so Python's SIGINT handler is installed)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{proc.pid}/stat").read_text().split(") ", 1)[1].split()[0]
                wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            except OSError:
                state, wchan = "?", ""
            if state == "S" and ("read" in wchan or "wait" in wchan or "pipe" in wchan):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 130
    assert out == "" and err == ""


# --------------------------------------------------------------------------- explain

LEVELS = """\
version = 1

[timeouts]
provider = "11s"
channel = "12m"
message = "13h"

[providers.a]            # has its own timeout
type = "sandbox"
timeout = "21s"
retries = 2

[providers.b]            # takes the general levels
type = "sandbox"
confirm = "receipt"
receipt_timeout = "40s"
breaker = false

[channels.x]             # has its own timeout
providers = ["a", "b"]
timeout = "22m"
requires = "email"

[channels.y]             # takes the general levels
providers = ["b"]
method = "all"

[routes.default]
channels = ["x", "y"]

[routes.r]
method = "all"
channels = ["x", "y"]
timeouts = { provider = "31s", channel = "32m", message = "33h" }
"""

S, M, H = 1000, 60_000, 3_600_000


def explain_json(config: Path, route: str, message: dict[str, Any] | None = None,
                 tmp_path: Path | None = None) -> dict[str, Any]:
    args: list[str | Path] = ["explain", route, "--config", config, "--json"]
    if message is not None:
        assert tmp_path is not None
        args += ["--message", write(tmp_path / "msg.json", json.dumps({"message": message}))]
    p = run(*args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def timeouts(plan: dict[str, Any]) -> dict[str, int]:
    """{"message": ms, "x": ms, "x.a": ms, ...} from an explain --json plan."""
    out = {"message": plan["message_timeout_ms"]}

    def walk(items: list[dict[str, Any]]) -> None:
        for it in items:
            if "channel" in it:
                out[it["channel"]] = it["timeout_ms"]
                for p in it["providers"]:
                    out[f"{it['channel']}.{p['provider']}"] = p["timeout_ms"]
            else:
                walk(it["items"])
    walk(plan["items"])
    return out


def test_explain_json_shape(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    plan = explain_json(config, "default")
    assert plan["route"] == "default" and plan["method"] == "single"
    x, y = plan["items"]
    assert x["channel"] == "x" and x["method"] == "single" and x["requires"] == "email"
    assert [p["provider"] for p in x["providers"]] == ["a", "b"]
    a, b = x["providers"]
    assert a["retries"] == 2 and a["confirm"] == "response"
    # the default breaker: its slow-call mark at half a's own 21 s timeout (on by default since issue 20)
    assert a["breaker"] == {"failures": 5, "cooldown_ms": 30 * S, "slow_ms": 10_500}
    assert b["confirm"] == "receipt" and b["receipt_timeout_ms"] == 40 * S and b["breaker"] is None
    assert y["method"] == "all" and y["requires"] is None


def test_explain_json_file_levels(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    # [timeouts] for what has no own setting; the sections' own timeouts win over [timeouts]
    assert timeouts(explain_json(config, "default")) == {
        "message": 13 * H, "x": 22 * M, "x.a": 21 * S, "x.b": 11 * S, "y": 12 * M, "y.b": 11 * S}
    # the route's timeouts beat [timeouts], but not the sections' own
    assert timeouts(explain_json(config, "r")) == {
        "message": 33 * H, "x": 22 * M, "x.a": 21 * S, "x.b": 31 * S, "y": 32 * M, "y.b": 31 * S}
    # nothing set anywhere: the built-ins 5m / 30m / 72h
    bare = write(tmp_path / "bare.toml", "[providers.p]\ntype = 'sandbox'\n[channels.c]\n"
                                         "providers = ['p']\n[routes.default]\nchannels = ['c']\n")
    assert timeouts(explain_json(bare, "default")) == {"message": 72 * H, "c": 30 * M, "c.p": 5 * M}


def test_explain_json_request_levels(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    to = {"email": "a@example.com"}
    # request timeout.* beats the route and [timeouts], but not the sections' own timeouts
    general = {"to": to, "timeout": {"provider": "41s", "channel": 42 * M, "message": "43h"}}
    assert timeouts(explain_json(config, "r", general, tmp_path)) == {
        "message": 43 * H, "x": 22 * M, "x.a": 21 * S, "x.b": 41 * S, "y": 42 * M, "y.b": 41 * S}
    # request channels.X / providers.X beat everything; Courier's "timeouts" spelling works too
    specific = {**general, "channels": {"x": {"timeout": "52m"}, "y": {"timeouts": 53 * M}},
                "providers": {"a": {"timeouts": "51s"}}}
    assert timeouts(explain_json(config, "r", specific, tmp_path)) == {
        "message": 43 * H, "x": 52 * M, "x.a": 51 * S, "x.b": 41 * S, "y": 53 * M, "y.b": 41 * S}
    # "timeouts" at the message level is accepted as well
    spelled = {"to": to, "timeouts": {"message": "44h"}}
    assert explain_json(config, "r", spelled, tmp_path)["message_timeout_ms"] == 44 * H


def test_explain_json_inline_routing_replaces_the_channels(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    message = {"to": {"email": "a@example.com"},
               "routing": {"method": "all", "channels": ["y", {"method": "single", "channels": ["x"]}]},
               "timeout": {"provider": "41s"}}
    plan = explain_json(config, "r", message, tmp_path)
    assert plan["route"] == "r" and plan["method"] == "all"
    assert plan["items"][0]["channel"] == "y"
    group = plan["items"][1]
    assert group["method"] == "single" and [i["channel"] for i in group["items"]] == ["x"]
    # the route's timeouts still apply under inline routing, below the request's
    assert timeouts(plan) == {"message": 33 * H, "y": 32 * M, "y.b": 41 * S, "x": 22 * M,
                              "x.a": 21 * S, "x.b": 41 * S}


def test_explain_route_from_the_message_or_default(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    msg = write(tmp_path / "m.json", json.dumps({"message": {"to": {"email": "a@b"}, "route": "r"}}))
    p = run("explain", "--config", config, "--message", msg, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["route"] == "r"
    p = run("explain", "--json", env={"ROUTINGD_CONFIG": str(config)})
    assert p.returncode == 0 and json.loads(p.stdout)["route"] == "default"


def test_explain_text_names_the_source_of_every_timeout(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    p = run("explain", "r", "--config", config)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "message timeout 33h  (routes.r.timeouts.message)" in out
    assert "timeout 22m  (channels.x.timeout)" in out
    assert "timeout 32m  (routes.r.timeouts.channel)" in out
    assert re.search(r"a\s+timeout 21s  \(providers\.a\.timeout\)", out), out
    assert re.search(r"b\s+timeout 31s  \(routes\.r\.timeouts\.provider\)", out), out
    assert "source unknown" not in out
    msg = write(tmp_path / "m.json", json.dumps({"message": {
        "to": {"phone_number": "+15550100"}, "timeout": {"channel": "42m", "message": "43h"},
        "providers": {"a": {"timeout": "51s"}}}}))
    p = run("explain", "default", "--config", config, "--message", msg)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "message timeout 43h  (request message.timeout.message)" in out
    assert "timeout 42m  (request message.timeout.channel)" in out
    assert re.search(r"a\s+timeout 51s  \(request message\.providers\.a\.timeout\)", out), out
    assert re.search(r"b\s+timeout 11s  \(timeouts\.provider\)", out), out
    assert "SKIPPED: the recipient has no email" in out
    assert "source unknown" not in out


def test_explain_errors_one_line_each(tmp_path: Path) -> None:
    config = write(tmp_path / "routing.toml", LEVELS)
    p = run("explain", "nope", "--config", config)
    assert p.returncode == 1
    assert err_lines(p) == ["routingd explain: unknown route 'nope'; routes: default, r"]

    bad_json = write(tmp_path / "bad.json", '{"message": {"to": ')
    p = run("explain", "r", "--config", config, "--message", bad_json)
    assert p.returncode == 1
    lines = err_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"{bad_json}: (file): not valid JSON: ")

    invalid = write(tmp_path / "invalid.json", json.dumps({"message": {
        "to": {"email": "a@b"}, "timeout": {"provider": "soon", "channel": -1}, "colour": "red"}}))
    p = run("explain", "r", "--config", config, "--message", invalid)
    assert p.returncode == 1
    lines = err_lines(p)
    assert all(line.startswith(f"{invalid}: message.") for line in lines), lines
    keys = {line.split(": ")[1] for line in lines}
    assert keys == {"message.timeout.provider", "message.timeout.channel", "message.colour"}, lines

    unknown = write(tmp_path / "unknown.json", json.dumps({"message": {
        "to": {"email": "a@b"}, "channels": {"fax": {"timeout": 1}},
        "routing": {"channels": ["x", "pigeon"]}}}))
    p = run("explain", "r", "--config", config, "--message", unknown)
    assert p.returncode == 1
    assert sorted(err_lines(p)) == sorted([
        f"{unknown}: message.channels.fax: unknown channel 'fax'",
        f"{unknown}: message.routing.channels.1: unknown channel 'pigeon'"])

    p = run("explain", "r", "--config", tmp_path / "missing.toml")
    assert p.returncode == 1
    assert len(err_lines(p)) == 1 and "cannot read file" in p.stderr

    p = run("explain", "r", "--config", write(tmp_path / "bad.toml", BAD))
    assert p.returncode == 1 and len(err_lines(p)) >= 4


# --------------------------------------------------------------------------- init


def test_init_writes_a_file_that_passes_check(tmp_path: Path) -> None:
    p = run("init", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    written = tmp_path / "routing.toml"
    text = written.read_text()
    assert text.startswith("#") and text.count("\n#") > 20          # commented
    assert 'type = "sandbox"' in text and 'type = "http"' not in text.replace('# type = "http"', "")
    p = run("check", written)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    for route in ("default", "urgent"):
        p = run("explain", route, "--config", written, "--json")
        assert p.returncode == 0, p.stderr


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.toml", "# my precious policy\n")
    p = run("init", path)
    assert p.returncode == 1
    assert err_lines(p) == [f"{path}: already exists; not overwriting it (use --force to replace it)"]
    assert path.read_text() == "# my precious policy\n"
    p = run("init", path, "--force")
    assert p.returncode == 0
    assert run("check", path).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["mine.toml"]                # no temporary left behind


def test_init_errors_and_stdout(tmp_path: Path) -> None:
    p = run("init", tmp_path / "no" / "such" / "dir" / "routing.toml")
    assert p.returncode == 1 and len(err_lines(p)) == 1 and "cannot write file" in p.stderr
    p = run("init", tmp_path)
    assert p.returncode == 1 and len(err_lines(p)) == 1 and "is a directory" in p.stderr
    p = run("init", "-")
    assert p.returncode == 0
    assert run("check", "-", stdin=p.stdout).returncode == 0


# --------------------------------------------------------------------------- delegation


def test_unavailable_delegate_fails_alone() -> None:
    """A missing or broken serve/simulate module gives one line and exit 2; the rest still work."""
    prog = ("import sys; sys.modules['routingd.simulator.cli'] = None; "
            "from routingd.daemon.cli import main; sys.exit(main(sys.argv[1:]))")

    def py(*args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-c", prog, *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=TIMEOUT)
        assert "Traceback" not in p.stdout + p.stderr
        return p

    p = py("simulate", "scenario.toml", "--seed", "3")
    assert p.returncode == 2
    lines = err_lines(p)
    assert len(lines) == 1 and lines[0].startswith("routingd simulate: not available"), lines
    p = py("--help")
    assert p.returncode == 0 and re.search(r"^\s+simulate\s", p.stdout, re.M)
    p = py("check", str(BUNDLED))
    assert p.returncode == 0 and ": ok (" in p.stdout


# --------------------------------------------------------------------------- reference docs


def test_configuration_reference_names_every_key() -> None:
    """docs/configuration.md documents every key the routing.toml models accept."""
    from pydantic import BaseModel

    from routingd.daemon.core import policy as pol

    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    models: list[type[BaseModel]] = [
        pol.PolicyModel, pol.DaemonSection, pol.MqttSection, pol.TimeoutsSection, pol.FailoverSection,
        pol.ProviderBase, pol.BreakerSection, pol.BackoffSection, pol.HttpProvider, pol.MqttProvider,
        pol.SandboxProvider, pol.ChannelSection, pol.RouteSection, pol.RouteGroup, pol.TemplatePart]
    missing = [f"{m.__name__}.{name}" for m in models for name in m.model_fields
               if not re.search(rf"`\[?(?:[\w.]+\.)?{re.escape(name)}(?:`|\]|\.NAME\])", doc)]
    assert missing == [], f"undocumented keys: {missing}"
    for mode in ("none", "down", "hang", "error", "throttle", "slow", "flaky", "no-receipts"):
        assert f'`"{mode}"`' in doc


LIMITED = """
version = 1
[providers.ses]
type = "http"
url = "http://127.0.0.1:9/ses"
rate_limit = "14/s"
burst = 28
max_inflight = 50
[providers.slow]
type = "http"
url = "http://127.0.0.1:9/slow"
rate_limit = "30/m"
[providers.free]
type = "http"
url = "http://127.0.0.1:9/free"
[channels.email]
providers = ["ses", "slow", "free"]
requires = "email"
[routes.default]
channels = [{ method = "all", channels = ["email"] }]
"""


def test_explain_shows_each_providers_outbound_limit(tmp_path: Path) -> None:
    """rate_limit / burst / max_inflight in the text and in --json (docs/configuration.md "Rate
    limits and priorities"); burst defaults to one second's worth, at least 1."""
    config = write(tmp_path / "routing.toml", LIMITED)
    p = run("explain", "default", "--config", config)
    assert p.returncode == 0, p.stderr
    assert "rate_limit 14/s, burst 28, max_inflight 50" in p.stdout
    assert "rate_limit 30/m, burst 1, max_inflight unbounded" in p.stdout
    assert "no outbound limit" in p.stdout
    plan = explain_json(config, "default")
    (group,) = plan["items"]
    ses, slow, free = group["items"][0]["providers"]
    assert ses["limit"] == {"rate_limit": 14.0, "burst": 28.0, "max_inflight": 50}
    assert slow["limit"] == {"rate_limit": 0.5, "burst": 1.0, "max_inflight": None}
    assert free["limit"] is None
