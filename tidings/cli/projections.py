"""`tidings projections run|status|rebuild`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

import click

from tidings.cli.base import (
    PROJECTION_NAMES,
    fail,
    main,
    make_projector,
    metrics_addr_option,
    metrics_address,
    run,
    serving_operations,
    settings_of,
    stop_on_signals,
)
from tidings.clock import utc_now
from tidings.eventstore import (
    open_database,
)
from tidings.feeds.operations import rebuild_feed
from tidings.metrics import Metrics
from tidings.projections import LeaderLock
from tidings.workers import PendingQueue


@main.group("projections")
def projections_group() -> None:
    """Run, inspect and rebuild the read models and notification requests."""


@projections_group.command("run")
@click.option("--until-idle", is_flag=True, help="Catch up once, then exit 0.")
@metrics_addr_option
@click.pass_context
def projections_run(ctx: click.Context, until_idle: bool, metrics_addr: str | None) -> None:
    """Run the projector alone (no workers).

    Only one process projects at a time; others stand by and take over within
    projections.leader_retry_every when it stops. SIGTERM finishes the batch.
    With --metrics-addr, /metrics, /healthz and /readyz are served there.
    """
    settings = settings_of(ctx)
    address = metrics_address(settings, metrics_addr)

    async def go() -> None:
        async with open_database(settings.database) as db:
            stop = asyncio.Event()
            stop_on_signals(stop)
            leader = LeaderLock(
                conninfo=db.conninfo,
                retry_every=settings.projections.leader_retry_every.total_seconds(),
            )
            projector = make_projector(db, settings)
            async with serving_operations(
                address, db=db, settings=settings, metrics=Metrics() if address else None,
                projector=projector, stop=stop,
            ):  # fmt: skip
                await projector.run(stop=stop, leader=leader, until_idle=until_idle)

    run(go())


@projections_group.command("status")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table")
@click.option("--failures", "show_failures", default=5, show_default=True, help="Recent per name.")
@click.pass_context
def projections_status(ctx: click.Context, output_format: str, show_failures: int) -> None:
    """Each projection's checkpoint, lag in events, and the events it had to skip."""
    settings = settings_of(ctx)

    async def go() -> list[dict[str, Any]]:
        async with open_database(settings.database) as db:
            projector = make_projector(db, settings)
            rows = []
            for status in await projector.status():
                failures = await projector.failures(status.name, limit=show_failures)
                rows.append({**dataclasses.asdict(status), "recent_failures": failures})
            return rows

    rows = run(go())
    if output_format == "json":
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    click.echo(f"{'PROJECTION':<12}{'CHECKPOINT':>16}{'LAG':>10}  {'OLDEST UNHANDLED':<26}FAILURES")
    for row in rows:
        oldest = (
            row["oldest_unhandled"].isoformat(" ", "seconds") if row["oldest_unhandled"] else "-"
        )
        click.echo(
            f"{row['name']:<12}{row['position']:>16}{row['lag_events']:>10}  {oldest:<26}"
            f"{row['failures']}"
        )
    for row in rows:
        for failure in row["recent_failures"]:
            click.echo(
                f"  {row['name']} skipped position {failure['position']} "
                f"({failure['event_type']} {failure['instance_id']} "
                f"{failure['aggregate_type']}/{failure['aggregate_id']}): {failure['error']}"
            )


@projections_group.command("rebuild")
@click.argument("name", type=click.Choice(PROJECTION_NAMES))
@click.pass_context
def projections_rebuild(ctx: click.Context, name: str) -> None:
    """Reset projection NAME and replay it from the log.

    Takes the projector lock first (live projectors pause), and swaps the new
    read model in with one commit, so readers never see it half built.
    """
    settings = settings_of(ctx)

    async def go() -> int:
        async with open_database(settings.database) as db:
            if name == "pending":
                return await PendingQueue(pool=db.pool).rebuild()
            if name == "feed":  # an inline projection, like pending: one statement
                return await rebuild_feed(
                    db.store, retention=settings.inapp.retention, now=utc_now()
                )
            projector = make_projector(db, settings, [name])
            stop = asyncio.Event()
            leader = LeaderLock(
                conninfo=db.conninfo,
                retry_every=settings.projections.leader_retry_every.total_seconds(),
            )
            stop_on_signals(stop)
            if not await leader.acquire(stop):
                fail("interrupted while waiting for the projector lock")
            try:
                if sys.stderr.isatty():
                    total = await projector.events_to_replay()
                    with click.progressbar(
                        length=total, label=f"rebuilding {name}", file=sys.stderr
                    ) as bar:
                        return await projector.rebuild(progress=bar.update)
                return await projector.rebuild()
            finally:
                await leader.release()

    replayed = run(go())
    if name == "pending":
        click.echo(f"rebuilt pending: {replayed} open notifications")
    elif name == "feed":
        click.echo(f"rebuilt feed: {replayed} items within inapp.retention")
    else:
        click.echo(f"rebuilt {name}: replayed {replayed} events")
