"""Prometheus metrics: scraped from a real `tidings run`, and read at scrape time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import prometheus_client
from psycopg_pool import AsyncConnectionPool

from tests.cli import clean_env
from tests.ops_helpers import (
    free_port,
    operations_server,
    planned_sink,
    running,
    scrape,
    series,
    serving,
    value,
    wait_for,
)
from tests.worker_helpers import (
    FixedClock,
    requested,
    user_added,
    users_projected,
    worker_env,
    worker_settings,
)
from tidings.eventstore import Database, EventQuery, EventStore
from tidings.metrics import Metrics
from tidings.projections import Projector, default_projections
from tidings.service import Service

ATTEMPTS = "tidings_attempts_total"
WEBHOOK = {"channel": "webhook", "message_type": "PasswordReset"}


async def count(db: Database, event_type: str) -> int:
    return len(await db.store.query(EventQuery(event_types=(event_type,))))


async def test_counters_histograms_and_gauges_follow_a_real_run(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    with planned_sink() as sink:
        sink.plan = {"n-flaky": [(503, b"busy")], "n-refused": [(400, b"no such mailbox")]}
        await db.store.append([user_added()])
        await users_projected(db, worker_settings(sink.url))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = clean_env(
            TIDINGS_DATABASE_URL=conninfo,
            **worker_env(sink.url),
            TIDINGS_NOTIFICATIONS_REQUEUE_EVERY="200ms",
            TIDINGS_NOTIFICATIONS_RETRY_REQUEUE_EVERY="200ms",
            TIDINGS_NOTIFICATIONS_MIN_RETRY_DELAY="200ms",
            TIDINGS_NOTIFICATIONS_MAX_RETRY_DELAY="500ms",
            TIDINGS_NOTIFICATIONS_MAX_TTL="1h",
        )
        # One process: its /metrics must count every attempt (with several, each
        # process counts its own, on its own port).
        args = ["run", "--processes", "1", "--metrics-addr", f"127.0.0.1:{port}"]
        with running(args, env, tmp_path / "run") as process:
            await serving(base, process)
            before = await scrape(base)
            assert value(before, "tidings_database_up") == 1
            assert series(before, ATTEMPTS) == {}, "nothing attempted yet"
            assert not any(name.endswith("_created") for name, _ in before)

            fine = [f"n-fine-{n}" for n in range(5)]
            await db.store.append([requested(i) for i in [*fine, "n-flaky", "n-refused"]])

            async def all_settled() -> bool:
                now = await scrape(base)
                return (
                    value(now, ATTEMPTS, outcome="sent", **WEBHOOK) >= 6
                    and value(now, ATTEMPTS, outcome="canceled", **WEBHOOK) >= 1
                )

            await wait_for(all_settled, "6 sends and a cancel in the metrics")
            after = await scrape(base)
            assert process.proc.poll() is None, process.stderr()

    # The sent counter moved by exactly what was sent: in the log and at the sink.
    assert await count(db, "notification.sent") == 6
    assert sum(1 for _, _, status in sink.deliveries() if status == 200) == 6
    assert series(after, ATTEMPTS) == {
        frozenset({"outcome": "sent", **WEBHOOK}.items()): 6.0,
        frozenset({"outcome": "retry", **WEBHOOK}.items()): 1.0,
        frozenset({"outcome": "canceled", **WEBHOOK}.items()): 1.0,
    }
    canceled = series(after, "tidings_notifications_canceled_total")
    assert canceled[frozenset({("reason", "permanent_error")})] == 1
    assert sum(canceled.values()) == 1
    assert value(after, "tidings_late_outcomes_refused_total") == 0
    assert series(after, "tidings_lease_expiries_total") == {
        frozenset({("kind", "request")}): 0.0,
        frozenset({("kind", "retry")}): 0.0,
    }

    # Histograms: 8 sends (5 + flaky twice + refused once), 7 request and 1 retry pick-ups.
    sends = value(after, "tidings_send_duration_seconds_count", channel="webhook")
    assert sends == len(sink.deliveries()) == 8
    assert value(after, "tidings_send_duration_seconds_sum", channel="webhook") > 0
    inf = value(after, "tidings_send_duration_seconds_bucket", channel="webhook", le="+Inf")
    assert inf == 8
    assert value(after, "tidings_pickup_latency_seconds_count", kind="request") == 7
    assert value(after, "tidings_pickup_latency_seconds_count", kind="retry") == 1

    # Gauges read at scrape time: everything settled, the projector caught up.
    for gauge in ("pending", "due", "leased"):
        assert series(after, f"tidings_notifications_{gauge}") == {
            frozenset({("kind", "request")}): 0.0,
            frozenset({("kind", "retry")}): 0.0,
        }, gauge
    lag = series(after, "tidings_projector_lag_events")
    assert set(lag) == {
        frozenset({("projection", "users")}),
        frozenset({("projection", "requests")}),
    }
    assert set(lag.values()) == {0.0}
    assert set(series(after, "tidings_projector_lag_seconds").values()) == {0.0}
    assert value(after, "tidings_database_up") == 1


async def test_queue_and_lag_gauges_are_read_from_the_database_at_scrape_time(
    db: Database,
) -> None:
    clock = FixedClock()
    settings = worker_settings("http://127.0.0.1:9/unused")
    await db.store.append([user_added(), user_added("user-bob")])  # not projected: lag 2
    await db.store.append([requested("n-1"), requested("n-2"), requested("n-3")])
    projector = Projector(
        db=db, projections=default_projections(db, settings), settings=settings.projections
    )
    metrics = Metrics()
    serving_ops = operations_server(
        db=db, metrics=metrics, projector=projector,
        ready_max_projector_lag=timedelta(0), clock=clock,
    )  # fmt: skip
    async with serving_ops as server:
        base = f"http://127.0.0.1:{server.address[1]}"
        first = await scrape(base)
        assert value(first, "tidings_notifications_pending", kind="request") == 3
        assert value(first, "tidings_notifications_due", kind="request") == 3
        assert value(first, "tidings_notifications_leased", kind="request") == 0
        assert value(first, "tidings_notifications_pending", kind="retry") == 0
        assert value(first, "tidings_projector_lag_events", projection="users") == 2
        assert value(first, "tidings_projector_lag_events", projection="requests") == 0
        assert value(first, "tidings_projector_lag_seconds", projection="users") >= 0
        assert value(first, "tidings_database_up") == 1

        service = Service(db=db, settings=settings, clock=clock)
        try:
            assert len(await service.pool.claim("request")) == 3
        finally:
            await service.close()
        leased = await scrape(base)
        assert value(leased, "tidings_notifications_leased", kind="request") == 3
        assert value(leased, "tidings_notifications_due", kind="request") == 0

        clock.advance(timedelta(seconds=90))  # the leases ran out; the oldest event is 90s old
        later = await scrape(base)
        assert value(later, "tidings_notifications_leased", kind="request") == 0
        assert value(later, "tidings_notifications_due", kind="request") == 3
        assert value(later, "tidings_projector_lag_seconds", projection="users") >= 89

        await projector.catch_up()
        third = await scrape(base)
        assert value(third, "tidings_projector_lag_events", projection="users") == 0
        assert value(third, "tidings_projector_lag_seconds", projection="users") == 0


async def test_a_database_that_fails_turns_database_up_to_0_and_metrics_keep_serving(
    db: Database,
) -> None:
    settings = worker_settings("http://127.0.0.1:9/unused")
    pool: AsyncConnectionPool = AsyncConnectionPool(db.conninfo, min_size=1, open=False)
    await pool.open(wait=True)
    dying = Database(conninfo=db.conninfo, pool=pool, store=EventStore(pool=pool))
    projector = Projector(
        db=dying, projections=default_projections(dying, settings), settings=settings.projections
    )
    metrics = Metrics()
    metrics.attempt("sent", "webhook", "PasswordReset")
    serving_ops = operations_server(
        db=dying, metrics=metrics, projector=projector,
        ready_max_projector_lag=timedelta(seconds=30), check_timeout=1.0,
    )  # fmt: skip
    async with serving_ops as server:
        base = f"http://127.0.0.1:{server.address[1]}"
        assert value(await scrape(base), "tidings_database_up") == 1
        await pool.close()  # from now on every query fails

        down = await scrape(base)
        assert value(down, "tidings_database_up") == 0
        assert series(down, "tidings_notifications_pending") == {}, "no stale figures"
        assert series(down, "tidings_projector_lag_events") == {}
        assert value(down, ATTEMPTS, outcome="sent", **WEBHOOK) == 1, "counters still served"


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.attempt("sent", "smtp", "VerifyEmail")
    one.attempt("refused", "smtp", "VerifyEmail")
    one.picked_up("retry", 1.5, lease_expired=True)
    one.cancel("expired")

    def sample(metrics: Metrics, name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    labels = {"channel": "smtp", "message_type": "VerifyEmail"}
    assert sample(one, ATTEMPTS, outcome="sent", **labels) == 1
    assert sample(two, ATTEMPTS, outcome="sent", **labels) == 0
    assert sample(one, "tidings_late_outcomes_refused_total") == 1
    assert sample(one, "tidings_lease_expiries_total", kind="retry") == 1
    assert sample(one, "tidings_pickup_latency_seconds_count", kind="retry") == 1
    assert sample(one, "tidings_notifications_canceled_total", reason="expired") == 1
    assert sample(two, "tidings_notifications_canceled_total", reason="expired") == 0
    one.attempt("canceled", None, None)
    assert sample(one, ATTEMPTS, outcome="canceled", channel="-", message_type="-") == 1
    assert prometheus_client.REGISTRY.get_sample_value("tidings_database_up") is None


async def test_lease_expiries_count_claims_after_a_lease_ran_out(db: Database) -> None:
    clock = FixedClock()
    settings = worker_settings("http://127.0.0.1:9/unused")
    await db.store.append([requested("n-1")])
    metrics = Metrics()
    service = Service(db=db, settings=settings, clock=clock, metrics=metrics)
    try:
        clock.advance(timedelta(seconds=3))
        assert len(await service.pool.claim("request")) == 1
        clock.advance(settings.notifications.transaction_duration + timedelta(seconds=1))
        assert len(await service.pool.claim("request")) == 1
    finally:
        await service.close()
    registry = metrics.registry
    assert registry.get_sample_value("tidings_lease_expiries_total", {"kind": "request"}) == 1
    count_ = registry.get_sample_value("tidings_pickup_latency_seconds_count", {"kind": "request"})
    assert count_ == 2
    # The second pick-up came after the first lease ran out: over a minute after the request.
    total = registry.get_sample_value("tidings_pickup_latency_seconds_sum", {"kind": "request"})
    assert total is not None and total > 60
