"""Courier's official Python SDK (trycourier, `import courier`) against a real routingd process
on loopback: the SDK is pointed at it by base_url and used as it is (docs/api.md
"Courier-compatible API"). Plus the table of Courier message fields: each honoured or refused
with a 422 naming it."""

from __future__ import annotations

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

REFUSED: list[tuple[dict[str, Any], list[Any]]] = [
    ({"channels": {"email": {"override": {}}}}, ["message", "channels", "email", "override"]),
    ({"channels": {"email": {"if": "x"}}}, ["message", "channels", "email", "if"]),
    ({"channels": {"email": {"metadata": {}}}}, ["message", "channels", "email", "metadata"]),
    ({"channels": {"email": {"brand_id": "b"}}}, ["message", "channels", "email", "brand_id"]),
    ({"providers": {"mail_a": {"override": {}}}}, ["message", "providers", "mail_a", "override"]),
    ({"providers": {"mail_a": {"if": "x"}}}, ["message", "providers", "mail_a", "if"]),
    ({"delay": {"duration": 1000}}, ["message", "delay"]),
    ({"expiry": {"expires_in": "1h"}}, ["message", "expiry"]),
    ({"preferences": {"subscription_topic_id": "t"}}, ["message", "preferences"]),
    ({"timeout": {"escalation": 1000}}, ["message", "timeout", "escalation"]),
    ({"timeout": {"criteria": "delivered"}}, ["message", "timeout", "criteria"]),
    ({"to": [{"email": "a@example.com"}]}, ["message", "to"]),
    ({"to": {"list_id": "l1"}}, ["message", "to"]),
    ({"to": {"audience_id": "a1"}}, ["message", "to"]),
    ({"no_such_field": 1}, ["message", "no_such_field"]),
]


@pytest.mark.parametrize("extra,loc", REFUSED, ids=[".".join(map(str, loc[1:])) for _, loc in REFUSED])
def test_each_courier_field_routingd_does_not_do_is_refused_by_name(extra: dict[str, Any], loc: list[Any]) -> None:
    message = {"to": {"email": "a@example.com"}, **extra}
    with pytest.raises(ValidationError) as e:
        SendRequest.model_validate({"message": message})
    assert [list(err["loc"]) for err in e.value.errors()][0][:len(loc)] == loc


def test_refused_fields_are_422s_on_the_wire(daemon: DaemonProcess) -> None:
    for extra, loc in REFUSED:
        r = daemon.post("/send", {"message": {"to": {"email": "a@example.com"}, **extra}})
        assert r.status == 422, (extra, r.json())
        assert r.json()["details"][0]["loc"][:len(loc)] == loc


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

