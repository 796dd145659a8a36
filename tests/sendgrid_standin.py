"""A stand-in for SendGrid's v3 Mail Send endpoint on 127.0.0.1, for tests and benchmarks.

    async with SendgridStandin(api_key="SG.test") as sg:
        ... point a `sendgrid` provider's base_url at sg.url ...
        await sg.wait_for(1); sg.mails[0]          # the accepted request bodies

It checks what SendGrid checks before it queues a mail, and answers as SendGrid's v3 reference
documents (twilio.com/docs/sendgrid: "Mail Send" errors, "How to use the v3 API" errors and
rate limits):

    Authorization not "Bearer <api_key>"   401 {"errors":[{"message": "The provided authorization
                                               grant is invalid, expired, or revoked",
                                               "field": null, "help": null}]}
    body not JSON                          400 {"errors":[{"message": "Bad Request", ...}]}
    no personalizations / no to.email,     400 with SendGrid's message and the `field` it names
    no from.email, no subject, no content
    (or an empty value), text/plain not first
    from not in `verified` (when given)    403, field "from": "The from address does not match a
                                               verified Sender Identity. ..."
    `throttle_next` > 0                    429 {"errors":[{"field": null, "message": "too many
                                               requests"}]} with X-RateLimit-Limit / -Remaining /
                                               -Reset (Unix time, `reset_in` seconds ahead)
    otherwise                              202, empty body, X-Message-Id: <a fresh id>
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from aiohttp import web

from vendor_standins import serve_loopback

AUTH_ERROR = "The provided authorization grant is invalid, expired, or revoked"
UNVERIFIED = ("The from address does not match a verified Sender Identity. Mail cannot be sent until this "
              "error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ "
              "to see the Sender Identity requirements")


def _errors(status: int, *errors: tuple[str, str | None], headers: dict[str, str] | None = None) -> web.Response:
    body = {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
    return web.json_response(body, status=status, headers=headers)


def validate(doc: Any) -> list[tuple[str, str | None]]:
    """SendGrid's validation errors for a Mail Send body (message, field); [] when it is valid."""
    if not isinstance(doc, dict):
        return [("Bad Request", None)]
    errs: list[tuple[str, str | None]] = []
    pers = doc.get("personalizations")
    if not isinstance(pers, list) or not pers:
        errs.append(("You must have at least one personalization.", "personalizations"))
    else:
        for i, p in enumerate(pers):
            to = p.get("to") if isinstance(p, dict) else None
            if not isinstance(to, list) or not to or not all(isinstance(t, dict) and "@" in str(t.get("email", ""))
                                                             for t in to):
                errs.append(("Each to object must at least have an email address and may also contain a name.",
                             f"personalizations.{i}.to"))
    sender = doc.get("from")
    if not isinstance(sender, dict) or "@" not in str(sender.get("email", "")):
        errs.append(("The from object must be provided for every email send. It is an object that requires the "
                     "email parameter, but may also contain a name parameter.", "from"))
    subject_everywhere = isinstance(pers, list) and pers and all(isinstance(p, dict) and p.get("subject")
                                                                 for p in pers)
    if not doc.get("subject") and not subject_everywhere:
        errs.append(("The subject is required. You can get around this requirement if you use a template with a "
                     "subject defined or if every personalization has a subject defined.", "subject"))
    content = doc.get("content")
    if not isinstance(content, list) or not content:
        errs.append(("Unless a valid template_id is provided, the content parameter is required. There must be at "
                     "least one defined content block. We typically suggest both text/plain and text/html blocks "
                     "are included, but only one block is required.", "content"))
    else:
        for i, c in enumerate(content):
            if not isinstance(c, dict) or not isinstance(c.get("value"), str) or not c["value"]:
                errs.append(("The content value must be a string at least one character in length.",
                             f"content.{i}.value"))
            elif i > 0 and c.get("type") == "text/plain":
                errs.append(("If present, text/plain content must be first, followed by text/html, or any other "
                             "content.", f"content.{i}.type"))
    return errs


class SendgridStandin:
    def __init__(self, api_key: str = "SG.test", verified: list[str] | None = None, reset_in: float = 2.0) -> None:
        self.api_key = api_key
        self.verified = verified
        self.reset_in = reset_in
        self.throttle_next = 0
        self.mails: list[dict[str, Any]] = []          # accepted bodies
        self.message_ids: list[str] = []
        self.answers: list[int] = []                   # every status answered, in order
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _send(self, request: web.Request) -> web.Response:
        resp = await self._answer(request)
        self.answers.append(resp.status)
        return resp

    async def _answer(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _errors(401, (AUTH_ERROR, None))
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _errors(429, ("too many requests", None), headers={
                "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time() + self.reset_in))})
        if not request.content_type == "application/json":
            return _errors(400, ("Bad Request", None))
        try:
            doc = json.loads(await request.read())
        except ValueError:
            return _errors(400, ("Bad Request", None))
        errs = validate(doc)
        if errs:
            return _errors(400, *errs)
        if self.verified is not None and doc["from"]["email"] not in self.verified:
            return _errors(403, (UNVERIFIED, "from"))
        self.mails.append(doc)
        mid = secrets.token_urlsafe(16)
        self.message_ids.append(mid)
        return web.Response(status=202, headers={"X-Message-Id": mid})

    async def start(self) -> "SendgridStandin":
        app = web.Application()
        app.router.add_post("/v3/mail/send", self._send)
        self._runner, self.url = await serve_loopback(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        """Until n mails were accepted (bounded)."""
        end = asyncio.get_running_loop().time() + timeout
        while len(self.mails) < n:
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"{len(self.mails)} of {n} mails arrived within {timeout}s")
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> "SendgridStandin":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _serve(api_key: str) -> None:
    import signal

    sg = await SendgridStandin(api_key=api_key).start()
    print(sg.url, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await sg.close()


if __name__ == "__main__":
    # as a process (benchmarks/bench_providers_email.py): prints its URL, serves until SIGTERM
    import sys

    asyncio.run(_serve(sys.argv[1] if len(sys.argv) > 1 else "SG.test"))
