"""``GET /metrics``: the server in Prometheus' text format, through ``prometheus_client``.

A custom collector reads what the server keeps anyway at scrape time (each job's
counts, its queue and leases, the connections, the latency of the maintenance tick's
Redis PING): nothing is counted on the dispatch path for it. Each server has its own
registry, so several in one process (tests, embedding) never mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

CONTENT_TYPE = CONTENT_TYPE_LATEST


class PlanchetCollector(Collector):
    """The metrics of one dispatcher, read when Prometheus scrapes."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        d = self.dispatcher
        label = ["job"]
        read = CounterMetricFamily("planchet_items_read", "Items read from the job's input",
                                   labels=label)
        written = CounterMetricFamily("planchet_items_written",
                                      "Results written to the job's output", labels=label)
        failed = CounterMetricFamily("planchet_items_failed",
                                     "Items sent to the job's error file", labels=label)
        queued = GaugeMetricFamily("planchet_queued", "Items waiting to be leased again",
                                   labels=label)
        in_flight = GaugeMetricFamily("planchet_in_flight", "Items leased to workers",
                                      labels=label)
        leases = GaugeMetricFamily("planchet_leases", "Leases held by workers", labels=label)
        for name, job in list(d.jobs.items()):
            c = job.counts
            read.add_metric([name], c.get("next_id", 0))
            written.add_metric([name], c.get("written", 0))
            failed.add_metric([name], c.get("failed", 0))
            queued.add_metric([name], job.queued)
            in_flight.add_metric([name], sum(le.outstanding for le in list(job.leases.values())))
            leases.add_metric([name], len(job.leases))
        yield from (read, written, failed, queued, in_flight, leases)
        yield GaugeMetricFamily("planchet_connections", "Open WebSocket sessions",
                                value=len(d.sessions))
        latency = d.board.latency
        yield HistogramMetricFamily("planchet_redis_latency_seconds",
                                    "Round trip of the maintenance tick's Redis PING",
                                    buckets=latency.cumulative(), sum_value=latency.sum)


def registry(dispatcher: Dispatcher) -> CollectorRegistry:
    """A registry of its own for ``dispatcher``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlanchetCollector(dispatcher))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
