"""`tidings serve` and `tidings apikeys`."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click

from tidings.api import (
    SCOPES,
    ApiKeys,
    ApiState,
    create_app,
    openapi_document,
    running_feeds,
    serving,
)
from tidings.cli.base import (
    check_address,
    main,
    make_operations,
    make_projector,
    run,
    settings_of,
    stop_on_signals,
    table_or_jsonl_option,
    wants_table,
)
from tidings.config import Settings
from tidings.config.settings import parse_address
from tidings.eventstore import Database, open_database
from tidings.feeds.runtime import FeedRuntime
from tidings.metrics import Metrics
from tidings.projections import Projector

log = logging.getLogger("tidings")

ADDR_SETTING = "--addr or api.addr (TIDINGS_API_ADDR)"


@main.command("serve")
@click.option(
    "--addr",
    callback=check_address,
    metavar="HOST:PORT",
    help="Listen here, e.g. 0.0.0.0:8080 (default: api.addr, TIDINGS_API_ADDR).",
)
@click.option(
    "--openapi",
    "print_openapi",
    is_flag=True,
    help="Print the OpenAPI document (what /openapi.json serves) and exit.",
)
@click.pass_context
def serve_command(ctx: click.Context, addr: str | None, print_openapi: bool) -> None:
    """Serve the HTTP API: /v1/ (API keys), /metrics, /healthz, /readyz, /docs.

    \b
    Create a key first:  tidings apikeys create --instance acme
    SIGTERM or SIGINT stops accepting, answers the requests in flight
    (within api.shutdown_timeout), and exits 0. See docs/api.md.
    """
    if print_openapi:
        click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return
    settings = settings_of(ctx)
    host, port = parse_address(addr) if addr else settings.api.address()
    _open_files_for(settings.api.max_concurrency)

    async def go() -> None:
        async with open_database(settings.database) as db:
            stop = asyncio.Event()
            stop_on_signals(stop)
            projector = make_projector(db, settings)
            async with serve_api(db, settings, projector, stop, (host, port)):
                await stop.wait()
        log.info("stopped: the requests in flight were answered")

    run(go(), fast_loop=True)


def _open_files_for(connections: int) -> None:
    """Raise the soft open-files limit to the hard one: each open stream holds a socket.

    Says so when even the hard limit is below api.max_concurrency plus a margin
    (the server would refuse connections with EMFILE before 503 could).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    wanted = connections + 200  # the database pool, the log, the listener, ...
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-files limit %d is below api.max_concurrency %d plus a margin: connections "
            "past it fail with 'too many open files'; raise the limit (ulimit -n, LimitNOFILE, "
            "the container's nofile) or lower api.max_concurrency",
            soft, connections,
        )  # fmt: skip


@asynccontextmanager
async def serve_api(
    db: Database,
    settings: Settings,
    projector: Projector,
    stop: asyncio.Event,
    address: tuple[str, int],
    metrics: Metrics | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """The API on `address` for the block (`tidings serve`, `tidings run --serve`).

    The feeds' hub runs beside it; `stop` ends both (the open streams first,
    so the drain does not wait on them).
    """
    # A lagging projector delays messages, not requests: the API stays ready.
    operations = make_operations(
        db, settings, metrics or Metrics(), projector, stop, check_lag=False
    )
    feeds = FeedRuntime(db=db, settings=settings, metrics=operations.metrics)
    app = create_app(
        api=ApiState.from_settings(db=db, settings=settings), operations=operations, feeds=feeds
    )
    async with (
        running_feeds(feeds, stop),
        serving(
            app,
            host=address[0],
            port=address[1],
            settings=settings.api,
            stop=stop,
            setting=ADDR_SETTING,
            what="the API",
            ws_heartbeat=settings.inapp.heartbeat.total_seconds(),
        ) as bound,
    ):
        yield bound


@main.group("apikeys")
def apikeys_group() -> None:
    """API keys per instance, for `tidings serve`."""


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"tidings-cli:{user}"


@apikeys_group.command("create")
@click.option("--instance", "instance_id", required=True, help="The instance (tenant) it serves.")
@click.option("--name", default="", help="A name to recognise it by (shown in logs and events).")
@click.option(
    "--scope",
    "scopes",
    help=f"Comma-separated scopes (default: all): {', '.join(SCOPES)}.",
)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def create_command(
    ctx: click.Context, instance_id: str, name: str, scopes: str | None, output_format: str
) -> None:
    """Create a key; it is printed once, alone on the last line, and never stored."""
    wanted = [s.strip() for s in (scopes or "").split(",") if s.strip()]

    async def go() -> tuple[str, str, list[str]]:
        async with open_database(settings_of(ctx).database) as db:
            keys = ApiKeys(db=db)
            key, key_id = await keys.create(
                instance_id=instance_id, name=name, scopes=wanted, creator=_who()
            )
        return key, key_id, wanted or list(SCOPES)

    key, key_id, granted = run(go())
    if output_format == "json":
        click.echo(json.dumps({"key": key, "id": key_id}))
        return
    click.echo(
        f"created API key {key_id}{f' ({name})' if name else ''} for instance {instance_id} "
        f"with scopes {', '.join(granted)}"
    )
    click.echo("keep it now, it is not shown again (only its SHA-256 is stored):")
    click.echo(key)


@apikeys_group.command("list")
@click.option("--instance", "instance_id", help="Only this instance's keys.")
@table_or_jsonl_option
@click.pass_context
def list_command(ctx: click.Context, instance_id: str | None, output_format: str | None) -> None:
    """Keys with their instance, name, scopes, and who created or revoked them (never the key)."""

    async def go() -> list[dict[str, object]]:
        async with open_database(settings_of(ctx).database) as db:
            rows = await ApiKeys(db=db).list(instance_id=instance_id)
        return [
            {
                "id": r.key_id,
                "instance_id": r.instance_id,
                "name": r.name,
                "scopes": r.scopes,
                "created_at": r.created_at.isoformat(),
                "created_by": r.created_by,
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                "revoked_by": r.revoked_by,
            }
            for r in rows
        ]

    rows = run(go())
    if not wants_table(output_format, terminal=sys.stdout.isatty()):
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no API keys" + (f" in instance {instance_id}" if instance_id else ""))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        scopes = ",".join(row["scopes"])  # type: ignore[arg-type]
        click.echo(
            f"{row['id']}  {row['instance_id']}  {row['name'] or '-'}  {scopes}  "
            f"created {row['created_at']} by {row['created_by']}  {state}"
        )


@apikeys_group.command("revoke")
@click.option("--instance", "instance_id", required=True)
@click.option("--reason", default="", help="Why (recorded in the event).")
@click.argument("key_id")
@click.pass_context
def revoke_command(ctx: click.Context, instance_id: str, reason: str, key_id: str) -> None:
    """Revoke a key: `tidings serve` refuses it within api.key_cache."""

    async def go() -> None:
        async with open_database(settings_of(ctx).database) as db:
            await ApiKeys(db=db).revoke(
                instance_id=instance_id, key_id=key_id, creator=_who(), reason=reason
            )

    run(go())
    click.echo(f"revoked API key {key_id} of instance {instance_id}")
