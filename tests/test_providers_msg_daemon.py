"""Failover across real provider types in a real daemon: an SMS that Twilio refuses for good
(invalid number, 21211) fails the sms channel at once -- no retry, no other sms provider -- and the
route moves on to the chat channel, where Slack delivers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess, StandinLoop  # noqa: E402
from vendor_standins import SlackStandin, TwilioStandin  # noqa: E402

SID, TOKEN = "AC" + "c" * 32, "twilio-token-in-no-answer"

CONFIG = """
version = 1
[timeouts]
provider = "5s"
channel = "20s"
message = "60s"

[providers.twilio]
type = "twilio"
account_sid = "{sid}"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
from = "+15017122661"
base_url = "{twilio}"
retries = 2

[providers.backup_sms]
type = "twilio"
account_sid = "{sid}"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
from = "+15017122662"
base_url = "{twilio}"

[providers.slack]
type = "slack"
webhook_url = "${{SLACK_WEBHOOK_URL}}"

[channels.sms]
providers = ["twilio", "backup_sms"]
requires = "phone_number"

[channels.chat]
providers = ["slack"]

[routes.default]
channels = ["sms", "chat"]
"""


def start(standins: StandinLoop, s: Any) -> Any:
    standins.call(s.start())
    standins.standins.append(s)
    return s


def test_twilio_invalid_number_fails_the_sms_channel_and_the_route_moves_on_to_slack(
        tmp_path: Path, standins: StandinLoop) -> None:
    twilio = start(standins, TwilioStandin(SID, TOKEN))
    slack = start(standins, SlackStandin())
    env = {"TWILIO_AUTH_TOKEN": TOKEN, "SLACK_WEBHOOK_URL": slack.webhook_url}
    d = DaemonProcess(tmp_path, CONFIG.format(sid=SID, twilio=twilio.url), env=env)
    with d:
        ok = d.send({"to": {"phone_number": "+15558675310"}, "content": {"title": "t", "body": "first"}})
        st = d.wait_status(ok, "delivered")
        assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == [("twilio", "delivered")]

        bad = d.send({"to": {"phone_number": "+15005550001"}, "content": {"title": "t", "body": "disk full"}})
        st = d.wait_status(bad, "delivered")
        attempts = [(a["channel"], a["provider"], a["outcome"], a["status_code"]) for a in st["attempts"]]
        assert attempts == [("sms", "twilio", "rejected", 400), ("chat", "slack", "delivered", 200)]
        assert st["attempts"][0]["detail"].startswith("twilio 21211: ")
        assert slack.requests[-1].json == {"text": "disk full"}
        assert len(twilio.requests) == 2           # no retry and no second sms provider for a bad number
        answers = d.get(f"/v1/messages/{bad}").body.decode() + d.get("/v1/config").body.decode()
        assert d.stop() == 0
    assert TOKEN not in d.log_text() + answers and "XXXXXXXX" not in d.log_text() + answers
