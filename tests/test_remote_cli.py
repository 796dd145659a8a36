"""`routingd status [MESSAGE_ID]` and `routingd providers` against a real daemon (issue 18):
what they print, and their one-line errors (unreachable, wrong token, unknown message)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess, free_port, serving, wait_until  # noqa: E402
from test_operating import TOKEN, config, run  # noqa: E402


def test_status_and_providers_read_a_running_daemon(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config("error", f'api_tokens = ["{TOKEN}"]'), token=TOKEN)
    with serving(d):
        mid = d.send({"to": {"email": "a@example.com"}})
        d.wait_status(mid, "delivered")
        remote = ("--url", d.url, "--token", TOKEN)

        p = run("status", mid, *remote)
        assert p.returncode == 0, p
        head, *attempts = p.stdout.splitlines()
        assert head.startswith(f"message {mid}: delivered  route default"), head
        assert len(attempts) == 2 and "email/primary try 1  failed 503" in attempts[0], attempts
        assert "email/backup try 1  delivered 200" in attempts[1], attempts
        as_json = json.loads(run("status", mid, *remote, "--json").stdout)
        assert as_json == d.status(mid)

        p = run("status", *remote)
        assert p.returncode == 0 and p.stdout.startswith("policy ") and "ready:" in p.stdout, p

        def rows() -> dict[str, list[str]]:
            out = run("providers", *remote).stdout.splitlines()
            return {ln.split()[0]: ln.split() for ln in out[1:] if ln and not ln.startswith("(")}
        wait_until(lambda: rows().get("primary", [""] * 5)[4] == "1", what="the attempt in the providers table")
        table = rows()
        assert table["primary"][:5] == ["primary", "sandbox", "closed", "no", "1"], table
        assert table["backup"][:6] == ["backup", "sandbox", "closed", "no", "1", "100.0%"], table
        providers: dict[str, Any] = json.loads(run("providers", *remote, "--json").stdout)
        assert {p["name"] for p in providers["providers"]} == {"primary", "backup"}

        p = run("status", "1a24ffffffffffffffffffffff0", *remote)
        assert p.returncode == 1 and p.stderr.startswith("routingd: ") and "HTTP 404" in p.stderr, p
        p = run("providers", "--url", d.url, "--token", "wrong")
        assert p.returncode == 1 and "token was not accepted" in p.stderr, p
        assert "Traceback" not in p.stderr

    p = run("providers", "--url", f"http://127.0.0.1:{free_port()}")
    assert p.returncode == 1 and "cannot reach routingd at http://127.0.0.1:" in p.stderr, p
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
