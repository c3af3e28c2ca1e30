"""The Prometheus metrics of one tidings process, on a registry of its own.

Workers record attempts, sends and pick-ups as they happen; the queue and
projector gauges are read from the database at scrape time (tidings.api.health),
because they describe the whole system, not this process. Each `Metrics` owns
its registry, so tests (and several services in one process) never share
counters through prometheus_client's global registry.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidings.notification.lifecycle import CancelReason, Verdict

NO_CHANNEL = "-"
"""The channel label of an attempt that reached no channel (expired, user gone, ...)."""

KINDS = ("request", "retry")
# What the lifecycle decided (sent, retry, canceled), or that its decision was not
# recorded: refused (settled by another worker first), unrecorded (no database).
ATTEMPT_OUTCOMES = (*(v.value for v in Verdict if v is not Verdict.SEND), "refused", "unrecorded")
CANCEL_REASONS = tuple(reason.value for reason in CancelReason)

# Provider round trips: a few milliseconds (local) up to the send timeout.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From due to claimed: milliseconds when workers keep up, minutes when they do not.
PICKUP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# From a feed event's append to the hub handing it to the connections: a few
# milliseconds after a wake-up, up to inapp.poll_every without one, more behind
# a long transaction (the horizon) or during an outage.
FANOUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FEED_TRANSPORTS = ("sse", "ws", "poll")


class Metrics:
    """Every metric tidings exports; see the README's metrics table."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.attempts = Counter(
            "tidings_attempts_total",
            "Attempts at a notification, by how they ended (sent, retry, canceled, refused: "
            "settled by another worker first, unrecorded: database unavailable).",
            ["outcome", "channel", "message_type"],
            registry=r,
        )
        self.canceled = Counter(
            "tidings_notifications_canceled_total",
            "Notifications canceled, by reason.",
            ["reason"],
            registry=r,
        )
        self.send_duration = Histogram(
            "tidings_send_duration_seconds",
            "Duration of a channel's send call, successful or not.",
            ["channel"],
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.pickup_latency = Histogram(
            "tidings_pickup_latency_seconds",
            "Claim time minus the time the notification became due "
            "(request: requested; retry: its due_at).",
            ["kind"],
            buckets=PICKUP_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "tidings_lease_expiries_total",
            "Notifications claimed again after an earlier worker's lease ran out.",
            ["kind"],
            registry=r,
        )
        self.late_outcomes_refused = Counter(
            "tidings_late_outcomes_refused_total",
            "Outcomes not recorded because another worker settled the notification first.",
            registry=r,
        )
        self.pending = Gauge(
            "tidings_notifications_pending",
            "Open notifications in the pending queue (read at scrape time).",
            ["kind"],
            registry=r,
        )
        self.due = Gauge(
            "tidings_notifications_due",
            "Pending notifications that are due and not leased (read at scrape time).",
            ["kind"],
            registry=r,
        )
        self.leased = Gauge(
            "tidings_notifications_leased",
            "Pending notifications a worker holds a lease on (read at scrape time).",
            ["kind"],
            registry=r,
        )
        self.projector_lag_events = Gauge(
            "tidings_projector_lag_events",
            "Events a projection has still to handle (read at scrape time).",
            ["projection"],
            registry=r,
        )
        self.projector_lag_seconds = Gauge(
            "tidings_projector_lag_seconds",
            "Age of the oldest event a projection has still to handle, 0 when caught up "
            "(read at scrape time).",
            ["projection"],
            registry=r,
        )
        self.database_up = Gauge(
            "tidings_database_up",
            "1 when the database answered the last scrape's queries in time, else 0.",
            registry=r,
        )
        self.feed_connections = Gauge(
            "tidings_feed_connections",
            "End users' live connections this serve process holds, by transport "
            "(sse, ws, poll: a long-poll while it waits).",
            ["transport"],
            registry=r,
        )
        self.feed_fanned_out = Counter(
            "tidings_feed_events_fanned_out_total",
            "Feed messages (items, marks, counts) the hub handed to this process's connections.",
            registry=r,
        )
        self.feed_slow_consumers = Counter(
            "tidings_feed_slow_consumers_total",
            "Connections closed because they could not keep up (inapp.queue_size events "
            "were waiting); each resumes from its last position.",
            registry=r,
        )
        self.feed_resets = Counter(
            "tidings_feed_resets_total",
            "Streams resumed from a cursor older than the feed keeps (or not this log's), "
            "told to read the feed again.",
            registry=r,
        )
        self.feed_fanout_lag = Histogram(
            "tidings_feed_fanout_lag_seconds",
            "From a feed event's append to the hub reading it for its connections.",
            buckets=FANOUT_BUCKETS,
            registry=r,
        )
        self.feed_hub_up = Gauge(
            "tidings_feed_hub_up",
            "1 while this serve process's feed hub follows the log (streams and polls "
            "are served), else 0 (they answer 503).",
            registry=r,
        )
        self._feed_connections = {t: self.feed_connections.labels(t) for t in FEED_TRANSPORTS}
        # Children bound once and kept: labels() costs several times what inc() does,
        # and every notification passes here. The label values are few (outcomes,
        # channel names, message types), so the caches stay small.
        self._pickup = {kind: self.pickup_latency.labels(kind) for kind in KINDS}
        self._expiries = {kind: self.lease_expiries.labels(kind) for kind in KINDS}
        self._attempt_children: dict[tuple[str, str, str], Counter] = {}
        self._send_children: dict[str, Histogram] = {}
        for reason in CANCEL_REASONS:  # a known reason shows as 0 before its first cancel
            self.canceled.labels(reason)

    def attempt(self, outcome: str, channel: str | None, message_type: str | None) -> None:
        """Count one attempt's recorded outcome (a refused one as a late outcome, too)."""
        key = (outcome, channel or NO_CHANNEL, message_type or NO_CHANNEL)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.attempts.labels(*key)
        child.inc()
        if outcome == "refused":
            self.late_outcomes_refused.inc()

    def cancel(self, reason: str) -> None:
        self.canceled.labels(reason).inc()

    def sent_in(self, channel: str, seconds: float) -> None:
        """One channel send call took `seconds`."""
        child = self._send_children.get(channel)
        if child is None:
            child = self._send_children[channel] = self.send_duration.labels(channel)
        child.observe(seconds)

    def picked_up(self, kind: str, seconds: float, *, lease_expired: bool) -> None:
        """A notification was claimed `seconds` after it became due."""
        histogram = self._pickup.get(kind) or self.pickup_latency.labels(kind)
        histogram.observe(max(seconds, 0.0))
        if lease_expired:
            (self._expiries.get(kind) or self.lease_expiries.labels(kind)).inc()

    def feed_connection(self, transport: str, change: int) -> None:
        """A connection of `transport` opened (+1) or closed (-1)."""
        child = self._feed_connections.get(transport) or self.feed_connections.labels(transport)
        child.inc(change)

    def queue_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Set the queue gauges from PendingQueue.counts(); a kind not listed has none."""
        for kind in KINDS:
            row = counts.get(kind, {})
            self.pending.labels(kind).set(row.get("pending", 0))
            self.due.labels(kind).set(row.get("due", 0))
            self.leased.labels(kind).set(row.get("leased", 0))

    def projector_lag(self, projection: str, *, events: int, seconds: float) -> None:
        self.projector_lag_events.labels(projection).set(events)
        self.projector_lag_seconds.labels(projection).set(seconds)

    def database_down(self) -> None:
        """The database did not answer: no queue or lag figures rather than stale ones."""
        self.database_up.set(0)
        for gauge in (
            self.pending,
            self.due,
            self.leased,
            self.projector_lag_events,
            self.projector_lag_seconds,
        ):
            gauge.clear()
