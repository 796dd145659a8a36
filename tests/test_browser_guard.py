"""Without api_tokens no web page may reach the daemon (docs/security.md): a non-loopback Host
(DNS rebinding) and cross-site requests are 403, and JSON endpoints take application/json only
(415), with tokens too -- the content types a page can send without a preflight are refused."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from daemon_process import DaemonProcess, serving

CONFIG = ('version = 1\n[providers.mail]\ntype = "sandbox"\n[channels.email]\nproviders = ["mail"]\n'
          '[routes.default]\nchannels = ["email"]\n')
SEND = json.dumps({"message": {"to": {"email": "a@example.com"}}}).encode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("browser"), CONFIG)) as d:
        yield d


def post(d: DaemonProcess, path: str, headers: dict[str, str], body: bytes = SEND) -> Any:
    return d.request("POST", path, body=body, headers=headers)


def test_a_web_page_cannot_send_or_reload(daemon: DaemonProcess) -> None:
    ok = {"Content-Type": "application/json"}
    assert post(daemon, "/v1/send", ok).status == 202
    # the finding: fetch(..., {mode: "no-cors"}) with a text/plain body was a 202
    assert post(daemon, "/v1/send", {"Content-Type": "text/plain"}).status == 415
    assert post(daemon, "/v1/send", {}).status == 415
    evil = {**ok, "Origin": "https://evil.example"}
    assert post(daemon, "/v1/send", evil).status == 403
    assert post(daemon, "/-/reload", {"Origin": "https://evil.example"}, b"").status == 403
    assert post(daemon, "/-/reload", {"Sec-Fetch-Site": "cross-site"}, b"").status == 403
    assert post(daemon, "/v1/send", {**ok, "Sec-Fetch-Site": "cross-site"}).status == 403
    # a page of the operator's own loopback origin is the operator's
    assert post(daemon, "/v1/send", {**ok, "Origin": "http://127.0.0.1:3000"}).status == 202
    assert post(daemon, "/-/reload", {}, b"").status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.1", "127.0.0.1.evil.example"])
def test_dns_rebinding_cannot_read_answers(daemon: DaemonProcess, host: str) -> None:
    r = daemon.request("GET", "/v1/config", headers={"Host": host})
    assert r.status == 403 and b"loopback Host" in r.body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8080", "[::1]:8080", "LOCALHOST"])
def test_loopback_hosts_pass(daemon: DaemonProcess, host: str) -> None:
    assert daemon.request("GET", "/v1/config", headers={"Host": host}).status == 200


def test_with_tokens_json_endpoints_still_need_json(tmp_path: Any) -> None:
    with serving(DaemonProcess(tmp_path, CONFIG.replace("version = 1\n", 'version = 1\n[daemon]\napi_tokens = ["t0k-abcdef"]\n'),
                               token="t0k-abcdef")) as d:
        assert post(d, "/v1/send", {"Content-Type": "text/plain"}).status == 415
        assert post(d, "/v1/send", {"Content-Type": "application/json"}).status == 202
