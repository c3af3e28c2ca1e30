"""`tidings run` and `tidings history`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC
from pathlib import Path

import click

from tidings.cli.base import (
    fail,
    main,
    metrics_addr_option,
    metrics_address,
    run,
    serving_operations,
    settings_of,
    stop_on_signals,
)
from tidings.cli.serve import serve_api
from tidings.eventstore import (
    Database,
    EventQuery,
    open_database,
)
from tidings.metrics import Metrics
from tidings.service import Service
from tidings.workers.history import Step, describe, history


@main.command("run")
@click.option("--workers", type=click.IntRange(min=0), help="Request workers (default: setting).")
@click.option(
    "--retry-workers", type=click.IntRange(min=0), help="Retry workers (default: setting)."
)
@click.option("--no-projector", is_flag=True, help="Run only the workers, no projector.")
@click.option(
    "--until-idle", is_flag=True, help="Exit 0 once nothing is pending or due (batch runs)."
)
@metrics_addr_option
@click.option(
    "--serve",
    is_flag=True,
    help="Serve the HTTP API in this process too, on api.addr (small installs).",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    workers: int | None,
    retry_workers: int | None,
    no_projector: bool,
    until_idle: bool,
    metrics_addr: str | None,
    serve: bool,
) -> None:
    """Run the projector and the worker pool.

    \b
    Split request and retry work across pods:
      tidings run --workers 4 --retry-workers 0
      tidings run --workers 0 --retry-workers 2 --no-projector
    SIGTERM or SIGINT stops claiming, finishes the attempts in flight,
    records their outcomes, and exits 0.
    With --metrics-addr, /metrics, /healthz and /readyz are served there;
    with --serve, the HTTP API (and those) on api.addr as well.
    """
    settings = settings_of(ctx)
    counts = (
        settings.notifications.workers if workers is None else workers,
        settings.notifications.retry_workers if retry_workers is None else retry_workers,
    )
    address = metrics_address(settings, metrics_addr)

    async def go() -> None:
        async with open_database(settings.database) as db:
            stop = asyncio.Event()
            stop_on_signals(stop)
            metrics = Metrics() if address is not None or serve else None
            service = Service(db=db, settings=settings, metrics=metrics)
            api = (
                serve_api(db, settings, service.projector, stop, settings.api.address(), metrics)
                if serve
                else contextlib.nullcontext()
            )
            try:
                async with serving_operations(
                    address, db=db, settings=settings, metrics=metrics,
                    projector=service.projector, stop=stop,
                ), api:  # fmt: skip
                    start = await db.store.last_position()
                    await service.run(
                        stop=stop,
                        workers=counts[0],
                        retry_workers=counts[1],
                        projector=not no_projector,
                        until_idle=until_idle,
                    )
                    if until_idle:
                        await print_outcomes(db, start, service.outbox)
            finally:
                await service.close()

    run(go())


async def print_outcomes(db: Database, after: int, outbox: Path) -> None:
    """What a batch run did: each notification settled since `after`."""
    settled = await db.store.query(
        EventQuery(event_types=("notification.sent", "notification.canceled"), position_after=after)
    )
    for event in settled:
        click.echo(f"{event.instance_id} notification {event.aggregate_id}: {describe(event)}")
    click.echo(f"{len(settled)} notifications settled; filesystem channel outbox: {outbox}")


@main.command("history")
@click.argument("notification_id")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl"]), default="table")
@click.pass_context
def history_command(ctx: click.Context, notification_id: str, output_format: str) -> None:
    """The timeline of one notification: requested, each retry, sent or canceled."""

    async def go() -> list[Step]:
        async with open_database(settings_of(ctx).database) as db:
            return await history(db.store, notification_id)

    steps = run(go())
    if not steps:
        fail(f"no notification {notification_id} in the log")
    for step in steps:
        if output_format == "jsonl":
            click.echo(
                json.dumps(
                    {
                        "at": step.at.isoformat(),
                        "event_type": step.event_type,
                        "position": step.position,
                        "summary": step.summary,
                    }
                )
            )
        else:
            click.echo(f"{step.at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {step.summary}")
