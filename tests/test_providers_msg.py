"""The sms / push / chat provider types (twilio, fcm, slack, apprise) against loopback stand-ins
that check what each vendor checks and answer with its documented bodies (tests/vendor_standins.py):
each vendor answer becomes the outcome docs/providers.md's tables say, and no detail holds a secret."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import free_port  # noqa: E402
from vendor_standins import FcmStandin, Receiver, SlackStandin, TwilioStandin  # noqa: E402

from routingd.daemon.adapters import AdapterContext, AttemptRequest, Content, ProviderAdapter, build_adapter  # noqa: E402
from routingd.daemon.core.policy import PolicyError, parse_policy  # noqa: E402
from routingd.daemon.providers import make_http_session  # noqa: E402

SID, TOKEN = "AC" + "a" * 32, "twilio-auth-token-0123456789"
SLACK_TOKEN = "xoxb-slack-bot-token-0123456789"


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


def policy_provider(block: str, env: dict[str, str] | None = None) -> Any:
    text = f"[providers.p]\n{block}\n[channels.c]\nproviders = [\"p\"]\n[routes.default]\nchannels = [\"c\"]\n"
    return parse_policy(text, env=env or {}).providers["p"]


async def make(block: str, env: dict[str, str] | None = None) -> tuple[ProviderAdapter, AdapterContext]:
    ctx = AdapterContext(http_session=make_http_session())
    return build_adapter("p", policy_provider(block, env), ctx), ctx


def req(to: dict[str, Any], title: str = "Disk full", text: str = "db1 is at 97%", deadline_s: float = 5.0,
        rendered: Content | None = None) -> AttemptRequest:
    return AttemptRequest(message_id="m1", attempt_id="m1.0.1", channel="c", provider="p", try_no=1,
                          deadline_s=deadline_s, idempotency_key="m1:c:p", to=to,
                          content={"title": title, "body": text}, rendered=rendered)


def twilio_block(url: str, sender: str = 'from = "+15017122661"', token: str = TOKEN) -> str:
    return (f'type = "twilio"\naccount_sid = "{SID}"\nauth_token = "{token}"\n{sender}\nbase_url = "{url}"\n'
            'status_callback = "https://routingd.example.com/v1/receipts/p"')


# --------------------------------------------------------------------------- twilio


def test_twilio_sends_a_form_with_basic_auth_and_keeps_the_sid() -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN) as s:
            a, ctx = await make(twilio_block(s.url))
            o = await a.send(req({"phone_number": "+15558675310"}))
            assert (o.status, o.network, o.detail) == (201, False, "")
            (r,) = s.requests
            assert r.form == {"To": "+15558675310", "Body": "db1 is at 97%", "From": "+15017122661",
                              "StatusCallback": "https://routingd.example.com/v1/receipts/p"}
            assert o.provider_message_id is not None and o.provider_message_id.startswith("SM")
            # a rendered template's text is what goes out
            o = await a.send(req({"phone_number": "+15558675310"}, rendered=Content(title="t", text="rendered")))
            assert o.status == 201 and s.requests[-1].form["Body"] == "rendered"   # type: ignore[index]
            await ctx.http_session.close()
    run(main)


def test_twilio_messaging_service_sid_instead_of_from() -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN) as s:
            a, ctx = await make(twilio_block(s.url, sender='messaging_service_sid = "MG' + "b" * 32 + '"'))
            o = await a.send(req({"phone_number": "+15558675310"}))
            assert o.status == 201
            assert s.requests[0].form["MessagingServiceSid"] == "MG" + "b" * 32   # type: ignore[index]
            assert "From" not in s.requests[0].form                               # type: ignore[operator]
            await ctx.http_session.close()
    run(main)


@pytest.mark.parametrize("number,status,code", [("+15005550001", 400, 21211), ("0800 CALL ME", 400, 21211),
                                                 ("+15005550009", 400, 21614), ("+15005550004", 403, 21610)])
def test_twilio_invalid_or_unreachable_numbers_are_permanent(number: str, status: int, code: int) -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN) as s:
            a, ctx = await make(twilio_block(s.url))
            o = await a.send(req({"phone_number": number}))
            assert (o.status, o.network, o.provider_message_id) == (status, False, None)
            assert o.detail.startswith(f"twilio {code}: ")
            await ctx.http_session.close()
    run(main)


@pytest.mark.parametrize("action,status,retry_after", [("throttle", 429, 7.0), ("error", 500, None),
                                                        ("unavailable", 503, None)])
def test_twilio_throttling_and_server_errors_are_retryable(action: str, status: int, retry_after: float | None) -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN, script=[action]) as s:
            a, ctx = await make(twilio_block(s.url))
            o = await a.send(req({"phone_number": "+15558675310"}))
            assert (o.status, o.retry_after_s) == (status, retry_after)
            assert o.detail.startswith("twilio 20")
            await ctx.http_session.close()
    run(main)


def test_twilio_bad_credentials_are_401_and_the_token_never_shows() -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN) as s:
            a, ctx = await make(twilio_block(s.url, token="wrong-token-abcdef"))
            o = await a.send(req({"phone_number": "+15558675310"}))
            assert o.status == 401 and o.detail == "twilio 20003: Authenticate"
            await ctx.http_session.close()
    run(main)


def test_twilio_without_a_phone_number_fails_without_calling_twilio() -> None:
    async def main() -> None:
        async with TwilioStandin(SID, TOKEN) as s:
            a, ctx = await make(twilio_block(s.url))
            o = await a.send(req({"email": "a@example.com"}))
            assert o.status == 400 and "to.phone_number" in o.detail and s.requests == []
            await ctx.http_session.close()
    run(main)


def test_twilio_connection_refused_is_network_and_no_answer_is_cancelled_at_the_deadline() -> None:
    async def main() -> None:
        a, ctx = await make(twilio_block(f"http://127.0.0.1:{free_port()}", token="secret-in-no-detail"))
        o = await a.send(req({"phone_number": "+15558675310"}))
        assert o.network and o.status is None and "secret-in-no-detail" not in o.detail
        assert SID not in o.detail            # the URL's path is never named, only its origin
        async with TwilioStandin(SID, TOKEN, script=["hang"]) as s:
            a, _ = await make(twilio_block(s.url))
            with pytest.raises(asyncio.TimeoutError):    # what the runtime does at the attempt deadline
                await asyncio.wait_for(a.send(req({"phone_number": "+15558675310"})), 0.5)
            assert len(s.requests) == 1
        await ctx.http_session.close()
    run(main)


def test_twilio_config_needs_exactly_one_sender() -> None:
    with pytest.raises(PolicyError, match="exactly one of `from`"):
        policy_provider(twilio_block("http://127.0.0.1:1", sender=""))
    with pytest.raises(PolicyError, match="exactly one of `from`"):
        policy_provider(twilio_block("http://127.0.0.1:1", sender='from = "+1"\nmessaging_service_sid = "MG1"'))


# --------------------------------------------------------------------------- fcm


def fcm_block(s: FcmStandin, service_account: str, project: str | None = None) -> str:
    return (f'type = "fcm"\nproject_id = "{project or s.project_id}"\nservice_account = \'\'\'{service_account}\'\'\'\n'
            f'base_url = "{s.url}"')


def test_fcm_fetches_one_token_for_many_sends_and_keeps_the_message_name(tmp_path: Path) -> None:
    async def main() -> None:
        async with FcmStandin() as s:
            key = tmp_path / "sa.json"
            key.write_text(json.dumps(s.service_account()))
            a, ctx = await make(fcm_block(s, str(key)))
            outcomes = await asyncio.gather(*(a.send(req({"firebaseToken": f"dev{i}"})) for i in range(20)))
            assert [o.status for o in outcomes] == [200] * 20
            assert all(o.provider_message_id and o.provider_message_id.startswith("projects/routingd-test/messages/")
                       for o in outcomes)
            assert s.token_requests == 1           # concurrent sends shared one refresh; then cached
            o = await a.send(req({"firebaseToken": "dev0"}))
            assert o.status == 200 and s.token_requests == 1
            body = s.requests[-1].json
            assert body == {"message": {"token": "dev0", "notification": {"title": "Disk full", "body": "db1 is at 97%"}}}
            await ctx.http_session.close()
    run(main)


def test_fcm_refreshes_a_token_before_it_expires() -> None:
    async def main() -> None:
        # a token that lives 60 s is inside google-auth's refresh threshold: every send refreshes
        async with FcmStandin(expires_in=60) as s:
            a, ctx = await make(fcm_block(s, json.dumps(s.service_account())))
            for i in range(3):
                assert (await a.send(req({"firebaseToken": "dev"}))).status == 200
                assert s.token_requests == i + 1
            await ctx.http_session.close()
    run(main)


def test_fcm_a_token_revoked_early_is_replaced_once() -> None:
    async def main() -> None:
        async with FcmStandin(script=["revoke", "ok"]) as s:
            a, ctx = await make(fcm_block(s, json.dumps(s.service_account())))
            o = await a.send(req({"firebaseToken": "dev"}))
            assert o.status == 200 and s.token_requests == 2 and len(s.requests) == 2
            await ctx.http_session.close()
    run(main)


@pytest.mark.parametrize("action,status,code,retry_after", [
    ("unregistered", 404, "UNREGISTERED", None), ("invalid_token", 400, "INVALID_ARGUMENT", None),
    ("sender_mismatch", 403, "SENDER_ID_MISMATCH", None), ("quota", 429, "QUOTA_EXCEEDED", 11.0),
    ("unavailable", 503, "UNAVAILABLE", None), ("internal", 500, "INTERNAL", None)])
def test_fcm_errors_map_by_fcm_error_code(action: str, status: int, code: str, retry_after: float | None) -> None:
    async def main() -> None:
        async with FcmStandin(script=[action]) as s:
            a, ctx = await make(fcm_block(s, json.dumps(s.service_account())))
            o = await a.send(req({"firebaseToken": "dev"}))
            assert (o.status, o.retry_after_s, o.provider_message_id) == (status, retry_after, None)
            assert o.detail.startswith(f"fcm {code} ")
            await ctx.http_session.close()
    run(main)


def test_fcm_a_key_the_token_endpoint_does_not_know_is_401() -> None:
    async def main() -> None:
        from vendor_standins import make_service_account

        async with FcmStandin() as s:
            info, _ = make_service_account(s.token_uri)        # never registered with the stand-in
            a, ctx = await make(fcm_block(s, json.dumps(info)))
            o = await a.send(req({"firebaseToken": "dev"}))
            assert o.status == 401 and "invalid_grant" in o.detail and s.requests == []
            assert "PRIVATE KEY" not in o.detail
            await ctx.http_session.close()
    run(main)


def test_fcm_an_unreadable_service_account_fails_over_with_a_clear_detail(tmp_path: Path) -> None:
    async def main() -> None:
        async with FcmStandin() as s:
            a, ctx = await make(fcm_block(s, str(tmp_path / "missing.json")))
            o = await a.send(req({"firebaseToken": "dev"}))
            assert o.network and "service_account: cannot read" in o.detail and s.token_requests == 0
            await ctx.http_session.close()
    run(main)


def test_fcm_without_a_token_fails_without_calling_fcm() -> None:
    async def main() -> None:
        async with FcmStandin() as s:
            a, ctx = await make(fcm_block(s, json.dumps(s.service_account())))
            o = await a.send(req({"user_id": "u1"}))
            assert o.status == 400 and "to.firebaseToken" in o.detail and s.token_requests == 0
            await ctx.http_session.close()
    run(main)


def test_fcm_config_checks_inline_json() -> None:
    with pytest.raises(PolicyError, match="service_account: is not a service-account key"):
        policy_provider('type = "fcm"\nproject_id = "p"\nservice_account = \'{"type": "service_account"}\'')


# --------------------------------------------------------------------------- slack


def slack_webhook_block(s: SlackStandin, url: str | None = None) -> str:
    return f'type = "slack"\nwebhook_url = "{url or s.webhook_url}"'


def slack_api_block(s: SlackStandin, token: str = SLACK_TOKEN, channel: str = "#general") -> str:
    return f'type = "slack"\ntoken = "{token}"\nchannel = "{channel}"\nbase_url = "{s.url}/api"'


def test_slack_webhook_posts_json_text() -> None:
    async def main() -> None:
        async with SlackStandin(token=SLACK_TOKEN) as s:
            a, ctx = await make(slack_webhook_block(s))
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.detail) == (200, "")
            assert s.requests[0].json == {"text": "db1 is at 97%"}
            await ctx.http_session.close()
    run(main)


@pytest.mark.parametrize("action,status,retry_after", [
    ("channel_not_found", 404, None), ("channel_is_archived", 410, None), ("action_prohibited", 403, None),
    ("invalid_token", 403, None), ("rate_limited", 429, 30.0), ("rollup_error", 500, None)])
def test_slack_webhook_errors_keep_slack_s_code_but_never_the_url(action: str, status: int,
                                                                   retry_after: float | None) -> None:
    async def main() -> None:
        async with SlackStandin(script=[action]) as s:
            a, ctx = await make(slack_webhook_block(s))
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.retry_after_s) == (status, retry_after)
            assert o.detail == f"slack webhook HTTP {status}: {action}"
            await ctx.http_session.close()
    run(main)


def test_slack_webhook_secrets_stay_out_of_details() -> None:
    async def main() -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}{SlackStandin.WEBHOOK_PATH}"
        a, ctx = await make(slack_webhook_block(SlackStandin(), url=url))
        o = await a.send(req({"user_id": "u1"}))
        assert o.network and f"127.0.0.1:{port}" in o.detail
        assert "XXXXXXXX" not in o.detail and "/services/" not in o.detail
        async with SlackStandin() as s:            # an unknown hook: 404 no_service, no path in the detail
            a, _ = await make(slack_webhook_block(s, url=s.url + "/services/T1/B1/secretsecret"))
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.detail) == (404, "slack webhook HTTP 404: no_service")
        await ctx.http_session.close()
    run(main)


def test_slack_webhook_base_url_keeps_the_hook_path() -> None:
    async def main() -> None:
        async with SlackStandin() as s:
            block = slack_webhook_block(s, url="https://hooks.slack.com" + SlackStandin.WEBHOOK_PATH)
            a, ctx = await make(block + f'\nbase_url = "{s.url}"')
            assert (await a.send(req({"user_id": "u1"}))).status == 200
            assert s.requests[0].path == SlackStandin.WEBHOOK_PATH
            await ctx.http_session.close()
    run(main)


def test_slack_webhook_refuses_a_per_message_channel() -> None:
    async def main() -> None:
        async with SlackStandin() as s:
            a, ctx = await make(slack_webhook_block(s))
            o = await a.send(req({"slack": {"channel": "#ops"}}))
            assert o.status == 400 and "token + channel" in o.detail and s.requests == []
            await ctx.http_session.close()
    run(main)


def test_slack_api_posts_with_bearer_and_keeps_ts() -> None:
    async def main() -> None:
        async with SlackStandin(token=SLACK_TOKEN) as s:
            a, ctx = await make(slack_api_block(s))
            o = await a.send(req({"user_id": "u1"}))
            assert o.status == 200 and o.provider_message_id and o.detail == ""
            assert s.requests[0].json == {"channel": "#general", "text": "db1 is at 97%"}
            assert s.requests[0].headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
            o = await a.send(req({"slack": {"channel": "C123ABC456"}}))     # to.slack.channel overrides
            assert o.status == 200 and s.requests[1].json["channel"] == "C123ABC456"
            o = await a.send(req({"slack": {"channel": "#nowhere"}}))
            assert (o.status, o.detail) == (404, "slack channel_not_found")
            o = await a.send(req({"slack": "#ops"}))
            assert o.status == 400 and "to.slack must be" in o.detail
            await ctx.http_session.close()
    run(main)


@pytest.mark.parametrize("action,status,retry_after", [
    ("ratelimited", 429, 30.0), ("not_in_channel", 403, None), ("is_archived", 410, None),
    ("internal_error", 500, None), ("fatal_error", 500, None)])
def test_slack_api_errors_map_by_slack_error(action: str, status: int, retry_after: float | None) -> None:
    async def main() -> None:
        async with SlackStandin(token=SLACK_TOKEN, script=[action]) as s:
            a, ctx = await make(slack_api_block(s))
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.retry_after_s, o.detail) == (status, retry_after, f"slack {action}")
            await ctx.http_session.close()
    run(main)


def test_slack_api_bad_token_is_401_without_the_token() -> None:
    async def main() -> None:
        async with SlackStandin(token=SLACK_TOKEN) as s:
            a, ctx = await make(slack_api_block(s, token="xoxb-wrong-token-123"))
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.detail) == (401, "slack invalid_auth")
            await ctx.http_session.close()
    run(main)


def test_slack_config_is_a_webhook_or_a_token_with_a_channel() -> None:
    for block, msg in [('type = "slack"', "either `webhook_url`"),
                       ('type = "slack"\ntoken = "x"', "`token` needs `channel`"),
                       ('type = "slack"\nwebhook_url = "http://h/x"\ntoken = "x"\nchannel = "c"', "either `webhook_url`"),
                       ('type = "slack"\nwebhook_url = "hooks.slack.com/services/SECRET"', "webhook_url: must start")]:
        with pytest.raises(PolicyError, match=msg) as e:
            policy_provider(block)
        assert "SECRET" not in str(e.value)


# --------------------------------------------------------------------------- apprise


def test_apprise_json_and_form_urls_reach_a_local_receiver() -> None:
    async def main() -> None:
        async with Receiver() as r:
            host = r.url.removeprefix("http://")
            a, ctx = await make(f'type = "apprise"\nurls = ["json://{host}/hook", "form://{host}/form"]')
            o = await a.send(req({"user_id": "u1"}))
            assert (o.status, o.network, o.provider_message_id) == (200, False, None)
            by_path = {x.path: x for x in r.requests}
            assert by_path["/hook"].json["title"] == "Disk full"
            assert by_path["/hook"].json["message"] == "db1 is at 97%"
            assert by_path["/form"].form is not None and by_path["/form"].form["message"] == "db1 is at 97%"
            await ctx.http_session.close()
    run(main)


def test_apprise_no_is_a_retryable_502_without_the_urls() -> None:
    async def main() -> None:
        async with Receiver(script=["500"]) as r:
            host = r.url.removeprefix("http://")
            a, ctx = await make(f'type = "apprise"\nurls = ["json://user:pa55word@{host}/secret-path"]')
            o = await a.send(req({"user_id": "u1"}))
            assert o.status == 502 and o.detail.startswith("apprise: not delivered")
            assert "pa55word" not in o.detail and "secret-path" not in o.detail
            await ctx.http_session.close()
    run(main)


def test_apprise_a_url_apprise_cannot_use_fails_every_attempt_as_network() -> None:
    async def main() -> None:
        a, ctx = await make('type = "apprise"\nurls = ["nosuchscheme://token@host"]')
        o = await a.send(req({"user_id": "u1"}))
        assert o.network and "urls[0] (nosuchscheme://...)" in o.detail and "token" not in o.detail
        await ctx.http_session.close()
    run(main)


# --------------------------------------------------------------------------- docs


def test_providers_doc_names_every_key_of_each_type_in_its_section() -> None:
    import re

    from routingd.daemon.core import policy as pol

    doc = (Path(__file__).resolve().parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    for name, model in [("twilio", pol.TwilioProvider), ("fcm", pol.FcmProvider), ("slack", pol.SlackProvider),
                        ("apprise", pol.AppriseProvider)]:
        section = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
        assert section is not None, f"docs/providers.md has no '## {name}'"
        own = set(model.model_fields) - set(pol.ProviderBase.model_fields) - {"type"}
        keys = {model.model_fields[k].alias or k for k in own}
        missing = [k for k in sorted(keys) if f"| `{k}` |" not in section.group(1)]
        assert missing == [], f"## {name}: undocumented keys {missing}"
