"""`tidings run` and `tidings history`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
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
from tidings.config import Settings
from tidings.eventstore import (
    Database,
    EventQuery,
    open_database,
)
from tidings.metrics import Metrics
from tidings.service import Service
from tidings.views.history import Step, describe, history
from tidings.workers.supervisor import Supervisor, usable_cores

log = logging.getLogger("tidings")


@main.command("run")
@click.option("--workers", type=click.IntRange(min=0), help="Request workers (default: setting).")
@click.option(
    "--retry-workers", type=click.IntRange(min=0), help="Retry workers (default: setting)."
)
@click.option("--no-projector", is_flag=True, help="Run only the workers, no projector.")
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once nothing is pending or due (batch runs; one process).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Worker processes under one supervisor (default: notifications.processes, "
    "whose default 0 is one per usable core).",
)
@click.option("--child-number", type=click.IntRange(min=1), hidden=True)
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
    processes: int | None,
    child_number: int | None,
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
    With --processes N (or notifications.processes), N such processes run under
    one supervisor that restarts a dying one and forwards SIGTERM to all.
    With --metrics-addr, /metrics, /healthz and /readyz are served there
    (process k of N on the port + k - 1); with --serve, the HTTP API (and
    those) on api.addr as well (by the first process only).
    """
    settings = settings_of(ctx)
    if until_idle and processes is not None and processes > 1:
        fail("--until-idle runs in one process: leave out --processes")
    counts = (
        settings.notifications.workers if workers is None else workers,
        settings.notifications.retry_workers if retry_workers is None else retry_workers,
    )
    projector = not no_projector
    if counts == (0, 0) and not projector:  # before any child is started
        fail(
            "nothing would run: --no-projector, and no request or retry workers ("
            + _count_source("--workers", "TIDINGS_NOTIFICATIONS_WORKERS", workers)
            + ", "
            + _count_source("--retry-workers", "TIDINGS_NOTIFICATIONS_RETRY_WORKERS", retry_workers)
            + "); give this process workers, or drop --no-projector"
        )
    address = metrics_address(settings, metrics_addr)
    count = processes or settings.notifications.processes or usable_cores()
    if child_number is None and not until_idle and count > 1:
        sys.exit(supervise(settings, count, address))

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
                    say_what_runs(
                        settings, projector=projector, workers=counts[0], retry_workers=counts[1]
                    )
                    await service.run(
                        stop=stop,
                        workers=counts[0],
                        retry_workers=counts[1],
                        projector=projector,
                        until_idle=until_idle,
                    )
                    if until_idle:
                        await print_outcomes(db, start, service.outbox)
            finally:
                await service.close()

    run(go())


def supervise(settings: Settings, processes: int, address: tuple[str, int] | None) -> int:
    """Run `processes` children of this same command line; their exit code."""

    async def go() -> int:
        # Opened here first: a database that cannot be reached fails the command at
        # once, and an embedded server stays up for the children and their restarts.
        async with open_database(settings.database) as db:
            env = dict(os.environ)
            if settings.database.url is None:
                env["TIDINGS_DATABASE_URL"] = db.conninfo

            def command(number: int) -> list[str]:
                args = sys.argv[1:]
                if number > 1:  # one process serves the API (api.addr is one port)
                    args = [a for a in args if a != "--serve"]
                argv = [sys.executable, "-m", "tidings", *args]
                argv += ["--child-number", str(number)]
                if address is not None:
                    argv += ["--metrics-addr", f"{address[0]}:{address[1] + number - 1}"]
                return argv

            supervisor = Supervisor(processes=processes, command=command, env=env)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, supervisor.stop)
            return await supervisor.run()

    return run(go())


def _count_source(flag: str, variable: str, given: int | None) -> str:
    """Where a worker count of 0 came from: the flag, or the setting."""
    if given is not None:
        return f"{flag} {given}"
    return f"{variable.removeprefix('TIDINGS_').lower().replace('_', '.', 1)} is 0 ({variable})"


def say_what_runs(settings: Settings, *, projector: bool, workers: int, retry_workers: int) -> None:
    """One line at start: what this process runs; a warning when it sends nothing."""
    channels = settings.channels
    overrides = len(channels.instances)
    sends = f"email via {channels.email}, sms via {channels.sms}" + (
        f" ({overrides} instance{'s' if overrides != 1 else ''} override this)" if overrides else ""
    )
    log.info(
        "running: projector %s, %d request and %d retry workers; %s",
        "yes" if projector else "no", workers, retry_workers, sends,
        extra={"projector": projector, "request_workers": workers,
               "retry_workers": retry_workers, "email_channel": channels.email,
               "sms_channel": channels.sms, "channel_overrides": overrides},
    )  # fmt: skip
    if workers == 0 and retry_workers == 0:
        log.warning(
            "no request or retry workers in this process: it only projects, and sends "
            "nothing (--workers/--retry-workers, notifications.workers/retry_workers); "
            "make sure other processes run workers"
        )


async def print_outcomes(db: Database, after: int, outbox: Path) -> None:
    """What a batch run did: each notification settled since `after`."""
    settled = await db.store.query(
        EventQuery(event_types=("notification.sent", "notification.canceled"), position_after=after)
    )
    for event in settled:
        click.echo(f"{event.instance_id} notification {event.aggregate_id}: {describe(event)}")
    wrote_files = any(
        e.event_type == "notification.sent" and e.payload.get("channel") == "filesystem"
        for e in settled
    )
    where = f"; filesystem channel outbox: {outbox}" if wrote_files else ""
    click.echo(f"{len(settled)} notifications settled{where}")


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
