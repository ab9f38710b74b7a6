"""Prometheus metrics, one registry per app so tests can run many apps.

Labelled series that an operator alerts on are created at zero up front, so
``rate()`` and ``increase()`` work from the first scrape instead of from the
first event (a series that appears only when something goes wrong is easy to
miss). README.md, "Operations" explains every metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric sponsord exports (see README.md, "Operations")."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.clients = Gauge("sponsord_clients", "Connected live clients", ["transport"], registry=r)
        self.clients_rejected = Counter(
            "sponsord_clients_rejected", "Live clients refused", ["reason"], registry=r
        )
        self.broadcasts = Counter("sponsord_broadcasts", "Snapshots fanned out", registry=r)
        self.broadcast_seconds = Histogram(
            "sponsord_broadcast_seconds",
            "Time to hand one snapshot to every WebSocket client",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.frames_sent = Counter("sponsord_frames_sent", "full_state frames written", registry=r)
        self.longpoll_answers = Counter(
            "sponsord_longpoll_answers", "Long-poll answers", ["status"], registry=r
        )
        self.slow_disconnects = Counter(
            "sponsord_slow_disconnects", "WebSocket clients closed for not reading", registry=r
        )
        self.refreshes = Counter("sponsord_refreshes", "Refreshes by outcome", ["outcome"], registry=r)
        self.upstream_seconds = Histogram(
            "sponsord_upstream_seconds",
            "Duration of a whole refresh from Patreon (all pages)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.upstream_requests = Counter(
            "sponsord_upstream_requests", "HTTP requests sent to Patreon", registry=r
        )
        self.webhooks = Counter("sponsord_webhooks", "Webhooks by result", ["result"], registry=r)
        self.snapshot_version = Gauge("sponsord_snapshot_version", "Version being served", registry=r)
        self.snapshot_age = Gauge(
            "sponsord_snapshot_age_seconds", "Seconds since the last successful refresh", registry=r
        )
        self.upstream_up = Gauge(
            "sponsord_upstream_up", "1 if the last refresh succeeded, else 0", registry=r
        )
        self.consecutive_failures = Gauge(
            "sponsord_upstream_consecutive_failures", "Refresh failures in a row", registry=r
        )
        self.token_rotations = Counter(
            "sponsord_token_rotations", "OAuth token exchanges by outcome", ["outcome"], registry=r
        )
        self.token_expiry = Gauge(
            "sponsord_token_expiry_timestamp_seconds",
            "Unix time the Patreon access token expires (rotated tokens only)",
            registry=r,
        )
        for transport in ("websocket", "longpoll"):
            self.clients.labels(transport)
        for outcome in ("changed", "unchanged", "auth", "rate_limited", "unavailable", "malformed"):
            self.refreshes.labels(outcome)
        for result in ("accepted", "ignored", "bad_signature", "too_large"):
            self.webhooks.labels(result)
        for outcome in ("rotated", "refused", "unavailable"):
            self.token_rotations.labels(outcome)
