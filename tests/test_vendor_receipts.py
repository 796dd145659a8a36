"""Vendors' own receipt webhooks (docs/api.md "Receipts", docs/providers.md) against a real
Router, real SQLite and the real HTTP API on loopback, each request signed the vendor's way with
keys and certificates the test makes: accepted; a tampered field, a wrong key, a stale timestamp,
an unknown signature version -> 401 with nothing changed; an unknown vendor id -> 2xx, counted.
SNS: the subscription is confirmed against a loopback stand-in of SNS, and a certificate URL on a
host outside `sns_hosts` is never fetched."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import until  # noqa: E402
from sendgrid_standin import SendgridStandin  # noqa: E402
from test_api import api  # noqa: E402
from test_runtime import run  # noqa: E402
from vendor_standins import TwilioStandin  # noqa: E402

from routingd.daemon.receipts.twilio import signature as twilio_signature  # noqa: E402

TOKEN = "test-token"          # test_api's bearer token: vendors do not send it
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SID, TW_TOKEN = "AC" + "a" * 32, "twilio-auth-token"
CALLBACK = "https://routingd.example.com/v1/receipts/tw"


def policy(provider: str, channel: str = "sms", requires: str = "phone_number") -> str:
    return (f'version = 1\n[timeouts]\nprovider = "5s"\nchannel = "1m"\nmessage = "2m"\n{provider}\n'
            f'[channels.{channel}]\nproviders = ["p"]\nrequires = "{requires}"\n'
            f'[routes.default]\nchannels = ["{channel}"]\n')


async def send(client: Any, to: dict[str, str]) -> str:
    r = await client.post("/v1/send", json={"message": {"to": to, "content": {"title": "t", "body": "disk full"}}},
                          headers=AUTH)
    assert r.status == 202, await r.text()
    return str((await r.json())["message_id"])


async def status(client: Any, mid: str) -> dict[str, Any]:
    r = await client.get(f"/v1/messages/{mid}", headers=AUTH)
    assert r.status == 200
    return dict(await r.json())


async def awaiting(client: Any, state: Any, mid: str) -> dict[str, Any]:
    """The message's attempt once it awaits its receipt, with the vendor's id recorded."""
    def ready() -> bool:
        st = state.router.status(mid)
        return any(e["type"] == "attempt_accepted" for e in st["events"]) and \
            bool(st["attempts"] and st["attempts"][0].get("provider_message_id"))

    await until(ready, timeout=10, what="an accepted attempt with the vendor's id")
    return dict((await status(client, mid))["attempts"][0])


def vendor_events(st: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(e["vendor_status"], e.get("error_code")) for e in st["events"] if e["type"] == "vendor_status"]


# --------------------------------------------------------------------------- twilio


def twilio_policy(url: str) -> str:
    return policy(f'[providers.p]\ntype = "twilio"\naccount_sid = "{SID}"\nauth_token = "{TW_TOKEN}"\n'
                  f'from = "+15017122661"\nbase_url = "{url}"\nstatus_callback = "{CALLBACK}"\n'
                  'confirm = "receipt"\nreceipt_timeout = "1m"\nbreaker = false\n')


def twilio_post(client: Any, params: dict[str, str], token: str = TW_TOKEN, url: str = CALLBACK,
                sign: dict[str, str] | None = None) -> Any:
    sig = twilio_signature(token, url, list((sign or params).items()))
    return client.post("/v1/receipts/p", data=urlencode(params).encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig})


def test_twilio_status_callbacks_signed_by_twilio_are_applied_and_forgeries_change_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TW_TOKEN) as tw:
            async with api(tmp_path, twilio_policy(tw.url), tokens=(TOKEN,)) as (client, state, _):
                mid = await send(client, {"phone_number": "+15558675310"})
                att = await awaiting(client, state, mid)
                sid = att["provider_message_id"]
                assert sid.startswith("SM") and tw.requests[0].form["StatusCallback"] == CALLBACK
                sent = {"MessageSid": sid, "MessageStatus": "sent", "AccountSid": SID}
                r = await twilio_post(client, sent)
                assert r.status == 200, await r.text()
                st = await status(client, mid)
                assert st["status"] == "pending" and vendor_events(st) == [("sent", None)]
                before = st["events"]
                failed = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"}
                forged = [
                    twilio_post(client, failed, sign={**failed, "MessageStatus": "delivered"}),  # tampered field
                    twilio_post(client, failed, token="another-token"),                        # wrong key
                    twilio_post(client, failed, url="https://elsewhere.example.com/cb"),       # another URL
                    client.post("/v1/receipts/p", data=urlencode(failed).encode(),             # no signature
                                headers={"Content-Type": "application/x-www-form-urlencoded"}),
                ]
                for req in forged:
                    r = await req
                    assert r.status == 401, await r.text()
                st = await status(client, mid)
                assert st["events"] == before and st["status"] == "pending"
                unmatched = state.metrics.receipts_unmatched._value.get()
                r = await twilio_post(client, {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"})
                assert r.status == 200 and (await r.json())["unmatched"] == 1
                assert state.metrics.receipts_unmatched._value.get() == unmatched + 1
                r = await twilio_post(client, {**failed, "MessageStatus": "delivered", "ErrorCode": ""})
                assert r.status == 200
                st = await status(client, mid)
                assert st["status"] == "delivered" and vendor_events(st) == [("sent", None), ("delivered", None)]
                r = await twilio_post(client, sent)       # a retry of an earlier callback: recorded once
                assert r.status == 200 and vendor_events(await status(client, mid)) == vendor_events(st)

    run(main)


# --------------------------------------------------------------------------- sendgrid


def ec_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


def sg_headers(key: ec.EllipticCurvePrivateKey, body: bytes, at: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if at is None else at)
    sig = base64.b64encode(key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": sig,
            "X-Twilio-Email-Event-Webhook-Timestamp": ts}


def test_sendgrid_event_batches_signed_with_ecdsa_are_applied_and_forgeries_change_nothing(tmp_path: Path) -> None:
    key, public = ec_key()
    other, _ = ec_key()

    async def main() -> None:
        async with SendgridStandin(api_key="SG.test") as sg:
            text = policy(f'[providers.p]\ntype = "sendgrid"\napi_key = "SG.test"\nfrom = "a@example.com"\n'
                          f'base_url = "{sg.url}"\nwebhook_public_key = "{public}"\nconfirm = "receipt"\n'
                          'receipt_timeout = "1m"\nbreaker = false\n', "email", "email")
            async with api(tmp_path, text, tokens=(TOKEN,)) as (client, state, _):
                mid = await send(client, {"email": "ops@example.com"})
                att = await awaiting(client, state, mid)
                sgid = att["provider_message_id"]
                # by sg_message_id (the X-Message-Id and SendGrid's suffix) and by the echoed custom_args
                batch = json.dumps([
                    {"event": "processed", "sg_message_id": f"{sgid}.filterdrecv-1.0", "email": "ops@example.com"},
                    {"event": "deferred", "routingd_attempt_id": att["attempt_id"], "response": "451 try later",
                     "attempt": "1"}]).encode()
                r = await client.post("/v1/receipts/p", data=batch, headers=sg_headers(key, batch))
                assert r.status == 200 and (await r.json())["matched"] == 2, await r.text()
                st = await status(client, mid)
                assert st["status"] == "pending" and vendor_events(st) == [("processed", None), ("deferred", None)]
                before = st["events"]
                bounce = json.dumps([{"event": "bounce", "sg_message_id": f"{sgid}.x", "reason": "550 no such user",
                                      "type": "bounce"}]).encode()
                good = sg_headers(key, bounce)
                for body, headers in [
                    (bounce.replace(b"550", b"250"), good),                  # tampered body
                    (bounce, sg_headers(other, bounce)),                      # wrong key
                    (bounce, sg_headers(key, bounce, at=int(time.time()) - 3600)),   # stale timestamp
                    (bounce, {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)}),
                    (bounce, {"Content-Type": "application/json"}),             # no signature
                ]:
                    r = await client.post("/v1/receipts/p", data=body, headers=headers)
                    assert r.status == 401, await r.text()
                st = await status(client, mid)
                assert st["events"] == before and st["status"] == "pending"
                r = await client.post("/v1/receipts/p", data=bounce, headers=good)
                assert r.status == 200
                st = await status(client, mid)
                assert st["status"] == "undeliverable" and vendor_events(st)[-1] == ("bounce", None)
                assert [e for e in st["events"] if e["type"] == "vendor_status"][-1]["reason"] == "550 no such user"

    run(main)


# --------------------------------------------------------------------------- ses (through SNS)


def rsa_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


class SnsStandin:
    """SNS's certificate and subscription-confirmation URLs on 127.0.0.1, recording each GET;
    and SES v2's SendEmail answering {"MessageId"}."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.gets: list[str] = []
        self.sent = 0
        self.url = ""
        self.host = ""

    async def __aenter__(self) -> "SnsStandin":
        app = web.Application()
        app.router.add_get("/{name:.*}", self.get)
        app.router.add_post("/v2/email/outbound-emails", self.send)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def get(self, request: web.Request) -> web.Response:
        self.gets.append(request.path_qs)
        if request.path.endswith(".pem"):
            return web.Response(body=self.pem)
        return web.Response(text="<ConfirmSubscriptionResponse/>")

    async def send(self, request: web.Request) -> web.Response:
        self.sent += 1
        return web.json_response({"MessageId": f"0100-ses-{self.sent}"})


def sns_doc(key: rsa.RSAPrivateKey, cert_url: str, type_: str, version: str = "1", at: float | None = None,
            **fields: str) -> dict[str, str]:
    stamp = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.timezone.utc)
    doc = {"Type": type_, "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
           "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
           "Timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
           "SignatureVersion": version, "SigningCertURL": cert_url, **fields}
    names = (("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type") if type_ == "Notification" else
             ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"))
    text = "".join(f"{k}\n{doc[k]}\n" for k in names if k in doc).encode()
    algo = hashes.SHA1() if version == "1" else hashes.SHA256()
    doc["Signature"] = base64.b64encode(key.sign(text, padding.PKCS1v15(), algo)).decode()
    return doc


def ses_event(kind: str, message_id: str, **extra: Any) -> str:
    return json.dumps({"eventType": kind, "mail": {"messageId": message_id, "destination": ["ops@example.com"]},
                       **extra})


def test_ses_events_through_sns_are_verified_with_the_certificate_from_an_allowed_host(tmp_path: Path) -> None:
    key, pem = rsa_cert()
    other_key, other_pem = rsa_cert()

    async def main() -> None:
        async with SnsStandin(pem) as sns, SnsStandin(other_pem) as stranger:
            text = policy(f'[providers.p]\ntype = "ses"\nregion = "us-east-1"\nfrom = "a@example.com"\n'
                          f'endpoint_url = "{sns.url}"\naccess_key_id = "AKID"\nsecret_access_key = "s"\n'
                          f'configuration_set = "routingd-events"\nsns_hosts = ["{sns.host}"]\n'
                          'confirm = "receipt"\nreceipt_timeout = "1m"\nbreaker = false\n', "email", "email")
            cert = f"{sns.url}/SimpleNotificationService-test.pem"
            post = lambda doc: client.post("/v1/receipts/p", data=json.dumps(doc).encode(),  # noqa: E731
                                           headers={"Content-Type": "text/plain; charset=UTF-8",
                                                    "x-amz-sns-message-type": doc["Type"]})
            async with api(tmp_path, text, tokens=(TOKEN,)) as (client, state, _):
                # the subscription: confirmed by fetching SubscribeURL from the allowed host
                sub = sns_doc(key, cert, "SubscriptionConfirmation", Token="tok", Message="confirm it",
                              SubscribeURL=f"{sns.url}/?Action=ConfirmSubscription&Token=tok")
                r = await post(sub)
                assert r.status == 200 and (await r.json())["subscription"] == "confirmed", await r.text()
                assert sns.gets == ["/SimpleNotificationService-test.pem", "/?Action=ConfirmSubscription&Token=tok"]
                r = await post(sns_doc(key, cert, "SubscriptionConfirmation", Token="tok", Message="confirm it",
                                       SubscribeURL=f"{stranger.url}/?Action=ConfirmSubscription"))
                assert r.status == 401 and stranger.gets == []

                mid = await send(client, {"email": "ops@example.com"})
                att = await awaiting(client, state, mid)
                ses_id = att["provider_message_id"]
                assert ses_id == "0100-ses-1"
                delay = sns_doc(key, cert, "Notification", version="2",
                                Message=ses_event("DeliveryDelay", ses_id, deliveryDelay={"delayType": "MailboxFull"}))
                r = await post(delay)
                assert r.status == 200 and (await r.json())["matched"] == 1, await r.text()
                transient = sns_doc(key, cert, "Notification", Message=ses_event(
                    "Bounce", ses_id, bounce={"bounceType": "Transient", "bounceSubType": "General"}))
                assert (await post(transient)).status == 200
                st = await status(client, mid)
                assert st["status"] == "pending" and vendor_events(st) == [("deliverydelay", None), ("bounce", None)]
                before = st["events"]

                delivery = ses_event("Delivery", ses_id, delivery={"smtpResponse": "250 ok"})
                good = sns_doc(key, cert, "Notification", Message=delivery)
                stranger_cert = f"{stranger.url}/SimpleNotificationService-x.pem"
                for doc in [
                    {**good, "Message": ses_event("Delivery", "0100-other")},            # tampered field
                    sns_doc(other_key, cert, "Notification", Message=delivery),          # wrong key
                    sns_doc(key, cert, "Notification", at=time.time() - 7200, Message=delivery),   # stale
                    {**good, "SignatureVersion": "3"},                                    # unknown version
                    sns_doc(other_key, stranger_cert, "Notification", Message=delivery),  # host not allowed
                    {k: v for k, v in good.items() if k != "Signature"},                 # no signature
                ]:
                    r = await post(doc)
                    assert r.status == 401, await r.text()
                assert stranger.gets == []            # a certificate outside sns_hosts is never fetched
                st = await status(client, mid)
                assert st["events"] == before and st["status"] == "pending"
                gets = len(sns.gets)
                r = await post(good)
                assert r.status == 200, await r.text()
                assert len(sns.gets) == gets          # the certificate was cached
                st = await status(client, mid)
                assert st["status"] == "delivered" and vendor_events(st)[-1] == ("delivery", None)

    run(main)
