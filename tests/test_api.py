"""The HTTP API in-process: the real aiohttp app over a real Router, SQLite store and metrics
(sandbox providers and a real HTTP stand-in), plus settings precedence and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from routingd.daemon.api import ApiState, create_app, sign, token_ok
from routingd.daemon.config_files import load_policy
from routingd.daemon.metrics import Metrics
from routingd.daemon.openapi import openapi_document
from routingd.daemon.runtime import Router
from routingd.daemon.service import ConfigReloader, StartupError, check_auth
from routingd.daemon.settings import SettingsError, config_path, load_settings, parse_listen
from routingd.daemon.store import Store
from daemon_process import run_bounded as run
from provider_standin import ProviderStandin

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}     # raw bodies say what they are

SANDBOX = """
version = 1
[daemon]
max_body = 1024
[timeouts]
provider = "1s"
channel = "3s"
message = "5s"
[providers.fast]
type = "sandbox"
latency = "1ms"
[channels.email]
providers = ["fast"]
requires = "email"
[routes.default]
channels = ["email"]
"""


@asynccontextmanager
async def api(tmp_path: Path, text: str = SANDBOX, tokens: tuple[str, ...] = (TOKEN,)
              ) -> AsyncIterator[tuple[TestClient, ApiState, Path]]:
    cfg = tmp_path / "routing.toml"
    cfg.write_text(text)
    policy = load_policy(str(cfg))
    metrics = Metrics()
    router = Router(policy, Store(str(tmp_path / "state.db")), metrics)
    await router.start()
    settings = load_settings(policy, config=str(cfg))
    state = ApiState(router=router, metrics=metrics, reloader=None,  # type: ignore[arg-type]
                     tokens=[t.encode() for t in tokens], max_body=settings.max_body, phase="ready")
    state.reloader = ConfigReloader(str(cfg), router, metrics, state, None, None, settings=settings)
    try:
        async with TestClient(TestServer(create_app(state))) as client:
            yield client, state, cfg
    finally:
        await router.stop(0)


async def wait_status(client: TestClient, mid: str, want: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(f"/v1/messages/{mid}", headers=AUTH)
        body = await r.json()
        if body["status"] == want:
            return body
        assert body["status"] == "pending", body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.02)


async def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    body = await r.json()
    assert set(body) == {"error", "details"} and body["error"]
    return body


# --------------------------------------------------------------------------- send + status


def test_send_202_then_status_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, state, _):
            r = await c.post("/v1/send", json={"message": {"to": {"email": "a@example.com"},
                                                           "content": {"body": "hi"}}}, headers=AUTH)
            assert r.status == 202
            mid = (await r.json())["message_id"]
            assert r.headers["Location"] == f"/v1/messages/{mid}"
            st = await wait_status(c, mid, "delivered")
            assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == [("fast", "delivered")]
            assert st["accepted_at"].endswith("Z") and st["finished_at"]
            text = (await (await c.get("/metrics")).text())
            assert "routingd_messages_accepted_total 1.0" in text
    run(main())


def test_idempotency_key(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            body = {"message": {"to": {"email": "a@example.com"}}}
            r1 = await c.post("/v1/send", json=body, headers={**AUTH, "Idempotency-Key": "k-1"})
            r2 = await c.post("/v1/send", json=body, headers={**AUTH, "Idempotency-Key": "k-1"})
            r3 = await c.post("/v1/send", json=body, headers={**AUTH, "Idempotency-Key": "k-2"})
            ids = [(await r.json())["message_id"] for r in (r1, r2, r3)]
            assert [r.status for r in (r1, r2, r3)] == [202, 202, 202]
            assert ids[0] == ids[1] != ids[2]
            assert r2.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in r1.headers
            bad = await c.post("/v1/send", json=body, headers={**AUTH, "Idempotency-Key": "has space"})
            assert (await error_of(bad, 400))["details"][0]["loc"] == ["header", "Idempotency-Key"]
    run(main())


# --------------------------------------------------------------------------- error answers


def test_auth(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path, tokens=("one", "two")) as (c, _, _):
            body = {"message": {"to": {"email": "a@example.com"}}}
            for headers in ({}, {"Authorization": "Bearer three"}, {"Authorization": "Basic b25lOg=="},
                            {"Authorization": "Bearer "}, {"Authorization": "one"}):
                r = await c.post("/v1/send", json=body, headers=headers)
                assert (await error_of(r, 401))["details"][0]["loc"] == ["header", "Authorization"]
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            for tok in ("one", "two"):
                r = await c.post("/v1/send", json=body, headers={"Authorization": f"Bearer {tok}"})
                assert r.status == 202
            for path in ("/v1/config", "/v1/messages/x"):
                await error_of(await c.get(path), 401)
            await error_of(await c.post("/-/reload"), 401)
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert (await c.get(path)).status == 200, path
    run(main())


def test_no_tokens_means_no_auth(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path, tokens=()) as (c, _, _):
            r = await c.post("/v1/send", json={"message": {"to": {"email": "a@example.com"}}})
            assert r.status == 202
    run(main())


def test_token_comparison() -> None:
    assert token_ok("Bearer abc", [b"x", b"abc"]) and token_ok("bearer abc", [b"abc"])
    assert not token_ok("Bearer abcd", [b"abc"]) and not token_ok("Bearer ab", [b"abc"])
    assert not token_ok("", [b"abc"]) and not token_ok("Bearer abc", [])


def test_bad_json_400_and_body_limit_413(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            for raw in (b"{", b"\xff\xfe", b"[1, 2]", b'"message"', b""):
                r = await c.post("/v1/send", data=raw, headers={**AUTH, "Content-Type": "application/json"})
                assert (await error_of(r, 400))["details"][0]["loc"] == ["body"], raw
            big = json.dumps({"message": {"to": {"email": "a" * 2000}}}).encode()
            await error_of(await c.post("/v1/send", data=big, headers=JSON_AUTH), 413)

            async def chunks() -> AsyncIterator[bytes]:        # no Content-Length: chunked
                for _ in range(40):
                    yield b" " * 100
            await error_of(await c.post("/v1/send", data=chunks(), headers=JSON_AUTH), 413)
            raw = json.dumps({"attempt_id": "x" * 2000, "status": "delivered"}).encode()
            await error_of(await c.post("/v1/receipts/fast", data=raw, headers=JSON_AUTH), 413)
    run(main())


def test_validation_422_names_the_fields(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            async def locs(message: Any) -> list[list[Any]]:
                r = await c.post("/v1/send", json={"message": message}, headers=AUTH)
                return [d["loc"] for d in (await error_of(r, 422))["details"]]

            assert await locs({"content": {}}) == [["message", "to"]]
            assert await locs({"to": {"email": "a"}, "colour": "red"}) == [["message", "colour"]]
            assert await locs({"to": {"email": "a"}, "timeout": {"channel": "-1s"}}) == [["message", "timeout", "channel"]]
            assert await locs({"to": {"email": "a"}, "routing": {"method": "any", "channels": ["email"]}}) \
                == [["message", "routing", "method"]]
            assert await locs("just a string") == [["message"]]
            # the policy has no such route / channel / provider
            assert await locs({"to": {"email": "a"}, "route": "urgent"}) == [["message", "route"]]
            assert await locs({"to": {"email": "a"}, "routing": {"channels": ["sms"]}}) \
                == [["message", "routing", "channels", 0]]
            assert await locs({"to": {"email": "a"}, "providers": {"ses": {"timeout": 100}}}) \
                == [["message", "providers", "ses"]]
            r = await c.post("/v1/send", json={"message": {"to": {"email": "a"}, "route": "urgent"}}, headers=AUTH)
            assert "unknown route 'urgent'" in (await r.json())["details"][0]["msg"]
            # inline routing: the path as the user wrote it, without pydantic's union tags (":group")
            assert await locs({"to": {"email": "a"}, "routing": {"channels": ["email", {"method": "all",
                                                                                      "channels": [5]}]}}) \
                == [["message", "routing", "channels", 1, "channels", 0]]
            assert await locs({"to": {"email": "a"}, "routing": {"channels": [{"channels": ["email"], "x": 1}]}}) \
                == [["message", "routing", "channels", 0, "x"]]
    run(main())


def test_a_request_and_routing_toml_word_the_same_mistake_alike(tmp_path: Path) -> None:
    """One formatter of validation errors: an unknown or missing key reads the same in a 422's
    details as in routing.toml's errors (daemon/core/wording.py problems_from_validation)."""
    from routingd.daemon.core.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError) as e:
        parse_policy(SANDBOX.replace("[timeouts]", "[timeouts]\ncolour = 1"), "r.toml", env={})
    assert e.value.lines() == ["r.toml:6: timeouts.colour: unknown key; valid keys: provider, channel, message"]

    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            r = await c.post("/v1/send", json={"message": {"to": {"email": "a"}, "colour": "red"}}, headers=AUTH)
            details = (await error_of(r, 422))["details"]
            assert [d["loc"] for d in details] == [["message", "colour"]]
            assert details[0]["msg"].startswith("unknown key; valid keys: to, content, route, ")
            r = await c.post("/v1/send", json={"message": {"content": {}}}, headers=AUTH)
            assert (await error_of(r, 422))["details"] == [{"loc": ["message", "to"], "msg": "required key is missing"}]
    run(main())


def test_json_nesting_limit(tmp_path: Path) -> None:
    def nested(lists: int, text: str = "") -> bytes:
        # depth: the body, message, metadata (3) + the lists
        return json.dumps({"message": {"to": {"email": "a"}, "metadata": {"x": text, "deep": _lists(lists)}}}).encode()

    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            too_deep = await error_of(await c.post("/v1/send", data=nested(30), headers=JSON_AUTH), 400)
            assert "deeper than 32" in too_deep["error"] and too_deep["details"][0]["loc"] == ["body"]
            assert (await c.post("/v1/send", data=nested(29), headers=JSON_AUTH)).status == 202
            # brackets inside strings are not nesting: many of them, but a shallow body
            assert (await c.post("/v1/send", data=nested(1, "[{" * 100), headers=JSON_AUTH)).status == 202
    run(main())


def _lists(n: int) -> Any:
    v: Any = []
    for _ in range(n - 1):
        v = [v]
    return v


def test_unknown_paths_and_methods_answer_json(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            await error_of(await c.get("/v1/nothing-here", headers=AUTH), 404)
            r = await c.get("/v1/send", headers=AUTH)
            await error_of(r, 405)
            assert "POST" in r.headers["Allow"]
            body = await error_of(await c.get("/v1/messages/unknown-id", headers=AUTH), 404)
            assert body["details"] == [{"loc": ["path", "message_id"], "msg": "unknown message"}]
    run(main())


def test_unexpected_exception_is_a_json_500_without_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        cfg = tmp_path / "routing.toml"
        cfg.write_text(SANDBOX)
        policy = load_policy(str(cfg))
        router = Router(policy, Store(str(tmp_path / "s.db")), Metrics())
        state = ApiState(router=router, metrics=Metrics(), reloader=None, tokens=(), phase="ready")  # type: ignore[arg-type]
        app = create_app(state)

        async def boom(request: web.Request) -> web.Response:
            raise RuntimeError("secret internal detail")
        app.router.add_get("/boom", boom)
        async with TestClient(TestServer(app)) as c:
            r = await c.get("/boom")
            body = await error_of(r, 500)
            assert "secret" not in json.dumps(body) and "Traceback" not in await r.text()
    with caplog.at_level("ERROR", logger="routingd.api"):
        run(main())
    assert any("internal error on GET /boom" in rec.getMessage() for rec in caplog.records)


# --------------------------------------------------------------------------- probes, draining


def test_probes_and_draining(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, state, _):
            assert (await c.get("/healthz")).status == 200
            r = await c.get("/readyz")
            assert r.status == 200 and (await r.json())["version"] == state.router.policy.version
            r = await c.get("/metrics")
            assert r.headers["Content-Type"].startswith("text/plain")
            assert "routingd_config_last_reload_successful 1.0" in await r.text()
            mid = (await (await c.post("/v1/send", json={"message": {"to": {"email": "a@x"}}}, headers=AUTH)).json())["message_id"]
            for phase in ("starting", "draining"):
                state.phase = phase
                r = await c.get("/readyz")
                assert r.status == 503 and (await r.json())["status"] == phase
                r = await c.post("/v1/send", json={"message": {"to": {"email": "a@x"}}}, headers=AUTH)
                await error_of(r, 503)
                assert int(r.headers["Retry-After"]) >= 1
                assert (await c.get(f"/v1/messages/{mid}", headers=AUTH)).status == 200   # reads go on
                assert (await c.get("/healthz")).status == 200
    run(main())


# --------------------------------------------------------------------------- receipts


RECEIPT_CONFIG = """
version = 1
[providers.slowack]
type = "http"
url = "{url}"
confirm = "receipt"
receipt_timeout = "5s"
receipt_secret = "{secret}"
[providers.open]
type = "http"
url = "{url}"
confirm = "receipt"
[channels.email]
providers = ["slowack"]
[channels.chat]
providers = ["open"]
[routes.default]
channels = ["email"]
[routes.chat]
channels = ["chat"]
"""


def test_receipts_signature_and_unknown_attempts(tmp_path: Path) -> None:
    secret = "hmac-key"

    async def main() -> None:
        async with ProviderStandin([{"status": 202}]) as s, \
                api(tmp_path, RECEIPT_CONFIG.format(url=s.url, secret=secret)) as (c, _, _):
            async def post(provider: str, body: Any, sig: str | None = None, auth: bool = False) -> Any:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(AUTH if auth else {})}
                if sig is not None:
                    headers["X-Routingd-Signature"] = sig
                return await c.post(f"/v1/receipts/{provider}", data=raw, headers=headers)

            mid = (await (await c.post("/v1/send", json={"message": {"to": {"email": "a@x"}}}, headers=AUTH)).json())["message_id"]
            (req,) = await s.wait_for(1)
            attempt_id = req.json["attempt_id"]
            good = {"attempt_id": attempt_id, "status": "delivered"}
            raw = json.dumps(good).encode()
            for sig in (None, "sha256=" + "0" * 64, sign("other", raw), sign(secret, raw)[len("sha256="):],
                        sign(secret, raw + b" ")):
                body = await error_of(await post("slowack", raw, sig), 401)
                assert body["details"][0]["loc"] == ["header", "X-Routingd-Signature"]
            # the bearer token does not replace the signature of a provider that has a secret
            await error_of(await post("slowack", raw, None, auth=True), 401)
            unknown = json.dumps({"attempt_id": "nope.0.1", "status": "delivered"}).encode()
            await error_of(await post("slowack", unknown, sign(secret, unknown)), 404)
            bad = json.dumps({"attempt_id": attempt_id, "status": "read"}).encode()
            assert (await error_of(await post("slowack", bad, sign(secret, bad)), 422))["details"][0]["loc"] == ["status"]
            notjson = b"attempt_id=1"
            await error_of(await post("slowack", notjson, sign(secret, notjson)), 400)
            await error_of(await post("nosuch", good, None, auth=True), 404)
            assert (await (await c.get(f"/v1/messages/{mid}", headers=AUTH)).json())["status"] == "pending"
            r = await post("slowack", raw, sign(secret, raw))
            assert r.status == 200 and (await r.json())["accepted"] is True
            st = await wait_status(c, mid, "delivered")
            assert st["attempts"][0]["outcome"] == "delivered"

            # a provider without a secret: the bearer token authenticates its receipts
            mid2 = (await (await c.post("/v1/send", json={"message": {"to": {"email": "a@x"}, "route": "chat"}},
                                        headers=AUTH)).json())["message_id"]
            (_, req2) = await s.wait_for(2)
            body2 = {"attempt_id": req2.json["attempt_id"], "status": "failed"}
            await error_of(await post("open", body2), 401)
            assert (await post("open", body2, auth=True)).status == 200
            await wait_status(c, mid2, "undeliverable")
    run(main())


# --------------------------------------------------------------------------- reload, config


def test_reload_endpoint_validates_then_swaps(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as (c, state, cfg):
            v1 = (await (await c.get("/v1/config", headers=AUTH)).json())["version"]
            r = await c.post("/-/reload", headers=AUTH)
            assert r.status == 200 and await r.json() == {"status": "unchanged", "version": v1, "warnings": []}

            cfg.write_text(SANDBOX.replace('channels = ["email"]', 'channels = ["email", "sms"]'))
            body = await error_of(await c.post("/-/reload", headers=AUTH), 422)
            assert body["details"] == [{"loc": ["config"],
                                        "msg": f"{cfg}:16:22: routes.default.channels.1: unknown channel 'sms'; defined channels: email"}]
            assert state.router.policy.version == v1
            metrics = await (await c.get("/metrics")).text()
            assert "routingd_config_last_reload_successful 0.0" in metrics
            info = await (await c.get("/v1/config", headers=AUTH)).json()
            assert info["version"] == v1 and info["last_reload"]["ok"] is False
            assert info["last_reload"]["trigger"] == "http" and info["path"] == str(cfg)

            cfg.write_text(SANDBOX.replace("max_body = 1024", "max_body = 4096") + '[routes.b]\nchannels = ["email"]\n')
            r = await c.post("/-/reload", headers=AUTH)
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "reloaded" and body["version"] != v1
            assert state.router.policy.version == body["version"] and state.max_body == 4096
            assert "routingd_config_last_reload_successful 1.0" in await (await c.get("/metrics")).text()
            r = await c.post("/v1/send", json={"message": {"to": {"email": "a@x"}, "route": "b"}}, headers=AUTH)
            assert r.status == 202
            # tokens come from the file, so a reload can rotate them
            cfg.write_text(SANDBOX.replace("max_body = 1024", 'api_tokens = ["rotated"]'))
            assert (await c.post("/-/reload", headers=AUTH)).status == 200
            assert (await c.get("/v1/config", headers=AUTH)).status == 401
            assert (await c.get("/v1/config", headers={"Authorization": "Bearer rotated"})).status == 200
    run(main())


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_valid_3_1_and_covers_every_route(tmp_path: Path) -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    assert list(OPENAPI_31_VALIDATOR.iter_errors(doc)) == []

    async def main() -> None:
        async with api(tmp_path) as (c, _, _):
            served = await (await c.get("/openapi.json")).json()
            assert served == doc
            routes = {(r.method.lower(), r.resource.canonical) for r in c.server.app.router.routes()  # type: ignore[union-attr]
                      if r.method != "HEAD"}
            documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
            assert routes == documented
    run(main())


def test_openapi_send_schema_matches_the_validator() -> None:
    import jsonschema_rs

    doc = openapi_document()
    schema = {**doc["components"]["schemas"]["SendRequest"], "components": doc["components"]}
    v = jsonschema_rs.Draft202012Validator(schema)
    assert v.is_valid({"message": {"to": {"email": "a@x"}, "route": "urgent", "timeout": {"message": 1000}}})
    assert not v.is_valid({"message": {"content": {}}})
    assert not v.is_valid({"message": {"to": {"email": "a"}, "colour": 1}})


# --------------------------------------------------------------------------- settings


def _policy(tmp_path: Path, daemon_table: str) -> Any:
    p = tmp_path / "routing.toml"
    p.write_text("version = 1\n[daemon]\n" + daemon_table)
    return load_policy(str(p))


def test_settings_precedence_file_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("ROUTINGD_LISTEN", "ROUTINGD_STATE", "ROUTINGD_API_TOKENS", "ROUTINGD_GRACE"):
        monkeypatch.delenv(k, raising=False)
    policy = _policy(tmp_path, 'listen = "127.0.0.1:7001"\nstate = "file.db"\napi_tokens = ["f1"]\ngrace = "3s"\n')
    s = load_settings(policy, config="c.toml")
    assert (s.listen, s.state, s.grace, [t.get_secret_value() for t in s.api_tokens]) == \
        ("127.0.0.1:7001", "file.db", 3000, ["f1"])
    monkeypatch.setenv("ROUTINGD_LISTEN", "127.0.0.1:7002")
    monkeypatch.setenv("ROUTINGD_STATE", "env.db")
    monkeypatch.setenv("ROUTINGD_API_TOKENS", "e1, e2,")
    monkeypatch.setenv("ROUTINGD_GRACE", "500ms")
    s = load_settings(policy, config="c.toml")
    assert (s.listen, s.state, s.grace, s.token_values()) == ("127.0.0.1:7002", "env.db", 500, [b"e1", b"e2"])
    s = load_settings(policy, config="c.toml", listen="[::1]:7003", state="cli.db")
    assert (s.listen, s.state, s.config) == ("[::1]:7003", "cli.db", "c.toml")
    assert s.listen_address.is_loopback and s.listen_address.url == "http://[::1]:7003"
    monkeypatch.setenv("ROUTINGD_API_TOKENS", '["j1", "j2"]')
    assert load_settings(policy, config="c.toml").token_values() == [b"j1", b"j2"]
    monkeypatch.setenv("ROUTINGD_LISTEN", "no-port")
    with pytest.raises(SettingsError) as e:
        load_settings(policy, config="c.toml")
    assert e.value.lines() == ["setting listen (daemon.listen / ROUTINGD_LISTEN): listen address 'no-port' "
                               "must be HOST:PORT, e.g. 127.0.0.1:8080"]
    assert "secret" not in repr(load_settings(_policy(tmp_path, 'api_tokens = ["secret"]'), config="c", listen="127.0.0.1:1"))


def test_listen_addresses_and_the_no_token_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTINGD_API_TOKENS", raising=False)
    assert parse_listen("0.0.0.0:8080").host == "0.0.0.0" and not parse_listen("0.0.0.0:1").is_loopback
    assert parse_listen("localhost:1").is_loopback and parse_listen("127.1.2.3:0").is_loopback
    for bad in ("8080", ":8080", "::1:8080", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    open_policy = _policy(tmp_path, "")
    check_auth(load_settings(open_policy, config="c", listen="127.0.0.1:8080"))
    with pytest.raises(StartupError) as e:
        check_auth(load_settings(open_policy, config="c", listen="0.0.0.0:8080"))
    assert "refusing to listen on 0.0.0.0:8080 without API tokens" in e.value.lines()[0]
    check_auth(load_settings(_policy(tmp_path, 'api_tokens = ["t"]'), config="c", listen="0.0.0.0:8080"))
    # "${ROUTINGD_TOKEN}" with the variable unset means no token at all
    monkeypatch.delenv("ROUTINGD_TOKEN", raising=False)
    with pytest.raises(StartupError):
        check_auth(load_settings(_policy(tmp_path, 'api_tokens = ["${ROUTINGD_TOKEN}"]'), config="c",
                                 listen="10.0.0.1:8080"))


def test_config_path_precedence() -> None:
    assert config_path(None, {}) == "routing.toml"
    assert config_path(None, {"ROUTINGD_CONFIG": "/etc/routingd/routing.toml"}) == "/etc/routingd/routing.toml"
    assert config_path("cli.toml", {"ROUTINGD_CONFIG": "/etc/routingd/routing.toml"}) == "cli.toml"
