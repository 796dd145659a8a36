"""/metrics for the whole daemon under `[daemon] workers = N`: prometheus_client's multiprocess mode.

    supervisor (daemon/workers.py)                      worker (routingd serve), one per process
      MetricsDir.create(): a new, empty 0700 directory ──PROMETHEUS_MULTIPROC_DIR──▶ SharedMetrics:
      worker_died(pid) when a worker exits:                 every metric writes through to this
        mark_process_dead (its live gauges go)              process's files there (counter_PID.db,
      remove() once every worker has exited                 gauge_livesum_PID.db, histogram_PID.db ...)
                                                          GET /metrics (any worker): the
                                                            MultiProcessCollector merges every
                                                            process's files, the dead ones' too

Counters and the histogram are summed over every process that ever ran in this supervisor's life
(a worker killed with -9 and restarted: its files stay, so nothing it counted is lost); gauges are
merged by their `multiprocess_mode` (daemon/metrics.py; why each: docs/operations.md "Metrics with
workers"), all of them `live*`: a dead worker's gauges drop out.

The environment variable is read by prometheus_client when it is imported (`values.ValueClass`),
so the supervisor sets it in the worker's environment before the worker starts.

What the multiprocess mode does not carry, and what this module does instead:
- a value read at scrape time (`Gauge.set_function`, metrics.py's `_MessageSeries` collector):
  only the scraping process would run it. The per-message series are prometheus_client Counters
  and a Histogram here, written through at each event (about 1 us per update, measured:
  docs/performance.md "Figures behind code choices"); the read-at-scrape gauges
  (`Metrics.sampled`) and the rate limiter's per-provider figures are written by each worker
  every SAMPLE_S, and by the scraping worker just before it answers: another worker's are at
  most SAMPLE_S old.
- Info (routingd_config_info{version}): a gauge of that name instead, 1 for the version a worker
  serves, 0 for the one it served before (a file keeps every label set it was given:
  prometheus_client cannot remove one); the 0s are left out of the answer.
- removing a series (a provider no longer rate-limited after a reload): its gauges are set to NaN
  and NaN samples are left out of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .metrics import (ACCEPTED, ATTEMPTS, DELIVER_BUCKETS, FAILOVERS, FINISHED, LIMIT_COUNTERS, LIMIT_GAUGES,
                      TIME_TO_DELIVER, Metrics)

log = logging.getLogger("routingd.metrics")

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"        # prometheus_client's own name for it
SAMPLE_S = 1.0              # how often a worker writes its read-at-scrape values


# --------------------------------------------------------------------------- supervisor side


class MetricsDir:
    """The directory of the workers' metric files: one per supervisor run, private to it."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> "MetricsDir":
        """A new, empty directory (mode 0700: mkdtemp) under systemd's RuntimeDirectory= when the
        unit has one, else the temporary directory ($TMPDIR, /tmp; the unit's PrivateTmp=). A new
        one per start, never a fixed name: two daemons on one machine never share or wipe each
        other's files, and nothing of a previous run can be counted again."""
        base = (os.environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or None
        return cls(tempfile.mkdtemp(prefix="routingd-metrics-", dir=base))

    def worker_died(self, pid: int) -> None:
        """A worker exited (any way): its live gauges leave /metrics, its counters stay."""
        mark_process_dead(pid, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------- worker side


def make_metrics(worker: bool, version: str) -> Metrics:
    """A worker started by the supervisor (the directory in its environment) gets SharedMetrics;
    one process (`workers = 1`) gets the plain Metrics of today, whatever its environment says.
    `version`: the policy the process starts with."""
    path = os.environ.get(ENV_DIR) if worker else None
    return SharedMetrics(path, version) if path else Metrics()


class SharedMetrics(Metrics):
    """A worker's metrics, merged with the other workers' at each scrape. Event loop thread only."""

    def __init__(self, path: str, version: str) -> None:
        if not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(f"{ENV_DIR} was set after prometheus_client was imported")
        # the base's metrics write to this process's files; its registry is never rendered here
        super().__init__(CollectorRegistry())
        # The base wrote routingd_config_last_reload_successful and _timestamp_seconds as 0 into
        # this process's file, and they merge by livemin: the other workers' scrapes would say
        # "reload failed" while this one starts (store, resume: seconds). Set at once (the
        # policy was read before the process got here); the Router sets them again at its start.
        self._version: str | None = None
        self._info = Gauge("routingd_config_info", "The loaded routing policy version.", ["version"],
                           registry=None, multiprocess_mode="livemax")
        self.config_loaded(version)
        self.path = path
        self._accepted = Counter(ACCEPTED[0], ACCEPTED[1], registry=None)
        self._finished = Counter(FINISHED[0], FINISHED[1], FINISHED[2], registry=None)
        self._attempts = Counter(ATTEMPTS[0], ATTEMPTS[1], ATTEMPTS[2], registry=None)
        self._failovers = Counter(FAILOVERS[0], FAILOVERS[1], FAILOVERS[2], registry=None)
        self._deliver = Histogram(TIME_TO_DELIVER[0], TIME_TO_DELIVER[1], buckets=DELIVER_BUCKETS, registry=None)
        # children by label values: a .labels() lookup costs more than the update itself
        # every status and kind at 0 from the start, as _MessageSeries shows them
        self._finished_by: dict[tuple[str, ...], Any] = {(s,): self._finished.labels(s) for s in self.finished}
        self._failovers_by: dict[tuple[str, ...], Any] = {(k,): self._failovers.labels(k) for k in self.failovers}
        self._attempts_by: dict[tuple[str, ...], Any] = {}
        self._limit_gauges = [Gauge(name, doc, ["provider"], registry=None, multiprocess_mode="livesum")
                              for name, _, doc in LIMIT_GAUGES]
        self._limit_counters = [Counter(name, doc, ["provider"], registry=None) for name, _, doc in LIMIT_COUNTERS]
        self._limit_totals: dict[tuple[int, str], float] = {}
        self._limited: set[str] = set()
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        self._merged = CollectorRegistry()
        self._merged.register(_Merged(path))

    # ------------------------------------------------------------------ per message (hot path)

    def message_accepted(self) -> None:
        super().message_accepted()
        self._accepted.inc()

    def message_finished(self, status: str) -> None:
        super().message_finished(status)
        _child(self._finished_by, self._finished, (status,)).inc()

    def attempt_ended(self, channel: str, provider: str, outcome: str) -> None:
        super().attempt_ended(channel, provider, outcome)
        _child(self._attempts_by, self._attempts, (channel, provider, outcome)).inc()

    def failover(self, kind: str) -> None:
        super().failover(kind)
        _child(self._failovers_by, self._failovers, (kind,)).inc()

    def delivered_after(self, seconds: float) -> None:
        super().delivered_after(seconds)
        self._deliver.observe(seconds)

    # ------------------------------------------------------------------ config

    def config_loaded(self, version: str, at: float | None = None) -> None:
        super().config_loaded(version, at)
        if version != self._version:
            if self._version is not None:
                self._info.labels(self._version).set(0)
            self._info.labels(version).set(1)
            self._version = version

    # ------------------------------------------------------------------ sampled values

    def sampled(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self._sampled.append((gauge, read))

    def refresh(self) -> None:
        for gauge, read in self._sampled:
            gauge.set(read())
        limits = self.limits()
        for prov, snap in limits.items():
            for gauge, (_, key, _) in zip(self._limit_gauges, LIMIT_GAUGES):
                gauge.labels(prov).set(math.nan if snap[key] is None else float(snap[key]))
            for i, (counter, (_, key, _)) in enumerate(zip(self._limit_counters, LIMIT_COUNTERS)):
                total = float(snap[key])
                last = self._limit_totals.get((i, prov), 0.0)
                # the limiter's totals start again at 0 when a reload makes the provider's limiter
                # anew: the counter goes on from where it was (a counter never goes down)
                step = total - last if total >= last else total
                if step:
                    counter.labels(prov).inc(step)
                self._limit_totals[(i, prov)] = total
        for prov in self._limited.difference(limits):      # no longer rate-limited: out of /metrics
            for gauge in self._limit_gauges:
                gauge.labels(prov).set(math.nan)
        self._limited = set(limits)

    async def sample_forever(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - metrics must never stop a worker; said once per failure
                log.exception("writing the sampled metrics failed")
            await asyncio.sleep(SAMPLE_S)

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        self.refresh()          # this worker's own read-at-scrape values, exact
        return generate_latest(self._merged)


def _child(cache: dict[tuple[str, ...], Any], counter: Counter, labels: tuple[str, ...]) -> Any:
    """`counter`'s child for `labels`, kept in `cache` (a .labels() lookup costs more than the
    update itself)."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = counter.labels(*labels)
    return child


class _Merged:
    """Every worker's files, merged (MultiProcessCollector), without the samples that stand for
    a removed series (NaN, or a routingd_config_info version no live worker serves)."""

    def __init__(self, path: str) -> None:
        self.files = MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Metric]:
        for metric in sorted(self.files.collect(), key=lambda m: m.name):
            metric.samples = [s for s in metric.samples if not math.isnan(s.value)
                              and not (metric.name == "routingd_config_info" and s.value == 0)]
            yield metric

    def describe(self) -> Iterator[Metric]:
        return iter(())         # collected on every scrape; no name clash checks needed
