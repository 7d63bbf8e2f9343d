"""Delivery counters for ``/metrics``: outcomes by kind and a send-latency histogram.

Each running responder keeps one registry (on the ``Runtime``); queue depth by state is read
from the database at scrape time by ``ops``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

OUTCOMES = ("sent", "deferred", "failed", "bounced")


class DeliveryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.outcomes = Counter(
            "responder_delivery_outcomes", "Delivery attempts by outcome", ["outcome"], registry=self.registry
        )
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)
        self.send_seconds = Histogram(
            "responder_send_seconds",
            "Seconds from handing a message to the transport to its reply",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
