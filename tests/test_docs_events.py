"""The JSON examples of docs/api.md and docs/mqtt.md use the ids and event types the daemon sends
(issue 18: the docs showed `01J...-1` and `attempt.timeout`, which never come)."""

from __future__ import annotations

import re
from pathlib import Path

from routingd.daemon.core.commands import EVENT_TYPES  # noqa: E402
from routingd.daemon.core.policy import PROVIDER_TYPES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# the event types the engine emits (daemon/core/commands.py names every one), and those the
# daemon adds itself (vendor states, resume)
EMITTED = set(EVENT_TYPES) | {"vendor_status", "resume_failed", "policy_unavailable"}
MESSAGE_ID = r"[0-9a-f]{27}"


def test_the_engine_emits_the_usual_types() -> None:
    assert {"started", "attempt_started", "attempt_ended", "failover", "finished", "provider_skipped"} <= EMITTED


def test_documented_event_types_and_ids_are_the_daemons() -> None:
    for name in ("api.md", "mqtt.md"):
        text = (ROOT / "docs" / name).read_text()
        types = set(re.findall(r'"type": "([^"]+)"', text))
        # "type" is also a provider's type in the receipts examples
        assert types and types <= EMITTED | {"sms"} | set(PROVIDER_TYPES), (name, types - EMITTED)
        for mid in re.findall(r'"message_id": ?"([^"]+)"', text):
            assert mid == "..." or re.fullmatch(MESSAGE_ID, mid), (name, mid)   # "...": a placeholder
        for aid in re.findall(r'"attempt_id": ?"([^"]+)"', text):
            assert re.fullmatch(MESSAGE_ID + r"\.\d+\.\d+", aid), (name, aid)
