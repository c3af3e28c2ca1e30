"""The `tidings` command line. The only module that calls asyncio.run."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tidings import __version__
from tidings.config import Settings, load_settings
from tidings.config.durations import parse_duration
from tidings.errors import ConfigError, TidingsError
from tidings.eventstore import (
    ConcurrencyError,
    Database,
    EventQuery,
    NewEvent,
    StoredEvent,
    current_version,
    latest_version,
    migrate,
    open_database,
)
from tidings.notification.messages import MESSAGE_TYPES
from tidings.projections import LeaderLock, Projector, default_projections
from tidings.service import Service
from tidings.workers import PendingQueue
from tidings.workers.history import Step, describe, history

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


@main.command("migrate")
@click.option("--to", "target", type=int, help="Stop at this schema version (default: latest).")
@click.pass_context
def migrate_command(ctx: click.Context, target: int | None) -> None:
    """Create or upgrade the database schema. Safe to run again."""

    async def go() -> None:
        async with (
            open_database(settings_of(ctx).database, require_schema=False) as db,
            db.pool.connection() as conn,
        ):
            applied = await migrate(conn, target=target)
            version = await current_version(conn)
        if applied:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
            click.echo(f"migrated {db.target}: applied {names}; schema at version {version}")
        else:
            click.echo(f"{db.target}: schema already at version {version}, nothing to apply")
        if version < latest_version():
            click.echo(f"note: the latest version is {latest_version()}", err=True)

    run(go())


@main.group("events")
def events_group() -> None:
    """Write events into the log."""


class AppendLine(BaseModel):
    """One line of `tidings events append`.

    Takes what `replay --format jsonl` prints too: `sequence` then stands for
    an expected sequence one lower, `position` and `created_at` are assigned
    anew by the store.
    """

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(min_length=1)
    aggregate_type: str = Field(min_length=1)
    aggregate_id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    payload: dict[str, Any]
    expected_sequence: int | None = Field(default=None, ge=0)
    owner: str = ""
    creator: str = ""
    sequence: int | None = Field(default=None, ge=1)
    position: int | None = None
    created_at: str | None = None

    @model_validator(mode="after")
    def _sequence_agrees(self) -> AppendLine:
        both = self.sequence is not None and self.expected_sequence is not None
        if both and self.expected_sequence != (self.sequence or 0) - 1:
            raise ValueError("sequence and expected_sequence disagree")
        return self

    def to_event(self) -> NewEvent:
        expected = self.expected_sequence
        if expected is None and self.sequence is not None:
            expected = self.sequence - 1
        return NewEvent(
            instance_id=self.instance_id,
            aggregate_type=self.aggregate_type,
            aggregate_id=self.aggregate_id,
            event_type=self.event_type,
            payload=self.payload,
            expected_sequence=expected,
            owner=self.owner,
            creator=self.creator,
        )


def parse_event_lines(stream: IO[str], name: str) -> tuple[list[NewEvent], list[int]]:
    """Events and their line numbers; exits naming every malformed line."""
    events: list[NewEvent] = []
    numbers: list[int] = []
    problems: list[str] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            events.append(AppendLine.model_validate_json(line).to_event())
            numbers.append(number)
        except ValidationError as exc:
            problems.append(f"{name} line {number}: {_validation_summary(exc)}")
    if problems:
        for problem in problems[:20]:
            click.echo(f"error: {problem}", err=True)
        if len(problems) > 20:
            click.echo(f"error: ... and {len(problems) - 20} more malformed lines", err=True)
        fail("nothing was appended", code=1)
    return events, numbers


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "json_invalid":
            parts.append(f"not valid JSON ({error['ctx'].get('error', 'syntax error')})")
        else:
            parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


@events_group.command("append")
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="How to print where each event landed.",
)
@click.pass_context
def append_command(ctx: click.Context, source: IO[str], output_format: str) -> None:
    """Append events from a JSON-lines FILE (or - for stdin), all in one transaction.

    \b
    Each line: {"instance_id", "aggregate_type", "aggregate_id", "event_type",
    "payload": {...}, optional "expected_sequence" (the aggregate's last
    sequence as you saw it, 0 for a new aggregate), "owner", "creator"}.
    A malformed line or a conflict stores nothing and names the line.
    """
    name = "stdin" if source.name == "<stdin>" else source.name
    events, numbers = parse_event_lines(source, name)
    if not events:
        fail(f"{name} holds no events")

    async def go() -> None:
        async with open_database(settings_of(ctx).database) as db:
            try:
                stored = await db.store.append(events)
            except ConcurrencyError as exc:
                where = f"{name} line {numbers[exc.index]}: " if exc.index is not None else ""
                fail(f"{where}{exc}; nothing was appended")
        for event, landed, number in zip(events, stored, numbers, strict=True):
            if output_format == "jsonl":
                click.echo(
                    json.dumps(
                        {
                            "line": number,
                            "position": landed.position,
                            "sequence": landed.sequence,
                            "instance_id": event.instance_id,
                            "aggregate_type": event.aggregate_type,
                            "aggregate_id": event.aggregate_id,
                            "event_type": event.event_type,
                        }
                    )
                )
            else:
                click.echo(
                    f"position {landed.position}\tsequence {landed.sequence}\t"
                    f"{event.instance_id} {event.aggregate_type}/{event.aggregate_id}\t"
                    f"{event.event_type}"
                )

    run(go())


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


@main.command("replay")
@click.option("--instance", "instances", multiple=True, help="Only this instance (repeatable).")
@click.option("--aggregate-type", "aggregate_types", multiple=True, help="Repeatable.")
@click.option("--aggregate-id", "aggregate_ids", multiple=True, help="Repeatable.")
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    help="Repeatable; * is a wildcard, as in notification.*",
)
@click.option(
    "--since", callback=parse_time, help="Created after: ISO time (UTC if no zone) or 1h ago."
)
@click.option(
    "--until", callback=parse_time, help="Created before: ISO time (UTC if no zone) or 1h ago."
)
@click.option("--after-position", type=int, help="Only events after this position.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "table"]),
    help="Default: table on a terminal, jsonl otherwise.",
)
@click.pass_context
def replay_command(
    ctx: click.Context,
    instances: tuple[str, ...],
    aggregate_types: tuple[str, ...],
    aggregate_ids: tuple[str, ...],
    event_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    after_position: int | None,
    limit: int | None,
    output_format: str | None,
) -> None:
    """Stream the log in position order, for audit, in constant memory."""
    query = EventQuery(
        instance_ids=instances or None,
        aggregate_types=aggregate_types or None,
        aggregate_ids=aggregate_ids or None,
        event_types=event_types or None,
        created_after=since,
        created_before=until,
        position_after=after_position,
        limit=limit,
    )
    table = (output_format or ("table" if sys.stdout.isatty() else "jsonl")) == "table"
    out = sys.stdout

    async def go() -> None:
        async with open_database(settings_of(ctx).database) as db:
            if table:
                out.write(TABLE_HEADER)
            async for event in db.store.stream(query):
                out.write(table_row(event) if table else jsonl_row(event))

    run(go())


def jsonl_row(event: StoredEvent) -> str:
    return (
        json.dumps(
            {
                "instance_id": event.instance_id,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "event_type": event.event_type,
                "payload": event.payload,
                "owner": event.owner,
                "creator": event.creator,
                "sequence": event.sequence,
                "position": event.position,
                "created_at": event.created_at.isoformat(),
            },
            ensure_ascii=False,
        )
        + "\n"
    )


_COLUMNS = (("POSITION", 14), ("CREATED_AT", 20), ("INSTANCE", 12), ("AGGREGATE", 50),
            ("SEQ", 4), ("EVENT_TYPE", 40), ("PAYLOAD", 0))  # fmt: skip
TABLE_HEADER = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip() + "\n"


def table_row(event: StoredEvent) -> str:
    created = event.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    payload = json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))
    cells: Iterable[str] = (
        str(event.position),
        created,
        event.instance_id,
        f"{event.aggregate_type}/{event.aggregate_id}",
        str(event.sequence),
        event.event_type,
        payload if len(payload) <= 80 else payload[:77] + "...",
    )
    return "  ".join(_fit(cell, width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def _fit(cell: str, width: int) -> str:
    if width == 0:
        return cell + "\n"
    if len(cell) > width:
        cell = cell[: width - 1] + "…"
    return cell.ljust(width)


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


@main.group("projections")
def projections_group() -> None:
    """Run, inspect and rebuild the read models and notification requests."""


@projections_group.command("run")
@click.option("--until-idle", is_flag=True, help="Catch up once, then exit 0.")
@click.pass_context
def projections_run(ctx: click.Context, until_idle: bool) -> None:
    """Run the projector alone (no workers).

    Only one process projects at a time; others stand by and take over within
    projections.leader_retry_every when it stops. SIGTERM finishes the batch.
    """
    settings = settings_of(ctx)

    async def go() -> None:
        async with open_database(settings.database) as db:
            stop = asyncio.Event()
            stop_on_signals(stop)
            leader = LeaderLock(
                conninfo=db.conninfo,
                retry_every=settings.projections.leader_retry_every.total_seconds(),
            )
            await make_projector(db, settings).run(stop=stop, leader=leader, until_idle=until_idle)

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
    else:
        click.echo(f"rebuilt {name}: replayed {replayed} events")


@main.command("run")
@click.option("--workers", type=click.IntRange(min=0), help="Request workers (default: setting).")
@click.option(
    "--retry-workers", type=click.IntRange(min=0), help="Retry workers (default: setting)."
)
@click.option("--no-projector", is_flag=True, help="Run only the workers, no projector.")
@click.option(
    "--until-idle", is_flag=True, help="Exit 0 once nothing is pending or due (batch runs)."
)
@click.pass_context
def run_command(
    ctx: click.Context,
    workers: int | None,
    retry_workers: int | None,
    no_projector: bool,
    until_idle: bool,
) -> None:
    """Run the projector and the worker pool.

    \b
    Split request and retry work across pods:
      tidings run --workers 4 --retry-workers 0
      tidings run --workers 0 --retry-workers 2 --no-projector
    SIGTERM or SIGINT stops claiming, finishes the attempts in flight,
    records their outcomes, and exits 0.
    """
    settings = settings_of(ctx)
    counts = (
        settings.notifications.workers if workers is None else workers,
        settings.notifications.retry_workers if retry_workers is None else retry_workers,
    )

    async def go() -> None:
        async with open_database(settings.database) as db:
            stop = asyncio.Event()
            stop_on_signals(stop)
            service = Service(db=db, settings=settings)
            try:
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


@main.group("codes")
def codes_group() -> None:
    """Encrypt one-time codes the way tidings decrypts them (AES-256-GCM)."""


@codes_group.command("encrypt")
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.pass_context
def codes_encrypt(ctx: click.Context, source: IO[str]) -> None:
    """Encrypt each line of SOURCE (default: stdin) with crypto.active_key.

    Prints one JSON value per line, ready for a code event's `code` field.
    Codes are read from stdin rather than arguments so they stay out of shell
    history and process lists.
    """
    from tidings.notification.codes import CodeCipher

    try:
        cipher = CodeCipher.from_settings(settings_of(ctx).crypto)
        for line in source:
            code = line.rstrip("\r\n")
            if code:
                click.echo(cipher.encrypt(code).model_dump_json())
    except TidingsError as exc:
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1)


@codes_group.command("generate-key")
def codes_generate_key() -> None:
    """Print a new random key for crypto.keys (base64, 32 bytes)."""
    from tidings.notification.codes import generate_key

    click.echo(generate_key())


@main.command("preview")
@click.argument("message_type", type=click.Choice(MESSAGE_TYPES))
@click.option("--lang", default="en", show_default=True, help="The user's preferred language.")
@click.option("--channel", type=click.Choice(["email", "sms"]), default="email", show_default=True)
@click.option("--instance", default="preview", show_default=True, help="Whose overrides to use.")
@click.option("--html", "show_html", is_flag=True, help="Print the HTML part, not the text part.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to a file: .html (the HTML part), .eml (the whole email), or text.",
)
@click.pass_context
def preview_command(
    ctx: click.Context,
    message_type: str,
    lang: str,
    channel: str,
    instance: str,
    show_html: bool,
    output: Path | None,
) -> None:
    """Render MESSAGE_TYPE with sample data, to check texts and overrides before deploying.

    Uses templates.dir like the workers do; a broken override is reported with
    its file and line. The sample code is 123456, never a real one.
    """
    from tidings.notification.preview import render_preview

    try:
        rendered = render_preview(
            settings_of(ctx),
            message_type=message_type,
            lang=lang,
            channel=channel,
            instance_id=instance,
        )
    except TidingsError as exc:
        fail(str(exc))
    if output is not None:
        suffix = output.suffix.lower()
        data = rendered.eml if suffix == ".eml" else (rendered.html if suffix == ".html" else None)
        output.write_bytes(data if isinstance(data, bytes) else (data or rendered.text).encode())
        click.echo(f"wrote {output}")
        return
    click.echo(rendered.html if show_html and rendered.html else rendered.summary)


@main.group("config")
def config_group() -> None:
    """Inspect the settings."""


@config_group.command("show")
@click.option("--format", "output_format", type=click.Choice(["yaml", "json"]), default="yaml")
@click.pass_context
def config_show(ctx: click.Context, output_format: str) -> None:
    """Print the effective settings (defaults, file, environment), secrets masked."""
    shown = settings_of(ctx).masked()
    if output_format == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())
