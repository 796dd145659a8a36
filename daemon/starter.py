"""The starter routing.toml that `routingd init` writes: the document as data, and its text with
every key explained in a comment (docs/configuration.md has the reference). Kept apart from
cli_init.py, which only writes it.
"""

from __future__ import annotations

import tomllib
from typing import Any

__all__ = ["starter_document", "starter_text"]


def starter_document() -> dict[str, Any]:
    """The starter routing.toml as data; works out of the box (sandbox providers only)."""
    return {
        "version": 1,
        "daemon": {"listen": "127.0.0.1:8080", "state": "routingd.db",
                   "api_tokens": ["${ROUTINGD_TOKEN}"]},
        "timeouts": {"provider": "5s", "channel": "30s", "message": "5m"},
        "failover": {"on": [408, 429, "5xx", "timeout", "network"]},
        "providers": {
            "email-primary": {"type": "sandbox", "latency": {"median": "80ms", "p99": "400ms"},
                              "error_rate": 0.01, "retries": 1, "fail": "none"},
            "email-backup": {"type": "sandbox", "latency": {"median": "120ms", "p99": "600ms"},
                             "error_rate": 0.01, "fail": "none"},
            "sms": {"type": "sandbox", "latency": {"median": "200ms", "p99": "1s"},
                    "error_rate": 0.02, "timeout": "10s", "fail": "none"},
            "push": {"type": "sandbox", "latency": {"median": "60ms", "p99": "300ms"},
                     "error_rate": 0.01, "breaker": {"failures": 5, "cooldown": "30s"}, "fail": "none"},
        },
        "channels": {
            "email": {"providers": ["email-primary", "email-backup"], "method": "single",
                      "requires": "email"},
            "push": {"providers": ["push"], "requires": "user_id"},
            "sms": {"providers": ["sms"], "requires": "phone_number", "timeout": "1m"},
        },
        "routes": {
            "default": {"method": "single", "channels": ["email", "push", "sms"]},
            "urgent": {"method": "all", "channels": ["email", "sms"],
                       "timeouts": {"provider": "2s", "channel": "10s", "message": "1m"}},
        },
    }


_HTTP_EXAMPLE = {"providers": {"ses": {
    "type": "http", "url": "https://email.example.com/send",
    "headers": {"Authorization": "Bearer ${SES_TOKEN}"},
    "timeout": "20s", "retries": 1, "confirm": "receipt", "receipt_timeout": "2m",
    "receipt_secret": "${SES_RECEIPT_SECRET}",
}}}

_MQTT_EXAMPLE = {"providers": {"devices": {
    "type": "mqtt", "topic": "devices/{to.user_id}/notify", "qos": 1}}}

# Comment lines above each part of the starter file, and short comments after some keys.
_HEADER = """\
# routing.toml — the routingd routing policy (written by `routingd init`).
#
# Which channels (email, sms, push, ...) and which providers inside each channel routingd tries
# for a message, in which order, and how long it waits at each level. Check it with
#     routingd check routing.toml
# and see the resolved failover plan of a route, with every effective timeout, with
#     routingd explain default
# Every key is described in docs/configuration.md. Durations are strings ("250ms", "10s", "5m",
# "72h", "1m30s") or integers in milliseconds; "${VAR}" is replaced from the environment.
"""

_SECTIONS: list[tuple[str, str]] = [
    ("version", ""),
    ("daemon", """\
# Process settings. listen: HOST:PORT of the HTTP API; state: the SQLite file that keeps every
# message durable; api_tokens: bearer tokens the API accepts (an unset variable = no token; no
# tokens at all = no auth, only allowed on a loopback address). Add [daemon.mqtt] to publish
# delivery events over MQTT."""),
    ("timeouts", """\
# Default timeouts for every route (built-in when absent: provider 5m, channel 30m, message 72h).
# provider: one attempt at one provider; channel: all attempts in a channel together; message:
# the whole delivery. The most specific setting wins: [providers.X] timeout beats these, and so
# does a route's `timeouts` or a send request's own `timeout`."""),
    ("failover", """\
# Outcomes that fail over (retry the provider if it has retries left, else try the next
# provider). Any other outcome — e.g. 400, 401, 422 — fails the channel; the route goes on."""),
    ("providers", """\
# Providers. These are `sandbox` providers: in-process stand-ins with the simulator's provider
# model, so this file works with no outside service. latency is a log-normal fitted to a median
# and a 99th percentile (or one duration for a constant); error_rate is the share of 5xx answers.
# Switch an outage on with fail = "down" | "hang" | "error" | "throttle" | "slow" | "flaky" |
# "no-receipts", save, and watch the failover (the daemon reloads the file by itself).
# Common keys: timeout, retries (extra tries before failing over, default 0), confirm
# ("response" or "receipt"), receipt_timeout, breaker (= false turns the circuit breaker off),
# backoff = { base, max }."""),
    ("channels", """\
# Channels. providers: in priority order (provider failover). method: "single" tries one
# provider at a time, "all" sends through every provider. requires: the recipient field
# (message.to.FIELD) this channel needs; a message without it skips the channel."""),
    ("routes", """\
# Routes: named routing policies a send request picks with "route" (none named: default).
# method "single" tries the channels in order until one delivers (channel failover); "all" fans
# out to every channel at once. Items may nest: { method = "all", channels = ["sms", "push"] }.
# A route's `timeouts` override [timeouts] for the messages it routes."""),
]

_KEY_COMMENTS: dict[tuple[str, str], str] = {
    ("daemon", "api_tokens"): "unset ROUTINGD_TOKEN: no auth (loopback only)",
    ("providers.email-primary", "retries"): "one extra try before failing over to email-backup",
    ("providers.email-primary", "fail"): "none | down | hang | error | throttle | slow | flaky | no-receipts",
    ("providers.sms", "timeout"): "this provider's own timeout beats [timeouts] provider",
    ("channels.sms", "timeout"): "this channel's own timeout beats [timeouts] channel",
    ("routes.default", "channels"): "email, else push, else sms",
    ("routes.urgent", "channels"): "email and sms at once",
}


def _collapse_arrays(fragment: str, width: int = 100) -> str:
    """Put tomli-w's one-item-per-line arrays of scalars on one line when they fit."""
    out: list[str] = []
    lines = fragment.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.endswith(" = [") and not line.startswith(" "):
            items: list[str] = []
            j = i + 1
            while j < len(lines) and lines[j].startswith("    ") and lines[j].endswith(","):
                items.append(lines[j].strip()[:-1])
                j += 1
            if j < len(lines) and lines[j] == "]" and items \
                    and not any(it.startswith(("[", "{")) for it in items):
                joined = f"{line}{', '.join(items)}]"
                if len(joined) <= width:
                    out.append(joined)
                    i = j + 1
                    continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def _annotate(fragment: str) -> str:
    """Append the _KEY_COMMENTS to the key lines of a tomli-w fragment."""
    out: list[str] = []
    table = ""
    for line in _collapse_arrays(fragment).splitlines():
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[]")
        else:
            key = line.split(" = ", 1)[0]
            comment = _KEY_COMMENTS.get((table, key))
            if comment and " = " in line:
                line = f"{line}  # {comment}"
        out.append(line)
    return "\n".join(out) + "\n"


def starter_text() -> str:
    """The commented starter file: the document dumped by tomli-w, a section at a time."""
    import tomli_w

    doc = starter_document()
    parts = [_HEADER]
    for key, comment in _SECTIONS:
        if comment:
            parts.append("\n" + comment + "\n")
        if key in ("providers", "channels", "routes"):
            for name, body in doc[key].items():
                parts.append(_annotate(tomli_w.dumps({key: {name: body}})) + "\n")
            if key == "providers":
                parts.append("# A real HTTP provider looks like this (see deploy/routing.example.toml);\n"
                             "# the http provider POSTs the message as JSON to url with these headers:\n#\n")
                parts.append(_commented(_collapse_arrays(tomli_w.dumps(_HTTP_EXAMPLE))))
                parts.append("#\n# and an MQTT provider publishes the message to a topic (needs [daemon.mqtt]):\n#\n")
                parts.append(_commented(tomli_w.dumps(_MQTT_EXAMPLE)) + "\n")
        else:
            parts.append(_annotate(tomli_w.dumps({key: doc[key]})))
    text = "".join(parts).rstrip("\n") + "\n"
    if tomllib.loads(text) != doc:  # the comments and layout must not change the data
        raise AssertionError("routingd init: the starter file does not round-trip")
    return text


def _commented(fragment: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in fragment.splitlines())
