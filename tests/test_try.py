"""`routingd try PROVIDER`, and the template parts of `check` and `explain --message`, run as real
processes; `try` sends to sandbox providers and to a real aiohttp stand-in on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import StandinLoop  # noqa: E402
from test_cli import err_lines, run, write  # noqa: E402

TEMPLATES = '''
[templates.disk-full]
email = { subject = "Disk {{ host }} at {{ pct }}%", text = "{{ host }} is at {{ pct }}%", html = "<b>{{ host }}</b>" }
sms = { text = "{{ host }}: {{ pct }}%" }
'''


def config(providers: str, extra: str = "") -> str:
    return (providers + '''
[channels.email]
providers = ["mail"]
requires = "email"
[channels.sms]
providers = ["text"]
requires = "phone_number"
[routes.default]
channels = ["email", "sms"]
''' + TEMPLATES + extra)


SANDBOX = '[providers.mail]\ntype = "sandbox"\nlatency = "1ms"\n[providers.text]\ntype = "sandbox"\nlatency = "1ms"\n'


def http(url: str, extra: str = "") -> str:
    return (f'[providers.mail]\ntype = "http"\nurl = "{url}"\ntimeout = "5s"\n{extra}\n'
            '[providers.text]\ntype = "sandbox"\n')


# --------------------------------------------------------------------------- try


def test_try_a_sandbox_provider_with_a_template(tmp_path: Path) -> None:
    cfg = write(tmp_path / "routing.toml", config(SANDBOX))
    p = run("try", "mail", "--to", "email=a@example.com", "--template", "disk-full",
            "--data", "host=db1", "--data", "pct=97", "--config", cfg)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0] == "provider mail (type sandbox), channel email, to email=a@example.com"
    assert out[1] == "sent: title 'Disk db1 at 97%', text 'db1 is at 97%', html '<b>db1</b>'"
    assert "  status               200" in out
    assert out[-1] == "routingd: delivered"
    # the channel is the first that lists the provider; --channel picks another
    p = run("try", "text", "--to", "phone_number=+15550100", "--template", "disk-full",
            "--data", "host=db1", "--data", "pct=97", "--config", cfg)
    assert p.returncode == 0 and "channel sms" in p.stdout and "text 'db1: 97%'" in p.stdout


def test_try_a_failing_sandbox_provider_exits_1_with_the_derived_outcome(tmp_path: Path) -> None:
    down = SANDBOX.replace('[providers.text]', 'fail = "error"\n[providers.text]')
    cfg = write(tmp_path / "routing.toml", config(down))
    p = run("try", "mail", "--to", "email=a@x", "--title", "T", "--body", "B", "--config", cfg)
    assert p.returncode == 1
    assert "  status               503" in p.stdout or "  status               500" in p.stdout
    assert "routingd: status 5" in p.stdout and "retryable -> retry or fail over" in p.stdout


def test_try_an_http_provider_against_a_real_server(tmp_path: Path) -> None:
    with StandinLoop() as loop:
        ok = loop.standin([{"status": 202}])
        cfg = write(tmp_path / "ok.toml", config(http(ok.url)))
        p = run("try", "mail", "--to", "email=a@example.com", "--to", 'slack={"channel": "#ops"}',
                "--template", "disk-full", "--data", "host=db1", "--data", "pct=97", "-c", cfg)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "  status               202" in p.stdout and p.stdout.endswith("routingd: delivered\n")
        got = ok.requests[0].json
        assert got["to"] == {"email": "a@example.com", "slack": {"channel": "#ops"}}
        assert got["rendered"] == {"title": "Disk db1 at 97%", "text": "db1 is at 97%", "html": "<b>db1</b>"}
        assert got["channel"] == "email" and got["message_id"].startswith("try-")

        # permanent: a 400 that failover.on does not list fails the channel
        bad = loop.standin([{"status": 400, "body": {"error": "bad address"}}])
        p = run("try", "mail", "--to", "email=x", "--title", "t", "-c",
                write(tmp_path / "bad.toml", config(http(bad.url))))
        assert p.returncode == 1
        assert '  detail               HTTP 400: {"error": "bad address"}' in p.stdout
        assert "routingd: status 400, not in failover.on: permanent -> the channel fails" in p.stdout

        # throttled: 429 with the vendor's hint
        slow = loop.standin([{"status": 429, "retry_after": 7}])
        p = run("try", "mail", "--to", "email=x", "--title", "t", "-c",
                write(tmp_path / "slow.toml", config(http(slow.url))))
        assert p.returncode == 1
        assert "  retry after          7s" in p.stdout and "(retry after 7s)" in p.stdout

        # no answer within the provider's timeout
        hang = loop.standin([{"hang": True}])
        p = run("try", "mail", "--to", "email=x", "--title", "t", "-c",
                write(tmp_path / "hang.toml", config(http(hang.url).replace('"5s"', '"300ms"'))))
        assert p.returncode == 1
        assert "routingd: no answer within the timeout: retryable" in p.stdout

        # the body template speaks another JSON API
        hook = loop.standin([{"status": 200}])
        body = 'body = \'{"msg": {{ (title ~ ": " ~ text) | tojson }}}\''
        p = run("try", "mail", "--to", "email=x", "--title", "Hi", "--body", "there", "-c",
                write(tmp_path / "hook.toml", config(http(hook.url, body))))
        assert p.returncode == 0, p.stdout
        assert hook.requests[0].json == {"msg": "Hi: there"}


def test_try_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    cfg = write(tmp_path / "routing.toml", config(SANDBOX))
    p = run("try", "nope", "--to", "email=x", "-c", cfg)
    assert p.returncode == 1 and err_lines(p) == [
        "routingd try: unknown provider 'nope'; defined providers: mail, text"]
    p = run("try", "mail", "--to", "email=x", "--template", "disk-full", "--data", "host=h", "-c", cfg)
    assert p.returncode == 1
    assert err_lines(p)[0].startswith("routingd try: message.data: templates.disk-full.email.subject (line 1): "
                                      "'pct' is undefined")
    p = run("try", "mail", "--to", "email=x", "--template", "nope", "-c", cfg)
    assert p.returncode == 1 and "unknown template 'nope'; defined templates: disk-full" in p.stderr
    p = run("try", "mail", "--to", "email", "-c", cfg)
    assert p.returncode == 1 and err_lines(p) == ["routingd try: --to 'email': expected KEY=VALUE"]
    p = run("try", "mail", "--to", "email=x", "--data", "a=1", "-c", cfg)
    assert p.returncode == 1 and "--data needs --template" in p.stderr
    p = run("try", "mail", "-c", cfg)
    assert p.returncode == 2


# --------------------------------------------------------------------------- check, explain


def test_check_compiles_every_template(tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", config(SANDBOX))
    p = run("check", good)
    assert p.returncode == 0 and "1 template)" in p.stdout
    bad = write(tmp_path / "bad.toml", config(SANDBOX, '[templates.broken]\nsms = { text = "a\\n{{ x " }\n'))
    p = run("check", bad)
    assert p.returncode == 1
    assert err_lines(p)[0].startswith(f"{bad}:21:9: templates.broken.sms.text: template syntax error at line 2: ")


def test_explain_message_shows_what_each_channel_receives(tmp_path: Path) -> None:
    cfg = write(tmp_path / "routing.toml", config(SANDBOX))
    msg = write(tmp_path / "m.json", json.dumps({"message": {
        "to": {"email": "a@x", "phone_number": "+1"}, "template": "disk-full", "data": {"host": "<h>", "pct": 9}}}))
    p = run("explain", "-c", cfg, "-m", msg)
    assert p.returncode == 0, p.stderr
    block = p.stdout[p.stdout.index("content each channel would receive:"):]
    assert block.splitlines() == [
        "content each channel would receive:",
        "  email  (templates.disk-full.email)",
        "    title: Disk <h> at 9%",
        "    text:  <h> is at 9%",
        "    html:  <b>&lt;h&gt;</b>",
        "  sms  (templates.disk-full.sms)",
        "    title: ",
        "    text:  <h>: 9%"]
    p = run("explain", "-c", cfg, "-m", msg, "--json")
    assert json.loads(p.stdout)["content"]["sms"] == {"title": "", "text": "<h>: 9%", "html": None,
                                                      "source": "templates.disk-full.sms"}
    plain = write(tmp_path / "p.json", json.dumps({"message": {"to": {"email": "a@x"},
                                                               "content": {"title": "T", "body": "B"}}}))
    p = run("explain", "-c", cfg, "-m", plain)
    assert "  email  (content.title / content.body)\n    title: T\n    text:  B\n" in p.stdout
    missing = write(tmp_path / "x.json", json.dumps({"message": {"to": {"email": "a@x"}, "template": "disk-full"}}))
    p = run("explain", "-c", cfg, "-m", missing)
    assert p.returncode == 1
    assert err_lines(p)[0].startswith(f"{missing}: message.data: templates.disk-full.email.subject (line 1): ")
