"""Wiring of the MQTT link into a running daemon: events out, sends in, the `mqtt` provider.

Kept apart from service.py so that the process code stays readable: `attach_mqtt` returns None
when `[daemon.mqtt]` is absent, else a started-on-demand MqttLink already hooked to the Router.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from . import mqtt as mqtt_mod  # importing registers the provider type "mqtt"
from .api import ApiError, parse_json_object, validation_details
from .core.plan import PlanError
from .core.policy import MqttSection
from .core.request import IDEMPOTENCY_KEY_RE, SendRequest
from .metrics import Metrics
from .runtime import Router


def make_link(settings: MqttSection | None, metrics: Metrics) -> mqtt_mod.MqttLink | None:
    """Build the link (not yet started); raises mqtt.MqttConfigError for a bad url or an
    unreadable ca_file (its `lines()` are ["daemon.mqtt.KEY: reason"])."""
    if settings is None:
        return None
    return mqtt_mod.MqttLink(settings, on_drop=metrics.mqtt_dropped.inc, on_state=metrics.mqtt_connected.set)


def idempotency_key(body: dict[str, Any]) -> str | None:
    """Take the send's top-level "idempotency_key" out of the body (MQTT 3.1.1 has no headers;
    it means what the Idempotency-Key header means for POST /v1/send). A send delivered again by
    the broker (routingd stored it but stopped or lost the connection before acknowledging it)
    then answers with the first message's id instead of creating a second message."""
    if "idempotency_key" not in body:
        return None
    key = body.pop("idempotency_key")
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiError(400, "bad idempotency_key",
                       [{"loc": ["idempotency_key"], "msg": "1 to 255 printable ASCII characters"}])
    return key


def attach(link: mqtt_mod.MqttLink, router: Router) -> None:
    """Publish the Router's events and accept sends from `{prefix}/send`."""
    router.add_event_listener(mqtt_mod.event_publisher(link))

    async def submit(raw: bytes) -> tuple[bool, dict[str, Any]]:
        from .runtime import Overloaded

        limits = router.limits if router.limits is not None else router.policy.model.daemon
        if len(raw) > limits.max_body:
            # the same limit as POST /v1/send's 413: no way in takes a bigger request
            return False, {"error": f"request body too large (limit {limits.max_body} bytes)",
                           "details": [{"loc": ["body"], "msg": f"{len(raw)} bytes; [daemon] max_body is "
                                        f"{limits.max_body}"}]}
        try:
            body = parse_json_object(raw)
            key = idempotency_key(body)
            req = SendRequest.model_validate(body)
            result = await router.submit(req, idempotency_key=key)
        except ApiError as e:
            return False, {"error": e.error, "details": e.details}
        except ValidationError as e:
            return False, {"error": "invalid send request", "details": validation_details(e)}
        except PlanError as e:
            return False, {"error": "the request does not fit the routing policy",
                           "details": [{"loc": list(p.loc), "msg": p.msg} for p in e.problems]}
        except Overloaded as e:
            return False, {"error": f"{e.reason}; retry later", "details": [], "retry_after": e.retry_after_s}
        if not result.created:
            return True, {"message_id": result.message_id, "replayed": True}
        return True, {"message_id": result.message_id}

    if link.settings.subscribe:
        link.set_ingress(submit)


__all__ = ["attach", "idempotency_key", "make_link", "mqtt_mod"]
