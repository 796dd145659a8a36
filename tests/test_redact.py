"""No provider credential in any attempt detail (docs/security.md): every error path of the
`http` and `mqtt` adapters, against real loopback peers, with secrets in the provider's URL
path and query, in its headers, and echoed back in the provider's answer body."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from routingd.daemon.adapters import AdapterContext, AttemptRequest
from routingd.daemon.core.policy import HttpProvider, MqttProvider, MqttSection
from routingd.daemon.mqtt import MqttLink, MqttProviderAdapter
from routingd.daemon.providers.http import HttpAdapter, make_http_session
from routingd.daemon.providers.redact import config_secrets, redact

PATH_KEY = "bot123456:AAH-path_key~x"
QUERY_KEY = "qk-Live-0a9b8c7d"
HEADER_KEY = "hk-Bearer-5e6f7a8b"
API_KEY = "xk-api-1c2d3e4f"
MQTT_PASSWORD = "mqtt-Pw-9z8y7x"
SECRETS = (PATH_KEY, QUERY_KEY, HEADER_KEY, API_KEY, MQTT_PASSWORD)


def leaked(text: str) -> list[str]:
    from urllib.parse import quote
    out = []
    for s in SECRETS:
        for form in (s, repr(s)[1:-1], quote(s, safe=""), quote(s), "AAH-path", "/sendMessage"):
            if form in text:
                out.append(form)
    return out


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo_500(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    head = await r.readuntil(b"\r\n\r\n")           # the request line and headers, echoed back
    body = head.replace(b"\r\n", b" ")[:190]
    w.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await w.drain()
    w.close()


async def _malformed(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readuntil(b"\r\n\r\n")
    w.write(b"HTTP/1.1 2x0 Fine\r\n\r\n")           # aiohttp: ClientResponseError ... url='...'
    await w.drain()
    w.close()


async def _truncated(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readuntil(b"\r\n\r\n")
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    await w.drain()
    w.close()


async def _reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readuntil(b"\r\n\r\n")
    w.close()


async def _redirect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    head = await r.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1]
    body = b"moved to http://127.0.0.1" + path
    w.write(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body))
    await w.drain()
    w.close()


def _request() -> AttemptRequest:
    return AttemptRequest("m1", "m1.0.1", "chat", "bot", 1, 5.0, "m1:chat:bot",
                          to={"user_id": "u1"}, content={"title": "t"})


async def _http_outcome(handler: Handler | None) -> Any:
    if handler is None:                 # connection refused: a port with nothing listening
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        server = None
    else:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    from urllib.parse import quote
    url = f"http://127.0.0.1:{port}/{quote(PATH_KEY, safe=':')}/sendMessage?key={QUERY_KEY}"
    cfg = HttpProvider(type="http", url=url, headers={"Authorization": f"Bearer {HEADER_KEY}", "X-Api-Key": API_KEY})
    session = make_http_session()
    try:
        return await HttpAdapter("bot", cfg, AdapterContext(http_session=session)).send(_request())
    finally:
        await session.close()
        if server is not None:
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize("name, handler", [("status", _echo_500), ("malformed", _malformed),
                                           ("truncated", _truncated), ("reset", _reset),
                                           ("redirect", _redirect), ("refused", None)])
def test_no_http_error_path_shows_a_secret(name: str, handler: Handler | None) -> None:
    outcome = asyncio.run(asyncio.wait_for(_http_outcome(handler), 30))
    assert outcome.detail, outcome
    assert not leaked(outcome.detail), (name, outcome.detail)


def test_no_mqtt_error_path_shows_a_secret() -> None:
    async def go() -> list[str]:
        link = MqttLink(MqttSection(url=f"mqtt://routingd:{MQTT_PASSWORD}@127.0.0.1:1"))
        # what a failed connect left behind: aiomqtt/paho text may quote the broker URL
        link.last_error = f"[Errno 111] Connect call failed mqtt://routingd:{MQTT_PASSWORD}@127.0.0.1:1/x?k=v"
        out = []
        for topic in ("alerts/{to.user_id}", "alerts/{to.missing}"):
            cfg = MqttProvider(type="mqtt", topic=topic)
            outcome = await MqttProviderAdapter("bus", cfg, link).send(_request())
            out.append(outcome.detail)
        return out

    for detail in asyncio.run(go()):
        assert detail and not leaked(detail), detail


def test_redact_masks_every_rendering_and_cuts_urls() -> None:
    secrets = config_secrets(f"https://api.example/{PATH_KEY}/send?token={QUERY_KEY}",
                             {"Authorization": f"Bearer {HEADER_KEY}"})
    text = (f"ClientResponseError: 400, url='https://api.example/x/{QUERY_KEY}' {PATH_KEY!r} "
            f"Bearer {HEADER_KEY}\nsecond line https://user:pw@host:8443/a?b=c#d")
    out = redact(text, secrets)
    assert not leaked(out), out
    assert "https://api.example" in out and "https://host:8443" in out and "pw" not in out
    assert "\n" not in out


# -- a secret that straddles the cut ------------------------------------------------------------

STRADDLE_SECRET = "sk-Straddle-7q6w5e4r3t2y"


def _straddling(prefix: str) -> str:
    """An error text in which STRADDLE_SECRET starts a few characters before position 300 (the
    detail's bound), so that cutting before masking would keep its head."""
    return "x" * (300 - len(prefix) - 10) + " " + STRADDLE_SECRET + " and more text after it"


def _vendor_details() -> dict[str, str]:
    """Each vendor adapter's detail for an error answer whose text echoes the secret across the cut."""
    from routingd.daemon.providers import fcm, slack, twilio
    from routingd.daemon.providers.sendgrid import _errors
    from routingd.daemon.providers.ses import _error
    from routingd.daemon.providers.vendor import VendorAnswer
    import json as _json

    def answer(body: Any, status: int = 400) -> VendorAnswer:
        raw = body if isinstance(body, bytes) else _json.dumps(body).encode()
        return VendorAnswer(status=status, headers={}, body=raw)

    return {
        "twilio": twilio.outcome(answer({"code": 21211, "message": _straddling("twilio 21211: ")})).detail or "",
        "twilio (plain body)": twilio.outcome(answer(_straddling("twilio HTTP 400: ").encode())).detail or "",
        "fcm": fcm.outcome(answer({"error": {"status": "INVALID_ARGUMENT",
                                             "message": _straddling("fcm INVALID_ARGUMENT: ")}})).detail or "",
        "slack": slack.api_outcome(answer({"ok": False, "error": _straddling("slack ")}, status=200)).detail or "",
        "slack webhook": slack.webhook_outcome(answer(_straddling("slack webhook HTTP 400: ").encode())).detail or "",
        "sendgrid": _errors(_straddling("").encode()),
        "ses": "SES {}: {}".format(*_error(None, None, _straddling("SES 400: ").encode())),
    }


@pytest.mark.parametrize("vendor", sorted(_vendor_details()))
def test_a_secret_straddling_the_detail_bound_is_masked_whole(vendor: str) -> None:
    """The adapters keep a vendor's text whole (up to MAX_RAW) and the runtime's backstop masks the
    provider's secrets, then cuts to MAX_DETAIL: no head of a secret survives a cut made first."""
    from routingd.daemon.providers.redact import MAX_DETAIL
    detail = _vendor_details()[vendor]
    assert STRADDLE_SECRET in detail, detail           # what reaches the backstop still holds it whole
    shown = redact(detail, (STRADDLE_SECRET,))          # the runtime's backstop (runtime: adapter.masked)
    assert len(shown) <= MAX_DETAIL
    heads = [STRADDLE_SECRET[:n] for n in range(6, len(STRADDLE_SECRET) + 1)]
    assert not [h for h in heads if h in shown], shown
    assert "***" in shown
