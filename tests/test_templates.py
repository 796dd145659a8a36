"""Message templates ([templates.NAME], a message's template + data): compiled with the policy,
rendered per channel at accept (a 422 for an unknown template or a missing variable), delivered
to real providers on loopback, rendered again on resume; the http provider's body template."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess  # noqa: E402
from provider_standin import ProviderStandin  # noqa: E402
from test_runtime import finished, http, policy_text, router_for, run, send  # noqa: E402

from routingd.daemon.adapters import Content  # noqa: E402
from routingd.daemon.core.plan import PlanError  # noqa: E402
from routingd.daemon.core.policy import PolicyError, parse_policy  # noqa: E402
from routingd.daemon.metrics import Metrics  # noqa: E402
from routingd.daemon.runtime import Router  # noqa: E402
from routingd.daemon.store import Store  # noqa: E402

CHANNELS = """
[channels.email]
providers = ["mail"]
requires = "email"
[channels.sms]
providers = ["text"]
requires = "phone_number"
"""

TEMPLATES = '''
[templates.disk-full]
email = { subject = "Disk {{ host }} at {{ pct }}%", text = "Host {{ host }} is at {{ pct }}%.\\nData: {{ data.host }}", html = "<p>{{ host }} is at <b>{{ pct }}%</b></p>" }
sms = { text = "{{ host }}: disk {{ pct }}% (to {{ to.phone_number }})" }
[templates.email-only]
email = { title = "Only {{ x }}", body = "mail" }
'''


def sandbox_policy(extra: str = "") -> str:
    return ('[providers.mail]\ntype = "sandbox"\n[providers.text]\ntype = "sandbox"\n' + CHANNELS
            + '[routes.default]\nchannels = ["email", "sms"]\n' + TEMPLATES + extra)


# --------------------------------------------------------------------------- the policy


def test_templates_compile_with_the_policy_and_render_per_channel() -> None:
    p = parse_policy(sandbox_policy(), env={})
    assert p.templates.names == ["disk-full", "email-only"]
    r, issues = p.templates.render("disk-full", "email", {"host": "<db1>", "pct": 97}, {"email": "a@x"})
    assert issues == []
    assert r is not None
    # text parts are not escaped; the html part is (data is untrusted)
    assert r.title == "Disk <db1> at 97%"
    assert r.text == "Host <db1> is at 97%.\nData: <db1>"
    assert r.html == "<p>&lt;db1&gt; is at <b>97%</b></p>"
    r, _ = p.templates.render("disk-full", "sms", {"host": "db1", "pct": 97}, {"phone_number": "+1555"})
    assert r is not None and (r.title, r.text, r.html) == ("", "db1: disk 97% (to +1555)", None)
    # title/body are the same fields as subject/text
    r, _ = p.templates.render("email-only", "email", {"x": 1}, {})
    assert r is not None and (r.title, r.text) == ("Only 1", "mail")
    assert p.templates.render("email-only", "sms", {}, {}) == (None, [])


def test_template_problems_name_the_template_channel_key_and_line() -> None:
    bad = sandbox_policy('''
[templates.broken]
email = { subject = "ok", text = "line one\\n{% if %}" }
sms = { text = "{{ unclosed " }
push = { text = "x" }
[templates.both]
email = { subject = "a", title = "b" }
''')
    with pytest.raises(PolicyError) as e:
        parse_policy(bad.replace("[templates.both]\nemail = { subject = \"a\", title = \"b\" }\n", ""), env={})
    lines = e.value.lines()
    assert any(ln.startswith("routing.toml:22:27: templates.broken.email.text: template syntax error at line 2:")
               for ln in lines), lines
    assert any(ln.startswith("routing.toml:23:9: templates.broken.sms.text: template syntax error at line 1:")
               for ln in lines), lines
    assert "routing.toml:24: templates.broken.push: unknown channel 'push'; defined channels: email, sms" in lines
    with pytest.raises(PolicyError) as e:
        parse_policy(bad, env={})
    assert "routing.toml:26: templates.both.email: give subject or title, not both (both fill the title)" in e.value.lines()
    with pytest.raises(PolicyError) as e:
        parse_policy(sandbox_policy('[templates.x]\nemail = { subjekt = "a" }\n'), env={})
    assert ("routing.toml:21:11: templates.x.email.subjekt: unknown key; did you mean 'subject'? "
            "valid keys: subject, title, text, body, html") in e.value.lines()


def test_templates_are_not_interpolated_from_the_environment() -> None:
    """[templates] is message text: "${price}" is the author's, not an environment variable."""
    p = parse_policy(sandbox_policy('[templates.price]\nemail = { text = "costs ${amount} {{ n }}" }\n'),
                     env={"amount": "SECRET"})
    r, _ = p.templates.render("price", "email", {"n": 2}, {})
    assert r is not None and r.text == "costs ${amount} 2"


def test_the_sandbox_refuses_unsafe_attributes_and_huge_ranges() -> None:
    p = parse_policy(sandbox_policy('''
[templates.evil]
email = { text = "{{ data.__class__.__mro__ }}" }
[templates.loop]
email = { text = "{% for i in range(10000000) %}x{% endfor %}" }
'''), env={})
    r, issues = p.templates.render("evil", "email", {}, {})
    assert r is None and issues[0][0] == ("message", "template") and "unsafe" in issues[0][1]
    r, issues = p.templates.render("loop", "email", {}, {})
    assert r is None and "MAX_RANGE" in issues[0][1]


# --------------------------------------------------------------------------- the daemon


def test_rendered_content_reaches_the_provider_per_channel(tmp_path: Path) -> None:
    """Each channel's provider receives its own part, rendered from data and to."""
    async def main() -> None:
        async with ProviderStandin([{"status": 200}]) as mail, ProviderStandin([{"status": 200}]) as sms:
            text = policy_text(http("mail", mail.url) + http("text", sms.url), CHANNELS,
                               'method = "all"\nchannels = ["email", "sms"]') + TEMPLATES
            async with router_for(tmp_path, text) as r:
                res = await r.submit(send(template="disk-full", data={"host": "db<1>", "pct": 97}, content={}))
                st = await finished(r, res.message_id)
                assert st["status"] == "delivered"
                assert mail.requests[0].json["rendered"] == {
                    "title": "Disk db<1> at 97%", "text": "Host db<1> is at 97%.\nData: db<1>",
                    "html": "<p>db&lt;1&gt; is at <b>97%</b></p>"}
                assert sms.requests[0].json["rendered"] == {
                    "title": "", "text": "db<1>: disk 97% (to +15550100)", "html": None}
                # without a template, routingd's body is unchanged (no "rendered")
                res = await r.submit(send())
                await finished(r, res.message_id)
                assert "rendered" not in mail.requests[1].json

    run(main)


def test_unknown_template_or_missing_variable_is_refused_at_accept(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProviderStandin() as s:
            text = policy_text(http("mail", s.url) + http("text", s.url), CHANNELS,
                               'channels = ["email", "sms"]') + TEMPLATES
            async with router_for(tmp_path, text) as r:
                with pytest.raises(PlanError) as e:
                    await r.submit(send(template="nope"))
                assert [(p.loc, p.msg) for p in e.value.problems] == [
                    (("message", "template"), "unknown template 'nope'; defined templates: disk-full, email-only")]
                with pytest.raises(PlanError) as e:
                    await r.submit(send(template="disk-full", data={"host": "db1"}))
                msgs = [(p.loc, p.msg) for p in e.value.problems]
                assert (("message", "data"), "templates.disk-full.email.subject (line 1): 'pct' is undefined "
                        "(give it in message.data or message.to)") in msgs
                assert any(m.startswith("templates.disk-full.sms.text (line 1): 'pct' is undefined") for _, m in msgs)
                # a channel the recipient cannot reach is not rendered (it is skipped anyway)
                res = await r.submit(send(to={"email": "a@x"}, template="disk-full", data={"host": "h", "pct": 1}))
                assert (await finished(r, res.message_id))["status"] == "delivered"
                # a channel the template has no part for needs content.title / content.body
                with pytest.raises(PlanError) as e:
                    await r.submit(send(template="email-only", data={"x": 1}, content={}))
                assert [p.msg for p in e.value.problems] == [
                    "template 'email-only' has no part for channel 'sms', and message.content has no title or "
                    "body to fill it"]
                res = await r.submit(send(template="email-only", data={"x": 1}))
                assert (await finished(r, res.message_id))["status"] == "delivered"
                assert s.requests[-1].json["channel"] == "email"
                assert s.requests[-1].json["rendered"]["title"] == "Only 1"
                assert r.inflight == 0

    run(main)


def test_a_resumed_message_is_rendered_again_from_its_stored_request(tmp_path: Path) -> None:
    """Nothing rendered is stored: the next run renders the stored request under its policy version."""
    async def main() -> None:
        async with ProviderStandin([{"hang": True}]) as first:
            t = policy_text(http("mail", first.url) + http("text", first.url), CHANNELS, 'channels = ["email"]',
                            timeouts='provider = "30s"\nchannel = "1m"\nmessage = "2m"') + TEMPLATES
            policy = parse_policy(t, "routing.toml", env={})
            r1 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r1.start()
            mid = (await r1.submit(send(template="disk-full", data={"host": "db1", "pct": 97}))).message_id
            await first.wait_for(1)
            await r1.stop(0.1)
            first.set_script([{"status": 200}])
            r2 = Router(policy, Store(str(tmp_path / "state.db")), Metrics())
            await r2.start()
            try:
                assert (await finished(r2, mid))["status"] == "delivered"
            finally:
                await r2.stop(0)
            assert first.requests[0].json["rendered"] == first.requests[1].json["rendered"]
            assert first.requests[1].json["rendered"]["title"] == "Disk db1 at 97%"

    run(main)


def test_the_api_answers_422_naming_the_location(tmp_path: Path) -> None:
    """Over HTTP (a real daemon process): the 422 carries the problems with their locations."""
    with DaemonProcess(tmp_path, sandbox_policy()) as d:
        resp = d.post("/v1/send", {"message": {"to": {"email": "a@x"}, "template": "disk-full",
                                               "data": {"host": "db1"}}})
        assert resp.status == 422, resp.body
        details = resp.json()["details"]
        assert {"loc": ["message", "data"], "msg": "templates.disk-full.email.subject (line 1): 'pct' is "
                "undefined (give it in message.data or message.to)"} in details
        resp = d.post("/v1/send", {"message": {"to": {"email": "a@x"}, "template": "disk-full",
                                               "data": {"host": "db1", "pct": 97}}})
        assert resp.status == 202, resp.body
        assert d.wait_status(resp.json()["message_id"], "delivered")["status"] == "delivered"


# --------------------------------------------------------------------------- the http body template


def test_http_body_template_speaks_another_json_api(tmp_path: Path) -> None:
    body = ('body = \'{"chat_id": {{ to.chat | tojson }}, "text": {{ text | tojson }}, '
            '"ref": {{ attempt_id | tojson }}}\'')
    async def main() -> None:
        async with ProviderStandin([{"status": 200}]) as s:
            text = policy_text(http("mail", s.url, body=body[len("body = "):]) + http("text", s.url),
                               CHANNELS.replace('requires = "email"', 'requires = "chat"'), 'channels = ["email"]'
                               ) + TEMPLATES
            async with router_for(tmp_path, text) as r:
                res = await r.submit(send(to={"chat": "-100\"42"}, template="email-only", data={"x": "<&>"}))
                st = await finished(r, res.message_id)
                assert st["status"] == "delivered"
                got = s.requests[0]
                assert got.json == {"chat_id": "-100\"42", "text": "mail", "ref": st["attempts"][0]["attempt_id"]}
                assert got.headers["Content-Type"] == "application/json"
                assert got.idempotency_key == f"{res.message_id}:email:mail"
                # without a template, `text` is content.body
                res = await r.submit(send(to={"chat": "c"}, content={"body": "plain"}))
                assert (await finished(r, res.message_id))["status"] == "delivered"
                assert s.requests[1].json["text"] == "plain"

    run(main)


def test_http_body_template_errors() -> None:
    bad = policy_text('[providers.mail]\ntype = "http"\nurl = "http://127.0.0.1:9/"\nbody = "{{ x "\n'
                      '[providers.text]\ntype = "sandbox"\n', CHANNELS, 'channels = ["email"]')
    with pytest.raises(PolicyError) as e:
        parse_policy(bad, env={})
    assert any(ln.startswith("routing.toml:9: providers.mail.body: template syntax error at line 1")
               for ln in e.value.lines()), e.value.lines()

    from routingd.daemon.adapters import AdapterContext, AttemptRequest
    from routingd.daemon.providers.http import HttpAdapter

    class Cfg:
        url = "http://127.0.0.1:9/"
        headers: dict[str, str] = {}
        body = '{"to": {{ to.missing | tojson }}}'

    async def main() -> list[Any]:
        req = AttemptRequest("m", "a", "email", "mail", 1, 5.0, "m:email:mail", to={"email": "x"},
                             rendered=Content("t", "x"))
        out = [await HttpAdapter("mail", Cfg, AdapterContext(http_session=object())).send(req)]
        Cfg.body = '{"text": {{ text }}}'     # not JSON once rendered: x is no JSON value
        out.append(await HttpAdapter("mail", Cfg, AdapterContext(http_session=object())).send(req))
        return out

    missing, not_json = asyncio.run(main())
    assert missing.status == 400 and missing.detail.startswith("body template (line 1): ") and "missing" in missing.detail
    assert not_json.status == 400 and not_json.detail.startswith("body template: the rendered body is not JSON")


def test_explain_shows_each_channels_content_via_json() -> None:
    """The content block of `explain --message --json` (the text form is tested in test_cli)."""
    from routingd.daemon.core.plan import resolve_plan
    from routingd.daemon.core.request import SendRequest
    from routingd.daemon.explain import channel_contents

    p = parse_policy(sandbox_policy(), env={})
    msg = SendRequest.model_validate({"message": {"to": {"email": "a@x"}, "template": "disk-full",
                                                  "data": {"host": "h", "pct": 5}}}).message
    out = channel_contents(p, resolve_plan(p, request=msg), msg)
    assert list(out) == ["email"]       # sms: the recipient has no phone_number
    c, source = out["email"]
    assert source == "templates.disk-full.email" and c.title == "Disk h at 5%"
    json.dumps({k: v[0].__dict__ for k, v in out.items()})
