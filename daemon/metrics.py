"""Prometheus metrics of one routingd process, on a private registry (tests can make many).

Names (docs/operations.md "Metrics"):
  routingd_messages_accepted_total                      counter
  routingd_messages_finished_total{status}              counter
  routingd_messages_inflight                            gauge (non-terminal messages in memory)
  routingd_attempts_total{channel,provider,outcome}     counter (ended attempts)
  routingd_failovers_total{kind}                        counter (provider | channel)
  routingd_breaker_open{provider}                       gauge 1/0
  routingd_provider_drained{provider}                   gauge 1/0 (drained by hand)
  routingd_breaker_notices_heard_total{result}          counter: breaker notices from other processes
        on the same PostgreSQL database (daemon/shared_breakers.py): applied | unchanged |
        unknown_provider | malformed
  routingd_time_to_deliver_seconds                      histogram (accept -> first delivery)
  routingd_receipts_unmatched_total                     counter (receipts matching no stored attempt)
  routingd_receipts_repeated_total                      counter (receipts already recorded)
  routingd_resume_failed_total                          counter (stored messages that could not resume)
  routingd_config_last_reload_successful                gauge 1/0
  routingd_config_last_reload_success_timestamp_seconds gauge
  routingd_config_hash                                  gauge: the policy version (a hex content
        hash) read as an integer from its first 13 hex digits (52 bits, exact in a float64), as
        Prometheus' and Alertmanager's own config_hash gauges do; routingd_config_info{version}
        carries the full version string.
  routingd_http_connections_open                        gauge (connections of the listener)
  routingd_http_connections_closed_total{reason}        counter: idle | header (timeouts),
        evicted (the longest waiting one, at max_connections), refused (503 at max_connections)
  routingd_inflight_bytes                               gauge (request text held by pending messages)

The per-message series (accepted, finished, attempts, failovers, time to deliver) are plain
integers and floats updated on the event loop thread -- a prometheus_client child costs a label
lookup and a lock per update, several times per message -- and turned into metric families
only when /metrics is scraped (the `_MessageSeries` collector). Call the methods
(`message_accepted()`, `message_finished()`, `attempt_ended()`, `failover()`,
`delivered_after()`) from the event loop thread only.

With `[daemon] workers = N` a worker's metrics are daemon/shared_metrics.py's SharedMetrics
(this class, written through to prometheus_client's multiprocess files), so that /metrics
answers for the whole daemon whichever worker the connection reaches.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

DELIVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, float("inf"))
_STATUSES = ("delivered", "undeliverable", "expired", "cancelled")
_FAILOVER_KINDS = ("provider", "channel")
# the per-message series: name, help, label names (_MessageSeries here; with workers, the
# prometheus_client metrics of daemon/shared_metrics.py)
ACCEPTED = ("routingd_messages_accepted", "Messages accepted (committed to the store).", ())
FINISHED = ("routingd_messages_finished", "Messages that reached a terminal status.", ("status",))
ATTEMPTS = ("routingd_attempts", "Provider attempts by how they ended.", ("channel", "provider", "outcome"))
FAILOVERS = ("routingd_failovers", "Failovers to the next provider or channel.", ("kind",))
TIME_TO_DELIVER = ("routingd_time_to_deliver_seconds", "Seconds from accept to the first delivered outcome.", ())
# the rate limiter's per-provider figures, read from Limiter.snapshot: name, snapshot key, help
LIMIT_GAUGES = (
    ("routingd_provider_queue_depth", "queue", "Messages waiting for their turn under the provider's rate limit."),
    ("routingd_provider_calls_inflight", "inflight", "Calls in flight on a rate-limited provider."),
    ("routingd_provider_rate_limit", "rate_now", "The rate limit in force (per second; this process's share of it, lower after a 429)."))
LIMIT_COUNTERS = (
    ("routingd_provider_spilled", "spilled", "Messages spilled over to the next provider: their turn came too late."),
    ("routingd_provider_throttled", "throttled", "429 answers seen from a rate-limited provider."),
    ("routingd_provider_queue_wait_seconds", "waited_s", "Seconds messages waited for their turn, summed."))


def version_as_int(version: str) -> int:
    try:
        return int(version[:13], 16)
    except ValueError:
        return 0


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No `*_created` series beside every counter (docs/operations.md "Metrics"): they double
        # the series count for a start time nobody alerts on. Process-wide in prometheus_client.
        disable_created_metrics()
        r = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.created = time.time()
        self.accepted = 0
        self.finished: dict[str, int] = dict.fromkeys(_STATUSES, 0)
        self.attempts: dict[tuple[str, str, str], int] = {}
        self.failovers: dict[str, int] = dict.fromkeys(_FAILOVER_KINDS, 0)
        self.deliver_buckets = [0] * len(DELIVER_BUCKETS)     # not cumulative; see _MessageSeries
        self.deliver_sum = 0.0
        # the rate limiter's per-provider state, read at scrape time (the Router sets it:
        # Limiter.snapshot, daemon/core/limiter.py)
        self.limits: Callable[[], dict[str, dict[str, Any]]] = dict
        r.register(_MessageSeries(self))
        # multiprocess_mode: how /metrics merges a gauge over the processes of `[daemon] workers
        # = N` (daemon/shared_metrics.py; the choices are explained in docs/operations.md
        # "Metrics with workers"). One process ignores it.
        self.inflight = Gauge("routingd_messages_inflight", "Messages not yet terminal.", registry=r,
                              multiprocess_mode="livesum")
        self.provider_drained = Gauge("routingd_provider_drained", "1 while the provider is drained by hand "
                                      "(POST /v1/providers/NAME/drain).", ["provider"], registry=r,
                                      multiprocess_mode="livemax")
        self.breaker_open = Gauge("routingd_breaker_open", "1 while the provider's circuit breaker is open.",
                                  ["provider"], registry=r, multiprocess_mode="livemax")
        self.breaker_notices = Counter(
            "routingd_breaker_notices_heard", "Breaker notices heard from other routingd processes on the same "
            "PostgreSQL database, by result (applied, unchanged, unknown_provider, malformed).", ["result"],
            registry=r)
        self.reload_ok = Gauge("routingd_config_last_reload_successful",
                               "Whether the last configuration reload attempt was successful.", registry=r,
                               multiprocess_mode="livemin")
        self.reload_ts = Gauge("routingd_config_last_reload_success_timestamp_seconds",
                               "Timestamp of the last successful configuration reload.", registry=r,
                               multiprocess_mode="livemin")
        self.config_hash = Gauge("routingd_config_hash", "Hash of the loaded routing policy "
                                 "(first 13 hex digits of its version as an integer).", registry=r,
                                 multiprocess_mode="livemostrecent")
        self.config_info = Info("routingd_config", "The loaded routing policy version.", registry=r)
        self.mqtt_dropped = Counter("routingd_mqtt_events_dropped",
                                    "MQTT publications dropped because the buffer was full.", registry=r)
        self.store_backlog = Gauge("routingd_store_backlog", "Writes kept in memory because the state store "
                                   "refused them; written when it takes writes again.", registry=r,
                                   multiprocess_mode="livesum")
        self.receipts_unmatched = Counter(
            "routingd_receipts_unmatched", "Receipts that matched no stored attempt (unknown, or for a "
            "message the retention purge deleted: those are answered 200 and change nothing).", registry=r)
        self.receipts_repeated = Counter(
            "routingd_receipts_repeated", "Receipts repeating one already recorded for the same attempt and "
            "status (answered 200, recorded once).", registry=r)
        self.resume_failed = Counter(
            "routingd_resume_failed", "Stored messages that could not be resumed at start (finished "
            "undeliverable with a resume_failed event).", registry=r)
        self.mqtt_connected = Gauge("routingd_mqtt_connected", "1 while connected to the MQTT broker.",
                                    registry=r, multiprocess_mode="livemin")
        self.connections_open = Gauge("routingd_http_connections_open", "Open connections of the HTTP listener.",
                                      registry=r, multiprocess_mode="livesum")
        self.connections_closed = Counter("routingd_http_connections_closed",
                                          "Connections the daemon closed: idle, header (timeouts), evicted "
                                          "or refused (at max_connections).", ["reason"], registry=r)
        self.inflight_bytes = Gauge("routingd_inflight_bytes", "Request text (UTF-8 bytes) held by pending "
                                    "messages; [daemon] max_inflight_bytes bounds it.", registry=r,
                                    multiprocess_mode="livesum")

    # ------------------------------------------------------------------ per message (hot path)

    def message_accepted(self) -> None:
        self.accepted += 1

    def message_finished(self, status: str) -> None:
        self.finished[status] = self.finished.get(status, 0) + 1

    def attempt_ended(self, channel: str, provider: str, outcome: str) -> None:
        key = (channel, provider, outcome)
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def failover(self, kind: str) -> None:
        self.failovers[kind] = self.failovers.get(kind, 0) + 1

    def delivered_after(self, seconds: float) -> None:
        """One observation of routingd_time_to_deliver_seconds."""
        self.deliver_buckets[bisect.bisect_left(DELIVER_BUCKETS, seconds)] += 1
        self.deliver_sum += seconds

    def sampled(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """`gauge` is `read()`, read when /metrics is scraped (with workers: also every second,
        daemon/shared_metrics.py)."""
        gauge.set_function(read)

    def refresh(self) -> None:
        """Write the values read at scrape time where other processes read them: nothing to do
        for one process (daemon/shared_metrics.py does it with workers)."""

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


class _MessageSeries(Collector):
    """The per-message counters and histogram of a Metrics, as metric families at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        c = CounterMetricFamily(ACCEPTED[0], ACCEPTED[1])
        c.add_metric([], m.accepted)
        yield c
        c = CounterMetricFamily(FINISHED[0], FINISHED[1], labels=FINISHED[2])
        for status, n in list(m.finished.items()):
            c.add_metric([status], n)
        yield c
        c = CounterMetricFamily(ATTEMPTS[0], ATTEMPTS[1], labels=ATTEMPTS[2])
        for key, n in list(m.attempts.items()):
            c.add_metric(list(key), n)
        yield c
        c = CounterMetricFamily(FAILOVERS[0], FAILOVERS[1], labels=FAILOVERS[2])
        for kind, n in list(m.failovers.items()):
            c.add_metric([kind], n)
        yield c
        h = HistogramMetricFamily(TIME_TO_DELIVER[0], TIME_TO_DELIVER[1])
        cumulative, buckets = 0, []
        for bound, n in zip(DELIVER_BUCKETS, list(m.deliver_buckets)):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        h.add_metric([], buckets, m.deliver_sum, timestamp=None)
        yield h
        limits = m.limits()
        for mname, mkey, mdoc in LIMIT_GAUGES:
            g = GaugeMetricFamily(mname, mdoc, labels=["provider"])
            for prov, snap in limits.items():
                if snap[mkey] is not None:
                    g.add_metric([prov], float(snap[mkey]))
            yield g
        for mname, mkey, mdoc in LIMIT_COUNTERS:
            c = CounterMetricFamily(mname, mdoc, labels=["provider"])
            for prov, snap in limits.items():
                c.add_metric([prov], float(snap[mkey]))
            yield c

    def describe(self) -> Iterator[Metric]:
        return iter(())     # collected on every scrape; no name clash checks needed
