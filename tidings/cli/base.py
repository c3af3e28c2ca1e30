"""The `tidings` command group and what its commands share; only here is asyncio.run."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from tidings import __version__
from tidings.config import Settings, load_settings
from tidings.config.durations import parse_duration
from tidings.errors import ConfigError, TidingsError
from tidings.eventstore import (
    Database,
)
from tidings.projections import Projector, default_projections

log = logging.getLogger("tidings")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a TidingsError ends the command with its message."""
    try:
        return asyncio.run(coro)
    except TidingsError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
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
@click.version_option(__version__, prog_name="tidings")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, log_level: str) -> None:
    """tidings: an event-sourced notification worker pool on PostgreSQL.

    Without database.url (TIDINGS_DATABASE_URL) every command uses an embedded
    PostgreSQL kept in database.data_dir (TIDINGS_DATA_DIR).
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO, query-string tokens included.
    for noisy in ("pgserver", "psycopg.pool", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        ctx.obj = load_settings(config_file)
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)


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


PROJECTION_NAMES = ("users", "requests", "pending")
