"""The status page (/ui) rendered by a real headless Chromium against a real daemon on loopback:
the providers table, a breaker opening after an outage, the recent failovers and a message's
attempt timeline. `make test` installs chromium when missing (tools/ensure-chromium.sh)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, serving, wait_until

CHROMIUM = next((p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None)


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    # a missing browser fails the test, never skips it: a skip would hide the untested page
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: make test installs it (tools/ensure-chromium.sh)", pytrace=False)

CONFIG = """
version = 1
[daemon]
grace = "200ms"
[providers.primary]
type = "sandbox"
latency = "1ms"
fail = "error"
breaker = { failures = 2, cooldown = "10m" }
[providers.backup]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["primary", "backup"]
requires = "email"
[routes.default]
channels = ["email"]
"""


def chromium(tmp: Path, url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp / 'chromium-profile'}", *extra, url],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def dom(tmp: Path, url: str) -> str:
    return chromium(tmp, url, "--dump-dom")


def row(page: str, attr: str, value: str) -> str:
    m = re.search(rf'<tr {attr}="{re.escape(value)}">(.*?)</tr>', page, re.S)
    assert m, page[:3000]
    return m.group(1)


def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    with serving(DaemonProcess(tmp_path, CONFIG)) as d:
        page = dom(tmp_path, d.url + "/ui")
        assert "<title>status - routingd</title>" in page
        assert 'data-breaker="closed"' in row(page, "data-provider", "primary")
        assert "no failover since the daemon started" in page

        # the outage: messages fail over to backup until primary's breaker opens
        mids: list[str] = []

        def opened() -> bool:
            mid = d.send({"to": {"email": "a@example.com"}})
            d.wait_status(mid, "delivered")
            mids.append(mid)
            return bool(re.search(r"breaker OPEN", d.log_text()))
        wait_until(opened, timeout=20, what="primary's breaker to open")

        page = dom(tmp_path, d.url + "/ui")
        primary = row(page, "data-provider", "primary")
        assert 'data-breaker="open"' in primary and "until " in primary
        assert 'data-breaker="closed"' in row(page, "data-provider", "backup")
        failovers = re.search(r'<table id="failovers">(.*?)</table>', page, re.S)
        assert failovers and mids[0] in failovers.group(1) and "primary" in failovers.group(1)

        # one message's timeline: primary failed 503, then backup delivered
        page = dom(tmp_path, d.url + f"/ui/messages/{mids[0]}")
        assert re.search(r'id="status">delivered<', page)
        attempts = re.findall(r'<tr data-attempt="([^"]+)">(.*?)</tr>', page, re.S)
        assert [a for a, _ in attempts] == [f"{mids[0]}.0.1", f"{mids[0]}.0.2"]
        assert "primary" in attempts[0][1] and ">failed<" in attempts[0][1]
        assert "backup" in attempts[1][1] and ">delivered<" in attempts[1][1]
        assert 'class="bar"' in attempts[0][1]

        # the lookup form's target redirects to the message page; an unknown id says so
        page = dom(tmp_path, d.url + f"/ui/messages?id={mids[-1]}")
        assert f'data-attempt="{mids[-1]}.0.1"' in html.unescape(page)
        assert "no message nope" in dom(tmp_path, d.url + "/ui/messages/nope")

        shot = tmp_path / "ui.png"
        chromium(tmp_path, d.url + "/ui", f"--screenshot={shot}", "--window-size=1280,800")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
