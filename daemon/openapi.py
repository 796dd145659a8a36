"""The OpenAPI 3.1 document of the daemon's HTTP API, served at /openapi.json.

The send request schema is generated from the pydantic models the handler validates with
(daemon/core/request.py), so the document cannot drift from what the daemon accepts.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from . import ops_api
from .core.request import SendRequest

REF = "#/components/schemas/{model}"
MAX_TIMEOUT_MS = 366 * 24 * 3_600_000     # the largest timeout override a send request may carry
MAX_JSON_DEPTH = 32                       # the deepest nesting a request body may have


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        out["headers"] = headers
    return out


def _model_schemas(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    defs = schema.pop("$defs", {})
    return schema, defs


_TIMESTAMP = {"type": ["string", "null"], "format": "date-time",
              "description": "RFC 3339 with milliseconds, UTC"}

_ATTEMPT = {
    "type": "object",
    "required": ["attempt_id", "channel", "provider", "try", "started_at", "deadline", "outcome"],
    "properties": {
        "attempt_id": {"type": "string"},
        "channel": {"type": "string"},
        "provider": {"type": "string"},
        "try": {"type": "integer", "minimum": 1},
        "started_at": _TIMESTAMP,
        "ended_at": _TIMESTAMP,
        "deadline": _TIMESTAMP,
        "outcome": {"type": ["string", "null"],
                    "enum": ["delivered", "failed", "timeout", "network", "rejected", "cancelled", None],
                    "description": "null while the attempt runs (or waits for its receipt)"},
        "status_code": {"type": ["integer", "null"]},
    },
}

_STATUS = {
    "type": "object",
    "required": ["message_id", "status", "accepted_at", "attempts", "events"],
    "properties": {
        "message_id": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "delivered", "undeliverable", "expired", "cancelled"]},
        "accepted_at": _TIMESTAMP,
        "finished_at": _TIMESTAMP,
        "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}},
        "events": {"type": "array", "items": {"type": "object", "required": ["type", "at"],
                                              "properties": {"type": {"type": "string"}, "at": _TIMESTAMP},
                                              "additionalProperties": True}},
    },
    "additionalProperties": True,
}

_ERROR = {
    "type": "object",
    "required": ["error", "details"],
    "properties": {
        "error": {"type": "string", "description": "one line a person can act on"},
        "details": {"type": "array", "items": {
            "type": "object", "required": ["loc", "msg"],
            "properties": {"loc": {"type": "array", "items": {"type": ["string", "integer"]},
                                   "description": "where: e.g. [\"message\", \"to\"] or [\"header\", \"Authorization\"]"},
                           "msg": {"type": "string"}}}},
    },
}

_RECEIPT = {
    "type": "object",
    "required": ["attempt_id", "status"],
    "properties": {"attempt_id": {"type": "string", "description": "the attempt_id the provider was sent"},
                   "status": {"type": "string", "enum": ["delivered", "failed"]}},
}

_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]


def _tighten(schemas: dict[str, Any]) -> None:
    """What the pydantic models check in code, written into the schema: a recipient names at
    least one field; timeouts are 0..MAX_TIMEOUT_MS ms (the API's own bound). Route, channel and
    provider names are free strings here: the policy in force decides (unknown -> 422)."""
    schemas["MessageRequest"]["properties"]["to"]["minProperties"] = 1
    for model, keys in (("TimeoutOverride", ("provider", "channel", "message")),
                        ("ChannelOverride", ("timeout", "timeouts")), ("ProviderOverride", ("timeout", "timeouts")),
                        ("ChannelTimeouts", ("channel", "provider"))):
        for key in keys:
            for alt in schemas[model]["properties"][key].get("anyOf", []):
                if alt.get("type") == "integer":      # milliseconds; a fraction is rounded
                    alt.update(type="number", minimum=0, maximum=MAX_TIMEOUT_MS)


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    send_schema, defs = _model_schemas(SendRequest)
    schemas: dict[str, Any] = dict(defs)
    schemas.update({"SendRequest": send_schema, "Error": _ERROR, "Attempt": _ATTEMPT,
                    "MessageStatus": _STATUS, "Receipt": _RECEIPT})
    _tighten(schemas)
    json_ok = lambda desc, schema: {"description": desc,  # noqa: E731
                                    "content": {"application/json": {"schema": schema}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "routingd", "version": "1",
                 "description": "Notification routing with failover. Send bodies follow Courier's Send API "
                                "message shape. Every error answer is an Error object."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "one of [daemon] api_tokens / ROUTINGD_API_TOKENS; "
                                                          "no auth when none is configured (loopback only)"}},
        },
        "security": _AUTH,
        "paths": {
            "/v1/send": {"post": {
                "operationId": "send",
                "summary": "Accept one message for routing (durably stored before the 202)",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                                "description": "a resend with the same key answers the first message_id"}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SendRequest"}}}},
                "responses": {
                    "202": {"description": "accepted",
                            "headers": {"Location": {"schema": {"type": "string"}},
                                        "Idempotent-Replayed": {"schema": {"type": "string"},
                                                                "description": "\"true\" on a replay"}},
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["message_id"],
                                "properties": {"message_id": {"type": "string"}}}}},
                            "links": {"GetMessage": {"operationId": "messageStatus",
                                                     "parameters": {"message_id": "$response.body#/message_id"}}}},
                    "400": _error_response("body is not a JSON object, nests deeper than "
                                           f"{MAX_JSON_DEPTH} levels, or a bad Idempotency-Key"),
                    "401": _error_response("missing or wrong bearer token"),
                    "408": _error_response("body not received within [daemon] body_timeout (connection closed)"),
                    "413": _error_response("body larger than [daemon] max_body"),
                    "415": _error_response("Content-Type is not application/json"),
                    "422": _error_response("validation failed, or unknown route/channel/provider"),
                    "503": _error_response("draining (shutting down), at the in-flight limit "
                                           "(max_inflight, max_inflight_bytes) or the connection limit", _RETRY_AFTER),
                }}},
            "/v1/messages/{message_id}": {"get": {
                "operationId": "messageStatus",
                "summary": "Status of a message, with every attempt and event (the failover history)",
                "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": json_ok("the message", {"$ref": "#/components/schemas/MessageStatus"}),
                              "401": _error_response("missing or wrong bearer token"),
                              "404": _error_response("unknown message")}}},
            "/v1/receipts/{provider}": {"post": {
                "operationId": "receipt",
                "summary": "A provider's delivery receipt for one attempt",
                "description": "When the provider has a receipt_secret the request must carry "
                               "X-Routingd-Signature: sha256=<hex HMAC-SHA256 of the raw body>, which "
                               "replaces the bearer token; otherwise the bearer token is required.",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "X-Routingd-Signature", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Receipt"}}}},
                "responses": {
                    "200": json_ok("counted", {"type": "object", "properties": {
                        "attempt_id": {"type": "string"}, "status": {"type": "string"},
                        "accepted": {"type": "boolean"}}}),
                    "400": _error_response("body is not a JSON object"),
                    "401": _error_response("bad signature or bearer token"),
                    "404": _error_response("unknown provider, or no such attempt awaits a receipt"),
                    "413": _error_response("body too large"),
                    "415": _error_response("Content-Type is not application/json"),
                    "422": _error_response("invalid receipt body"),
                    "503": _error_response("routingd has stopped routing (shutting down)", _RETRY_AFTER)}}},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness: the process answers", "security": [],
                "responses": {"200": json_ok("alive", {"type": "object"})}}},
            "/readyz": {"get": {
                "operationId": "readyz", "summary": "Readiness: 200 when accepting messages", "security": [],
                "responses": {"200": json_ok("ready", {"type": "object"}),
                              "503": json_ok("starting or draining", {"type": "object"})}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {"200": {"description": "metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": json_ok("OpenAPI 3.1", {"type": "object"})}}},
            "/-/reload": {"post": {
                "operationId": "reload",
                "summary": "Re-read routing.toml; validate, then swap (same as SIGHUP)",
                "responses": {
                    "200": json_ok("the new (or unchanged) version", {"type": "object", "properties": {
                        "status": {"type": "string", "enum": ["reloaded", "unchanged"]},
                        "version": {"type": "string"},
                        "warnings": {"type": "array", "items": {"type": "string"}}}}),
                    "401": _error_response("missing or wrong bearer token"),
                    "422": _error_response("the file is invalid; the previous policy stays active")}}},
            "/v1/config": {"get": {
                "operationId": "config", "summary": "The active policy version, when it was loaded, from where",
                "responses": {
                    "200": json_ok("active configuration", {"type": "object", "properties": {
                        "version": {"type": "string"}, "loaded_at": _TIMESTAMP, "path": {"type": "string"},
                        "last_reload": {"type": "object"}}}),
                    "401": _error_response("missing or wrong bearer token")}}},
            **ops_api.openapi_paths(json_ok, _error_response),     # daemon/ops_api.py, daemon/ui.py
            **_courier_paths(),
        },
    }


def _courier_paths() -> dict[str, Any]:
    """Courier's paths beside /v1 (daemon/courier_api.py; docs/api.md "Courier-compatible API")."""
    def ok(desc: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
        return {status: {"description": desc, "content": {"application/json": {"schema": schema}}}}

    mid = [{"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    uid = [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    details = {"type": "object", "required": ["id", "status", "enqueued", "recipient", "event", "notification"],
               "properties": {"id": {"type": "string"},
                              "status": {"type": "string", "enum": ["ENQUEUED", "SENT", "DELIVERED",
                                                                    "UNDELIVERABLE", "CANCELED"]},
                              "enqueued": {"type": "integer", "description": "epoch milliseconds"},
                              "sent": {"type": "integer"}, "delivered": {"type": "integer"},
                              "recipient": {"type": "string"}, "event": {"type": "string"},
                              "notification": {"type": "string"}, "error": {"type": "string"},
                              "reason": {"type": "string", "enum": ["PROVIDER_ERROR", "NO_CHANNELS"]},
                              "providers": {"type": "array", "items": {"type": "object"}}}}
    errors = {"401": _error_response("missing or wrong bearer token"), "404": _error_response("unknown id")}
    profile_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["profile"], "additionalProperties": False,
        "properties": {"profile": {"type": "object"}}}}}}
    success = ok("stored", {"type": "object", "properties": {"status": {"const": "SUCCESS"}}})
    paths: dict[str, dict[str, dict[str, Any]]] = {
        "/send": {"post": {
            "operationId": "courierSend", "summary": "Courier's Send API: the /v1/send body, answered {requestId}",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}},
                           {"name": "x-idempotency-expiration", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": "epoch time or ISO 8601, within "
                                                                         "[daemon] idempotency_ttl"}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SendRequest"}}}},
            "responses": {**ok("accepted", {"type": "object", "required": ["requestId"],
                                            "properties": {"requestId": {"type": "string"}}}, "202"),
                          "400": _error_response("bad JSON or header"), "401": errors["401"],
                          "413": _error_response("body too large"), "415": _error_response("not JSON"),
                          "422": _error_response("a field refused or invalid (named in details)"),
                          "503": _error_response("draining or at the in-flight limit", _RETRY_AFTER)}}},
        "/messages": {"get": {
            "operationId": "courierListMessages", "summary": "Messages, newest first (100 a page)",
            "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                           for n in ("cursor", "status", "recipient")],
            "responses": {**ok("a page", {"type": "object", "properties": {
                "paging": {"type": "object", "properties": {"cursor": {"type": ["string", "null"]},
                                                            "more": {"type": "boolean"}}},
                "results": {"type": "array", "items": details}}}),
                "401": errors["401"], "422": _error_response("an unsupported filter or a bad status")}}},
        "/messages/{message_id}": {"get": {
            "operationId": "courierGetMessage", "summary": "Courier's message details", "parameters": mid,
            "responses": {**ok("the message", details), **errors}}},
        "/messages/{message_id}/history": {"get": {
            "operationId": "courierMessageHistory", "summary": "The message's events (ts in epoch ms)",
            "parameters": mid,
            "responses": {**ok("events", {"type": "object", "properties": {
                "results": {"type": "array", "items": {"type": "object"}}}}), **errors}}},
        "/messages/{message_id}/cancel": {"post": {
            "operationId": "courierCancel", "summary": "Cancel: 200 cancelled, 409 already finished (both the record)",
            "parameters": mid, "responses": {**ok("cancelled", details), **ok("already finished", details, "409"),
                                             **errors}}},
        "/v1/messages/{message_id}/cancel": {"post": {
            "operationId": "cancel", "summary": "Cancel a pending message: its attempts are cancelled",
            "parameters": mid,
            "responses": {**ok("cancelled", {"$ref": "#/components/schemas/MessageStatus"}),
                          "409": _error_response("the message had already finished"), **errors}}},
        "/profiles/{user_id}": {
            "get": {"operationId": "getProfile", "parameters": uid, "summary": "A stored profile",
                    "responses": {**ok("the profile", {"type": "object", "properties": {
                        "profile": {"type": "object"}}}), **errors}},
            "put": {"operationId": "replaceProfile", "parameters": uid, "summary": "Replace a profile",
                    "requestBody": profile_body, "responses": {**success, "401": errors["401"],
                                                               "422": _error_response("no profile object")}},
            "post": {"operationId": "mergeProfile", "parameters": uid, "summary": "Merge into a profile",
                     "requestBody": profile_body, "responses": {**success, "401": errors["401"],
                                                                "422": _error_response("no profile object")}},
            "delete": {"operationId": "deleteProfile", "parameters": uid, "summary": "Delete a profile",
                       "responses": {"204": {"description": "deleted"}, **errors}}},
    }
    # every answer the shared middleware and checks can give, on every Courier operation
    common = {"400": "bad JSON, header or path", "401": "missing or wrong bearer token", "404": "unknown id",
              "413": "body too large", "415": "Content-Type is not application/json",
              "422": "invalid or refused field", "503": "cannot answer now (draining, state store)"}
    for ops in paths.values():
        for op in ops.values():
            for code, desc in common.items():
                op["responses"].setdefault(code, _error_response(desc))
    return paths


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may mutate it)."""
    return copy.deepcopy(_document())
