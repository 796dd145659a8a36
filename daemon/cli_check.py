"""`routingd check [PATH...]`: validate routing.toml files as `serve` would start them (exit 0
ok, 1 invalid), and warn about a systemd too old for the unit file."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .annotations import render
from .cli_input import EXIT_INVALID, EXIT_OK, InputError, _err, _plural, default_config, load


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
