"""What the security review found sound, kept that way (issue 24, "Sound"): ids are not
guessable, request fields never reach a provider's URL or headers (and a `${VAR}` in a request is
never expanded), `${VAR}` in routing.toml is expanded once (a value holding `${...}` stays as it
is), MQTT topic placeholders refuse `/`, `+`, `#`, and log lines are folded onto one line.
(Constant-time token comparison: test_security.py::test_every_secret_comparison_is_hmac_compare_digest_over_all_tokens.)"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess, StandinLoop, serving  # noqa: E402

from routingd.daemon.adapters import AttemptRequest  # noqa: E402
from routingd.daemon.core.policy import parse_policy  # noqa: E402
from routingd.daemon.mqtt import TopicTemplateError, render_topic  # noqa: E402
from routingd.daemon.runtime import new_message_id  # noqa: E402
from routingd.daemon.oplog import configure_logging  # noqa: E402


def test_message_ids_are_not_guessable() -> None:
    """11 hex digits of time, then 64 bits from os.urandom: seeding `random` does not repeat
    them, and ids made together differ in about half of their random bits."""
    random.seed(1)
    a = [new_message_id() for _ in range(2000)]
    random.seed(1)
    b = [new_message_id() for _ in range(2000)]
    assert len(set(a + b)) == 4000
    assert all(re.fullmatch(r"[0-9a-f]{27}", m) for m in a)
    tails = [int(m[11:], 16) for m in a]
    distances = [bin(x ^ y).count("1") for x, y in zip(tails, tails[1:])]
    mean = sum(distances) / len(distances)
    assert 28 < mean < 36, mean                         # 32 for independent random 64-bit values
    for bit in range(64):                               # no stuck bit
        ones = sum((t >> bit) & 1 for t in tails)
        assert 800 < ones < 1200, (bit, ones)


CONFIG = """
version = 1
[daemon]
grace = "200ms"
[providers.mail]
type = "http"
url = "{url}/v1/mail?region=${{REGION}}"
headers = {{ Authorization = "Bearer ${{MAIL_KEY}}", X-Tenant = "acme" }}
[channels.email]
providers = ["mail"]
[routes.default]
channels = ["email"]
"""


def test_request_fields_never_reach_provider_urls_or_headers_and_are_never_expanded(tmp_path: Path) -> None:
    hostile = ["../../admin?x=1#frag", "a\r\nX-Injected: 1", "${MAIL_KEY}", "{to.email}", "%2e%2e/%0d%0a",
               "$(id)", "\u2028\u0000"]
    message = {"to": {"email": hostile[0], "phone_number": hostile[1], "user_id": hostile[2]},
               "content": {"title": hostile[3], "body": hostile[4]},
               "metadata": {"x": hostile[5], "${REGION}": hostile[6]}}
    with StandinLoop() as loop:
        provider = loop.standin([{"status": 200}])
        env = {"MAIL_KEY": "k3y-Secret", "REGION": "eu"}
        with serving(DaemonProcess(tmp_path, CONFIG.format(url=provider.base_url), env=env)) as d:
            r = d.request("POST", "/v1/send", body=json.dumps({"message": message}).encode(),
                          headers={"Content-Type": "application/json", "Idempotency-Key": "client-key-1"})
            assert r.status == 202, r.body
            d.wait_status(r.json()["message_id"], "delivered")
            (rec,) = loop.call(provider.wait_for(1))
    assert rec.path == "/v1/mail"
    assert rec.method == "POST"
    headers = {k.lower(): v for k, v in rec.headers.items()}
    assert headers["authorization"] == "Bearer k3y-Secret" and headers["x-tenant"] == "acme"
    assert "x-injected" not in headers
    # the Idempotency-Key sent to the provider is routingd's own, not the client's
    assert headers["idempotency-key"] != "client-key-1" and "client-key-1" not in json.dumps(headers)
    for value in headers.values():
        for h in hostile:
            assert h not in value
    # request fields reach the provider in the JSON body only, exactly as sent: never expanded
    sent = json.dumps(rec.json)
    assert "k3y-Secret" not in sent and '"eu"' not in sent
    assert rec.json["to"]["user_id"] == "${MAIL_KEY}"
    assert rec.json["content"]["title"] == "{to.email}"
    assert rec.json["metadata"] == message["metadata"]


def test_a_variable_is_expanded_once_and_only_in_routing_toml() -> None:
    text = ('version = 1\n[providers.p]\ntype = "http"\nurl = "https://example.com/send"\n'
            'headers = { Authorization = "Bearer ${A}", X-B = "${B:-${A}}" }\n'
            '[channels.c]\nproviders = ["p"]\n[routes.default]\nchannels = ["c"]\n')
    policy = parse_policy(text, "routing.toml", env={"A": "${B}", "B": "not-this"})
    headers = policy.providers["p"].headers
    assert headers["Authorization"] == "Bearer ${B}"          # A's value is not expanded again


@pytest.mark.parametrize("value", ["a/b", "+", "#", "dev+1", "x#", "a\0b"])
def test_mqtt_topic_placeholders_refuse_level_characters(value: str) -> None:
    req = AttemptRequest(message_id="m1", attempt_id="m1.0.1", channel="push", provider="device", try_no=1,
                         deadline_s=1.0, idempotency_key="k", to={"user_id": value}, content={}, metadata={})
    with pytest.raises(TopicTemplateError, match="holds"):
        render_topic("devices/{to.user_id}/notify", req)


def test_log_records_are_folded_onto_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO")
        log = logging.getLogger("routingd.test")
        log.warning("a value from a request: %s", "first\nsecond\r\nthird\rfourth\u2028fifth\x85"
                    "FORGED 2026-01-01 ERROR routingd: x")
        try:
            raise ValueError("boom\nline two")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert "first | second | third | fourth | fifth | FORGED" in lines[0]
    assert "Traceback" in lines[1] and "boom | line two" in lines[1]
