"""Prometheus metrics of one routingd process, on a private registry (tests can make many).

Names (DESIGN.md "Runtime behaviour"):
  routingd_messages_accepted_total                      counter
  routingd_messages_finished_total{status}              counter
  routingd_messages_inflight                            gauge (non-terminal messages in memory)
  routingd_attempts_total{channel,provider,outcome}     counter (ended attempts)
  routingd_failovers_total{kind}                        counter (provider | channel)
  routingd_breaker_open{provider}                       gauge 1/0
  routingd_time_to_deliver_seconds                      histogram (accept -> first delivery)
  routingd_config_last_reload_successful                gauge 1/0
  routingd_config_last_reload_success_timestamp_seconds gauge
  routingd_config_hash                                  gauge: the policy version (a hex content
        hash) read as an integer from its first 13 hex digits (52 bits, exact in a float64), as
        Prometheus' and Alertmanager's own config_hash gauges do; routingd_config_info{version}
        carries the full version string.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

_DELIVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, float("inf"))


def version_as_int(version: str) -> int:
    try:
        return int(version[:13], 16)
    except ValueError:
        return 0


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.accepted = Counter("routingd_messages_accepted", "Messages accepted (committed to the store).",
                                registry=r)
        self.finished = Counter("routingd_messages_finished", "Messages that reached a terminal status.",
                                ["status"], registry=r)
        self.inflight = Gauge("routingd_messages_inflight", "Messages not yet terminal.", registry=r)
        self.attempts = Counter("routingd_attempts", "Provider attempts by how they ended.",
                                ["channel", "provider", "outcome"], registry=r)
        self.failovers = Counter("routingd_failovers", "Failovers to the next provider or channel.",
                                 ["kind"], registry=r)
        self.breaker_open = Gauge("routingd_breaker_open", "1 while the provider's circuit breaker is open.",
                                  ["provider"], registry=r)
        self.time_to_deliver = Histogram("routingd_time_to_deliver_seconds",
                                         "Seconds from accept to the first delivered outcome.",
                                         buckets=_DELIVER_BUCKETS, registry=r)
        self.reload_ok = Gauge("routingd_config_last_reload_successful",
                               "Whether the last configuration reload attempt was successful.", registry=r)
        self.reload_ts = Gauge("routingd_config_last_reload_success_timestamp_seconds",
                               "Timestamp of the last successful configuration reload.", registry=r)
        self.config_hash = Gauge("routingd_config_hash", "Hash of the loaded routing policy "
                                 "(first 13 hex digits of its version as an integer).", registry=r)
        self.config_info = Info("routingd_config", "The loaded routing policy version.", registry=r)
        self.mqtt_dropped = Counter("routingd_mqtt_events_dropped",
                                    "MQTT publications dropped because the buffer was full.", registry=r)
        self.mqtt_connected = Gauge("routingd_mqtt_connected", "1 while connected to the MQTT broker.",
                                    registry=r)
        self._finished: dict[str, Any] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._failovers: dict[str, Any] = {}
        for status in ("delivered", "undeliverable", "expired"):
            self._finished[status] = self.finished.labels(status=status)
        for kind in ("provider", "channel"):
            self._failovers[kind] = self.failovers.labels(kind=kind)

    # ------------------------------------------------------------------ per message (hot path)
    # labels() builds a key and takes a lock on every call; the children are cached instead.

    def message_finished(self, status: str) -> None:
        child = self._finished.get(status)
        if child is None:
            child = self._finished[status] = self.finished.labels(status=status)
        child.inc()

    def attempt_ended(self, channel: str, provider: str, outcome: str) -> None:
        key = (channel, provider, outcome)
        child = self._attempts.get(key)
        if child is None:
            child = self._attempts[key] = self.attempts.labels(channel=channel, provider=provider, outcome=outcome)
        child.inc()

    def failover(self, kind: str) -> None:
        child = self._failovers.get(kind)
        if child is None:
            child = self._failovers[kind] = self.failovers.labels(kind=kind)
        child.inc()

    # ------------------------------------------------------------------ config

    def config_loaded(self, version: str, at: float | None = None) -> None:
        """A policy was loaded (at start or by a successful reload)."""
        self.reload_ok.set(1)
        self.reload_ts.set(time.time() if at is None else at)
        self.config_hash.set(version_as_int(version))
        self.config_info.info({"version": version})

    def config_reload_failed(self) -> None:
        self.reload_ok.set(0)

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        return generate_latest(self.registry)
