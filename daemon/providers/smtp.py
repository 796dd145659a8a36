"""Provider adapter of type `smtp`: a relay spoken to with aiosmtplib (docs/providers.md "smtp").

Each attempt is one MIME message (text, plus an HTML alternative when the content has HTML;
Subject, From, To, Date and a fresh Message-ID, which becomes provider_message_id: bounces and
replies quote it) sent as one SMTP transaction on a pooled connection. The pool keeps at most
`pool_size` connections to the relay, each connected (TLS: `starttls` required, `implicit`, or
`none`) and authenticated once, and reused while the relay keeps it open. A connection that
saw an error, was cancelled mid-transaction or was closed by the relay is dropped, never reused.

A reused connection that turns out dead before the relay took the message (the relay closed it
while it sat idle) is replaced once for the same attempt, since nothing was delivered on it.

Relay replies become statuses (docs/providers.md "smtp" has the table): 4yz are transient --
429 when the reply text speaks of a rate or throttling, otherwise 503; 5yz are permanent -- 401
for authentication (530, 534, 535, 538), 413 for 552, 400 for the rest (550/551/553 bad mailbox,
554 transaction failed, ...). A refused or dropped connection or a failed TLS handshake is a
network failure. The adapter keeps only a safety timeout: the runtime cancels at the deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import ssl
from email import charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import aiosmtplib

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome
from .email_common import recipient, sender, vendor_text
from .redact import describe_error

_SAFETY_S = 5.0
_THROTTLED = re.compile(r"throttl|rate|too many|exceeded", re.IGNORECASE)
_AUTH_CODES = frozenset({530, 534, 535, 538})
_DEFAULT_PORT = {"starttls": 587, "implicit": 465, "none": 25}
_local_name: str | None = None
_UTF8 = charset.Charset("utf-8")
_UTF8.body_encoding = charset.QP          # quoted-printable: text stays readable in the raw message


def reply_outcome(code: int, text: str) -> Outcome:
    """The Outcome for a relay's reply `code text` that refused the message."""
    detail = vendor_text(f"SMTP {code} {text}")
    if 400 <= code < 500:
        return Outcome(status=429 if _THROTTLED.search(text) else 503, detail=detail)
    if 500 <= code < 600:
        status = 401 if code in _AUTH_CODES else 413 if code == 552 else 400
        return Outcome(status=status, detail=detail)
    return Outcome(status=502, detail=detail)        # not an SMTP reply code: the relay misbehaved


async def _local_hostname() -> str:
    """The name this host gives in EHLO, looked up once and off the loop (getfqdn may ask DNS)."""
    global _local_name
    if _local_name is None:
        name = await asyncio.to_thread(socket.getfqdn)
        _local_name = name if name and "." in name else "localhost"
    return _local_name


class SmtpAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.host: str = config.host
        self.port: int = config.port or _DEFAULT_PORT[config.tls]
        from_name, self.from_addr = sender(config.from_)
        # a display name outside ASCII is RFC 2047-encoded by formataddr
        self.from_header = email.utils.formataddr((from_name, self.from_addr), charset="utf-8")
        self.domain = self.from_addr.rsplit("@", 1)[1]
        self.tls_context: ssl.SSLContext | None = None
        if config.tls != "none":
            self.tls_context = ssl.create_default_context(cafile=config.ca_file)
        self.slots = asyncio.Semaphore(config.pool_size)    # connections in use, hence open, at most
        self.idle: list[aiosmtplib.SMTP] = []
        self.closed = False

    def message(self, req: AttemptRequest, to: str) -> Message:
        """The MIME message; built with the email package's compat32 classes, which build it an
        order of magnitude faster than EmailMessage's header registry (docs/performance.md). No
        header can carry a line break: the subject's whitespace is collapsed, `from` and
        `to.email` are checked to be one address."""
        content = req.body()
        part: Message = MIMEText(content.text, "plain", _UTF8)  # type: ignore[arg-type]  # a Charset works (typeshed: str)
        if content.html is not None:
            msg: Message = MIMEMultipart("alternative")
            msg.attach(part)
            msg.attach(MIMEText(content.html, "html", _UTF8))  # type: ignore[arg-type]
        else:
            msg = part
        subject = " ".join(content.title.split())
        msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")  # type: ignore[assignment]
        msg["From"] = self.from_header
        msg["To"] = to
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.domain)
        return msg

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, local_hostname=await _local_hostname(),
            use_tls=cfg.tls == "implicit", start_tls=cfg.tls == "starttls", tls_context=self.tls_context,
            username=cfg.username, password=None if cfg.password is None else cfg.password.get_secret_value(),
            timeout=_SAFETY_S)
        await client.connect()
        return client

    async def send(self, req: AttemptRequest) -> Outcome:
        to = recipient(req)
        if isinstance(to, Outcome):
            return to
        try:
            msg = self.message(req, to)
        except (ValueError, UnicodeError) as e:
            return Outcome(status=400, detail=f"the message cannot be built: {vendor_text(str(e))}")
        message_id = str(msg["Message-ID"])
        timeout = max(0.001, req.deadline_s) + _SAFETY_S
        for _ in range(2):
            await self.slots.acquire()
            client: aiosmtplib.SMTP | None = None
            keep = False
            reused = False
            try:
                while self.idle and client is None:
                    c = self.idle.pop()
                    if c.is_connected:
                        client, reused = c, True
                    else:
                        c.close()
                if client is None:
                    client = await self._connect()
                await client.send_message(msg, sender=self.from_addr, recipients=[to], timeout=timeout)
                keep = True
                return Outcome(status=200, provider_message_id=message_id)
            except aiosmtplib.SMTPServerDisconnected as e:
                if reused:
                    continue           # the relay closed it while idle: once more on a new connection
                return Outcome(network=True, detail=vendor_text(f"SMTP connection lost: {e}"))
            except aiosmtplib.SMTPRecipientsRefused as e:
                refused = e.recipients[0] if e.recipients else None
                if refused is None:
                    return Outcome(status=400, detail="SMTP recipient refused")
                return reply_outcome(refused.code, refused.message)
            except aiosmtplib.SMTPResponseException as e:
                return reply_outcome(e.code, e.message)
            except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, ssl.SSLError, OSError) as e:
                return Outcome(network=True, detail=vendor_text(describe_error(e)))
            except aiosmtplib.SMTPException as e:
                # no reply code: the relay lacks what the config requires (STARTTLS, AUTH)
                return Outcome(status=400, detail=vendor_text(f"SMTP: {e}"))
            finally:
                # runs on cancellation too: a connection cut mid-transaction is never reused
                if client is not None:
                    if keep and not self.closed and client.is_connected:
                        self.idle.append(client)
                    else:
                        client.close()
                self.slots.release()
        return Outcome(network=True, detail="SMTP connection lost twice")

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for c in idle:
            try:
                await asyncio.wait_for(c.quit(), 2.0)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                c.close()


register_adapter("smtp", SmtpAdapter)
