"""Courier's official Python SDK (trycourier, `import courier`) against a real routingd process
on loopback: the SDK is pointed at it by base_url and used as it is (docs/api.md
"Courier-compatible API"). Plus the refused-field table of docs/courier.md, read from the doc:
each row's example is refused with a 422 naming the field, and every field the request model
refuses has a row."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import ValidationError

from routingd.daemon.core.request import SendRequest

from daemon_process import DaemonProcess, serving, wait_until

courier = pytest.importorskip("courier")   # the trycourier package (a test dependency)

TOKEN = "courier-t0ken"
POLICY = f"""
version = 1
[daemon]
api_tokens = ["{TOKEN}"]
[timeouts]
provider = "5s"
channel = "20s"
message = "1m"
[providers.mail_a]
type = "sandbox"
latency = "5ms"
[providers.mail_b]
type = "sandbox"
latency = "5ms"
[providers.sms_a]
type = "sandbox"
latency = "5ms"
[providers.hang]
type = "sandbox"
fail = "hang"
timeout = "60s"
[channels.email]
providers = ["mail_a", "mail_b"]
requires = "email"
[channels.sms]
providers = ["sms_a"]
requires = "phone_number"
[channels.slow]
providers = ["hang"]
[routes.default]
channels = ["email"]
[routes.both]
method = "all"
channels = ["email", "sms"]
[routes.hang]
channels = ["slow"]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("courier"), POLICY, token=TOKEN)
    with serving(d):
        yield d


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> Any:
    return courier.Courier(api_key=TOKEN, base_url=daemon.url, max_retries=0, timeout=10.0)


def settled(client: Any, mid: str, *statuses: str) -> Any:
    got: list[Any] = []

    def check() -> bool:
        got[:] = [client.messages.retrieve(mid)]
        return got[0].status in statuses

    wait_until(check, timeout=15.0, what=f"{mid} in {statuses}")
    return got[0]


def test_send_retrieve_history_list(client: Any, daemon: DaemonProcess) -> None:
    sent = client.send.message(message={"to": {"email": "ann@example.com"},
                                        "content": {"title": "Hi", "body": "there"}})
    mid = sent.request_id
    m = settled(client, mid, "DELIVERED")
    assert m.id == mid and m.recipient == "ann@example.com"
    assert m.enqueued <= m.sent <= m.delivered                      # epoch milliseconds
    assert m.enqueued > 1_600_000_000_000
    assert [p["provider"] for p in m.providers] == ["mail_a"]
    types = [e["type"] for e in client.messages.history(mid).results]
    assert types[0] == "ENQUEUED" and "DELIVERED" in types
    page = client.messages.list(recipient="ann@example.com")
    assert mid in [r.id for r in page.results] and page.paging.more is False
    assert all(r.status == "DELIVERED" for r in client.messages.list(status=["DELIVERED"]).results)
    # the same message through /v1
    assert daemon.status(mid)["status"] == "delivered"


def test_idempotent_resend_answers_the_first_id(client: Any) -> None:
    msg = {"to": {"email": "idem@example.com"}, "content": {"title": "t", "body": "b"}}
    first = client.send.message(message=msg, idempotency_key="order-1")
    again = client.send.message(message=msg, idempotency_key="order-1")
    assert first.request_id == again.request_id


def test_typed_errors_from_our_status_codes(daemon: DaemonProcess) -> None:
    bad = courier.Courier(api_key="wrong", base_url=daemon.url, max_retries=0, timeout=10.0)
    with pytest.raises(courier.AuthenticationError):
        bad.messages.retrieve("nope")
    good = courier.Courier(api_key=TOKEN, base_url=daemon.url, max_retries=0, timeout=10.0)
    with pytest.raises(courier.NotFoundError):
        good.messages.retrieve("no-such-message")
    with pytest.raises(courier.UnprocessableEntityError) as e:
        good.send.message(message={"to": {"email": "a@example.com"}, "delay": {"duration": 1000}})
    assert e.value.body["details"][0]["loc"] == ["message", "delay"]


def test_cancel_while_an_attempt_hangs_then_409_after(client: Any, daemon: DaemonProcess) -> None:
    mid = daemon.send({"to": {"email": "c@example.com"}, "route": "hang"})
    wait_until(lambda: daemon.status(mid)["attempts"], what="the attempt started")
    m = client.messages.cancel(mid)
    assert m.status == "CANCELED"
    st = daemon.status(mid)
    assert st["status"] == "cancelled" and [a["outcome"] for a in st["attempts"]] == ["cancelled"]
    with pytest.raises(courier.ConflictError):       # already finished: nothing changes
        client.messages.cancel(mid)
    assert daemon.status(mid)["status"] == "cancelled"
    assert daemon.metric("routingd_messages_finished_total", {"status": "cancelled"}) == 1.0
    # /v1 cancel of a delivered message: 409, it stays delivered
    done = daemon.send({"to": {"email": "d@example.com"}})
    daemon.wait_status(done, "delivered")
    r = daemon.post(f"/v1/messages/{done}/cancel")
    assert r.status == 409 and daemon.status(done)["status"] == "delivered"


def test_profiles_and_a_user_id_resolved_at_accept(client: Any, daemon: DaemonProcess) -> None:
    client.profiles.replace("u1", profile={"email": "u1@example.com"})
    assert client.profiles.retrieve("u1").profile == {"email": "u1@example.com"}
    client.profiles.create("u1", profile={"phone_number": "+15550100"})        # merges
    assert client.profiles.retrieve("u1").profile == {"email": "u1@example.com", "phone_number": "+15550100"}
    mid = client.send.message(message={"to": {"user_id": "u1"}, "routing": {"method": "all",
                                       "channels": ["email", "sms"]}, "content": {"title": "t", "body": "b"}}
                              ).request_id
    settled(client, mid, "DELIVERED")
    st = daemon.status(mid)
    assert sorted(a["channel"] for a in st["attempts"]) == ["email", "sms"]
    # a request field wins over the profile's
    mid2 = client.send.message(message={"to": {"user_id": "u1", "email": "own@example.com"}}).request_id
    settled(client, mid2, "DELIVERED")
    assert client.messages.retrieve(mid2).recipient == "u1"
    client.profiles.delete("u1")
    with pytest.raises(courier.NotFoundError):
        client.profiles.retrieve("u1")
    # no profile and no contact field: no channel can reach it -> 422 at accept
    with pytest.raises(courier.UnprocessableEntityError) as e:
        client.send.message(message={"to": {"user_id": "nobody"}})
    assert e.value.body["details"][0]["loc"] == ["message", "to"]
    # ... and the answer says how to give it one (daemon/content.py unreachable)
    assert e.value.body["details"][0]["msg"].endswith("(no profile is stored for this user_id: PUT /profiles/{user_id})")


def test_per_request_provider_order_and_method_are_honoured(daemon: DaemonProcess) -> None:
    one = daemon.send({"to": {"email": "o@example.com"}, "channels": {"email": {"providers": ["mail_b"]}}})
    assert [a["provider"] for a in daemon.wait_status(one, "delivered")["attempts"]] == ["mail_b"]
    both = daemon.send({"to": {"email": "o@example.com"},
                        "channels": {"email": {"providers": ["mail_b", "mail_a"], "routing_method": "all"}}})
    st = daemon.wait_status(both, "delivered")
    assert sorted(a["provider"] for a in st["attempts"]) == ["mail_a", "mail_b"]
    r = daemon.post("/v1/send", {"message": {"to": {"email": "o@example.com"},
                                             "channels": {"email": {"providers": ["sms_a"]}}}})
    assert r.status == 422 and r.json()["details"][0]["loc"] == ["message", "channels", "email", "providers", 0]


# --------------------------------------------------------------------------- the field table

COURIER_DOC = Path(__file__).resolve().parent.parent / "docs" / "courier.md"
_NAME_OF = {"channels": "email", "providers": "mail_a"}     # what X stands for in a field's path


def refused_in_docs() -> list[tuple[str, dict[str, Any], list[Any]]]:
    """(field, example, expected loc) of every row of docs/courier.md's refused-field table: the
    one list of refused fields, read by the tests so that the docs cannot claim one the code
    accepts. The loc is the field's path under `message`, X standing for a channel or provider."""
    text = COURIER_DOC.read_text()
    table = text[text.index("| Field | Example | Why refused |"):].split("\n\n")[0].splitlines()[2:]
    rows = []
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        field = re.findall(r"`([^`]+)`", cells[0])[-1]
        example = json.loads(re.fullmatch(r"`(.+)`", cells[1]).group(1))   # type: ignore[union-attr]
        path = field.split(".")
        loc = ["message"] + [_NAME_OF.get(path[k - 1], p) if p == "X" else p for k, p in enumerate(path)]
        rows.append((field, example, loc))
    return rows


REFUSED = refused_in_docs()


def _named(errors: list[dict[str, Any]], loc: list[Any]) -> bool:
    """The first error names the field: its loc is the field's path, or the path's parent with the
    field's name in the message (to.list_id is refused by the `to` check)."""
    got, msg = list(errors[0]["loc"]), str(errors[0]["msg"])
    return got == loc or (got == loc[:len(got)] and len(got) >= 2 and f"{loc[-2]}.{loc[-1]}" in msg)


def test_the_docs_list_every_field_the_request_model_refuses() -> None:
    """The other direction: each Unsupported field of the request model has its row."""
    from routingd.daemon.core import request as rq
    documented = {field for field, _, _ in REFUSED}
    coded = {f"to.{k}" for k in rq.UNSUPPORTED_TO_KEYS}
    for model, prefix in ((rq.MessageRequest, ""), (rq.TimeoutOverride, "timeout."),
                          (rq.ChannelOverride, "channels.X."), (rq.ProviderOverride, "providers.X.")):
        for name, f in model.model_fields.items():
            if any(getattr(m, "func", None) is rq._refuse for m in f.metadata):
                coded.add(prefix + (f.alias or name))
    assert coded and coded <= documented, coded - documented
    assert len(REFUSED) >= 15


@pytest.mark.parametrize("field,extra,loc", REFUSED, ids=[field for field, _, _ in REFUSED])
def test_each_courier_field_routingd_does_not_do_is_refused_by_name(field: str, extra: dict[str, Any],
                                                                    loc: list[Any]) -> None:
    message = {"to": {"email": "a@example.com"}, **extra}
    with pytest.raises(ValidationError) as e:
        SendRequest.model_validate({"message": message})
    assert _named(e.value.errors(), loc), (field, e.value.errors()[0])


def test_refused_fields_are_422s_on_the_wire(daemon: DaemonProcess) -> None:
    for field, extra, loc in REFUSED:
        r = daemon.post("/send", {"message": {"to": {"email": "a@example.com"}, **extra}})
        assert r.status == 422, (field, r.json())
        assert _named(r.json()["details"], loc), (field, r.json())


def test_honoured_fields_take_effect() -> None:
    req = SendRequest.model_validate({"message": {
        "to": {"email": "a@example.com"}, "brand_id": "b1", "context": {"tenant_id": "t1"},
        "metadata": {"event": "e"},
        "channels": {"email": {"timeouts": {"channel": 7000, "provider": 3000}, "routing_method": "all",
                               "providers": ["mail_b"]}}}}).message
    assert req.provider_metadata == {"brand_id": "b1", "context": {"tenant_id": "t1"}, "event": "e"}
    from routingd.daemon.core.plan import resolve_plan
    from routingd.daemon.core.policy import parse_policy
    plan = resolve_plan(parse_policy(POLICY), request=req)
    ch = plan.items[0]
    assert ch.channel == "email" and ch.timeout_ms == 7000 and ch.method == "all"     # type: ignore[union-attr]
    assert [(p.provider, p.timeout_ms) for p in ch.providers] == [("mail_b", 3000)]  # type: ignore[union-attr]

