"""The `tidings` command group and what its commands share; only here is asyncio.run."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import prometheus_client

from tidings import __version__
from tidings.api import Operations, create_operations_app, serving
from tidings.api.health import operations_serving_settings
from tidings.cli.logs import configure_logging, logs_as_json
from tidings.config import Settings, load_settings
from tidings.config.durations import parse_duration
from tidings.config.settings import parse_address
from tidings.errors import ConfigError, TidingsError
from tidings.eventstore import (
    Database,
)
from tidings.metrics import Metrics
from tidings.projections import Projector, default_projections

log = logging.getLogger("tidings")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run a command's coroutine; a TidingsError ends the command with its message.

    `fast_loop` runs it on uvloop where installed (servers: less CPU per request).
    """
    loop_factory = None
    if fast_loop:
        try:
            import uvloop
        except ImportError:  # not on this platform: the standard loop
            pass
        else:
            loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    except TidingsError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
    if logs_as_json():  # a log collector reads stderr: keep every line an object
        log.error(message, extra={"exit_code": code})
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="TIDINGS_CONFIG",
    help="A YAML settings file over the defaults (env: TIDINGS_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="How much tidings logs to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default=None,
    help="Log lines as text or as one JSON object per line "
    "(default: operations.log_format, TIDINGS_OPERATIONS_LOG_FORMAT, else text).",
)
@click.version_option(__version__, prog_name="tidings")
@click.pass_context
def main(
    ctx: click.Context, config_file: Path | None, log_level: str, log_format: str | None
) -> None:
    """tidings: an event-sourced notification worker pool on PostgreSQL.

    Without database.url (TIDINGS_DATABASE_URL) every command uses an embedded
    PostgreSQL kept in database.data_dir (TIDINGS_DATA_DIR).
    """
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    chosen = log_format.lower() if log_format else settings.operations.log_format
    configure_logging(
        level=log_level,
        log_format="json" if chosen == "json" else "text",
        secrets=settings.secret_values(),
    )
    ctx.obj = settings


def parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time (UTC when no zone is given) or a duration ago, like 10m."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO 8601 time nor a duration like 10m"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`: finish what is in flight, then exit 0."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def make_projector(db: Database, settings: Settings, names: Iterable[str] = ()) -> Projector:
    projections = default_projections(db, settings)
    wanted = set(names)
    if wanted:
        projections = [p for p in projections if p.name in wanted]
    return Projector(db=db, projections=projections, settings=settings.projections)


PROJECTION_NAMES = ("users", "requests", "pending", "feed")


def check_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


# `--format table|jsonl` for commands that print rows: table for people, JSON
# lines for pipes and files.
table_or_jsonl_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "jsonl"]),
    help="Default: table on a terminal, jsonl otherwise.",
)


def wants_table(output_format: str | None, *, terminal: bool) -> bool:
    """The --format asked for, else a table when the rows go to a terminal."""
    return (output_format or ("table" if terminal else "jsonl")) == "table"


# `--metrics-addr HOST:PORT`, over operations.metrics_addr.
metrics_addr_option = click.option(
    "--metrics-addr",
    callback=check_address,
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9464 "
    "(default: operations.metrics_addr, TIDINGS_OPERATIONS_METRICS_ADDR; unset: off).",
)


def metrics_address(settings: Settings, cli_value: str | None) -> tuple[str, int] | None:
    """The option's address when given, else the setting's, else None (not served)."""
    if cli_value:
        return parse_address(cli_value)
    return settings.operations.metrics_address()


@asynccontextmanager
async def serving_operations(
    address: tuple[str, int] | None,
    *,
    db: Database,
    settings: Settings,
    metrics: Metrics | None,
    projector: Projector,
    stop: asyncio.Event,
) -> AsyncIterator[tuple[str, int] | None]:
    """Serve metrics and probes on `address` for the block (nothing when it is None)."""
    if address is None or metrics is None:
        yield None
        return
    operations = make_operations(db, settings, metrics, projector, stop)
    async with serving(
        create_operations_app(operations),
        host=address[0],
        port=address[1],
        settings=operations_serving_settings(settings.api),
        setting=METRICS_SETTING,
        what="metrics and probes",
    ) as bound:  # served until the process has finished its work: /readyz says so meanwhile
        yield bound


METRICS_SETTING = "--metrics-addr or operations.metrics_addr (TIDINGS_OPERATIONS_METRICS_ADDR)"


def make_operations(
    db: Database,
    settings: Settings,
    metrics: Metrics,
    projector: Projector,
    stop: asyncio.Event,
    *,
    check_lag: bool = True,
) -> Operations:
    """Probes and scrape-time gauges; `check_lag` False: /readyz checks the database only."""
    # A *_created series per counter and histogram doubles the series for no
    # use on a Prometheus server; this process exports none.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return Operations(
        db=db,
        metrics=metrics,
        projector=projector,
        ready_max_projector_lag=(
            settings.operations.ready_max_projector_lag if check_lag else timedelta(0)
        ),
        stop=stop,
    )
