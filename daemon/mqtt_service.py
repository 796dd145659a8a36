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
from .core.request import SendRequest


def make_link(settings: MqttSection | None, metrics: Any) -> mqtt_mod.MqttLink | None:
    """Build the link (not yet started); raises mqtt.MqttConfigError for a bad url or an
    unreadable ca_file (its `line()` is "daemon.mqtt.KEY: reason")."""
    if settings is None:
        return None
    return mqtt_mod.MqttLink(settings, on_drop=metrics.mqtt_dropped.inc, on_state=metrics.mqtt_connected.set)


def attach(link: mqtt_mod.MqttLink, router: Any) -> None:
    """Publish the Router's events and accept sends from `{prefix}/send`."""
    router.add_event_listener(mqtt_mod.event_publisher(link))

    async def submit(raw: bytes) -> tuple[bool, dict[str, Any]]:
        from .runtime import Overloaded

        try:
            req = SendRequest.model_validate(parse_json_object(raw))
            result = await router.submit(req)
        except ApiError as e:
            return False, {"error": e.error, "details": e.details}
        except ValidationError as e:
            return False, {"error": "invalid send request", "details": validation_details(e)}
        except PlanError as e:
            return False, {"error": "the request does not fit the routing policy",
                           "details": [{"loc": list(p.loc), "msg": p.msg} for p in e.problems]}
        except Overloaded as e:
            return False, {"error": f"{e.reason}; retry later", "details": []}
        return True, {"message_id": result.message_id}

    if link.settings.subscribe:
        link.set_ingress(submit)


__all__ = ["attach", "make_link", "mqtt_mod"]
