"""The email provider types against real protocol peers on loopback: `smtp` against aiosmtpd
(plain, STARTTLS with AUTH, implicit TLS; certificates from trustme), `ses` against moto's SES
v2 server, `sendgrid` against tests/sendgrid_standin.py; failover across the types in a real
daemon process (SMTP 421 -> SES delivers; SES throttled -> SendGrid delivers)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import ssl
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402
from daemon_process import DaemonProcess, StandinLoop, free_port, run_bounded, serving  # noqa: E402
from provider_standin import ProviderStandin  # noqa: E402
from sendgrid_standin import UNVERIFIED, SendgridStandin  # noqa: E402

from routingd.daemon.adapters import AdapterContext, AttemptRequest, Content, build_adapter  # noqa: E402
from routingd.daemon.core.policy import PolicyError, parse_policy  # noqa: E402
from routingd.daemon.providers import make_http_session  # noqa: E402
from routingd.daemon.providers.smtp import SmtpAdapter, reply_outcome  # noqa: E402


def provider_config(body: str) -> Any:
    text = f'version = 1\n[providers.p]\n{body}\n[channels.email]\nproviders = ["p"]\n' \
           '[routes.default]\nchannels = ["email"]\n'
    return parse_policy(text, "routing.toml", env={}).providers["p"]


def req(n: int = 1, to: str = "bob@example.org", html: str | None = None, text: str = "Disk at 91%",
        title: str = "Disk full on db1") -> AttemptRequest:
    return AttemptRequest(message_id="m1", attempt_id=f"m1.0.{n}", channel="email", provider="p", try_no=n,
                          deadline_s=5.0, idempotency_key="m1:email:p", to={"email": to},
                          content={"title": title, "body": text},
                          rendered=Content(title=title, text=text, html=html))


# --------------------------------------------------------------------------- smtp peer


class Recorder:
    """aiosmtpd handler: records each message; `script` answers MAIL FROM / RCPT TO with a reply
    code instead of accepting (one entry per transaction, in order; None accepts)."""

    def __init__(self, mail_script: list[str | None] | None = None, rcpt_script: list[str | None] | None = None):
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.mail_script = list(mail_script or [])
        self.rcpt_script = list(rcpt_script or [])
        self.ehlos = 0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        with self.lock:
            self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.mail_script:
            answer = self.mail_script.pop(0)
            if answer is not None:
                return answer
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.rcpt_script:
            answer = self.rcpt_script.pop(0)
            if answer is not None:
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 2.0.0 Ok: queued"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"relay-user" and data.password == b"relay-pass"
    return AuthResult(success=ok, handled=False)      # handled=False: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_ctx, str(ca_file)


def smtp_server(handler: Recorder, port: int | None = None, **kw: Any) -> Controller:
    c = Controller(handler, hostname="127.0.0.1", port=port or free_port(), **kw)
    c.start()
    return c


def smtp_config(port: int, tls: str = "none", extra: str = "") -> Any:
    return provider_config(f'type = "smtp"\nhost = "127.0.0.1"\nport = {port}\ntls = "{tls}"\n'
                           f'from = "Routingd Alerts <alerts@example.com>"\n{extra}')


async def send_all(adapter: Any, *reqs: AttemptRequest) -> list[Any]:
    try:
        return [await adapter.send(r) for r in reqs]
    finally:
        await adapter.close()


def test_smtp_plain_sends_a_proper_mime_message() -> None:
    rec = Recorder()
    srv = smtp_server(rec)
    try:
        a = build_adapter("p", smtp_config(srv.port), AdapterContext())
        assert isinstance(a, SmtpAdapter)
        html = "<p>Disk at <b>91%</b></p>"
        [out, plain] = run_bounded(send_all(a, req(1, html=html), req(2)))
    finally:
        srv.stop()
    assert out.status == 200 and not out.network and out.provider_message_id
    mail_from, rcpts, msg = rec.messages[0]
    assert mail_from == "alerts@example.com" and rcpts == ["bob@example.org"]
    assert msg["Subject"] == "Disk full on db1"
    assert msg["From"] == "Routingd Alerts <alerts@example.com>" and msg["To"] == "bob@example.org"
    assert msg["Message-ID"] == out.provider_message_id and msg["Message-ID"].endswith("@example.com>")
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Disk at 91%"
    assert msg.get_body(("html",)).get_content().strip() == html
    # text only: a single text/plain part, its own Message-ID
    _, _, only_text = rec.messages[1]
    assert only_text.get_content_type() == "text/plain" and only_text.get_content().strip() == "Disk at 91%"
    assert only_text["Message-ID"] == plain.provider_message_id != out.provider_message_id
    assert rec.ehlos == 1                    # the second message reused the pooled connection


def test_smtp_starttls_with_auth(certs: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_file = certs
    rec = Recorder()
    srv = smtp_server(rec, tls_context=server_ctx, require_starttls=True, authenticator=authenticator,
                      auth_required=True, auth_require_tls=True)
    try:
        good = build_adapter("p", smtp_config(srv.port, "starttls", f'ca_file = "{ca_file}"\n'
                                              'username = "relay-user"\npassword = "relay-pass"'), AdapterContext())
        bad = build_adapter("p", smtp_config(srv.port, "starttls", f'ca_file = "{ca_file}"\n'
                                             'username = "relay-user"\npassword = "wrong"'), AdapterContext())
        untrusted = build_adapter("p", smtp_config(srv.port, "starttls", 'username = "relay-user"\n'
                                                   'password = "relay-pass"'), AdapterContext())
        [ok] = run_bounded(send_all(good, req(1, html="<p>x</p>")))
        [refused] = run_bounded(send_all(bad, req(2)))
        [no_trust] = run_bounded(send_all(untrusted, req(3)))
    finally:
        srv.stop()
    assert ok.status == 200 and ok.provider_message_id
    assert [m[2]["Subject"] for m in rec.messages] == ["Disk full on db1"]
    assert refused.status == 401 and refused.detail.startswith("SMTP 535") and "wrong" not in refused.detail
    assert no_trust.network and "CERTIFICATE_VERIFY_FAILED" in no_trust.detail   # the system CAs do not know it


def test_smtp_implicit_tls(certs: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_file = certs
    rec = Recorder()
    srv = smtp_server(rec, ssl_context=server_ctx)
    try:
        a = build_adapter("p", smtp_config(srv.port, "implicit", f'ca_file = "{ca_file}"'), AdapterContext())
        [out] = run_bounded(send_all(a, req(1)))
    finally:
        srv.stop()
    assert out.status == 200 and rec.messages[0][2]["To"] == "bob@example.org"


def test_smtp_reply_codes_become_outcomes() -> None:
    rec = Recorder(mail_script=["421 4.3.2 Service not available, closing transmission channel",
                                "451 4.7.1 Rate limit exceeded, try again later", None, None, None],
                   rcpt_script=["550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown", None])
    srv = smtp_server(rec)
    try:
        a = build_adapter("p", smtp_config(srv.port), AdapterContext())
        got = run_bounded(send_all(a, req(1), req(2), req(3), req(4), req(5, to="not an address")))
    finally:
        srv.stop()
    assert got[0].status == 503 and got[0].detail.startswith("SMTP 421 4.3.2")
    assert got[1].status == 429 and "Rate limit" in got[1].detail
    assert got[2].status == 400 and got[2].detail.startswith("SMTP 550 5.1.1")
    assert got[3].status == 200
    assert got[4].status == 400 and "to.email" in got[4].detail
    assert len(rec.messages) == 1


def test_smtp_reply_mapping_table() -> None:
    assert reply_outcome(535, "5.7.8 Authentication credentials invalid").status == 401
    assert reply_outcome(530, "5.7.0 Authentication required").status == 401
    assert reply_outcome(552, "5.3.4 Message size exceeds fixed limit").status == 413
    assert reply_outcome(553, "5.1.8 Sender address rejected").status == 400
    assert reply_outcome(454, "Throttling failure: Maximum sending rate exceeded.").status == 429
    assert reply_outcome(450, "4.2.0 Mailbox busy").status == 503
    assert reply_outcome(-1, "Malformed SMTP response line").status == 502


def test_smtp_pool_is_bounded_reused_and_survives_a_relay_restart() -> None:
    rec = Recorder()
    running = [smtp_server(rec)]
    port = running[0].port

    async def main() -> list[Any]:
        a = build_adapter("p", smtp_config(port, extra="pool_size = 3"), AdapterContext())
        try:
            first = await asyncio.gather(*(a.send(req(i)) for i in range(20)))
            running.pop().stop()                # the relay goes away; its connections with it
            running.append(smtp_server(rec, port=port))
            after = [await a.send(req(100 + i)) for i in range(2)]
            return [*first, *after]
        finally:
            await a.close()

    try:
        got = run_bounded(main())
    finally:
        for srv in running:
            srv.stop()
    assert all(o.status == 200 for o in got), [o for o in got if o.status != 200]
    assert len(rec.messages) == 22
    assert rec.ehlos <= 3 + 1                   # at most pool_size connections, then one new after the restart


def test_smtp_refused_connection_is_network() -> None:
    a = build_adapter("p", smtp_config(free_port()), AdapterContext())
    [out] = run_bounded(send_all(a, req(1)))
    assert out.network and out.status is None


def test_smtp_config_is_checked() -> None:
    with pytest.raises(PolicyError, match="providers.p.from: expected an email address"):
        provider_config('type = "smtp"\nhost = "h"\nfrom = "not an address"')
    with pytest.raises(PolicyError, match="both username and password"):
        provider_config('type = "smtp"\nhost = "h"\nfrom = "a@example.com"\nusername = "u"')
    with pytest.raises(PolicyError, match="both access_key_id and secret_access_key"):
        provider_config('type = "ses"\nregion = "us-east-1"\nfrom = "a@example.com"\naccess_key_id = "AKID"')
    with pytest.raises(PolicyError, match="scheme and host only"):
        provider_config('type = "sendgrid"\napi_key = "k"\nfrom = "a@example.com"\nbase_url = "https://h/v3"')


# --------------------------------------------------------------------------- ses


@pytest.fixture(scope="module")
def moto_ses() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        ses = boto3.client("sesv2", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="AKIDMOTO", aws_secret_access_key="moto-secret")
        ses.create_email_identity(EmailIdentity="alerts@example.com")
        ses.create_configuration_set(ConfigurationSetName="routingd-events")
        yield url
    finally:
        server.stop()


def moto_messages(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/moto-api/data.json", timeout=10) as r:
        return json.load(r)["ses"]["Message"]


def base(url: str) -> str:
    """A ProviderStandin's url is http://host:port/send; a vendor type takes scheme and host only."""
    return url.rsplit("/", 1)[0]


def ses_config(url: str, sender: str = "Routingd Alerts <alerts@example.com>", extra: str = "") -> Any:
    return provider_config(f'type = "ses"\nregion = "us-east-1"\nfrom = "{sender}"\nendpoint_url = "{url}"\n'
                           f'access_key_id = "AKIDTEST"\nsecret_access_key = "ses-secret"\n{extra}')


async def ses_send(config: Any, *reqs: AttemptRequest) -> list[Any]:
    session = make_http_session()
    try:
        return await send_all(build_adapter("p", config, AdapterContext(http_session=session)), *reqs)
    finally:
        await session.close()


def test_ses_sends_through_moto(moto_ses: str) -> None:
    before = len(moto_messages(moto_ses))
    [out] = run_bounded(ses_send(ses_config(moto_ses, extra='configuration_set = "routingd-events"'),
                                 req(1, html="<p>x</p>")))
    assert out.status == 200 and out.provider_message_id
    sent = moto_messages(moto_ses)[before:]
    assert [m["id"] for m in sent] == [out.provider_message_id]
    assert sent[0]["subject"] == "Disk full on db1" and sent[0]["destinations"]["ToAddresses"] == ["bob@example.org"]
    assert sent[0]["source"] == "Routingd Alerts <alerts@example.com>"


def test_ses_unverified_sender_is_permanent(moto_ses: str) -> None:
    [out] = run_bounded(ses_send(ses_config(moto_ses, sender="nobody@unverified.example"), req(1)))
    assert out.status == 400 and out.detail.startswith("SES MessageRejected")


def test_ses_answers_become_outcomes_and_requests_are_signed() -> None:
    throttled = {"status": 429, "headers": {"x-amzn-ErrorType": "TooManyRequestsException:http://internal.amazon.com/x"},
                 "body": {"message": "Maximum sending rate exceeded."}}
    common_throttle = {"status": 400, "headers": {"x-amzn-ErrorType": "ThrottlingException"},
                       "body": {"message": "Rate exceeded"}, "retry_after": "3"}
    unverified = {"status": 400, "headers": {"x-amzn-ErrorType": "MailFromDomainNotVerifiedException"},
                  "body": {"message": "The MAIL FROM domain isn't verified"}}
    bad_key = {"status": 403, "headers": {"x-amzn-ErrorType": "UnrecognizedClientException"},
               "body": {"message": "The security token included in the request is invalid."}}
    internal = {"status": 500, "body": {"__type": "com.amazon.coral#InternalFailure", "message": "oops"}}

    async def main() -> tuple[list[Any], Any]:
        async with ProviderStandin([throttled, common_throttle, unverified, bad_key, internal]) as s:
            got = await ses_send(ses_config(base(s.url)), *(req(i) for i in range(5)))
            return got, s.requests[0]

    got, first = run_bounded(main())
    assert got[0].status == 429 and got[0].detail == "SES TooManyRequestsException: Maximum sending rate exceeded."
    assert got[1].status == 429 and got[1].retry_after_s == 3.0
    assert got[2].status == 400 and "MailFromDomainNotVerifiedException" in got[2].detail
    assert got[3].status == 403 and "UnrecognizedClientException" in got[3].detail
    assert got[4].status == 500 and "InternalFailure" in got[4].detail
    assert first.path == "/v2/email/outbound-emails"
    assert first.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/us-east-1/ses/aws4_request" in first.headers["Authorization"]
    assert first.json["Destination"] == {"ToAddresses": ["bob@example.org"]}
    assert "ses-secret" not in json.dumps(first.headers)


def test_ses_credentials_from_the_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)

    def cfg(url: str) -> Any:
        return provider_config(f'type = "ses"\nregion = "eu-west-1"\nfrom = "a@example.com"\nendpoint_url = "{url}"')

    async def main() -> tuple[Any, Any, Any]:
        async with ProviderStandin([{"status": 200, "body": {"MessageId": "0100-abc"}}]) as s:
            [none] = await ses_send(cfg(base(s.url)), req(1))
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHAIN")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
            [ok] = await ses_send(cfg(base(s.url)), req(2))
            return none, ok, s.requests

    none, ok, requests = run_bounded(main())
    assert none.status == 401 and "no AWS credentials" in none.detail
    assert ok.status == 200 and ok.provider_message_id == "0100-abc"
    assert [r.headers["Authorization"].split("/")[0] for r in requests] == ["AWS4-HMAC-SHA256 Credential=AKIDCHAIN"]


# --------------------------------------------------------------------------- sendgrid


def sendgrid_config(url: str, key: str = "SG.test", sender: str = "Routingd Alerts <alerts@example.com>") -> Any:
    return provider_config(f'type = "sendgrid"\napi_key = "{key}"\nfrom = "{sender}"\nbase_url = "{url}"')


def test_sendgrid_delivers_with_custom_args_and_message_id() -> None:
    async def main() -> tuple[list[Any], SendgridStandin]:
        async with SendgridStandin(verified=["alerts@example.com"]) as sg:
            got = await ses_send(sendgrid_config(sg.url), req(1, html="<p>x</p>"), req(2))
            return got, sg

    got, sg = run_bounded(main())
    assert [o.status for o in got] == [202, 202]
    assert [o.provider_message_id for o in got] == sg.message_ids
    first = sg.mails[0]
    assert first["personalizations"] == [{"to": [{"email": "bob@example.org"}]}]
    assert first["from"] == {"email": "alerts@example.com", "name": "Routingd Alerts"}
    assert first["subject"] == "Disk full on db1"
    assert first["content"] == [{"type": "text/plain", "value": "Disk at 91%"}, {"type": "text/html", "value": "<p>x</p>"}]
    assert first["custom_args"] == {"routingd_message_id": "m1", "routingd_attempt_id": "m1.0.1"}
    assert sg.mails[1]["content"] == [{"type": "text/plain", "value": "Disk at 91%"}]


def test_sendgrid_errors_become_outcomes() -> None:
    async def main() -> list[Any]:
        async with SendgridStandin(verified=["alerts@example.com"], reset_in=30) as sg:
            wrong_key = await ses_send(sendgrid_config(sg.url, key="SG.wrong"), req(1))
            unverified = await ses_send(sendgrid_config(sg.url, sender="other@example.com"), req(2))
            empty = await ses_send(sendgrid_config(sg.url), req(3, text=""))
            sg.throttle_next = 1
            throttled = await ses_send(sendgrid_config(sg.url), req(4))
            return [*wrong_key, *unverified, *empty, *throttled]

    got = run_bounded(main())
    assert got[0].status == 401 and "authorization grant is invalid" in got[0].detail and "SG.wrong" not in got[0].detail
    assert got[1].status == 403 and "verified Sender Identity" in got[1].detail and "(field from)" in got[1].detail
    assert "https://sendgrid.com/…" in got[1].detail and "/docs/" not in got[1].detail   # no URL path in a detail
    assert UNVERIFIED.startswith("The from address")
    assert got[2].status == 400 and "content.0.value" in got[2].detail
    assert got[3].status == 429 and 25 <= got[3].retry_after_s <= 31 and "too many requests" in got[3].detail


def test_sendgrid_unreachable_is_network() -> None:
    [out] = run_bounded(ses_send(sendgrid_config(f"http://127.0.0.1:{free_port()}"), req(1)))
    assert out.network


# --------------------------------------------------------------------------- failover across types, in a daemon


FAILOVER_TOML = """
version = 1
[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "alerts@example.com"
[providers.ses]
type = "ses"
region = "us-east-1"
from = "alerts@example.com"
endpoint_url = "{moto}"
access_key_id = "AKIDTEST"
secret_access_key = "${{SES_SECRET}}"
[providers.ses_busy]
type = "ses"
region = "us-east-1"
from = "alerts@example.com"
endpoint_url = "{busy}"
access_key_id = "AKIDTEST"
secret_access_key = "${{SES_SECRET}}"
[providers.sg]
type = "sendgrid"
api_key = "${{SG_KEY}}"
from = "alerts@example.com"
base_url = "{sg}"
[channels.email]
providers = ["relay", "ses"]
[channels.email2]
providers = ["ses_busy", "sg"]
[routes.default]
channels = ["email"]
[routes.second]
channels = ["email2"]
"""


def test_daemon_fails_over_across_email_types(tmp_path: Path, moto_ses: str) -> None:
    rec = Recorder(mail_script=["421 4.3.2 Service not available, closing transmission channel"] * 10)
    srv = smtp_server(rec)
    throttled = {"status": 429, "headers": {"x-amzn-ErrorType": "TooManyRequestsException"},
                 "body": {"message": "Maximum sending rate exceeded."}}
    try:
        with StandinLoop() as loop:
            busy = loop.standin([throttled])
            sg = loop.call(SendgridStandin(api_key="SG.daemon").start())
            try:
                before = len(moto_messages(moto_ses))
                text = FAILOVER_TOML.format(smtp_port=srv.port, moto=moto_ses, busy=base(busy.url), sg=sg.url)
                env = {"SES_SECRET": "ses-secret", "SG_KEY": "SG.daemon"}
                with serving(DaemonProcess(tmp_path, text, env=env)) as d:
                    first = d.send({"to": {"email": "bob@example.org"}, "content": {"title": "T1", "body": "B1"}})
                    second = d.send({"route": "second", "to": {"email": "carol@example.org"},
                                     "content": {"title": "T2", "body": "B2"}})
                    s1 = d.wait_status(first, "delivered", "undeliverable")
                    s2 = d.wait_status(second, "delivered", "undeliverable")
                    log = d.log_text()
            finally:
                loop.call(sg.close())
    finally:
        srv.stop()
    assert s1["status"] == "delivered", s1
    assert [(a["provider"], a["outcome"], a["status_code"]) for a in s1["attempts"]] == \
        [("relay", "failed", 503), ("ses", "delivered", 200)]
    sent = moto_messages(moto_ses)[before:]
    assert [(m["subject"], m["destinations"]["ToAddresses"]) for m in sent] == [("T1", ["bob@example.org"])]
    assert s2["status"] == "delivered", s2
    assert [(a["provider"], a["outcome"], a["status_code"]) for a in s2["attempts"]] == \
        [("ses_busy", "failed", 429), ("sg", "delivered", 202)]
    assert [m["subject"] for m in sg.mails] == ["T2"]
    assert sg.mails[0]["custom_args"]["routingd_message_id"] == second
    assert "ses-secret" not in log and "SG.daemon" not in log


def test_smtp_non_ascii_subject_sender_and_body_arrive_intact() -> None:
    rec = Recorder()
    srv = smtp_server(rec)
    try:
        cfg = provider_config(f'type = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n'
                              'from = "Équipe Alertes <alerts@example.com>"')
        a = build_adapter("p", cfg, AdapterContext())
        [out] = run_bounded(send_all(a, req(1, title="Disque plein sur db1 – 91 %\r\nBcc: x@evil.example",
                                            text="Überlauf ✓", html="<p>Überlauf ✓</p>")))
    finally:
        srv.stop()
    assert out.status == 200
    _, rcpts, msg = rec.messages[0]
    assert rcpts == ["bob@example.org"] and msg["Bcc"] is None           # no header injection
    assert msg["Subject"] == "Disque plein sur db1 – 91 % Bcc: x@evil.example"
    assert msg["From"].addresses[0].display_name == "Équipe Alertes"
    assert msg["From"].addresses[0].addr_spec == "alerts@example.com"
    assert msg.get_body(("plain",)).get_content().strip() == "Überlauf ✓"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Überlauf ✓</p>"
