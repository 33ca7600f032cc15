"""Prometheus metrics: one registry per daemon, ids and codes as labels, never patient data.

A registry of our own (not the process-global one) keeps two daemons in one test process apart
and keeps library metrics we did not choose out of the hospital's dashboards.
"""

from __future__ import annotations

__all__ = ["Metrics"]

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Latency buckets from 1 ms to 10 s: ACKs are expected in milliseconds, sends in 100s of ms.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the bridge exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound = Counter(
            "bridge_inbound_messages_total",
            "Inbound messages by connector and outcome.",
            ["connector", "outcome"],
            registry=r,
        )
        self.ingest_latency = Histogram(
            "bridge_ingest_seconds",
            "Time from receipt to durable commit (before the ACK).",
            ["connector"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.outbox_rows = Gauge(
            "bridge_outbox_rows", "Outbox rows by state.", ["state"], registry=r
        )
        self.quarantine_rows = Gauge(
            "bridge_quarantine_rows", "Inbound messages kept in quarantine.", registry=r
        )
        self.sends = Counter(
            "bridge_sends_total",
            "Send attempts by channel and result.",
            ["channel", "result"],
            registry=r,
        )
        self.send_errors = Counter(
            "bridge_send_errors_total",
            "Send errors by our code and the provider's code.",
            ["code", "provider_code"],
            registry=r,
        )
        self.send_latency = Histogram(
            "bridge_send_seconds",
            "Duration of one send call.",
            ["channel"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "bridge_webhooks_total",
            "Webhook requests by channel and result.",
            ["channel", "result"],
            registry=r,
        )
        self.http_rejected = Counter(
            "bridge_http_rejected_total", "HTTP requests refused by reason.", ["reason"], registry=r
        )
        self.events_processed = Counter(
            "bridge_events_processed_total",
            "Canonical events handled by the engine.",
            ["type", "result"],
            registry=r,
        )
        self.ehr_commands = Counter(
            "bridge_ehr_commands_total",
            "Decisions written back to the EHR by result.",
            ["connector", "kind", "result"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
